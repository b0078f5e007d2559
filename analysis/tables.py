"""Tables: per-config summary, fit table, and the paper's Tables 2, 3 and 5 with its numbers beside ours.

Deltas follow spec §3: the paper's "+x%" is ambiguous, so we print the relative change
(m/m_ref − 1)·100 AND the absolute change in points (m − m_ref)·100, next to the paper's value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from . import paper_numbers as paper

PAPER_METRICS = paper.METRICS


def config_table(
    done: pd.DataFrame, split: str, flags: pd.DataFrame | None = None, include_flagged: bool = False
) -> pd.DataFrame:
    """One row per configuration: axis values, runs, flagged runs, mean ± seed sd of each metric over the
    runs the fits use (flagged ones left out unless include_flagged; NaN values never count), params,
    TFLOPs, throughput. One seed: the sd is 'n/a' (seed noise not measured), never 0."""
    from .quality import excluded_for

    if done.empty:
        return pd.DataFrame(columns=["sweep", "model", "size", "runs"])
    axis_cols = [c for c in done.columns if c.startswith("axes.")]
    keys = ["sweep", "model", "size"] + axis_cols
    d = done.copy()
    d[axis_cols] = d[axis_cols].astype(object).where(d[axis_cols].notna(), "")
    flags = flags if flags is not None else pd.DataFrame(columns=["run_id", "metrics"])
    flagged_any = set(flags["run_id"]) if len(flags) else set()
    rows = []
    for key, g in d.groupby(keys, dropna=False, sort=True):
        row = dict(zip(["sweep", "model", "size"] + [c[5:] for c in axis_cols], key))
        row = {k: v for k, v in row.items() if v != ""}
        row["runs"] = len(g)
        row["flagged"] = int(g["run_id"].isin(flagged_any).sum())
        for m in ("ctr_auc", "ctr_uauc", "ctr_logloss", "cvr_auc", "cvr_uauc", "cvr_logloss"):
            col = f"{split}.{m}"
            if col not in g or not g[col].notna().any():
                continue
            use = g if include_flagged else g[~g["run_id"].isin(excluded_for(flags, m))]
            v = use[col].dropna()
            if len(v) == 0:
                row[m] = "all flagged"
            elif len(v) == 1:
                row[m] = f"{v.iloc[0]:.4f} (1 seed, sd n/a)"
            else:
                row[m] = f"{v.mean():.4f} ± {v.std(ddof=1):.4f} ({len(v)})"
        row["dense params (M)"] = _mean(g, "params.dense") / 1e6
        row["embedding params (M)"] = _mean(g, "params.embedding") / 1e6
        row["train TFLOPs"] = _mean(g, "train_flops") / 1e12
        row["samples/s"] = _mean(g, "throughput.samples_per_s")
        rows.append(row)
    out = pd.DataFrame(rows)
    front = ["sweep", "model", "size"] + [c[5:] for c in axis_cols if c[5:] in out]
    return out[front + [c for c in out.columns if c not in front]]


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(pd.to_numeric(g[col], errors="coerce").mean()) if col in g else float("nan")


def _model_means(done: pd.DataFrame, split: str, by: list[str]) -> pd.DataFrame:
    cols = [f"{split}.{m}" for m in PAPER_METRICS if f"{split}.{m}" in done]
    extra = [c for c in ("params.dense", "train_flops") if c in done]
    # select first: a column literally named "axis" confuses DataFrameGroupBy.agg (pandas looks up .axis)
    agg = done[by + cols + extra].groupby(by).agg(["mean", "std", "count"])
    return agg


def _delta_columns(
    row: dict, means: pd.DataFrame, key, ref_key, split: str, paper_row: dict | None
) -> dict:
    for m in PAPER_METRICS:
        col = f"{split}.{m}"
        if (col, "mean") not in means:
            continue
        v, ref = means.loc[key, (col, "mean")], means.loc[ref_key, (col, "mean")]
        row[f"{m} abs"] = v
        row[f"{m} rel%"] = (v / ref - 1.0) * 100.0
        row[f"{m} pts"] = (v - ref) * 100.0
        sd_a, n_a = means.loc[key, (col, "std")], means.loc[key, (col, "count")]
        sd_b, n_b = means.loc[ref_key, (col, "std")], means.loc[ref_key, (col, "count")]
        # seed sd of the delta (both means noisy): sqrt(sd²/n + sd_ref²/n_ref), as % of ref
        sd = np.sqrt(np.nansum([sd_a**2 / n_a, sd_b**2 / n_b]))
        row[f"{m} rel% sd"] = sd / ref * 100.0
        # the reference against itself has no difference to bound
        lo, hi = (np.nan, np.nan) if key == ref_key else welch_interval(sd_a, n_a, sd_b, n_b)
        row[f"{m} pts lo"], row[f"{m} pts hi"] = (v - ref + lo) * 100.0, (v - ref + hi) * 100.0
        row[f"{m} paper%"] = paper_row.get(m) if paper_row else np.nan
    return row


def welch_interval(
    sd_a: float, n_a: float, sd_b: float, n_b: float, level: float = 0.95
) -> tuple[float, float]:
    """Half-interval bounds (lo, hi) around mean_a − mean_b: Welch's t with Satterthwaite's degrees of
    freedom, from each side's seed sd and count. Seeds are independent draws (init and batch order), not
    pairs, so the runs are not paired by seed. NaN when either side has fewer than 2 seeds."""
    if not (n_a >= 2 and n_b >= 2) or not (np.isfinite(sd_a) and np.isfinite(sd_b)):
        return float("nan"), float("nan")
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = float(np.sqrt(va + vb))
    if se == 0.0:
        return 0.0, 0.0
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    q = float(stats.t.ppf(0.5 + level / 2, dof))
    return -q * se, q * se


def table2(
    done: pd.DataFrame, split: str, sweep: str | None = None, reference: str = "dcnv2_din"
) -> pd.DataFrame:
    """Paper Table 2 layout: models vs the reference model (the paper's DCNv2+DIN base, or the sweep
    file's `analysis.baseline`), each difference in points with its 95% Welch CI over seeds. Uses the
    sweep holding the reference's runs."""
    d = done[done["model"].notna()]
    if sweep is None:
        base_sweeps = d.loc[d["model"] == reference, "sweep"].unique()
        if len(base_sweeps) == 0:
            return pd.DataFrame()
        sweep = base_sweeps[0]
    d = d[d["sweep"] == sweep]
    means = _model_means(d, split, ["model", "size"])
    ref_keys = [k for k in means.index if k[0] == reference]
    if not ref_keys:
        return pd.DataFrame()
    rows = []
    for key in means.index:
        model, size = key
        paper_row = next(
            (p for p in paper.TABLE2 if p["model"] == model and p.get("size", size) == size), None
        ) or next((p for p in paper.TABLE2 if p["model"] == model and "size" not in p), None)
        row = {
            "model": model,
            "size": size,
            "paper row": paper_row["label"] if paper_row else "",
            "seeds": int(means.loc[key].xs("count", level=1).iloc[0]),
        }
        row = _delta_columns(row, means, key, ref_keys[0], split, paper_row)
        if model == "dcnv2_din" and reference == "dcnv2_din" and paper_row:
            for m in PAPER_METRICS:
                row[f"{m} paper%"] = 0.0
                row[f"{m} paper abs"] = paper_row[m]
        row["params (M)"] = means.loc[key, ("params.dense", "mean")] / 1e6
        row["paper params (M)"] = paper_row["params_m"] if paper_row else np.nan
        row["train TFLOPs"] = means.loc[key, ("train_flops", "mean")] / 1e12
        row["paper TFLOPs"] = paper_row["tflops"] if paper_row else np.nan
        rows.append(row)
    order = {p["model"] + p.get("size", ""): i for i, p in enumerate(paper.TABLE2)}
    out = pd.DataFrame(rows)
    out["_o"] = [order.get(m + s, order.get(m, 99)) for m, s in zip(out["model"], out["size"])]
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def table2_sentence(t2: pd.DataFrame, metric: str, reference: str = "dcnv2_din") -> str:
    """One line for the report's conclusions: the models ranked on `metric`, each difference vs the
    reference with its 95% CI, and whether the CI excludes 0."""
    if t2 is None or not len(t2) or f"{metric} abs" not in t2:
        return ""
    t = t2.sort_values(f"{metric} abs", ascending=False)
    ranking = " > ".join(
        f"{r['model']} {r['size']} {r[f'{metric} abs']:.4f}" for _, r in t.iterrows()
    )
    diffs = []
    for _, r in t.iterrows():
        if r["model"] == reference:
            continue
        lo, hi = r.get(f"{metric} pts lo", np.nan), r.get(f"{metric} pts hi", np.nan)
        ci = (
            f" [{lo:+.2f}, {hi:+.2f}]"
            if np.isfinite(lo)
            else " (CI needs >= 2 seeds on both sides)"
        )
        verdict = (
            "" if not np.isfinite(lo) else (" resolved" if lo > 0 or hi < 0 else " not resolved")
        )
        diffs.append(f"{r['model']} {r['size']} {r[f'{metric} pts']:+.2f} pts{ci}{verdict}")
    seeds = sorted({int(x) for x in t["seeds"]})
    return (
        f"Model comparison on {metric} (mean of {'/'.join(map(str, seeds))} seeds): {ranking}. "
        f"Difference vs {reference} in points (×100) with 95% Welch CIs: " + "; ".join(diffs) + "."
    )


def _variant_sweep(done: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The runs of the first sweep whose variants include `reference` (ablations: 'reference',
    efficiency: 'unoptimised')."""
    d = done[done["axes.variant"].notna()]
    sweeps = sorted(d.loc[d["axes.variant"] == reference, "sweep"].astype(str).unique())
    return d[d["sweep"].astype(str) == sweeps[0]] if sweeps else d.iloc[0:0]


def table3(done: pd.DataFrame, split: str) -> pd.DataFrame:
    """Paper Table 3 layout: ablation variants (axes.variant) vs the 'reference' variant of the same sweep."""
    if "axes.variant" not in done:
        return pd.DataFrame()
    d = _variant_sweep(done, "reference")
    if d.empty:
        return pd.DataFrame()
    means = _model_means(d, split, ["axes.variant"])
    rows = []
    for variant in means.index:
        paper_row = next((p for p in paper.TABLE3 if p["variant"] == variant), None)
        row = {
            "variant": variant,
            "paper row": paper_row["label"]
            if paper_row
            else ("OneTrans-S (reference)" if variant == "reference" else ""),
            "seeds": int(means.loc[variant].xs("count", level=1).iloc[0]),
        }
        row = _delta_columns(row, means, variant, "reference", split, paper_row)
        row["params (M)"] = means.loc[variant, ("params.dense", "mean")] / 1e6
        row["paper params (M)"] = (paper_row or paper.TABLE3_REFERENCE)["params_m"]
        row["train TFLOPs"] = means.loc[variant, ("train_flops", "mean")] / 1e12
        row["paper TFLOPs"] = (paper_row or paper.TABLE3_REFERENCE)["tflops"]
        rows.append(row)
    out = pd.DataFrame(rows)
    out["_o"] = out["variant"].map(
        lambda v: (
            -1
            if v == "reference"
            else next((i for i, p in enumerate(paper.TABLE3) if p["variant"] == v), 99)
        )
    )
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def table5(done: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 5 layout from the sweep with an 'unoptimised' variant (sweeps/efficiency.yaml).

    Train time per step = batch_size / samples_per_s (result.json train.batch_size, else 2048, the
    paper's batch). Memory comes from result.json 'memory.train_peak_gb' when the run recorded it;
    inference latency/memory are not in result.json and are left empty (n/a)."""
    if "axes.variant" not in done:
        return pd.DataFrame()
    d = _variant_sweep(done, "unoptimised")
    if d.empty:
        return pd.DataFrame()
    d = d.assign(
        batch=pd.to_numeric(
            d.get("train.batch_size", pd.Series(2048, index=d.index)), errors="coerce"
        ).fillna(2048)
    )
    d = d.assign(
        train_ms=1e3 * d["batch"] / d["throughput.samples_per_s"],
        train_mem_gb=pd.to_numeric(d.get("memory.train_peak_gb", pd.Series(np.nan, index=d.index))),
    )
    g = d.groupby("axes.variant")[["train_ms", "train_mem_gb"]].mean()
    base = g.loc["unoptimised"]
    rows = []
    for variant, r in g.iterrows():
        p = next((q for q in paper.TABLE5 if q["variant"] == variant), None)
        row = {"variant": variant, "paper row": p["label"] if p else ""}
        for c in ("train_ms", "train_mem_gb"):
            row[f"{c} (ours)"] = r[c]
            row[f"{c} Δ% (ours)"] = (
                (r[c] / base[c] - 1) * 100 if variant != "unoptimised" else np.nan
            )
            row[f"{c} paper"] = p[c] if p else np.nan
        for c in ("infer_p99_ms", "infer_mem_gb"):
            row[f"{c} (ours)"] = np.nan  # not recorded in result.json
            row[f"{c} paper"] = p[c] if p else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["_o"] = out["variant"].map(
        lambda v: next((i for i, q in enumerate(paper.TABLE5) if q["variant"] == v), 99)
    )
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def problems_table(runs: pd.DataFrame) -> pd.DataFrame:
    p = runs[runs["status"] != "done"]
    cols = [
        c
        for c in (
            "sweep",
            "model",
            "name",
            "run_id",
            "seed",
            "status",
            "attempts",
            "error",
            "run_dir",
        )
        if c in p
    ]
    return p[cols].reset_index(drop=True)


def fits_display(fits: pd.DataFrame) -> pd.DataFrame:
    """Compact fit table: estimate [95% CI] strings, with/without flagged runs, MDE, goodness of fit, n."""
    if fits.empty or "form" not in fits:
        return pd.DataFrame(columns=["series", "x", "metric", "form"])

    def ci(r, p, fmt):
        if p not in r or pd.isna(r[p]):
            return ""
        return f"{r[p]:{fmt}} [{r[p + '_lo']:{fmt}}, {r[p + '_hi']:{fmt}}]"

    rows = []
    for _, r in fits.iterrows():
        seeds = str(r["seeds/config"])
        lo_s, _, hi_s = seeds.partition("-")
        row = {
            "series": f"{r['sweep']}/{r['model']}/{r['axis']}",
            "x": r["x"],
            "metric": r["metric"],
            "form": r["form"],
            "configs×seeds": f"{r['n_configs']}×{lo_s if lo_s == hi_s else seeds}",
            "runs fitted": r["n_runs"],
            "boot": r["n_boot"],
            "status": r["status"],
        }
        if r["form"] == "loglinear":
            row["Δ per doubling [95% CI]"] = ci(r, "b_per_doubling", "+.5f")
            row["MDE per doubling"] = (
                "" if pd.isna(r.get("mde_per_doubling")) else f"{r['mde_per_doubling']:.2g}"
            )
            for tag in ("with_flagged", "without_flagged"):
                if f"b_per_doubling_{tag}" in r and pd.notna(r[f"b_per_doubling_{tag}"]):
                    row[f"Δ per doubling {tag.replace('_', ' ')}"] = ci(
                        r, f"b_per_doubling_{tag}", "+.5f"
                    )
            row["Δ per decade"] = ci(r, "b", "+.5f")
        else:
            row["floor E"] = ci(r, "E", ".4f")
            row["α"] = ci(r, "alpha", ".3f")
            row["oracle"] = "" if pd.isna(r.get("oracle")) else f"{r['oracle']:.4f}"
            xs = r.get("x_saturation")
            row["x where gain/doubling < seed sd"] = "" if pd.isna(xs) else f"{xs:.3g}"
        for tag in ("flagged_excluded", "flagged_included"):
            if tag in r and pd.notna(r[tag]) and r[tag]:
                row[tag.replace("_", " ")] = int(r[tag])
        cv = "n/a (too few configs)" if pd.isna(r["cv_rmse"]) else f"{r['cv_rmse']:.2e}"
        sd = "n/a (1 seed)" if pd.isna(r["seed_sd"]) else f"{r['seed_sd']:.2e}"
        row.update(
            {
                "R²": f"{r['r2_means']:.3f}",
                "RMSE": f"{r['rmse_means']:.2e}",
                "AIC": f"{r['aic']:.1f}",
                "CV RMSE": cv,
                "seed sd": sd,
                "chosen": "✓" if r["chosen"] else "",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows).fillna("")
