"""Analysis -> output files (runs.csv, fits.json, predictions.csv, tables/, figures/) and the ReportSpec."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots, tables
from ..analyze import Analysis
from .spec import Figure, ReportSpec, Section, Table, Text

FLOP_CONVENTION = ("training FLOPs = result.json flops.train_total, else flops.train_per_example × "
                   "train.samples (forward + backward, as counted by the model's flops_per_example(); "
                   "see docs/contracts.md §5)")
DELTA_CONVENTION = ("Deltas: 'rel%' = (m / m_ref − 1)·100 and 'pts' = (m − m_ref)·100; the paper does not say "
                    "which one its '+x%' means (spec §3), so both are given beside the paper's value.")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o))


def write_outputs(an: Analysis, out: Path) -> dict[str, Path]:
    """The machine-readable outputs (anchors.md §3.8); deterministic given inputs and bootstrap seed."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"runs": out / "runs.csv", "fits": out / "fits.json", "predictions": out / "predictions.csv"}
    an.collection.runs.to_csv(paths["runs"], index=False)
    fits = []
    for s in an.series:
        for form, f in s.fits.items():
            fits.append({"sweep": s.sweep, "model": s.model, "axis": s.axis, "x": s.x_name, "metric": s.metric,
                         "split": an.split, "seed_sd": s.seed_sd, "oracle": s.oracle, "chosen_form": s.best_form(),
                         **f.to_dict()})
        for form, why in s.skipped.items():
            fits.append({"sweep": s.sweep, "model": s.model, "axis": s.axis, "x": s.x_name, "metric": s.metric,
                         "form": form, "skipped": why})
    doc = {"bootstrap": {"n_boot": an.settings.n_boot, "seed": an.settings.seed, "level": an.settings.level,
                         "scheme": "two-level cluster bootstrap: configs with replacement, then seeds within"},
           "huber_delta": an.settings.huber_delta, "model_choice": "leave-one-config-out CV RMSE (AIC/BIC also given)",
           "flop_convention": FLOP_CONVENTION, "excluded_runs": tables.problems_table(an.collection.runs)
           .drop(columns=["run_dir"], errors="ignore").to_dict("records"), "fits": fits}
    paths["fits"].write_text(json.dumps(doc, indent=1, default=_json_default))
    an.holdout_table().to_csv(paths["predictions"], index=False)
    return paths


def _provenance(an: Analysis) -> dict[str, str]:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "analysis"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "unknown", False
    run_shas = set()
    for d in an.collection.done["run_dir"]:
        p = Path(d) / "provenance.json"
        if p.exists():
            try:
                prov = json.loads(p.read_text())
                git = prov.get("git", {})
                run_shas.add(str(git.get("sha") if isinstance(git, dict) else prov.get("git_sha", git)))
            except (json.JSONDecodeError, AttributeError):
                run_shas.add("unreadable provenance.json")
    versions = {}
    for pkg in ("numpy", "pandas", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    return {"analysis code": f"{sha}{' (dirty)' if dirty else ''}",
            "runs' git shas": ", ".join(sorted(run_shas)) or "no provenance.json in the run folders",
            "inputs": ", ".join(an.collection.roots),
            "bootstrap": f"{an.settings.n_boot} replicates, seed {an.settings.seed}, {an.settings.level:.0%} percentile",
            "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "python": platform.python_version(), "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def build_report(an: Analysis, out: Path, *, title: str = "OneTrans scaling report", vector: bool = True) -> ReportSpec:
    """Write figures/tables under out and return the report description (vector: also SVG figures)."""
    fig_dir = out / "figures"
    figs: list[Figure] = []

    def figure(fig, name, caption):
        if fig is None:
            return None
        paths = plots.save_figure(fig, fig_dir, name, vector=vector)
        f = Figure(name=name, png=paths["png"], vector=paths.get("svg"), caption=caption)
        figs.append(f)
        return f

    runs, done = an.collection.runs, an.collection.done
    # the headline metric of the overlay/trade-off/bootstrap figures: CTR UAUC (the paper's Fig. 3), else what exists
    fitted = [s.metric for s in an.series]
    primary = next((m for m in ("ctr_uauc", "ctr_auc", "cvr_uauc") if m in fitted), fitted[0] if fitted else "ctr_uauc")
    n_failed = int((runs["status"] != "done").sum())
    summary = Text(markdown=(
        f"**{len(done)} finished runs**, **{n_failed} not finished** (listed below), from "
        f"`{'`, `'.join(an.collection.roots)}`. Metrics from the **{an.split}** split.\n\n"
        f"- Fits: log-linear `m = a + b·log10(x)` for every metric (Δ per doubling = b·log10 2); saturating "
        f"`y = E + A·x^-α` for logloss with ≥ {an.settings.min_powerlaw_x} x-values (Huber δ = "
        f"{an.settings.huber_delta:g} on log y, multi-start, LSE parameters).\n"
        f"- Intervals: {an.settings.level:.0%} percentile, two-level cluster bootstrap (configs, then seeds within), "
        f"{an.settings.n_boot} replicates, seed {an.settings.seed}. Bands are for the mean curve.\n"
        f"- Model choice: leave-one-config-out CV RMSE of config means (AIC/BIC on config means also shown; "
        f"with few configs they are indicative only).\n- {FLOP_CONVENTION}.\n- {DELTA_CONVENTION}"))
    for w in an.collection.warnings:
        summary = Text(markdown=summary.markdown + f"\n- Warning: {w}")
    sections = [Section(title="Summary", blocks=[summary])]

    problems = tables.problems_table(runs)
    sections.append(Section(title="Runs that did not finish", blocks=[
        Table(name="problems", frame=problems, caption="Failed, running, incomplete and missing runs "
              "(never dropped silently; excluded from every fit).") if len(problems) else
        Text(markdown="Every run folder has DONE and result.json.")]))

    keys = sorted({(s.sweep, s.model, s.axis) for s in an.series})
    scaling = []
    for sweep, model, axis in keys:
        f = figure(plots.series_figure(an, sweep, model, axis, axis), f"scaling_{sweep}_{model}_{axis}",
                   f"{sweep}: {model} vs {axis}. Grey: seeds; black: mean ± seed sd; lines: fits with 95% bands; "
                   "green dashed: Bayes oracle (synthetic data only).")
        scaling.append(f)
    fits = an.fits_table()
    fits_disp = tables.fits_display(fits)
    if scaling:
        native = fits_disp[fits_disp["x"] != "train_flops"] if len(fits_disp) else fits_disp
        for form, cap in (("loglinear", "Log-linear fits on each swept axis: estimate [95% CI]."),
                          ("powerlaw", "Saturating fits (logloss, >= 5 x-values): floor E and exponent α [95% CI]; "
                                       "'chosen' = lower leave-one-config-out CV RMSE than the log-linear fit.")):
            part = native[native["form"] == form] if len(native) else native
            if len(part):
                scaling.append(Table(name=f"fits_{form}", frame=part.loc[:, (part != "").any()], caption=cap))
    sections.append(Section(title="Scaling along each axis", blocks=scaling or [
        Text(markdown="No sweep with ≥ 2 numeric values of its axis among the finished runs.")]))

    flops_blocks = []
    if an.series:
        overlay_metrics = [m for m in ("ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc") if m in fitted] or [primary]
        flops_blocks.append(figure(plots.flops_overlay(an, overlay_metrics), "flops_overlay",
                                   "Config means and log-linear fits of every series on training FLOPs; legend: "
                                   "Δ per doubling of FLOPs [95% CI]. Squares: single-config models."))
        flops_blocks.append(figure(plots.tradeoff(an, primary), "tradeoff", "Linear FLOPs axis, marker area ~ dense params."))
        flops_blocks.append(Table(name="fits_flops", frame=fits_disp[fits_disp["x"] == "train_flops"],
                                  caption="Log-linear fits on training FLOPs."))
        flops_blocks.append(Text(markdown=_slope_differences(an, primary)))
    sections.append(Section(title="All axes and baselines on training FLOPs",
                            blocks=flops_blocks or [Text(markdown="No scaling series.")]))

    diag = []
    for metric in dict.fromkeys(("ctr_logloss", primary)):
        if any(s.metric == metric for s in an.series):
            diag.append(figure(plots.residuals(an, metric), f"residuals_{metric}",
                               f"Residuals of config means ({metric}); grey band: ± pooled seed sd. Curvature in "
                               "the log-linear residuals is the signature of saturation."))
    hold = an.holdout_table()
    if len(hold):
        diag.append(figure(plots.holdout_parity(hold[hold["x_name"] != "train_flops"]), "holdout_parity",
                           "Leave-largest-out: fit without the largest x, predict it (95% prediction interval "
                           "= bootstrap curve spread + seed noise of the held-out mean)."))
        h = hold[hold["x_name"] != "train_flops"][["sweep", "model", "axis", "metric", "form", "x", "n_seeds",
                                                    "observed", "predicted", "lo", "hi", "inside", "abs_rel_error"]]
        diag.append(Table(name="holdout", frame=h, caption=f"Extrapolation checks: {int(h['inside'].sum())} of "
                          f"{len(h)} observed values inside their 95% prediction interval.", float_format="{:.5g}"))
    uauc = [s for s in an.series if s.metric == primary and s.x_name == "train_flops" and "loglinear" in s.fits]
    if uauc:
        diag.append(figure(plots.bootstrap_hist(uauc), "bootstrap_slopes",
                           f"Bootstrap distributions of the {primary} gain per doubling of training FLOPs."))
    sections.append(Section(title="Fit diagnostics", blocks=diag or [Text(markdown="No fits to diagnose.")]))

    floor = fits[(fits["form"] == "powerlaw")] if len(fits) and "form" in fits else pd.DataFrame()
    if len(floor) and floor["oracle"].notna().any():
        fl = floor[["sweep", "model", "axis", "metric", "E", "E_lo", "E_hi", "oracle"]].copy()
        fl["E − oracle"] = fl["E"] - fl["oracle"]
        fl["oracle inside E's CI"] = (fl["E_lo"] <= fl["oracle"]) & (fl["oracle"] <= fl["E_hi"])
        fl["E below oracle (impossible floor)"] = fl["E_hi"] < fl["oracle"]
        oracle_blocks = [Table(name="floor_vs_oracle", frame=fl, caption="Fitted floor E vs the Bayes logloss "
                               "(result.json 'oracle', from the true probabilities). A floor clearly below the "
                               "oracle means the fit is wrong; well above it means capacity or data limit.",
                               float_format="{:.5f}")]
    else:
        oracle_blocks = [Text(markdown="No saturating fit with an oracle value (real data has no Bayes ceiling, "
                                       "or fewer than 5 x-values).")]
    sections.append(Section(title="Bayes ceiling vs fitted floor", blocks=oracle_blocks))

    t2, t3, t5 = tables.table2(done, an.split), tables.table3(done, an.split), tables.table5(done)
    paper_blocks = [Text(markdown=DELTA_CONVENTION + " Paper values: ../shared/paper/onetrans-spec.md §2 "
                                  "(analysis/paper_numbers.py).")]
    for name, t, cap in (("table2", t2, "Table 2 layout: models vs DCNv2+DIN."),
                         ("table3", t3, "Table 3 layout: ablations vs OneTrans-S (reference)."),
                         ("table5", t5, "Table 5 layout: system variants vs un-optimised (inference columns are "
                                        "not recorded in result.json: n/a).")):
        paper_blocks.append(Table(name=name, frame=_drop_sd(t), caption=cap) if len(t) else
                            Text(markdown=f"{cap} No runs of this kind in the input."))
    if len(t3):
        paper_blocks.append(figure(plots.ablation_bars(t3[t3["variant"] != "reference"]), "ablation_bars",
                                   "Ablations: relative Δ vs reference (± seed sd of the difference); black: paper."))
    sections.append(Section(title="Paper tables (ours beside the paper's)", blocks=paper_blocks))

    curves = []
    for sweep, g in done.groupby("sweep"):
        curves.append(figure(plots.training_curves(g, str(sweep)), f"curves_{sweep}", f"Training curves, sweep {sweep}."))
    curves = [c for c in curves if c is not None]
    sections.append(Section(title="Training curves", blocks=curves or [Text(markdown="No metrics.csv found.")]))

    sections.append(Section(title="Per-configuration results", blocks=[
        Table(name="configs", frame=tables.config_table(done, an.split),
              caption="Mean ± seed sd per configuration; params in millions; TFLOPs = training FLOPs / 1e12.")]))
    prov = _provenance(an)
    sections.append(Section(title="Provenance", blocks=[Text(markdown="\n".join(f"- **{k}**: {v}" for k, v in prov.items()))]))
    sections = [Section(title=s.title, blocks=[b for b in s.blocks if b is not None]) for s in sections]
    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    spec = ReportSpec(title=title, sections=sections, provenance=prov)
    for t in spec.tables():
        t.frame.to_csv(tdir / f"{t.name}.csv", index=False)
    return spec


def _drop_sd(t: pd.DataFrame) -> pd.DataFrame:
    return t[[c for c in t.columns if not c.endswith("rel% sd")]]


def _slope_differences(an: Analysis, metric: str) -> str:
    """CIs of slope differences between series on the FLOPs axis, from the series' bootstrap replicates."""
    group = [s for s in an.series if s.metric == metric and s.x_name == "train_flops" and "loglinear" in s.fits]
    if len(group) < 2:
        return "Slope differences need at least two series on the FLOPs axis."
    lines = [f"Differences of the {metric} gain per doubling of FLOPs (first − second series; 95% CI from the two "
             "series' independent bootstrap replicates, paired by replicate index):"]
    for i, a in enumerate(group):
        for b in group[i + 1:]:
            d = a.fits["loglinear"].boot["b_per_doubling"] - b.fits["loglinear"].boot["b_per_doubling"]
            lo, hi = np.nanpercentile(d, [2.5, 97.5])
            lines.append(f"- {a.sweep}/{a.axis} − {b.sweep}/{b.axis}: {np.nanmedian(d):+.5f} [{lo:+.5f}, {hi:+.5f}]")
    return "\n".join(lines)
