"""The minimum detectable effect (MDE) of a scaling sweep: the smallest gain per doubling of x that the
sweep would detect (two-sided test of slope = 0 at 95% confidence) with 80% power, given its grid,
its seeds and the seed noise. Torch-free; used by analysis/ (next to every fitted slope) and by
`python -m harness.sweep FILE --dry-run` (from earlier runs of the same configurations).

The slope b of m = a + b log2(x), least squares over every run (seeds are points), has
    SE(b) = sigma / sqrt(sum_i (log2 x_i - mean log2 x)^2)
with sigma the seed sd. With dof degrees of freedom of the sigma estimate,
    MDE = (t_{1 - alpha/2, dof} + t_{power, dof}) * SE(b)          (normal quantiles when dof is large)
sigma comes from the within-configuration (seed) variance when some configuration has >= 2 seeds;
otherwise from the scatter of the runs around the fitted line (which also holds any lack of fit, so
that MDE is conservative), and is undefined with fewer than 3 configurations of one seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from harness.runstore import RunStore

ALPHA, POWER = 0.05, 0.80


def seed_noise(y, config) -> tuple[float, int, str]:
    """(sigma, dof, source) of the seed noise of runs y grouped by config label."""
    y = np.asarray(y, dtype=float)
    config = np.asarray(config)
    ok = np.isfinite(y)
    y, config = y[ok], config[ok]
    if len(y) == 0:
        return float("nan"), 0, "no runs"
    labels, inv = np.unique(config, return_inverse=True)
    counts = np.bincount(inv)
    dof = int(np.sum(counts - 1))
    if dof > 0:
        means = np.bincount(inv, weights=y) / counts
        return float(np.sqrt(np.sum((y - means[inv]) ** 2) / dof)), dof, "seeds"
    return float("nan"), 0, "one seed per configuration"


def line_noise(x, y) -> tuple[float, int, str]:
    """(sigma, dof, source) from residuals around the least-squares line in log2 x (one seed each)."""
    u, y = np.log2(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    if len(np.unique(u)) < 3:
        return float("nan"), 0, "fewer than 3 configurations"
    b, a = np.polyfit(u, y, 1)
    dof = len(y) - 2
    return (
        float(np.sqrt(np.sum((y - a - b * u) ** 2) / dof)),
        dof,
        "scatter around the line (seed noise not measured)",
    )


def mde_per_doubling(
    x, sigma: float, dof: int, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """MDE of the gain per doubling of x for runs at x (one entry per run, seeds repeated)."""
    u = np.log2(np.asarray(x, dtype=float))
    sxx = float(np.sum((u - u.mean()) ** 2)) if len(u) else 0.0
    if not np.isfinite(sigma) or dof < 1 or sxx <= 0:
        return float("nan")
    q = stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)
    return float(q * sigma / np.sqrt(sxx))


def plan_mde(
    planned: list[dict], finished: list[dict], metric: str = "test.ctr_uauc"
) -> dict | None:
    """MDE of a planned sweep from its finished runs.

    planned: one dict per planned run with 'x' (the swept value) and 'config' (a label shared by seeds).
    finished: the same for runs already done, plus 'y' (the metric). None when too few are done."""
    fin = [
        r
        for r in finished
        if r.get("y") is not None and np.isfinite(r["y"]) and r["x"] and r["x"] > 0
    ]
    if not fin or not planned:
        return None
    sigma, dof, source = seed_noise([r["y"] for r in fin], [r["config"] for r in fin])
    if dof < 1:
        sigma, dof, source = line_noise([r["x"] for r in fin], [r["y"] for r in fin])
    xs = [r["x"] for r in planned if r["x"] and r["x"] > 0]
    mde = mde_per_doubling(xs, sigma, dof)
    if not np.isfinite(mde):
        return None
    return {
        "metric": metric,
        "mde": mde,
        "sigma": sigma,
        "dof": dof,
        "source": source,
        "n_finished": len(fin),
        "n_planned": len(xs),
        "n_configs": len({r["config"] for r in planned}),
    }


def read_metric(run_dir: Path, metric: str) -> float | None:
    """A finished run's metric ('test.ctr_uauc') from result.json; None when absent or unfinished."""
    store = RunStore(run_dir)  # the run store's one "done" (DONE written last, result.json)
    if not store.is_done():
        return None
    rec = store.result()  # None when unreadable or not a JSON object
    try:
        split, _, name = metric.partition(".")
        v = rec["metrics"][split][name]
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _row_x(row, x: str | None, axis_keys: list[str]) -> tuple[float | None, str]:
    """The planned run's x-value and its name: the hinted x ('flops', 'params' or a dotted key), else
    the first swept key."""
    axes = row.run.plan.axes
    if x == "flops" and getattr(row, "flops_total", None):
        return float(row.flops_total), "training FLOPs"
    if x == "params" and getattr(row, "params", None):
        return float(row.params), "dense params"
    key = x if x in axes else next((k for k in axis_keys if k in axes), None)
    v = axes.get(key) if key else None
    return (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None), (
        key or "?"
    )


def sweep_mde_lines(sweep, rows) -> list[str]:
    """Lines for `python -m harness.sweep FILE --dry-run`: per series (label) and hinted metric, the MDE of
    the planned sweep from the finished runs of the same configurations already in the sweep folder.
    rows: harness.sweep.Row objects (run.plan.axes/seed/label, run_dir, and params/flops when described)."""
    hints = sweep.analysis
    metrics = [
        m
        for m in (hints.metrics if hints else ("test.ctr_uauc",))
        if m.split(".")[0] in ("test", "val")
    ]
    x_hint = hints.x if hints else None
    if hints is not None and x_hint not in ("flops", "params"):
        x_hint = x_hint if any(x_hint in r.run.plan.axes for r in rows) else None
    axis_keys = list(sweep.grid) + [k for g in sweep.zip for k in g]
    lines = []
    for label in dict.fromkeys(r.run.plan.label for r in rows):
        group = [r for r in rows if r.run.plan.label == label]
        planned, x_name = [], "?"
        for r in group:
            xv, x_name = _row_x(r, x_hint, axis_keys)
            cfg = repr((label, sorted((k, str(v)) for k, v in r.run.plan.axes.items())))
            planned.append({"x": xv, "config": cfg, "dir": r.run_dir})
        if len({p["x"] for p in planned if p["x"]}) < 3:
            continue
        for metric in metrics or ["test.ctr_uauc"]:
            finished = [{**p, "y": read_metric(p["dir"], metric)} for p in planned]
            res = plan_mde(planned, finished, metric)
            if res is None:
                continue
            seeds = len(group) / max(res["n_configs"], 1)
            lines.append(
                f"MDE {label}: {metric} {res['mde']:.2g} per doubling of {x_name} (95% confidence, 80% power) "
                f"for the planned {res['n_configs']} configs x {seeds:g} seed{'' if seeds == 1 else 's'}; "
                f"sigma {res['sigma']:.2g} "
                f"({res['source']}, {res['dof']} dof) from {res['n_finished']} finished runs"
            )
    if not lines and rows:
        lines.append(
            "MDE: not shown (needs finished runs of these configurations in the sweep folder: >= 2 seeds "
            "of one configuration, or >= 3 configurations)"
        )
    return lines
