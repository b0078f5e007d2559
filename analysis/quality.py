"""Which finished runs should not be trusted, and why (docs/analysis.md "Flagged runs").

A finished run (DONE + result.json) is flagged when
  - its training loss went non-finite (NaN/inf anywhere in metrics.csv)          -> every metric
  - its training loss diverged: the median of the last 10% of logged train-loss values lost more
    than half of the improvement the run had made (first -> best rolling median), by more than 10% of
    the best value and by more than 3 per-step noise sds                          -> every metric
  - a metric is NaN, null or missing in result.json while other runs have it      -> that metric
  - a metric of the split is +inf or -inf in result.json (any metric)               -> that metric
  - it is a seed outlier of its configuration (same sweep, model, size and axes) -> that metric:
    |y - median of the config's seeds| > 6 * sigma, where sigma is the seed noise estimated robustly
    from all within-configuration pairs of the sweep and model:
    sigma = median|y_i - y_j| / (0.6745 * sqrt 2) (a pairwise difference of two N(0, s^2) seeds has
    median absolute value 0.6745 * sqrt(2) * s). Needs >= 3 seeds in the configuration (with two one
    cannot tell which seed is wrong). On clean Gaussian seeds this flags <= 1.5% of series of
    2-7 configs x 3-5 seeds (simulated); a seed 100 sigma off is always flagged.

Flagged runs are listed first by the report and kept out of the fits unless asked for
(analysis.analyze(include_flagged=True), CLI --include-flagged).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from harness.runstore import MetricsCsv, RunStore

from .collect import metric_value

OUTLIER_K = 6.0  # threshold in robust seed-sd units
DIVERGE_FRACTION = 0.5  # share of the achieved improvement the tail may lose
DIVERGE_REL = 0.10  # ... and by more than this fraction of the best value
DIVERGE_NOISE = 3.0  # ... and by more than this many per-step noise sds
ALL = "all"
FLAG_COLUMNS = [
    "run_id",
    "sweep",
    "model",
    "name",
    "seed",
    "reason",
    "metrics",
    "detail",
    "run_dir",
]


def loss_column(columns) -> str | None:
    """The training-loss column among metric names: train/loss, else another train loss column."""
    cols = [str(c) for c in columns if c not in ("step", "epoch", "time")]
    for c in ("train/loss", "train_loss", "loss"):
        if c in cols:
            return c
    cands = [c for c in cols if c.startswith("train") and "loss" in c]
    return sorted(cands)[0] if cands else None


def read_train_loss(path: Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(column, steps, values) of the training loss in a metrics.csv, long or wide form, read by
    the run store with each value as written, so that a logged 'nan' (a problem) is told apart
    from an empty cell (not logged then; the store leaves those out)."""
    records = MetricsCsv(path).records()
    if records is None:
        return None
    col = loss_column(dict.fromkeys(metric for _, metric, _ in records))
    if col is None:
        return None
    steps = np.array([step for step, metric, _ in records if metric == col], dtype=float)
    values = np.array([metric_value(v) for _, metric, v in records if metric == col], dtype=float)
    order = np.argsort(steps, kind="stable")
    return col, steps[order], values[order]


def training_loss_problem(path: Path) -> tuple[str, str] | None:
    """(reason, detail) when the training loss logged in metrics.csv is non-finite or diverged."""
    got = read_train_loss(path)
    if got is None:
        return None
    col, steps, raw = got
    bad = ~np.isfinite(raw)
    if bad.any():
        i = int(np.argmax(bad))
        return "nonfinite_loss", f"{col} is {raw[i]} at step {steps[i]:g}"
    v = raw
    if len(v) < 3:
        return None
    w = max(1, min(25, len(v) // 10)) if len(v) >= 15 else max(1, min(5, len(v) // 5))
    smooth = pd.Series(v).rolling(w, min_periods=1, center=True).median().to_numpy()
    first, best = smooth[0], float(np.min(smooth))
    tail = float(np.median(v[-max(1, len(v) // 10) :]))
    # per-step (per-batch) losses are noisy and the best rolling median is biased low by that noise:
    # the rise must also exceed DIVERGE_NOISE x the noise sd (robust: MAD around the smoothed curve)
    noise = 1.4826 * float(np.median(np.abs(v - smooth))) if w > 1 else 0.0
    threshold = best + max(
        DIVERGE_FRACTION * (first - best), DIVERGE_REL * abs(best), DIVERGE_NOISE * noise
    )
    if tail > threshold:
        return "diverged", (
            f"{col}: last values {tail:.4g} vs best {best:.4g} (start {first:.4g}); "
            f"more than half the improvement lost"
        )
    return None


def _flag(row: pd.Series, reason: str, metrics: str, detail: str) -> dict:
    return {
        "run_id": row["run_id"],
        "sweep": row.get("sweep"),
        "model": row.get("model"),
        "name": row.get("name"),
        "seed": row.get("seed"),
        "reason": reason,
        "metrics": metrics,
        "detail": detail,
        "run_dir": row.get("run_dir"),
    }


def robust_seed_sd(values: list[np.ndarray]) -> float:
    """Seed sd from all within-configuration pairs: median |y_i - y_j| / (0.6745 sqrt 2); NaN without pairs."""
    diffs = [abs(a - b) for v in values for a, b in itertools.combinations(v, 2)]
    return float(np.median(diffs) / (0.6745 * np.sqrt(2.0))) if diffs else float("nan")


def config_keys(done: pd.DataFrame) -> pd.Series:
    """One label per configuration: sweep, model, size and every axes.* value (the seed excluded)."""
    cols = [c for c in ("sweep", "model", "size") if c in done] + sorted(
        c for c in done.columns if c.startswith("axes.")
    )
    if not len(done):
        return pd.Series([], dtype=object)
    return pd.Series(
        ["|".join(map(str, r)) for r in done[cols].itertuples(index=False)], index=done.index
    )


def outliers(done: pd.DataFrame, col: str, k: float = OUTLIER_K) -> list[tuple[int, float, float]]:
    """(row index, robust z, sigma) of seed outliers of one metric column, per (sweep, model) pool."""
    out = []
    keys = config_keys(done)
    for _, pool in done.groupby([done["sweep"].astype(str), done["model"].astype(str)]):
        groups = [g[col].dropna() for _, g in pool.groupby(keys.loc[pool.index])]
        sigma = robust_seed_sd([g.to_numpy(float) for g in groups if len(g) >= 2])
        if not np.isfinite(sigma):
            continue
        for g in groups:
            if len(g) < 3:
                continue
            med = float(np.median(g))
            floor = 1e-12 * max(abs(med), 1.0)
            for idx, y in g.items():
                dev = abs(float(y) - med)
                if dev > floor and dev > k * sigma:
                    out.append((idx, dev / sigma if sigma > 0 else float("inf"), sigma))
    return out


def flag_runs(done: pd.DataFrame, split: str, metrics) -> pd.DataFrame:
    """Every flag of every finished run (a run can carry several), in FLAG_COLUMNS."""
    rows = []
    unchecked = 0
    for _, r in done.iterrows():
        path = RunStore(str(r.get("run_dir"))).metrics
        problem = training_loss_problem(path) if path.exists() else None
        if not path.exists():
            unchecked += 1
        if problem:
            rows.append(_flag(r, problem[0], ALL, problem[1]))
    loss_flagged = {f["run_id"] for f in rows}
    # +-inf in any metric of the split (Infinity is valid JSON to Python): a fit's isfinite filter
    # would drop it silently, so it is flagged, naming the run and the metric, whether or not that
    # metric is one the analysis fits
    for col in [c for c in done.columns if str(c).startswith(f"{split}.")]:
        values = pd.to_numeric(done[col], errors="coerce")
        for idx in values.index[np.isinf(values.to_numpy(float))]:
            r = done.loc[idx]
            rows.append(
                _flag(
                    r,
                    "nonfinite_metric",
                    str(col).split(".", 1)[1],
                    f"{col} is {values[idx]} in result.json",
                )
            )
    for m in metrics:
        col = f"{split}.{m}"
        if col not in done or done[col].notna().sum() == 0:
            continue  # nobody has it: not a per-run problem
        for _, r in done[done[col].isna()].iterrows():
            rows.append(_flag(r, "nan_metric", m, f"{col} is NaN, null or missing in result.json"))
        clean = done[~done["run_id"].isin(loss_flagged)]
        # an inf is flagged above; as a seed it would also read as an infinitely far outlier
        clean = clean[~np.isinf(pd.to_numeric(clean[col], errors="coerce").to_numpy(float))]
        for idx, z, sigma in outliers(clean, col):
            r = done.loc[idx]
            rows.append(
                _flag(
                    r,
                    "outlier",
                    m,
                    f"{col} = {r[col]:.4g}, {z:.0f} robust seed sd ({sigma:.2g}) "
                    f"from the median of its configuration's seeds",
                )
            )
    flags = pd.DataFrame(rows, columns=FLAG_COLUMNS)
    flags.attrs["unchecked_curves"] = unchecked
    return flags


def excluded_for(flags: pd.DataFrame, metric: str) -> set[str]:
    """Run ids kept out of the fits of one metric."""
    if flags.empty:
        return set()
    hit = flags[(flags["metrics"] == ALL) | (flags["metrics"] == metric)]
    return set(hit["run_id"])


def summarise(flags: pd.DataFrame) -> pd.DataFrame:
    """One row per flagged run: reasons and metrics joined (the listing of the console and report)."""
    if flags.empty:
        return pd.DataFrame(
            columns=[
                "sweep",
                "model",
                "name",
                "run_id",
                "seed",
                "reason",
                "metrics",
                "detail",
                "run_dir",
            ]
        )
    g = flags.groupby("run_id", sort=False)
    out = g.agg(
        sweep=("sweep", "first"),
        model=("model", "first"),
        name=("name", "first"),
        seed=("seed", "first"),
        reason=("reason", lambda s: ", ".join(dict.fromkeys(s))),
        metrics=("metrics", lambda s: ALL if ALL in set(s) else ", ".join(dict.fromkeys(s))),
        detail=("detail", lambda s: "; ".join(dict.fromkeys(s))),
        run_dir=("run_dir", "first"),
    ).reset_index()
    return out[
        ["sweep", "model", "name", "run_id", "seed", "reason", "metrics", "detail", "run_dir"]
    ]
