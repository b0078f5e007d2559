"""Figure 3 as a decision (the paper's Fig. 3, docs/analysis.md "Figure 3").

3a: the main model's length, depth and width series on one training-FLOPs axis; the gain per doubling
    of FLOPs of each, with its 95% CI, and which axis buys the most per FLOP, with the CI of the
    difference to the runner-up (resolved when it excludes 0).
3b: the main model's series vs every scaled baseline (RankMixer+Transformer, ...) on training FLOPs:
    slope differences with their CIs.
Differences take their CI from the two series' bootstrap replicates (independent series get
independent replicate streams, analysis.analyze), paired by replicate index: the percentile interval
of b1* - b2*; the point estimate is b1 - b2.
All numbers are log-linear slopes on the runs the fits used (flagged runs left out by default).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .analyze import LOSS_LIKE, Analysis, SeriesFit

AXIS_NAMES = {"seq_len": "length", "n_layers": "depth", "d_model": "width"}
MAIN_MODEL = "onetrans"


def axis_name(s: SeriesFit) -> str:
    return AXIS_NAMES.get(s.axis, s.axis)


def series_label(s: SeriesFit) -> str:
    """'length' for the main model's length sweep; the model and the sweep are added when they differ
    from the defaults, so two series never share a label ('length (length-laptop)')."""
    label = f"{s.model} {axis_name(s)}" if s.model != MAIN_MODEL else axis_name(s)
    return label if s.sweep == axis_name(s) else f"{label} ({s.sweep})"


def main_model(an: Analysis) -> str:
    models = [s.model for s in an.series]
    return (
        MAIN_MODEL
        if MAIN_MODEL in models
        else (max(set(models), key=models.count) if models else MAIN_MODEL)
    )


def flops_series(an: Analysis, metric: str) -> list[SeriesFit]:
    return [
        s
        for s in an.series
        if s.metric == metric and s.x_name == "train_flops" and "loglinear" in s.fits
    ]


def gain_sign(metric: str) -> float:
    """+1 when higher is better (AUC), -1 for loss-like metrics (a gain is a decrease)."""
    return -1.0 if metric in LOSS_LIKE else 1.0


def difference(a: SeriesFit, b: SeriesFit, level: float = 0.95) -> tuple[float, float, float]:
    fa, fb = a.fits["loglinear"], b.fits["loglinear"]
    d = fa.boot["b_per_doubling"] - fb.boot["b_per_doubling"]
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(d, [tail, 100 - tail])
    return fa.params["b_per_doubling"] - fb.params["b_per_doubling"], float(lo), float(hi)


def _fmt(v: float) -> str:
    return f"{v:+.4f}" if abs(v) >= 1e-4 or v == 0 else f"{v:+.2e}"


def _ci(est, lo, hi) -> str:
    return f"{_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"


def slope_table(group: list[SeriesFit]) -> pd.DataFrame:
    rows = []
    for s in group:
        b, lo, hi = s.slope()
        rows.append(
            {
                "series": series_label(s),
                "sweep": s.sweep,
                "model": s.model,
                "axis": s.axis,
                "metric": s.metric,
                "gain per 2x FLOPs": b,
                "lo": lo,
                "hi": hi,
                "MDE": s.mde.get("mde", np.nan),
                "configs": s.fits["loglinear"].n_configs,
                "runs": s.n_runs,
                "flagged left out": len(s.excluded) if not s.include_flagged else 0,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "series",
            "sweep",
            "model",
            "axis",
            "metric",
            "gain per 2x FLOPs",
            "lo",
            "hi",
            "MDE",
            "configs",
            "runs",
            "flagged left out",
        ],
    )


def decision_3a(an: Analysis, metric: str) -> tuple[list[SeriesFit], str, pd.DataFrame]:
    """(series, sentence, table of pairwise differences) for Figure 3a."""
    mm = main_model(an)
    group = [s for s in flops_series(an, metric) if s.model == mm]
    if len(group) < 2:
        return (
            group,
            (
                f"Figure 3a needs at least two {mm} series (length, depth, width) with a fit on training "
                f"FLOPs; found {len(group)}."
            ),
            pd.DataFrame(),
        )
    sign = gain_sign(metric)
    ranked = sorted(group, key=lambda s: -sign * s.slope()[0])
    best, rest = ranked[0], ranked[1:]
    word = "gains" if sign > 0 else "reductions"
    parts = [f"{series_label(s)} {_ci(*s.slope())}" for s in ranked]
    rows, verdicts = [], []
    for s in rest:
        d, lo, hi = difference(best, s)
        resolved = lo > 0 or hi < 0
        rows.append(
            {
                "first": series_label(best),
                "second": series_label(s),
                "metric": metric,
                "difference per 2x FLOPs": d,
                "lo": lo,
                "hi": hi,
                "resolved": resolved,
            }
        )
        verdicts.append(
            f"over {series_label(s)} by {_ci(d, lo, hi)}: "
            + ("resolved" if resolved else "not resolved (the CI includes 0)")
        )
    sentence = (
        f"Per doubling of training FLOPs ({metric}, 95% CIs): {'; '.join(parts)}. "
        f"**{series_label(best)[:1].upper() + series_label(best)[1:]} buys the most per FLOP** (largest {word}); "
        "its lead " + "; ".join(verdicts) + "."
    )
    if not any(r["resolved"] for r in rows):
        sentence += (
            " The CIs do not separate the axes: more seeds or configurations are needed to choose."
        )
    return ranked, sentence, pd.DataFrame(rows)


def decision_3b(
    an: Analysis, metric: str
) -> tuple[list[SeriesFit], list[SeriesFit], str, pd.DataFrame]:
    """(main-model series, baseline series, sentence, table) for Figure 3b."""
    mm = main_model(an)
    series = flops_series(an, metric)
    sign = gain_sign(metric)
    ours = sorted(
        [s for s in series if s.model == mm], key=lambda s: -sign * s.slope()[0]
    )  # as in 3a
    base = [s for s in series if s.model != mm]
    if not ours or not base:
        return (
            ours,
            base,
            (
                f"Figure 3b needs a {mm} series and a scaled baseline (e.g. rankmixer_transformer along "
                f"an axis) with fits on training FLOPs; found {len(ours)} and {len(base)}."
            ),
            pd.DataFrame(),
        )
    rows, lines = [], []
    for b in base:
        for o in ours:
            d, lo, hi = difference(o, b)
            resolved = lo > 0 or hi < 0
            steeper = (d * gain_sign(metric)) > 0
            rows.append(
                {
                    "ours": series_label(o),
                    "baseline": series_label(b),
                    "metric": metric,
                    "ours per 2x FLOPs": o.slope()[0],
                    "baseline per 2x FLOPs": b.slope()[0],
                    "difference": d,
                    "lo": lo,
                    "hi": hi,
                    "resolved": resolved,
                }
            )
            lines.append(
                f"{mm} {series_label(o)} − {series_label(b)}: {_ci(d, lo, hi)} per doubling of FLOPs ("
                + (
                    ("steeper" if steeper else "shallower") + ", resolved"
                    if resolved
                    else "not resolved"
                )
                + ")"
            )
    sentence = f"Slope differences on training FLOPs ({metric}, 95% CIs): " + "; ".join(lines) + "."
    return ours, base, sentence, pd.DataFrame(rows)
