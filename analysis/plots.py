"""Figures (matplotlib, Agg backend): every function returns a Figure; save_figure writes PNG + SVG.

Plots follow anchors.md §3.7: seed dots, config means ± seed sd, the fit line with its bootstrap
band and a slope annotation; all series on one training-FLOPs axis; residuals; held-out parity;
bootstrap distributions; ablation bars; training curves.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.runstore import RunStore  # noqa: E402

from .analyze import Analysis, SeriesFit, x_label  # noqa: E402
from .collect import read_metrics_csv  # noqa: E402,F401  (re-exported: older imports)

FORM_STYLE = {
    "loglinear": {"color": "C0", "label": "log-linear"},
    "powerlaw": {"color": "C3", "label": "E + A·x^-α"},
}
plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "figure.dpi": 100,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "svg.hashsalt": "onetrans-analysis",
    }
)  # fixed salt: reproducible SVG


def save_figure(fig, out_dir: Path, name: str, *, vector: bool = True) -> dict[str, str]:
    """Write name.png (raster, for HTML/Markdown) and, if vector, name.svg; returns {format: path}.

    Figures are laid out by tight_layout when built, so no bbox_inches="tight" (it draws twice)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg") if vector else ("png",):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=110, metadata={"Date": None} if ext == "svg" else None)
        paths[ext] = str(path)
    plt.close(fig)
    return paths


def _fmt_metric(m: str) -> str:
    return m.replace("_", " ").upper().replace("LOGLOSS", "logloss")


def si(v: float) -> str:
    """Compact tick label: integers below 10 000 as they are, larger values with an SI suffix
    (272044.63 -> 272k, 2.01336e6 -> 2.01M, 3.1e15 -> 3.1P)."""
    if not np.isfinite(v):
        return ""
    if abs(v) < 1e4 and float(v).is_integer():
        return f"{int(v)}"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{prefix}"
    return f"{v:.3g}"


def thin_ticks(
    values, max_labels: int = 6, span: float | None = None, min_gap: float | None = None
) -> list[float]:
    """Data values as ticks, dropping those closer (in log10) than min_gap (default span / max_labels)
    to the last kept one, so labels never overlap; the largest value is always kept."""
    v = sorted({float(x) for x in values if np.isfinite(x) and x > 0})
    if len(v) <= 2:
        return v
    span = span or max(np.log10(v[-1] / v[0]), 1e-9)
    gap = min_gap if min_gap is not None else span / max_labels
    kept = [v[0]]
    for x in v[1:]:
        if np.log10(x / kept[-1]) >= gap:
            kept.append(x)
    if kept[-1] != v[-1]:
        if len(kept) > 1 and np.log10(v[-1] / kept[-1]) < gap:
            kept[-1] = v[-1]
        else:
            kept.append(v[-1])
    return kept


def _log_x_axis(ax, xs=None, max_labels: int = 6) -> None:
    """Log x-axis that stays readable: ticks at the data's x-values with SI labels when there are few of
    them, thinned so that labels never overlap (from the axes' width in inches and the labels' length),
    else 1-2-5 ticks; never an axis without ticks."""
    ax.set_xscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _pos: si(v))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    vals = None if xs is None else np.unique(np.asarray(xs, dtype=float))
    if vals is not None and 1 <= len(vals) <= 12:
        lo, hi = ax.get_xlim()
        span = np.log10(max(hi, vals.max()) / max(min(lo, vals.min()), 1e-300)) if lo > 0 else None
        width_in = ax.get_position().width * ax.figure.get_figwidth()
        chars = max(len(si(v)) for v in vals)
        min_gap = None
        if span and width_in > 0:
            min_gap = max(
                span / 12, (0.09 * chars + 0.2) / width_in * span
            )  # ~0.09 in per character at 10 pt
            min_gap = min(min_gap, span / max(2, min(max_labels, 3)))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(thin_ticks(vals, max_labels, span, min_gap))
    else:
        ax.xaxis.set_major_locator(
            matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12)
        )
    ax.xaxis.set_major_formatter(fmt)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def _fit_ylim(ax, values: list[np.ndarray], pad: float = 0.15) -> tuple[float, float]:
    """y-limits from the data and point fits only: wild bootstrap bands (e.g. an extrapolated power law)
    are clipped instead of squashing the data into a line."""
    v = np.concatenate([np.ravel(a) for a in values])
    v = v[np.isfinite(v)]
    if not len(v):
        return ax.get_ylim()
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 1e-9)
    ax.set_ylim(lo - pad * span, hi + pad * span)
    return lo - pad * span, hi + pad * span


def _fmt_slope(v: float) -> str:
    return f"{v:+.4f}" if abs(v) >= 1e-4 or v == 0 else f"{v:+.1e}"


def _means(x, y):
    xs = np.unique(x)
    means = np.array([y[x == v].mean() for v in xs])
    sds = np.array([y[x == v].std(ddof=1) if (x == v).sum() > 1 else np.nan for v in xs])
    return xs, means, sds


def series_figure(an: Analysis, sweep: str, model: str, axis: str, x_name: str):
    """One panel per metric: seeds, means ± sd, fits with bands, flagged runs, oracle line, gain per doubling."""
    group = [
        s for s in an.series if (s.sweep, s.model, s.axis, s.x_name) == (sweep, model, axis, x_name)
    ]
    pts = an.points(sweep, model, axis)
    n = len(group)
    cols = 3 if n > 2 else n
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.7 * cols, 3.9 * rows + 1.0), squeeze=False)
    for ax, s in zip(axes.flat, group):
        used = an.used_points(s)
        x, y = _series_x(used, s), used[f"{an.split}.{s.metric}"].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        ax.scatter(x, y, s=12, color="0.55", alpha=0.7, label="seeds", zorder=3)
        xs, means, sds = _means(x, y)
        ax.errorbar(
            xs,
            means,
            yerr=np.nan_to_num(sds),
            fmt="o",
            color="k",
            ms=4,
            capsize=3,
            label="mean ± seed sd",
            zorder=4,
        )
        flagged = pts[pts["run_id"].isin(s.excluded)]
        on_scale = [y]
        if len(flagged):
            fy = flagged[f"{an.split}.{s.metric}"].to_numpy(float)
            fx = _series_x(flagged, s)
            ax.scatter(
                fx,
                fy,
                marker="x",
                s=40,
                color="C3",
                zorder=5,
                label="flagged run (used)" if s.include_flagged else "flagged run (left out)",
            )
        notes = []
        for form, f in s.fits.items():
            st = dict(FORM_STYLE[form])
            if f.fitted_on == "1 - y":
                st["label"] = "1 − (E + A·x^-α)"
            if form in s.failed:
                ax.plot(
                    f.x_grid, f.pred, color="0.5", lw=1.0, ls="--", label=f"{st['label']} (failed)"
                )
                why = s.failed[form]
                short = "floor beyond the Bayes limit" if "Bayes" in why else why.split(":")[0]
                notes.append(f"{st['label']} FAILED: {short}")
                continue
            ax.plot(f.x_grid, f.pred, color=st["color"], lw=1.6, label=st["label"])
            ax.fill_between(
                f.x_grid,
                f.band[0],
                f.band[1],
                color=st["color"],
                alpha=0.15,
                lw=0,
                label=f"95% band ({st['label']})",
            )
            on_scale.append(f.pred[f.x_grid <= xs.max()])
            if form == "loglinear":
                lo, hi = f.ci["b_per_doubling"]
                notes.append(
                    f"Δ per 2× {_fmt_slope(f.params['b_per_doubling'])} "
                    f"[{_fmt_slope(lo)}, {_fmt_slope(hi)}]"
                )
            elif f.fitted_on == "1 - y":
                lo, hi = f.ci["E"]
                notes.append(
                    f"ceiling 1−E {1 - f.params['E']:.4f} [{1 - hi:.4f}, {1 - lo:.4f}], "
                    f"α {f.params['alpha']:.2f}"
                )
            else:
                lo, hi = f.ci["E"]
                notes.append(
                    f"E {f.params['E']:.4f} [{lo:.4f}, {hi:.4f}], α {f.params['alpha']:.2f}"
                )
        alt = s.alt_fits.get("loglinear")
        if alt is not None:
            ax.plot(
                alt.x_grid,
                alt.pred,
                color="C3",
                lw=1.0,
                ls=":",
                label="log-linear without flagged"
                if s.include_flagged
                else "log-linear with flagged",
            )
            notes.append(
                ("without" if s.include_flagged else "with") + f" flagged: "
                f"{_fmt_slope(alt.params['b_per_doubling'])} [{_fmt_slope(alt.ci['b_per_doubling'][0])}, "
                f"{_fmt_slope(alt.ci['b_per_doubling'][1])}]"
            )
        if "loglinear" in s.fits and np.isfinite(s.mde.get("mde", np.nan)):
            notes.append(
                f"MDE {s.mde['mde']:.2g} per 2×"
                + ("" if s.mde["source"] == "seeds" else " (σ from fit scatter)")
            )
        if not s.fits:
            notes.append(
                "no fit: " + "; ".join(dict.fromkeys(s.skipped.values()))[:80]
                if s.skipped
                else "no fit"
            )
        if s.n_seeds[1] <= 1:
            notes.append("1 seed per config: seed noise not measured")
        ylo, yhi = _fit_ylim(ax, on_scale)
        if len(flagged):
            off = [v for v in fy if np.isfinite(v) and not ylo <= v <= yhi]
            if off:
                notes.append(
                    f"{len(off)} flagged value(s) off scale: "
                    + ", ".join(f"{v:.3g}" for v in off[:3])
                )
        if s.oracle is not None:
            span = yhi - ylo
            if ylo - span <= s.oracle <= yhi + span:  # near the data: draw it and keep it in view
                ax.axhline(s.oracle, color="C2", ls="--", lw=1.2, label="Bayes (oracle)")
                _fit_ylim(ax, on_scale + [np.array([s.oracle])], pad=0.08)
                notes.append(f"oracle {s.oracle:.4f}")
            else:
                notes.append(f"oracle {s.oracle:.4f} (off scale)")
        floor = an.floors.get(sweep, {}) if x_name == "seq_len" else {}
        fx = np.array(sorted(L for L in floor if (floor[L].get(an.split) or {}).get(s.metric)))
        if fx.size:
            floor_y = np.array([floor[L][an.split][s.metric] for L in fx], float)
            ax.plot(
                fx,
                floor_y,
                color="C1",
                ls=":",
                marker="s",
                ms=3,
                lw=1.2,
                label="count-feature floor",
            )
            _fit_ylim(ax, on_scale + [floor_y], pad=0.08)
        _log_x_axis(ax, xs, max_labels=7)
        ax.set_title(
            _fmt_metric(s.metric) + "\n" + "\n".join(_wrap(t, 52) for t in notes), fontsize=8
        )
        ax.set_xlabel(x_label(x_name))
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = {}
    for ax in list(axes.flat)[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    width_chars = int(4.7 * cols * 10)
    fig.suptitle(
        _wrap(f"{sweep}: {model} vs {x_label(x_name)} ({an.split} split)", width_chars),
        fontsize=11.5,
    )
    ncol = min(len(handles), max(3, cols * 2))
    legend_rows = int(np.ceil(len(handles) / max(ncol, 1)))
    height = 3.9 * rows + 1.0
    bottom = (0.12 + 0.2 * legend_rows) / height  # the legend sits under the panels
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.3 / height), h_pad=0.6)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        ncol=ncol,
        fontsize=7.5,
        bbox_to_anchor=(0.5, 0.005),
        frameon=False,
    )
    return fig


def _series_x(d: pd.DataFrame, s: SeriesFit) -> np.ndarray:
    if s.x_name == "train_flops":
        return pd.to_numeric(d["train_flops"], errors="coerce").to_numpy(float)
    if s.x_name == "params":
        return pd.to_numeric(
            d.get("params.dense", pd.Series(np.nan, index=d.index)), errors="coerce"
        ).to_numpy(float)
    col = f"axes.{s.x_name}" if f"axes.{s.x_name}" in d else f"axes.{s.axis}"
    return pd.to_numeric(d[col], errors="coerce").to_numpy(float)


def _flops_panel(
    ax, an: Analysis, group: list[SeriesFit], labels: list[str], colors: list[str]
) -> None:
    all_x = []
    for s, label, color in zip(group, labels, colors):
        used = an.used_points(s)
        x, y = _series_x(used, s), used[f"{an.split}.{s.metric}"].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        xs, means, sds = _means(x[keep], y[keep])
        ax.errorbar(
            xs, means, yerr=np.nan_to_num(sds), fmt="o", color=color, ms=4, capsize=2.5, lw=1
        )
        f = s.fits["loglinear"]
        b, lo, hi = s.slope()
        ax.plot(
            f.x_grid,
            f.pred,
            color=color,
            lw=1.5,
            label=f"{label}: {_fmt_slope(b)} [{_fmt_slope(lo)}, {_fmt_slope(hi)}]",
        )
        ax.fill_between(f.x_grid, f.band[0], f.band[1], color=color, alpha=0.12, lw=0)
        all_x.extend(xs)
    _log_x_axis(ax, all_x if len(set(all_x)) <= 12 else None, max_labels=6)
    ax.set_xlabel("training FLOPs (log scale)")
    ax.set_ylabel(_fmt_metric(group[0].metric))


def _forest(ax, names: list[str], est, lo, hi, colors, mde=None, xlabel: str = "") -> None:
    ypos = np.arange(len(names))[::-1]
    for yp, e, a, b, c in zip(ypos, est, lo, hi, colors):
        ax.plot([a, b], [yp, yp], color=c, lw=3, alpha=0.7, solid_capstyle="butt")
        ax.plot([e], [yp], "o", color=c, ms=6)
    if mde is not None:
        for yp, m in zip(ypos, mde):
            if np.isfinite(m):
                ax.plot([m, -m], [yp - 0.22, yp - 0.22], "|", color="0.35", ms=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ypos, names, fontsize=8.5)
    ax.set_ylim(-0.8, len(names) - 0.2)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))


def figure_3a(an: Analysis, group: list[SeriesFit], sentence_short: str = ""):
    """Length, depth and width on one training-FLOPs axis, with a forest plot of the gain per doubling
    of FLOPs (95% CI; grey ticks: ± MDE)."""
    from .figure3 import series_label

    fig, (ax, fx) = plt.subplots(1, 2, figsize=(12.5, 4.9), gridspec_kw={"width_ratios": [1.7, 1]})
    colors = [f"C{i}" for i in range(len(group))]
    labels = [series_label(s) for s in group]
    _flops_panel(ax, an, group, labels, colors)
    ax.legend(fontsize=8, title="Δ per doubling of FLOPs [95% CI]", title_fontsize=8, loc="best")
    ax.set_title("Figure 3a: config means ± seed sd and log-linear fits", fontsize=10.5)
    slopes = [s.slope() for s in group]
    _forest(
        fx,
        labels,
        [b for b, _, _ in slopes],
        [lo for _, lo, _ in slopes],
        [hi for _, _, hi in slopes],
        colors,
        mde=[s.mde.get("mde", np.nan) for s in group],
        xlabel=f"Δ {group[0].metric} per doubling of FLOPs",
    )
    fx.set_title(
        "gain per doubling of FLOPs, 95% CI\n(grey ticks: ± minimum detectable effect)",
        fontsize=9.5,
    )
    fig.tight_layout()
    return fig


def figure_3b(an: Analysis, ours: list[SeriesFit], base: list[SeriesFit], diffs: pd.DataFrame):
    """The main model's series and the scaled baselines on training FLOPs, with a forest plot of the
    slope differences (ours − baseline, 95% CI)."""
    from .figure3 import series_label

    fig, (ax, fx) = plt.subplots(1, 2, figsize=(12.5, 4.9), gridspec_kw={"width_ratios": [1.7, 1]})
    group = ours + base
    colors = [f"C{i}" for i in range(len(ours))] + ["0.25", "0.55", "0.4", "0.7"][: len(base)] * 3
    _flops_panel(ax, an, group, [series_label(s) for s in group], colors[: len(group)])
    ax.legend(fontsize=8, title="Δ per doubling of FLOPs [95% CI]", title_fontsize=8, loc="best")
    ax.set_title("Figure 3b: OneTrans vs scaled baselines on training FLOPs", fontsize=10.5)
    names = [f"{r.ours} − {r.baseline}" for r in diffs.itertuples()]
    _forest(
        fx,
        names,
        diffs["difference"],
        diffs["lo"],
        diffs["hi"],
        ["C0"] * len(names),
        xlabel="slope difference per doubling of FLOPs",
    )
    fx.set_title("slope difference (ours − baseline), 95% CI", fontsize=9.5)
    fig.tight_layout()
    return fig


def tradeoff(an: Analysis, metric: str = "ctr_uauc"):
    """Linear FLOPs vs metric, marker area ~ dense parameters."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    col = f"{an.split}.{metric}"
    for i, s in enumerate(
        [s for s in an.series if s.metric == metric and s.x_name == "train_flops"]
    ):
        g = (
            an.used_points(s)
            .groupby("train_flops")
            .agg(y=(col, "mean"), p=("params.dense", "mean"))
        )
        size = 20 + 300 * g["p"] / max(float(an.collection.done["params.dense"].max()), 1.0)
        ax.plot(g.index, g["y"], "-", color=f"C{i}", lw=1, alpha=0.6)
        ax.scatter(g.index, g["y"], s=size, color=f"C{i}", alpha=0.7, label=f"{s.model}/{s.axis}")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: si(v)))
    ax.set_xlabel("training FLOPs (linear)")
    ax.set_ylabel(_fmt_metric(metric))
    ax.set_title("Trade-off: FLOPs vs metric (marker area ~ dense parameters)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def residuals(an: Analysis, metric: str):
    group = [s for s in an.series if s.metric == metric and s.primary and s.fits]
    fig, axes = plt.subplots(
        1, max(len(group), 1), figsize=(4.2 * max(len(group), 1), 3.3), squeeze=False
    )
    for ax, s in zip(axes.flat, group):
        for form, f in s.fits.items():
            r = pd.DataFrame(f.residuals)
            ax.plot(
                r["x"],
                r["residual"],
                "o-",
                color=FORM_STYLE[form]["color"],
                label=FORM_STYLE[form]["label"],
                ms=4,
            )
        ax.axhline(0, color="k", lw=0.8)
        if np.isfinite(s.seed_sd):
            ax.axhspan(-s.seed_sd, s.seed_sd, color="0.85", label="± seed sd")
        _log_x_axis(ax, np.array(sorted({r["x"] for f in s.fits.values() for r in f.residuals})))
        ax.set_title(f"{s.sweep}: {_fmt_metric(metric)}", fontsize=10)
        ax.set_xlabel(x_label(s.x_name))
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("residual of config mean")
    fig.tight_layout()
    return fig


def holdout_parity(table: pd.DataFrame):
    """Leave-largest-out checks as a forest plot: observed minus predicted, as % of the prediction, with
    the 95% prediction interval; metrics of different scales stay readable side by side."""
    t = table.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(t) + 1.4))
    scale = 100.0 / t["predicted"].abs().to_numpy()
    err = (t["observed"] - t["predicted"]).to_numpy() * scale
    lo = (t["lo"] - t["predicted"]).to_numpy() * scale
    hi = (t["hi"] - t["predicted"]).to_numpy() * scale
    ypos = np.arange(len(t))[::-1]
    colors = np.where(t["inside"], "C0", "C3")
    ax.hlines(ypos, lo, hi, color="0.5", lw=2.5, alpha=0.6, label="95% prediction interval")
    ax.scatter(
        err, ypos, c=list(colors), zorder=3, s=28, label="observed (blue inside, red outside)"
    )
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(
        ypos,
        [f"{r.sweep}/{r.axis} {r.metric} [{r.form}] x={r.x:g}" for r in t.itertuples()],
        fontsize=8,
    )
    ax.set_xlabel("observed − predicted, % of predicted (fit without the largest x)")
    ax.set_title(f"Leave-largest-out extrapolation: {int(t['inside'].sum())}/{len(t)} inside")
    ax.legend(fontsize=7.5, loc="best")
    fig.tight_layout()
    return fig


def bootstrap_hist(group: list[SeriesFit]):
    """Bootstrap distributions of the gain per doubling (one histogram per series)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, s in enumerate(group):
        b = s.fits["loglinear"].boot["b_per_doubling"]
        ax.hist(b[np.isfinite(b)], bins=40, alpha=0.45, color=f"C{i}", label=f"{s.sweep}/{s.axis}")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"Δ {group[0].metric} per doubling of FLOPs (bootstrap replicates)")
    ax.set_ylabel("replicates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_bars(table: pd.DataFrame):
    """Grouped bars of our relative deltas (%) vs the reference, paper's values as black ticks."""
    metrics = [m for m in ("ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc") if f"{m} rel%" in table]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(len(metrics), 1)
    idx = np.arange(len(table))
    for j, m in enumerate(metrics):
        ax.bar(
            idx + j * width,
            table[f"{m} rel%"],
            width,
            yerr=table.get(f"{m} rel% sd"),
            capsize=2,
            label=f"{m} (ours)",
            color=f"C{j}",
            alpha=0.8,
        )
        if f"{m} paper%" in table:
            ax.plot(idx + j * width, table[f"{m} paper%"], "k_", ms=12, mew=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(idx + width * (len(metrics) - 1) / 2, table["variant"], rotation=15, fontsize=8)
    ax.set_ylabel("Δ vs reference (%, relative)")
    ax.set_title("Ablations (bars: ours ± seed sd; black ticks: paper Table 3)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def curve_columns(frames: list[pd.DataFrame], max_cols: int = 4) -> list[str]:
    """The columns worth a panel: those logged at >= 2 steps in some run, training loss first, then
    validation metrics, then the rest (test metrics are logged once, at the end: no curve)."""
    counts: dict[str, int] = {}
    for df in frames:
        for c in df.columns:
            if c in ("step", "epoch", "time") or not pd.api.types.is_numeric_dtype(df[c]):
                continue
            counts[c] = max(counts.get(c, 0), int(df[c].notna().sum()))
    cols = [c for c, n in counts.items() if n >= 2]

    def rank(c: str):
        name = str(c)
        return (
            0
            if name.startswith("train") and name.endswith("loss")
            else 1
            if name.startswith("train")
            else 2
            if name.startswith("val")
            else 3,
            name,
        )

    return sorted(cols, key=rank)[:max_cols]


def training_curves(
    runs: pd.DataFrame, title: str, max_runs: int = 40, flagged: set[str] | None = None
):
    """Training loss and validation metrics against step, one line per run; flagged runs in red."""
    flagged = flagged or set()
    frames = []
    for _, r in runs.head(max_runs).iterrows():
        path = RunStore(r["run_dir"]).metrics
        if path.exists():
            df = read_metrics_csv(path)
            if df is not None:
                frames.append((r, df))
    cols = curve_columns([df for _, df in frames]) if frames else []
    if not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(max(4.2 * len(cols), 6.0), 3.5), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        for i, (r, df) in enumerate(frames):
            if c not in df:
                continue
            d = df[["step", c]].dropna()
            bad = r["run_id"] in flagged
            ax.plot(
                d["step"],
                d[c],
                lw=1.4 if bad else 0.9,
                alpha=0.9 if bad else 0.6,
                color="C3" if bad else plt.cm.viridis(i / max(len(frames) - 1, 1)),
                zorder=3 if bad else 2,
                label="flagged run" if bad else None,
            )
        ax.set_title(str(c), fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: si(v)))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5, integer=True))
        h, lab = ax.get_legend_handles_labels()
        if h:
            ax.legend(h[:1], lab[:1], fontsize=7.5)
    shown = len(frames)
    extra = f"; first {max_runs} of {len(runs)}" if len(runs) > max_runs else ""
    fig.suptitle(
        _wrap(
            f"{title}: training curves ({shown} runs{extra}; colour = run order, red = flagged)",
            110,
        ),
        fontsize=10.5,
    )
    fig.tight_layout()
    return fig
