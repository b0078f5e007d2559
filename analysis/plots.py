"""Figures (matplotlib, Agg backend): every function returns a Figure; save_figure writes PNG + SVG.

Plots follow anchors.md §3.7: seed dots, config means ± seed sd, the fit line with its bootstrap
band and a slope annotation; all series on one training-FLOPs axis; residuals; held-out parity;
bootstrap distributions; ablation bars; training curves.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .analyze import Analysis, SeriesFit  # noqa: E402
from .collect import read_metrics_csv  # noqa: E402,F401  (re-exported: older imports)

FORM_STYLE = {"loglinear": {"color": "C0", "label": "log-linear"}, "powerlaw": {"color": "C3", "label": "E + A·x^-α"}}
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "figure.dpi": 100, "axes.grid": True,
                     "grid.alpha": 0.3, "svg.hashsalt": "onetrans-analysis"})  # fixed salt: reproducible SVG


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


def _log_x_axis(ax, xs: np.ndarray | None) -> None:
    """Log x-axis that stays readable: ticks at the swept values (plain numbers) when given, no minor labels."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if xs is not None and len(xs) <= 10:
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(xs, [f"{v:g}" for v in xs])


def _fit_ylim(ax, values: list[np.ndarray], pad: float = 0.15) -> tuple[float, float]:
    """y-limits from the data and point fits only: wild bootstrap bands (e.g. an extrapolated power law)
    are clipped instead of squashing the data into a line."""
    v = np.concatenate([np.ravel(a) for a in values])
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 1e-9)
    ax.set_ylim(lo - pad * span, hi + pad * span)
    return lo - pad * span, hi + pad * span


def series_figure(an: Analysis, sweep: str, model: str, axis: str, x_name: str):
    """One panel per metric: seeds, means ± sd, fits with bands, oracle line, gain per doubling."""
    group = [s for s in an.series if (s.sweep, s.model, s.axis, s.x_name) == (sweep, model, axis, x_name)]
    pts = an.points(sweep, model, axis)
    n = len(group)
    cols = 3 if n > 2 else n
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.7 * rows + 0.6), squeeze=False)
    xcol = "train_flops" if x_name == "train_flops" else f"axes.{axis}"
    for ax, s in zip(axes.flat, group):
        x = pd.to_numeric(pts[xcol], errors="coerce").to_numpy(float)
        y = pts[f"{an.split}.{s.metric}"].to_numpy(float)
        ax.scatter(x, y, s=12, color="0.55", alpha=0.7, label="seeds", zorder=3)
        xs = np.unique(x)
        means = np.array([y[x == v].mean() for v in xs])
        sds = np.array([y[x == v].std(ddof=1) if (x == v).sum() > 1 else 0.0 for v in xs])
        ax.errorbar(xs, means, yerr=sds, fmt="o", color="k", ms=4, capsize=3, label="mean ± sd", zorder=4)
        notes, on_scale = [], [y]
        for form, f in s.fits.items():
            st = FORM_STYLE[form]
            ax.plot(f.x_grid, f.pred, color=st["color"], lw=1.6, label=st["label"])
            ax.fill_between(f.x_grid, f.band[0], f.band[1], color=st["color"], alpha=0.15, lw=0,
                            label=f"95% band ({st['label']})")
            on_scale.append(f.pred[f.x_grid <= xs.max()])
            if form == "loglinear":
                lo, hi = f.ci["b_per_doubling"]
                notes.append(f"Δ/doubling {f.params['b_per_doubling']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            else:
                lo, hi = f.ci["E"]
                notes.append(f"E {f.params['E']:.4f} [{lo:.4f}, {hi:.4f}], α {f.params['alpha']:.2f}")
        ylo, yhi = _fit_ylim(ax, on_scale)
        if s.oracle is not None:
            span = yhi - ylo
            if ylo - span <= s.oracle <= yhi + span:       # near the data: draw it and keep it in view
                ax.axhline(s.oracle, color="C2", ls="--", lw=1.2, label="Bayes (oracle)")
                _fit_ylim(ax, on_scale + [np.array([s.oracle])], pad=0.08)
                notes.append(f"oracle {s.oracle:.4f}")
            else:
                notes.append(f"oracle {s.oracle:.4f} (off scale)")
        _log_x_axis(ax, None if x_name == "train_flops" else xs)
        ax.set_title(f"{_fmt_metric(s.metric)}\n" + "\n".join(notes), fontsize=8.5)
        ax.set_xlabel("training FLOPs" if x_name == "train_flops" else axis)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = {}, []
    for ax in list(axes.flat)[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.suptitle(f"{sweep}: {model} vs {('training FLOPs' if x_name == 'train_flops' else axis)} "
                 f"({an.split} split; bands: 95% cluster bootstrap of the mean curve)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 6), fontsize=8,
               bbox_to_anchor=(0.5, 0.955), frameon=False)
    return fig


def flops_overlay(an: Analysis, metrics=("ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc")):
    """All series (OneTrans axes and baselines) and the single-config models on one FLOPs axis."""
    cols = 2 if len(metrics) > 1 else 1
    rows = int(np.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6.6 * cols, 5.6 * rows), squeeze=False)
    done = an.collection.done
    for ax, metric in zip(axes.flat, metrics):
        for i, s in enumerate([s for s in an.series if s.metric == metric and s.x_name == "train_flops"]):
            pts = an.points(s.sweep, s.model, s.axis)
            g = pts.groupby("train_flops")[f"{an.split}.{metric}"].mean()
            color = f"C{i % 10}"
            ax.plot(g.index, g.values, "o", color=color, ms=4)
            f = s.fits.get("loglinear")
            if f is not None:
                lo, hi = f.ci["b_per_doubling"]
                ax.plot(f.x_grid, f.pred, color=color, lw=1.4,
                        label=f"{s.model}/{s.axis}: {f.params['b_per_doubling']:+.4f} [{lo:+.4f},{hi:+.4f}]/2x")
        # models with one configuration (e.g. the Table 2 sweep) as labelled markers
        col = f"{an.split}.{metric}"
        series_models = {(s.sweep, s.model, s.axis) for s in an.series}
        singles = done[[(a, b, c) not in series_models for a, b, c in zip(done["sweep"], done["model"], done["axis"])]]
        singles = singles[singles["train_flops"].notna() & singles[col].notna() & singles["axes.variant"].isna()] \
            if "axes.variant" in singles else singles[singles["train_flops"].notna() & singles[col].notna()]
        for j, (model, g) in enumerate(singles.groupby("model")):
            ax.plot(g["train_flops"].mean(), g[col].mean(), marker="s", ls="none", color="0.3", ms=6)
            # stagger labels vertically: single-config models often sit at similar FLOPs
            ax.annotate(model, (g["train_flops"].mean(), g[col].mean()), fontsize=7.5, xytext=(5, -10 + 9 * (j % 3)),
                        textcoords="offset points")
        _log_x_axis(ax, None)
        ax.set_xlabel("training FLOPs (log)")
        ax.set_title(_fmt_metric(metric))
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False,
                  title="series: Δ per doubling of FLOPs [95% CI]", title_fontsize=7.5)
    fig.suptitle("All axes and baselines on training FLOPs (cf. OneTrans Fig. 3b)", fontsize=12)
    fig.tight_layout()
    return fig


def tradeoff(an: Analysis, metric: str = "ctr_uauc"):
    """Linear FLOPs vs metric, marker area ~ dense parameters (cf. OneTrans Fig. 3a)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    col = f"{an.split}.{metric}"
    for i, s in enumerate([s for s in an.series if s.metric == metric and s.x_name == "train_flops"]):
        g = an.points(s.sweep, s.model, s.axis).groupby("train_flops").agg(y=(col, "mean"), p=("params.dense", "mean"))
        size = 20 + 300 * g["p"] / max(float(an.collection.done["params.dense"].max()), 1.0)
        ax.plot(g.index, g["y"], "-", color=f"C{i}", lw=1, alpha=0.6)
        ax.scatter(g.index, g["y"], s=size, color=f"C{i}", alpha=0.7, label=f"{s.model}/{s.axis}")
    ax.set_xlabel("training FLOPs (linear)")
    ax.set_ylabel(_fmt_metric(metric))
    ax.set_title("Trade-off: FLOPs vs metric (marker area ~ dense parameters)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def residuals(an: Analysis, metric: str):
    group = [s for s in an.series if s.metric == metric and s.x_name == s.axis]
    fig, axes = plt.subplots(1, max(len(group), 1), figsize=(4.2 * max(len(group), 1), 3.3), squeeze=False)
    for ax, s in zip(axes.flat, group):
        for form, f in s.fits.items():
            r = pd.DataFrame(f.residuals)
            ax.plot(r["x"], r["residual"], "o-", color=FORM_STYLE[form]["color"], label=FORM_STYLE[form]["label"], ms=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-s.seed_sd, s.seed_sd, color="0.85", label="± seed sd")
        _log_x_axis(ax, np.array(sorted({r["x"] for f in s.fits.values() for r in f.residuals})))
        ax.set_title(f"{s.sweep}: {_fmt_metric(metric)}")
        ax.set_xlabel(s.axis)
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
    ax.scatter(err, ypos, c=list(colors), zorder=3, s=28, label="observed (blue inside, red outside)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ypos, [f"{r.sweep}/{r.axis} {r.metric} [{r.form}] x={r.x:g}" for r in t.itertuples()], fontsize=8)
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
        ax.bar(idx + j * width, table[f"{m} rel%"], width, yerr=table.get(f"{m} rel% sd"), capsize=2,
               label=f"{m} (ours)", color=f"C{j}", alpha=0.8)
        if f"{m} paper%" in table:
            ax.plot(idx + j * width, table[f"{m} paper%"], "k_", ms=12, mew=2)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(idx + width * (len(metrics) - 1) / 2, table["variant"], rotation=15, fontsize=8)
    ax.set_ylabel("Δ vs reference (%, relative)")
    ax.set_title("Ablations (bars: ours ± seed sd; black ticks: paper Table 3)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def training_curves(runs: pd.DataFrame, title: str, max_runs: int = 40):
    """Every numeric column of metrics.csv against step, one line per run (spot instabilities)."""
    frames = []
    for _, r in runs.head(max_runs).iterrows():
        path = Path(r["run_dir"]) / "metrics.csv"
        if path.exists():
            df = read_metrics_csv(path)
            if df is not None:
                frames.append((r, df))
    if not frames:
        return None
    cols = sorted({c for _, df in frames for c in df.columns
                   if c not in ("step", "epoch") and pd.api.types.is_numeric_dtype(df[c])})[:6]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.2), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        for i, (r, df) in enumerate(frames):
            d = df[["step", c]].dropna()
            ax.plot(d["step"], d[c], lw=0.9, alpha=0.7, color=plt.cm.viridis(i / max(len(frames) - 1, 1)))
        ax.set_title(c)
        ax.set_xlabel("step")
    fig.suptitle(f"{title}: training curves ({len(frames)} runs, colour = run order)", fontsize=11)
    fig.tight_layout()
    return fig
