"""Analysis -> output files (runs.csv, fits.json, predictions.csv, tables/, figures/) and the ReportSpec."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from harness.runstore import PROVENANCE, RunStore

from .. import plots, quality, tables
from ..analyze import Analysis, x_label
from .spec import Figure, ReportSpec, Section, Table, Text
from .tricks_section import trick_sections

FLOP_CONVENTION = (
    "training FLOPs = result.json flops.train_total, else flops.train_per_example × "
    "train.samples (forward + backward, as counted by the model's flops_per_example(); "
    "see docs/contracts.md §5)"
)
DELTA_CONVENTION = (
    "Deltas: 'rel%' = (m / m_ref − 1)·100 and 'pts' = (m − m_ref)·100; the paper does not say "
    "which one its '+x%' means (spec §3), so both are given beside the paper's value."
)


def _finite(o):
    """Strict JSON: NaN/inf -> null, recursively (json.dumps would write the non-standard NaN)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return None
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o))


def write_outputs(an: Analysis, out: Path) -> dict[str, Path]:
    """The machine-readable outputs (anchors.md §3.8); deterministic given inputs and bootstrap seed.
    Every CSV is readable by pandas (header-only when empty)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "runs": out / "runs.csv",
        "fits": out / "fits.json",
        "fits_csv": out / "fits.csv",
        "predictions": out / "predictions.csv",
        "flagged": out / "flagged.csv",
    }
    write_csv(an.collection.runs, paths["runs"])
    fits = []
    for s in an.series:
        for form, f in s.fits.items():
            alt = s.alt_fits.get(form)
            fits.append(
                {
                    "sweep": s.sweep,
                    "model": s.model,
                    "axis": s.axis,
                    "x": s.x_name,
                    "metric": s.metric,
                    "split": an.split,
                    "seed_sd": s.seed_sd,
                    "oracle": s.oracle,
                    "chosen_form": s.best_form(),
                    "failed": s.failed.get(form),
                    "mde_per_doubling": s.mde if form == "loglinear" else None,
                    "flagged_runs": list(s.excluded),
                    "flagged_included": s.include_flagged,
                    (
                        "fit_with_flagged" if not s.include_flagged else "fit_without_flagged"
                    ): alt.to_dict() if alt is not None else None,
                    **f.to_dict(),
                }
            )
        for form, why in s.skipped.items():
            fits.append(
                {
                    "sweep": s.sweep,
                    "model": s.model,
                    "axis": s.axis,
                    "x": s.x_name,
                    "metric": s.metric,
                    "form": form,
                    "skipped": why,
                }
            )
    excluded = tables.problems_table(an.collection.runs).drop(columns=["run_dir"], errors="ignore")
    doc = {
        "bootstrap": {
            "n_boot": an.settings.n_boot,
            "seed": an.settings.seed,
            "level": an.settings.level,
            "scheme": "two-level cluster bootstrap: configs with replacement, then seeds within",
        },
        "huber_delta": an.settings.huber_delta,
        "model_choice": "leave-one-config-out CV RMSE (AIC/BIC also given)",
        "flop_convention": FLOP_CONVENTION,
        "excluded_runs": excluded.to_dict("records"),
        "flagged_runs": quality.summarise(an.flags).drop(columns=["run_dir"]).to_dict("records"),
        "flagged_included": an.include_flagged,
        "notes": an.notes,
        "hints": {k: h.describe() for k, h in an.hints.items() if h.describe()},
        "fits": fits,
    }
    doc = _finite(json.loads(json.dumps(doc, default=_json_default)))
    paths["fits"].write_text(json.dumps(doc, indent=1, allow_nan=False))
    write_csv(an.fits_table(), paths["fits_csv"])
    write_csv(an.holdout_table(), paths["predictions"])
    write_csv(quality.summarise(an.flags), paths["flagged"])
    return paths


def _provenance(an: Analysis) -> dict[str, str]:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--", "analysis"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "unknown", False
    run_shas = set()
    for d in an.collection.done["run_dir"]:
        store = RunStore(d)
        if (store / PROVENANCE).exists():
            prov = store.read_json(PROVENANCE)  # None: not a JSON object
            if prov is None:
                run_shas.add(f"unreadable {PROVENANCE}")
                continue
            git = prov.get("git", {})
            run_shas.add(str(git.get("sha") if isinstance(git, dict) else prov.get("git_sha", git)))
    versions = {}
    for pkg in ("numpy", "pandas", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    return {
        "analysis code": f"{sha}{' (dirty)' if dirty else ''}",
        "runs' git shas": ", ".join(sorted(run_shas)) or f"no {PROVENANCE} in the run folders",
        "inputs": ", ".join(an.collection.roots),
        "bootstrap": f"{an.settings.n_boot} replicates, seed {an.settings.seed}, {an.settings.level:.0%} percentile",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "python": platform.python_version(),
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def series_sentence(an: Analysis, s) -> str:
    """One sentence: the series' effect, its CI, whether it is resolved, and the MDE."""
    from ..figure3 import series_label

    head = f"**{series_label(s)}** ({s.sweep}: {s.model} along {s.axis}"
    if "loglinear" not in s.fits:
        why = s.skipped.get("loglinear") or next(
            iter(s.skipped.values()), "no fit requested (analysis.fit: none)"
        )
        return f"{head}): no fit claimed. {why}."
    f = s.fits["loglinear"]
    b, lo, hi = s.slope()
    seeds = (
        f"{f.n_configs} configs × {s.n_seeds[0]} seed{'' if s.n_seeds[0] == 1 else 's'}"
        if s.n_seeds[0] == s.n_seeds[1]
        else f"{f.n_configs} configs × {s.n_seeds[0]}-{s.n_seeds[1]} seeds"
    )
    mde = s.mde.get("mde", np.nan)
    resolved = lo > 0 or hi < 0
    text = (
        f"{head}; {seeds}): {s.metric} {_fmt(b)} per doubling of {x_label(s.x_name)} "
        f"[95% CI {_fmt(lo)}, {_fmt(hi)}]"
    )
    if not np.isfinite(mde):
        text += ("; resolved" if resolved else "; not resolved") + (
            "; the minimum detectable effect cannot be computed (one seed per configuration and < 3 configurations)"
        )
    elif resolved:
        text += f"; resolved (MDE {mde:.2g}: the sweep detects gains ≥ that per doubling with 80% power)"
    elif abs(b) < mde:
        text += (
            f"; not resolved. The sweep detects effects ≥ {mde:.2g} per doubling with 80% power (MDE), so an "
            "effect, if any, is likely smaller than that; smaller ones need more seeds (MDE ∝ 1/√seeds) "
            "or a wider grid"
        )
    else:
        text += (
            f"; not resolved although the estimate exceeds the MDE ({mde:.2g}, from seed noise): the "
            "configuration means scatter around the line more than seed noise explains, or there are too "
            "few configurations for the cluster bootstrap; add configurations"
        )
    if s.n_seeds[1] <= 1:
        text += " (one seed per configuration: seed noise not measured; the MDE uses the scatter around the line)"
    if s.excluded and not s.include_flagged and "loglinear" in s.alt_fits:
        a = s.alt_fits["loglinear"]
        text += (
            f". {_runs(len(s.excluded))} flagged and left out; with {'it' if len(s.excluded) == 1 else 'them'}: {_fmt(a.params['b_per_doubling'])} "
            f"[{_fmt(a.ci['b_per_doubling'][0])}, {_fmt(a.ci['b_per_doubling'][1])}]"
        )
    elif s.excluded and s.include_flagged and "loglinear" in s.alt_fits:
        a = s.alt_fits["loglinear"]
        text += (
            f". {_runs(len(s.excluded))} flagged and included (--include-flagged); without "
            f"{'it' if len(s.excluded) == 1 else 'them'}: "
            f"{_fmt(a.params['b_per_doubling'])} [{_fmt(a.ci['b_per_doubling'][0])}, "
            f"{_fmt(a.ci['b_per_doubling'][1])}]"
        )
    for why in s.failed.values():
        text += f". The saturating fit failed ({why}) and is not used"
    return text + "."


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _fmt(v: float) -> str:
    return f"{v:+.4f}" if abs(v) >= 1e-4 or v == 0 else f"{v:+.2e}"


def conclusions(an: Analysis) -> list[str]:
    """The report's first lines: one sentence per series (its headline metric on its headline x),
    then, per sweep with a count-feature floor, where the model stands against it."""
    lines = []
    seen = set()
    for s in an.series:
        key = (s.sweep, s.model, s.axis)
        if key in seen or not s.primary or s.metric != an.headline_metric(s.sweep):
            continue
        seen.add(key)
        lines.append(series_sentence(an, s))
    return lines + floor_lines(an)


def floor_lines(an: Analysis, table: pd.DataFrame | None = None) -> list[str]:
    """Per (sweep, model) with a count-feature floor: the windows where the model's mean is below it."""
    from ..floor import floor_metric, floor_sentences

    table = an.floor_table() if table is None else table
    if table.empty:
        return []
    lines = []
    for sweep, g in table.groupby("sweep"):
        lines += floor_sentences(g, floor_metric(an.headline_metric(str(sweep))), an.split)
    return lines


SCALING_CAPTION = (
    "{sweep}: {model} vs {x}. Grey: seeds; black: mean ± seed sd; red ×: flagged runs; "
    "lines: fits with 95% bootstrap bands of the mean curve (dashed grey: failed fit, not a law); "
    "red dotted: the fit with the flagged runs; green dashed: Bayes oracle (synthetic data only)."
)
FIT_CAPTIONS = {
    "loglinear": "Log-linear fits on each series' x: estimate [95% CI], MDE (95%/80%) and, "
    "where flagged runs exist, the estimate with them.",
    "powerlaw": "Saturating fits (logloss, >= 5 x-values): floor E and exponent α [95% CI]; "
    "'chosen' = lower leave-one-config-out CV RMSE than the log-linear fit; "
    "'status' says when a fit failed (parameter at a bound, floor below Bayes).",
}
HOLDOUT_COLUMNS = [
    "sweep",
    "model",
    "axis",
    "metric",
    "form",
    "x",
    "n_seeds",
    "observed",
    "predicted",
    "lo",
    "hi",
    "inside",
    "abs_rel_error",
]


@dataclass
class _Report:
    """What several sections share, computed once: the analysis, the figure saver, the headline
    metric, the flagged runs and the finished runs the paper tables use."""

    an: Analysis
    fig_dir: Path
    vector: bool
    primary: str
    flagged: pd.DataFrame  # quality.summarise(an.flags): one row per flagged run
    bad: set  # run ids left out of the paper tables (flagged for more than a NaN metric)
    tdone: pd.DataFrame  # the finished runs of the paper tables (flagged ones out, unless included)
    reference: str  # the model comparison's reference model
    t2: pd.DataFrame  # Table 2 (models vs the reference)
    cmp_metric: str  # the metric of the model comparison's sentence
    fits: pd.DataFrame  # an.fits_table()
    fits_disp: pd.DataFrame  # its display form

    @classmethod
    def of(cls, an: Analysis, out: Path, vector: bool) -> _Report:
        primary = an.headline_metric()
        # flagged runs stay out of the paper tables too (NaN metrics are skipped by the means anyway)
        bad = (
            set(an.flags.loc[an.flags["reason"] != "nan_metric", "run_id"])
            if len(an.flags)
            else set()
        )
        done = an.collection.done
        tdone = done if an.include_flagged else done[~done["run_id"].isin(bad)]
        # the model comparison's reference and headline metric: the sweep file's analysis hints,
        # else the paper's
        ref_hint = next((h for h in an.hints.values() if h is not None and h.baseline), None)
        reference = ref_hint.baseline if ref_hint else "dcnv2_din"
        t2 = tables.table2(tdone, an.split, reference=reference)
        cmp_metric = next(
            (m for m in ((ref_hint.metrics or ()) if ref_hint else ()) if f"{m} abs" in t2),
            primary,
        )
        fits = an.fits_table()
        return cls(
            an=an,
            fig_dir=out / "figures",
            vector=vector,
            primary=primary,
            flagged=quality.summarise(an.flags),
            bad=bad,
            tdone=tdone,
            reference=reference,
            t2=t2,
            cmp_metric=cmp_metric,
            fits=fits,
            fits_disp=tables.fits_display(fits),
        )

    def figure(self, fig, name: str, caption: str) -> Figure | None:
        """Save a figure (PNG, and SVG when vector) and return its block; None when there is no figure."""
        if fig is None:
            return None
        paths = plots.save_figure(fig, self.fig_dir, name, vector=self.vector)
        return Figure(name=name, png=paths["png"], vector=paths.get("svg"), caption=caption)


@dataclass
class _Figure3:
    """Figure 3's decisions: their two sentences (the conclusions' summary) and the blocks of its section."""

    summary: Text | None
    blocks: list


def build_report(
    an: Analysis,
    out: Path,
    *,
    title: str = "OneTrans scaling report",
    vector: bool = True,
    tuning=None,
) -> ReportSpec:
    """Write figures/tables under out and return the report description (vector: also SVG figures).

    The outline of the report: conclusions first, then what was left out, then the figures and
    tables that back the conclusions, then methods and provenance."""
    r = _Report.of(an, out, vector)
    fig3 = _figure3(r)
    prov = _provenance(an)
    sections = [
        _conclusions_section(r, fig3.summary),
        *([tuning_section(tuning)] if tuning is not None else []),
        # sweeps that name switches (analysis.trick): their gain across scale (analysis/tricks.py)
        *trick_sections(an, r.figure),
        _left_out_section(r),
        Section(
            title="Figure 3: which axis buys the most per FLOP",
            blocks=fig3.blocks or [Text(markdown="No scaling series.")],
        ),
        _scaling_section(r),
        _flops_section(r),
        _diagnostics_section(r),
        _oracle_section(r),
        _paper_tables_section(r),
        _curves_section(r),
        _configs_section(r),
        Section(title="Methods", blocks=[Text(markdown=_methods(an))]),
        Section(
            title="Provenance",
            blocks=[Text(markdown="\n".join(f"- **{k}**: {v}" for k, v in prov.items()))],
        ),
    ]
    # a figure step returns None when it has nothing to draw: such blocks are dropped here
    sections = [
        Section(title=s.title, blocks=[b for b in s.blocks if b is not None]) for s in sections
    ]
    spec = ReportSpec(title=title, sections=sections, provenance=prov)
    _write_tables(spec, out / "tables")
    return spec


def _figure3(r: _Report) -> _Figure3:
    """Figure 3a (length, depth and width on one FLOPs axis) and 3b (OneTrans vs scaled baselines)."""
    from .. import figure3

    an, primary = r.an, r.primary
    if not an.series:
        return _Figure3(summary=None, blocks=[])
    ranked, sent_a, diffs_a = figure3.decision_3a(an, primary)
    ours, base, sent_b, diffs_b = figure3.decision_3b(an, primary)
    blocks: list = []
    if len(ranked) >= 2:
        blocks.append(
            r.figure(
                plots.figure_3a(an, ranked),
                "figure3a",
                "Figure 3a: length, depth and width on one training-FLOPs axis (points: config means "
                "± seed sd; lines and bands: log-linear fits with 95% bootstrap "
                "bands). Right: gain per doubling of FLOPs with its 95% CI; grey ticks at ± MDE.",
            )
        )
    blocks.append(Text(markdown=sent_a))
    blocks.append(
        Table(
            name="figure3a_slopes",
            frame=figure3.slope_table(ranked),
            caption=f"Gain of {primary} per doubling of training FLOPs per series.",
        )
    )
    if len(diffs_a):
        blocks.append(
            Table(
                name="figure3a_differences",
                frame=diffs_a,
                caption="Leader minus each other axis "
                "(95% CI from the two series' bootstrap replicates); resolved = the CI excludes 0.",
            )
        )
    if ours and base:
        blocks.append(
            r.figure(
                plots.figure_3b(an, ours, base, diffs_b),
                "figure3b",
                "Figure 3b: OneTrans series and scaled baselines on training FLOPs; right: slope "
                "difference (OneTrans − baseline) per doubling of FLOPs with its 95% CI.",
            )
        )
        blocks.append(
            Table(
                name="figure3b_differences",
                frame=diffs_b,
                caption="Slope differences on FLOPs.",
            )
        )
    blocks.append(Text(markdown=sent_b))
    summary = Text(markdown=f"- Figure 3a: {sent_a}\n- Figure 3b: {sent_b}")
    return _Figure3(summary=summary, blocks=[b for b in blocks if b is not None])


def _conclusions_section(r: _Report, figure3_summary: Text | None) -> Section:
    """What the runs say, first: the inputs in one line, one sentence per series and the model
    comparison, Figure 3's two decisions, then the analysis' notes and the collection's warnings."""
    an = r.an
    runs, done = an.collection.runs, an.collection.done
    n_failed = int((runs["status"] != "done").sum())
    head = (
        f"**{len(done)} finished runs** ({len(r.flagged)} flagged, "
        + (
            "included in the fits, --include-flagged"
            if an.include_flagged
            else "left out of the fits"
        )
        + f"), **{n_failed} not finished or unreadable**, from `{'`, `'.join(an.collection.roots)}`; "
        f"{an.split} split. Effects are gains per doubling with 95% cluster-bootstrap CIs; "
        "MDE = the smallest gain per doubling the sweep detects at 95% confidence with 80% power "
        "(from the measured seed noise and the grid)."
    )
    compared = tables.table2_sentence(r.t2, r.cmp_metric, r.reference) if len(r.t2) else ""
    body = [f"- {c}" for c in conclusions(an)] + ([f"- {compared}"] if compared else [])
    body = body or ["- No series with a numeric swept axis among the finished runs."]
    blocks: list = [Text(markdown="\n".join([head, ""] + body))]
    if figure3_summary is not None:
        blocks.append(figure3_summary)
    blocks += [Text(markdown=f"- Note: {note}") for note in an.notes]
    blocks += [Text(markdown=f"- Warning: {w}") for w in an.collection.warnings]
    return Section(title="Conclusions", blocks=blocks)


def _left_out_section(r: _Report) -> Section:
    """What was left out, before any figure: the flagged runs and the unfinished or unreadable ones."""
    an = r.an
    left: list = []
    if len(r.flagged):
        left.append(
            Table(
                name="flagged",
                frame=r.flagged.drop(columns=["run_dir"]),
                caption="Flagged runs: "
                + (
                    "included in the fits (--include-flagged); every affected fit "
                    "also shows its estimate without them."
                    if an.include_flagged
                    else "left out of the fits (--include-flagged uses them); every "
                    "affected fit also shows its estimate with them."
                )
                + " Rules: docs/analysis.md, 'Flagged runs'.",
            )
        )
    else:
        unchecked = an.flags.attrs.get("unchecked_curves", 0)
        left.append(
            Text(
                markdown="No flagged run: no diverged or non-finite training loss, no NaN metric, no seed "
                "outlier."
                + (
                    f" ({unchecked} runs have no metrics.csv: their training loss was not checked.)"
                    if unchecked
                    else ""
                )
            )
        )
    problems = tables.problems_table(an.collection.runs)
    left.append(
        Table(
            name="problems",
            frame=problems,
            caption="Failed, running, incomplete, missing and corrupt "
            "runs (never dropped silently; not in any fit).",
        )
        if len(problems)
        else Text(markdown="Every run folder has DONE and a readable result.json.")
    )
    return Section(title="Flagged and left-out runs", blocks=left)


def _scaling_section(r: _Report) -> Section:
    """One figure per (sweep, model, axis) on its own x, the count-feature floor, the fit tables."""
    an = r.an
    keys = list(dict.fromkeys((s.sweep, s.model, s.axis, s.x_name) for s in an.series if s.primary))
    scaling: list = [
        r.figure(
            plots.series_figure(an, sweep, model, axis, x_name),
            f"scaling_{sweep}_{model}_{axis}",
            SCALING_CAPTION.format(sweep=sweep, model=model, x=x_label(x_name)),
        )
        for sweep, model, axis, x_name in keys
    ]
    scaling += _floor_blocks(an)
    fits_disp = r.fits_disp
    if scaling:
        native = fits_disp[fits_disp["x"] != "train_flops"] if len(fits_disp) else fits_disp
        for form, cap in FIT_CAPTIONS.items():
            part = native[native["form"] == form] if len(native) else native
            if len(part):
                scaling.append(
                    Table(name=f"fits_{form}", frame=part.loc[:, (part != "").any()], caption=cap)
                )
    return Section(
        title="Scaling along each axis",
        blocks=scaling
        or [Text(markdown="No sweep with ≥ 2 numeric values of its axis among the finished runs.")],
    )


def _flops_section(r: _Report) -> Section:
    """Every series on training FLOPs: the fits, the trade-off figure, the slope differences."""
    an = r.an
    blocks: list = []
    if an.series:
        blocks.append(
            Table(
                name="fits_flops",
                frame=r.fits_disp[r.fits_disp["x"] == "train_flops"],
                caption="Log-linear fits on training FLOPs.",
            )
        )
        blocks.append(
            r.figure(
                plots.tradeoff(an, r.primary),
                "tradeoff",
                "Linear FLOPs axis, marker area ~ dense params.",
            )
        )
        blocks.append(Text(markdown=_slope_differences(an, r.primary)))
    return Section(
        title="All series on training FLOPs",
        blocks=blocks or [Text(markdown="No scaling series.")],
    )


def _diagnostics_section(r: _Report) -> Section:
    """Residuals, the leave-largest-out extrapolation checks and the bootstrap distributions."""
    an, primary = r.an, r.primary
    diag: list = []
    for metric in dict.fromkeys(("ctr_logloss", primary)):
        if any(s.metric == metric and s.fits for s in an.series):
            diag.append(
                r.figure(
                    plots.residuals(an, metric),
                    f"residuals_{metric}",
                    f"Residuals of config means ({metric}); grey band: ± pooled seed sd. Curvature in "
                    "the log-linear residuals is the signature of saturation.",
                )
            )
    hold = an.holdout_table()
    hold = hold[hold["x_name"] != "train_flops"]
    if len(hold):
        diag.append(
            r.figure(
                plots.holdout_parity(hold),
                "holdout_parity",
                "Leave-largest-out: fit without the largest x, predict it (95% prediction interval "
                "= bootstrap curve spread + seed noise of the held-out mean).",
            )
        )
        h = hold[HOLDOUT_COLUMNS]
        diag.append(
            Table(
                name="holdout",
                frame=h,
                caption=f"Extrapolation checks: {int(h['inside'].sum())} of "
                f"{len(h)} observed values inside their 95% prediction interval.",
                float_format="{:.5g}",
            )
        )
    on_flops = [
        s
        for s in an.series
        if s.metric == primary and s.x_name == "train_flops" and "loglinear" in s.fits
    ]
    if on_flops:
        diag.append(
            r.figure(
                plots.bootstrap_hist(on_flops),
                "bootstrap_slopes",
                f"Bootstrap distributions of the {primary} gain per doubling of training FLOPs.",
            )
        )
    return Section(title="Fit diagnostics", blocks=diag or [Text(markdown="No fits to diagnose.")])


def _oracle_section(r: _Report) -> Section:
    """Each saturating fit's floor E beside the Bayes logloss (synthetic data only)."""
    fits = r.fits
    floor = fits[(fits["form"] == "powerlaw")] if len(fits) and "form" in fits else pd.DataFrame()
    if not (len(floor) and "oracle" in floor and floor["oracle"].notna().any()):
        return Section(
            title="Bayes ceiling vs fitted floor",
            blocks=[
                Text(
                    markdown="No saturating fit with an oracle value (real data has no Bayes ceiling, "
                    "or fewer than 5 x-values)."
                )
            ],
        )
    fl = floor[["sweep", "model", "axis", "metric", "E", "E_lo", "E_hi", "oracle", "status"]].copy()
    fl["E − oracle"] = fl["E"] - fl["oracle"]
    fl["oracle inside E's CI"] = (fl["E_lo"] <= fl["oracle"]) & (fl["oracle"] <= fl["E_hi"])
    fl["E below oracle (impossible floor)"] = fl["E_hi"] < fl["oracle"]
    table = Table(
        name="floor_vs_oracle",
        frame=fl,
        caption="Fitted floor E vs the Bayes logloss "
        "(result.json 'oracle', from the true probabilities). A floor whose CI lies below the "
        "oracle marks the fit failed; well above it means a capacity or data limit.",
        float_format="{:.5f}",
    )
    return Section(title="Bayes ceiling vs fitted floor", blocks=[table])


def _paper_tables_section(r: _Report) -> Section:
    """Tables 2, 3 and 5 in the paper's layout, ours beside the paper's values, and the ablation bars."""
    an = r.an
    t3, t5 = tables.table3(r.tdone, an.split), tables.table5(r.tdone)
    done = an.collection.done
    left_out = len(set(done["run_id"]) & r.bad) if not an.include_flagged else 0
    blocks: list = [
        Text(
            markdown=DELTA_CONVENTION + " Paper values: ../shared/paper/onetrans-spec.md §2 "
            "(analysis/paper_numbers.py)."
            + (f" {_runs(left_out)} flagged and left out of these tables." if left_out else "")
        )
    ]
    for name, t, cap in (
        (
            "table2",
            r.t2,
            f"Table 2 layout: models vs {r.reference}; 'pts lo/hi' = the 95% Welch CI "
            "of the difference in points over seeds.",
        ),
        ("table3", t3, "Table 3 layout: ablations vs OneTrans-S (reference)."),
        (
            "table5",
            t5,
            "Table 5 layout: system variants vs un-optimised (inference columns are "
            "not recorded in result.json: n/a).",
        ),
    ):
        blocks.append(
            Table(name=name, frame=_drop_sd(t), caption=cap)
            if len(t)
            else Text(markdown=f"{cap} No runs of this kind in the input.")
        )
    if len(t3):
        blocks.append(
            r.figure(
                plots.ablation_bars(t3[t3["variant"] != "reference"]),
                "ablation_bars",
                "Ablations: relative Δ vs reference (± seed sd of the difference); black: paper.",
            )
        )
    return Section(title="Paper tables (ours beside the paper's)", blocks=blocks)


def _curves_section(r: _Report) -> Section:
    """One figure of training curves per sweep, flagged runs in red."""
    an = r.an
    bad_ids = set(an.flags["run_id"]) if len(an.flags) else set()
    curves = [
        r.figure(
            plots.training_curves(g, str(sweep), flagged=bad_ids),
            f"curves_{sweep}",
            f"Training curves, sweep {sweep} (training loss first, then validation metrics; "
            "flagged runs in red).",
        )
        for sweep, g in an.collection.done.groupby("sweep")
    ]
    curves = [c for c in curves if c is not None]
    return Section(
        title="Training curves", blocks=curves or [Text(markdown="No metrics.csv found.")]
    )


def _configs_section(r: _Report) -> Section:
    an = r.an
    return Section(
        title="Per-configuration results",
        blocks=[
            Table(
                name="configs",
                frame=tables.config_table(
                    an.collection.done, an.split, an.flags, an.include_flagged
                ),
                caption="Mean ± seed sd per configuration over the runs used by the fits (one seed: 'n/a', seed noise "
                "not measured); params in millions; TFLOPs = training FLOPs / 1e12.",
            )
        ],
    )


def _write_tables(spec: ReportSpec, tdir: Path) -> None:
    """Every table of the report as tables/<name>.csv."""
    tdir.mkdir(parents=True, exist_ok=True)
    for t in spec.tables():
        write_csv(t.frame, tdir / f"{t.name}.csv")


def tuning_section(tuning) -> Section:
    """Tuned points (analysis/tuning.py): the chosen value per point, the spread over candidates,
    the edge flags, and the law under each selection (how much tuning moved it)."""
    sel = tuning.selection
    blocks: list = [Text(markdown="\n".join(f"- {line}" for line in tuning.lines))]
    blocks.append(
        Table(
            name="tuned_points",
            frame=sel.points,
            caption="Per tuned point: the chosen value (best mean val metric over seeds; exact ties "
            "to the value listed first; --tune-fixed pins it), its score, the spread (best minus "
            "worst candidate), 'edge' when the winner is the smallest (low) or largest (high) "
            "value searched, candidates with no finished seed, finished seeds and mean score per "
            "candidate. docs/analysis.md, 'Tuned points'.",
            float_format="{:.4f}",
        )
    )
    if len(tuning.shift):
        blocks.append(
            Table(
                name="tuning_shift",
                frame=tuning.shift,
                caption="The log-linear law on training FLOPs (gain per doubling, 95% cluster-"
                "bootstrap CI) over each point's chosen candidate ('tuned') and over every point's "
                "candidate at one fixed value: how much tuning moved the law.",
                float_format="{:.4f}",
            )
        )
    return Section(title="Tuned points", blocks=blocks)


def _floor_blocks(an: Analysis) -> list:
    """The model beside the count-feature floor at each window, and the sentence saying where it is below."""
    table = an.floor_table()
    if table.empty:
        return []
    text = "\n".join(f"- {line}" for line in floor_lines(an, table))
    return [
        Text(markdown=text),
        Table(
            name="count_feature_floor",
            frame=table,
            caption=f"The model's mean ({an.split} split, runs the fits use) beside the count-feature "
            "floor at the same window: a logistic regression fitted on train over log1p history "
            "counts (candidate item, its side fields and behaviours among the last L events, "
            "history length, item popularity so far; harness/data/floor.py, read from "
            "<sweep>/.sweep/floor.json). A floor, not a ceiling: 'below floor' means the model "
            "leaves unused a signal its own input holds. 'lo'/'hi': 95% interval of model − floor "
            "from the seed sd pooled over the windows; 'vs floor': above, level (the interval "
            "holds 0) or below. docs/analysis.md, 'Count-feature floor'.",
            float_format="{:.4f}",
        ),
    ]


def _methods(an: Analysis) -> str:
    hints = (
        "; ".join(f"{k}: {h.describe()}" for k, h in sorted(an.hints.items()) if h.describe())
        or "none found (defaults used)"
    )
    return "\n".join(
        [
            f"- Fits: log-linear `m = a + b·log10(x)` for every metric with ≥ {an.settings.min_loglinear_x} distinct x "
            f"(Δ per doubling = b·log10 2); saturating `y = E + A·x^-α` for logloss with ≥ {an.settings.min_powerlaw_x} "
            f"x-values (Huber δ = {an.settings.huber_delta:g} on log y, multi-start, LSE parameters), and on 1 − AUC "
            "where a sweep's hints ask for `fit: powerlaw`; a saturating fit "
            "with a parameter at its bound or a floor below the Bayes floor is marked failed.",
            f"- Intervals: {an.settings.level:.0%} percentile, two-level cluster bootstrap (configs, then seeds within), "
            f"{an.settings.n_boot} replicates, seed {an.settings.seed}. Bands are for the mean curve.",
            "- MDE: (t(0.975, dof) + t(0.80, dof)) · σ / sqrt(Σ (log2 x − mean)²) over the runs fitted; σ = pooled "
            "within-configuration seed sd (else the scatter around the line).",
            "- Flagged runs: non-finite or diverged training loss, NaN metric, seed outlier (|y − config median| > 6 "
            "robust seed sd); docs/analysis.md.",
            "- Model choice: leave-one-config-out CV RMSE of config means (AIC/BIC on config means also shown; "
            "with few configs they are indicative only).",
            f"- Sweep-file analysis hints: {hints}.",
            f"- {FLOP_CONVENTION}.",
            f"- {DELTA_CONVENTION}",
        ]
    )


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Every CSV readable by pandas: a frame without columns gets a one-column header."""
    if len(frame.columns) == 0:
        frame = pd.DataFrame(columns=["empty"])
    frame.to_csv(path, index=False)
    return path


def _drop_sd(t: pd.DataFrame) -> pd.DataFrame:
    return t[[c for c in t.columns if not c.endswith("rel% sd")]]


def _slope_differences(an: Analysis, metric: str) -> str:
    """CIs of slope differences between series on the FLOPs axis, from the series' bootstrap replicates."""
    group = [
        s
        for s in an.series
        if s.metric == metric and s.x_name == "train_flops" and "loglinear" in s.fits
    ]
    if len(group) < 2:
        return "Slope differences need at least two series on the FLOPs axis."
    lines = [
        f"Differences of the {metric} gain per doubling of FLOPs (first − second series; 95% CI from the two "
        "series' independent bootstrap replicates, paired by replicate index):"
    ]
    for i, a in enumerate(group):
        for b in group[i + 1 :]:
            d = (
                a.fits["loglinear"].boot["b_per_doubling"]
                - b.fits["loglinear"].boot["b_per_doubling"]
            )
            lo, hi = np.nanpercentile(d, [2.5, 97.5])
            lines.append(
                f"- {a.sweep}/{a.axis} − {b.sweep}/{b.axis}: {np.nanmedian(d):+.5f} [{lo:+.5f}, {hi:+.5f}]"
            )
    return "\n".join(lines)
