"""Tricks across scale: does a switch's gain grow, hold or fade as training compute grows?

A *trick sweep* crosses a switch (a run-config key such as `model.overrides.match_init`, or a Table 3
ablation such as `model.overrides.mixed_params`) with a size or length axis; its sweep file names the
switch in `analysis: {trick: [KEY, ...]}` (harness/sweepfile.py validates it). For each switch key and
each pair of its values (on, off):

- pairing: two runs are a pair when their run configs are identical except for the switch and the
  seed (RUN_ID_EXCLUDED fields such as logging and resources aside), and they share the seed. The
  values of the sweep's *other* switch keys are the pair's context (a one-flip-at-a-time design, like
  Table 3, pairs every variant with the reference; a factorial design gives one trend per context);
  whatever else differs between pairs of one context is the scale (depth, width, length, size).
- gain at a scale: mean over seeds of (on − off), signed so that positive is better (for a loss-like
  metric the gain is off − on), with a **paired t interval** over seeds (n − 1 dof; a bootstrap over
  2 to 4 seeds has too few distinct resamples to give an interval). One seed: no interval.
- trend: least squares of every paired difference on log2(training FLOPs of its scale), so the slope
  is the change of the gain per doubling of training FLOPs; its CI is a t interval from the scatter of
  the differences around the line (n − 2 dof), which holds the seed noise and any lack of fit. With
  seeds at >= 3 scales a lack-of-fit F test says whether a line describes the gains at all.
- verdict: **holds** (scale-invariant) when the trend's CI contains 0; otherwise **grows** when the
  trend has the sign of the gain over the sweep (the mean of the per-scale gains: the gain, or the
  harm, gets larger) and **fades** when it has the opposite sign, with the extrapolated training FLOPs at which the fitted
  gain reaches 0 (beyond the sweep, or already inside it).
- MDE: the smallest trend per doubling the sweep detects (two-sided alpha 0.05, 80% power) from the
  seed-level variance of the paired differences (pooled within scales; harness.power), so a "holds"
  can be read as "no trend larger than the MDE".

Torch-free (analysis/ never imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.config import RUN_ID_EXCLUDED, ConfigError, upgrade_stored
from harness.power import ALPHA, line_noise, mde_per_doubling, seed_noise
from harness.runstore import RunStore

LEVEL = 1.0 - ALPHA  # 95% intervals everywhere in this module
VERDICTS = ("grows", "holds", "fades", "undetermined")
# config fields that never make two runs different experiments (besides RUN_ID_EXCLUDED)
_NOT_A_DIFFERENCE = ("seed",)


@dataclass(frozen=True, kw_only=True)
class ScaleGain:
    """The switch's gain at one scale (one pair of configurations, several seeds)."""

    scale: str  # what makes this scale ("n_layers=2, d_model=32"); "" when only one scale
    flops: float  # training FLOPs of the scale (geometric mean over the pair's runs)
    gain: float  # mean over seeds of the signed difference (positive = better)
    lo: float  # paired t interval over seeds (NaN with one seed)
    hi: float
    n_seeds: int
    on_mean: float
    off_mean: float


@dataclass(frozen=True, kw_only=True)
class TrickTrend:
    key: str  # the switch's config key
    on: Any  # the value whose effect is measured
    off: Any  # the value it is compared with
    metric: str  # split.metric
    context: str  # the other switches' values shared by the pairs ("" when none)
    scales: list[ScaleGain]
    slope: float = float("nan")  # change of the gain per doubling of training FLOPs
    slope_lo: float = float("nan")
    slope_hi: float = float("nan")
    slope_dof: int = 0
    intercept: float = float("nan")  # fitted gain at log2(FLOPs) = 0 (for the zero crossing)
    lack_of_fit_p: float = float("nan")  # F test of the line against the per-scale means
    mde: float = float("nan")  # minimum detectable trend per doubling
    mde_sigma: float = float("nan")
    mde_dof: int = 0
    mde_source: str = ""
    verdict: str = "undetermined"
    zero_flops: float | None = None  # fading: FLOPs where the fitted gain reaches 0
    why: str = ""  # why the verdict is undetermined
    notes: tuple[str, ...] = ()
    sentence: str = ""

    @property
    def n_pairs(self) -> int:
        return sum(s.n_seeds for s in self.scales)

    def label(self) -> str:
        short = self.key.split(".")[-1]
        return f"{short} {_val(self.on)} − {_val(self.off)}" + (
            f" [{self.context}]" if self.context else ""
        )


@dataclass(frozen=True, kw_only=True)
class TrickAnalysis:
    trends: list[TrickTrend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be analysed, and why

    def gains_table(self) -> pd.DataFrame:
        rows = [
            {
                "switch": t.label(),
                "metric": t.metric,
                "scale": s.scale or "(one scale)",
                "train FLOPs": s.flops,
                "on": s.on_mean,
                "off": s.off_mean,
                "gain": s.gain,
                "lo": s.lo,
                "hi": s.hi,
                "seeds": s.n_seeds,
            }
            for t in self.trends
            for s in t.scales
        ]
        cols = [
            "switch",
            "metric",
            "scale",
            "train FLOPs",
            "on",
            "off",
            "gain",
            "lo",
            "hi",
            "seeds",
        ]
        return pd.DataFrame(rows, columns=cols)

    def trends_table(self) -> pd.DataFrame:
        rows = [
            {
                "switch": t.label(),
                "metric": t.metric,
                "scales": len(t.scales),
                "pairs": t.n_pairs,
                "trend per 2x FLOPs": t.slope,
                "lo": t.slope_lo,
                "hi": t.slope_hi,
                "MDE": t.mde,
                "verdict": t.verdict,
                "zero-gain FLOPs": t.zero_flops,
                "lack-of-fit p": t.lack_of_fit_p,
            }
            for t in self.trends
        ]
        cols = [
            "switch",
            "metric",
            "scales",
            "pairs",
            "trend per 2x FLOPs",
            "lo",
            "hi",
            "MDE",
            "verdict",
            "zero-gain FLOPs",
            "lack-of-fit p",
        ]
        return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------- run configs


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: leaf}; lists become tuples (hashable for pairing)."""
    if not isinstance(d, dict):
        return {prefix: tuple(d) if isinstance(d, list) else d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _ignored(key: str) -> bool:
    parts = tuple(key.split("."))
    return key in _NOT_A_DIFFERENCE or any(parts[: len(p)] == p for p in RUN_ID_EXCLUDED)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run config a finished run recorded (result.json 'config', docs/contracts.md §5), flat,
    with every moved setting in its current home (harness.config.upgrade_stored), so that a run
    finished before a setting moved pairs with one finished after."""
    rec = RunStore(run_dir).result()  # None when absent or unreadable
    cfg = rec.get("config") if rec is not None else None
    if not isinstance(cfg, dict):
        return None
    try:
        return flatten(upgrade_stored(cfg))
    except ConfigError:  # a damaged resources section: pair the config as it was written
        return flatten(cfg)


# ----------------------------------------------------------------------------------- statistics


def paired_interval(d: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi) of paired differences: a t interval with n − 1 dof (NaN bounds for n < 2)."""
    d = np.asarray(d, dtype=float)
    m = float(d.mean())
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return m, float(m - half), float(m + half)


def trend_fit(u: np.ndarray, d: np.ndarray, group: np.ndarray, level: float = LEVEL) -> dict:
    """Least squares d = a + b·u over every paired difference (u = log2 FLOPs of its scale).

    The CI of b is a t interval from the residual scatter (n − 2 dof). lack_of_fit_p: F test of the
    line against the group (scale) means, when >= 3 scales and some scale has >= 2 seeds."""
    u, d = np.asarray(u, dtype=float), np.asarray(d, dtype=float)
    out = {"a": np.nan, "b": np.nan, "lo": np.nan, "hi": np.nan, "dof": 0, "lof_p": np.nan}
    if len(np.unique(u)) < 2:
        return out
    b, a = np.polyfit(u, d, 1)
    out.update(a=float(a), b=float(b))
    dof = len(d) - 2
    if dof < 1:
        return out
    resid = d - a - b * u
    sxx = float(np.sum((u - u.mean()) ** 2))
    se = np.sqrt(np.sum(resid**2) / dof / sxx)
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    out.update(lo=float(b - half), hi=float(b + half), dof=dof)
    labels, inv = np.unique(group, return_inverse=True)
    k, n = len(labels), len(d)
    if k >= 3 and n > k:
        means = np.bincount(inv, weights=d) / np.bincount(inv)
        ss_pe = float(np.sum((d - means[inv]) ** 2))
        ss_lof = float(np.sum(resid**2)) - ss_pe
        if ss_pe > 0:
            f = (ss_lof / (k - 2)) / (ss_pe / (n - k))
            out["lof_p"] = float(stats.f.sf(f, k - 2, n - k))
    return out


# ----------------------------------------------------------------------------------- pairing


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def value_pairs(values: list[Any]) -> list[tuple[Any, Any]]:
    """(on, off) pairs of a switch's values. Booleans: (True, False). Otherwise the most frequent
    value is the reference (the reference row of a one-flip design) and every other value is compared
    with it."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) < 2:
        return []
    if all(isinstance(v, bool) for v in distinct):
        return [(True, False)]
    counts = {repr(v): sum(1 for x in values if repr(x) == repr(v)) for v in distinct}
    ref = max(sorted(distinct, key=repr), key=lambda v: counts[repr(v)])
    return [(v, ref) for v in sorted(distinct, key=repr) if repr(v) != repr(ref)]


def _describe(configs: list[dict[str, Any]]) -> list[str]:
    """Per config, the fields that differ between the configs ('n_layers=2, d_model=32')."""
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [", ".join(f"{k.split('.')[-1]}={_val(c.get(k))}" for k in varying) for c in configs]


def _sign(metric: str) -> float:
    """+1 when higher is better (AUC), −1 for a loss-like metric: a gain is then a decrease."""
    return -1.0 if metric.split(".")[-1].endswith("logloss") else 1.0


def _fmt(v: float) -> str:
    return (
        "n/a" if not np.isfinite(v) else (f"{v:+.4f}" if abs(v) >= 1e-4 or v == 0 else f"{v:+.1e}")
    )


def _flops(v: float) -> str:
    return f"{v:.3g}"


def analyze_tricks(
    runs: pd.DataFrame,
    keys: list[str] | tuple[str, ...],
    metrics: list[str] | tuple[str, ...],
    *,
    configs: dict[str, dict[str, Any]] | None = None,
) -> TrickAnalysis:
    """Every switch key x value pair x metric x context of the finished runs of one trick sweep.

    runs: collected finished runs (analysis.collect: run_id, seed, train_flops, split.metric columns
    and run_dir). metrics: 'split.metric' names. configs: run_id -> flat run config (read from each
    run's result.json when not given)."""
    notes: list[str] = []
    if configs is None:
        configs = {}
        for rid, rdir in zip(runs["run_id"], runs.get("run_dir", [None] * len(runs)), strict=True):
            cfg = read_config(rdir) if rdir else None
            if cfg is not None:
                configs[str(rid)] = cfg
    missing = [str(r) for r in runs["run_id"] if str(r) not in configs]
    if missing:
        notes.append(
            f"{len(missing)} finished runs have no 'config' in result.json and are left out of the "
            "trick analysis (rerun them with the current harness)"
        )
    runs = runs[runs["run_id"].astype(str).isin(configs)]
    trends: list[TrickTrend] = []
    for key in keys:
        have = [rid for rid in runs["run_id"].astype(str) if key in configs[rid]]
        if not have:
            notes.append(
                f"switch {key!r}: no finished run sets it in its config; cross it in the sweep "
                f"file (grid or zip axis {key}) so every run names its value"
            )
            continue
        if len(have) < len(runs):
            notes.append(
                f"switch {key!r}: {len(runs) - len(have)} runs do not set it (their value is the "
                "model's default, which the analysis cannot read); they are left out for this switch"
            )
        sub = runs[runs["run_id"].astype(str).isin(have)]
        others = [k for k in keys if k != key]
        for on, off in value_pairs([configs[r][key] for r in have]):
            for metric in metrics:
                trends.extend(_pairs_trends(sub, configs, key, on, off, others, metric, notes))
    return TrickAnalysis(trends=trends, notes=notes)


def _pairs_trends(
    runs: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    key: str,
    on: Any,
    off: Any,
    others: list[str],
    metric: str,
    notes: list[str],
) -> list[TrickTrend]:
    if metric not in runs:
        notes.append(f"metric {metric!r}: not in the runs' result.json; no trick trend for it")
        return []
    sign = _sign(metric)
    # pairing key: the config without the switch, the seed and the fields that never matter
    groups: dict[tuple, dict[Any, dict[int, tuple[float, float]]]] = {}
    group_cfg: dict[tuple, dict[str, Any]] = {}
    for rid, seed, y, fl in zip(
        runs["run_id"].astype(str), runs["seed"], runs[metric], runs["train_flops"], strict=True
    ):
        cfg = configs[rid]
        val = cfg[key]
        if repr(val) not in (repr(on), repr(off)):
            continue
        rest = {k: v for k, v in cfg.items() if k != key and not _ignored(k)}
        g = tuple(sorted((k, repr(v)) for k, v in rest.items()))
        group_cfg[g] = rest
        side = "on" if repr(val) == repr(on) else "off"
        groups.setdefault(g, {"on": {}, "off": {}})[side][int(seed)] = (float(y), float(fl))
    # contexts: the other switches' values; scales: everything else that differs
    by_context: dict[tuple, list[tuple]] = {}
    for g, sides in groups.items():
        if sides["on"] and sides["off"]:
            ctx = tuple((k, repr(group_cfg[g].get(k))) for k in others)
            by_context.setdefault(ctx, []).append(g)
    unpaired_seeds = 0
    out = []
    for gs in by_context.values():
        labels = _describe([group_cfg[g] for g in gs]) if len(gs) > 1 else [""]
        scales, u, d, grp = [], [], [], []
        for g, label in zip(gs, labels, strict=True):
            on_s, off_s = groups[g]["on"], groups[g]["off"]
            seeds = sorted(set(on_s) & set(off_s))
            unpaired_seeds += len(set(on_s) ^ set(off_s))
            diffs = [sign * (on_s[s][0] - off_s[s][0]) for s in seeds]
            diffs_ok = [x for x in diffs if np.isfinite(x)]
            if not diffs_ok:
                continue
            fl = [on_s[s][1] for s in seeds] + [off_s[s][1] for s in seeds]
            fl = [x for x in fl if np.isfinite(x) and x > 0]
            flops = float(np.exp(np.mean(np.log(fl)))) if fl else float("nan")
            m, lo, hi = paired_interval(np.array(diffs_ok))
            scales.append(
                ScaleGain(
                    scale=label,
                    flops=flops,
                    gain=m,
                    lo=lo,
                    hi=hi,
                    n_seeds=len(diffs_ok),
                    on_mean=float(np.nanmean([on_s[s][0] for s in seeds])),
                    off_mean=float(np.nanmean([off_s[s][0] for s in seeds])),
                )
            )
            if np.isfinite(flops):
                u += [np.log2(flops)] * len(diffs_ok)
                d += diffs_ok
                grp += [label] * len(diffs_ok)
        if not scales:
            continue
        scales.sort(key=lambda s: s.flops)
        context = ", ".join(
            f"{k.split('.')[-1]}={_val(group_cfg[gs[0]].get(k))}"
            for k in others
            if k in group_cfg[gs[0]]
        )
        out.append(
            _trend(key, on, off, metric, context, scales, np.array(u), np.array(d), np.array(grp))
        )
    if unpaired_seeds:
        notes.append(
            f"switch {key!r} ({_val(on)} vs {_val(off)}, {metric}): {unpaired_seeds} runs have no "
            "partner with the same seed and the other value; they are left out (a pair is one seed)"
        )
    return out


def _trend(key, on, off, metric, context, scales, u, d, grp) -> TrickTrend:
    fit = trend_fit(u, d, grp)
    # MDE from the seed-level variance of the paired differences (pooled within scales)
    sigma, dof, source = seed_noise(d, grp)
    if dof < 1:
        sigma, dof, source = line_noise(2.0**u, d) if len(u) else (np.nan, 0, "no runs")
    mde = mde_per_doubling(2.0**u, sigma, dof) if len(u) else float("nan")
    t = TrickTrend(
        key=key,
        on=on,
        off=off,
        metric=metric,
        context=context,
        scales=scales,
        slope=fit["b"],
        slope_lo=fit["lo"],
        slope_hi=fit["hi"],
        slope_dof=fit["dof"],
        intercept=fit["a"],
        lack_of_fit_p=fit["lof_p"],
        mde=mde,
        mde_sigma=sigma,
        mde_dof=dof,
        mde_source=source,
    )
    verdict, zero, why = _verdict(t)
    t = _replace(t, verdict=verdict, zero_flops=zero, why=why)
    return _replace(t, sentence=verdict_sentence(t))


def _replace(t: TrickTrend, **kw) -> TrickTrend:
    import dataclasses

    return dataclasses.replace(t, **kw)


def _verdict(t: TrickTrend) -> tuple[str, float | None, str]:
    n_scales = len(t.scales)
    if n_scales < 2:
        return (
            "undetermined",
            None,
            "one scale only: a trend needs the gain at >= 2 scales (3 or more to check that a "
            "line fits); add a size or length axis to the sweep",
        )
    if not np.isfinite(t.slope_lo):
        return (
            "undetermined",
            None,
            f"{t.n_pairs} paired runs over {n_scales} scales leave no degrees of freedom for the "
            "trend's interval; add seeds (2 or more per scale) or a third scale",
        )
    if t.slope_lo <= 0.0 <= t.slope_hi:
        return "holds", None, ""
    # The gain's sign over the sweep is the mean of the measured per-scale gains, not the line's
    # value at the smallest scale: gains that rise convexly (+0.001, +0.005, +0.023, measured on the
    # laptop tricks sweep) put the line's start below 0 and would read as a harm that fades.
    mean_gain = float(np.mean([s.gain for s in t.scales]))
    ref = np.sign(mean_gain) if mean_gain != 0 else np.sign(t.slope)
    if np.sign(t.slope) == ref:
        return "grows", None, ""
    return "fades", float(2.0 ** (-t.intercept / t.slope)), ""


def verdict_sentence(t: TrickTrend) -> str:
    """One sentence: the gain at the smallest and largest scale, the trend with its CI, the verdict,
    the zero crossing of a fading gain and the MDE."""
    s0, s1 = t.scales[0], t.scales[-1]
    head = f"{t.label()} ({t.metric}, positive = better): "
    gains = (
        f"gain {_fmt(s0.gain)} [{_fmt(s0.lo)}, {_fmt(s0.hi)}] at {_flops(s0.flops)} training FLOPs"
        + (
            f", {_fmt(s1.gain)} [{_fmt(s1.lo)}, {_fmt(s1.hi)}] at {_flops(s1.flops)}"
            if len(t.scales) > 1
            else ""
        )
    )
    mde = (
        f"MDE {abs(t.mde):.2g} per doubling (95% confidence, 80% power; sigma from {t.mde_source})"
        if np.isfinite(t.mde)
        else "MDE not available (no seed noise measured and too few scales)"
    )
    if t.verdict == "undetermined":
        return f"{head}{gains}; **trend undetermined**: {t.why}. {mde}."
    trend = (
        f"trend {_fmt(t.slope)} [{_fmt(t.slope_lo)}, {_fmt(t.slope_hi)}] per doubling of training "
        f"FLOPs (95% t interval, {t.n_pairs} paired runs over {len(t.scales)} scales)"
    )
    if t.verdict == "holds":
        word = (
            "**holds** (scale-invariant: the trend's CI contains 0; a trend smaller than the MDE "
            "would go undetected)"
        )
    elif t.verdict == "grows":
        word = "**grows** with compute (the trend has the sign of the mean gain over the scales)"
    else:
        where = np.log2(t.zero_flops) - np.log2(s1.flops) if t.zero_flops else float("nan")
        word = (
            f"**fades**: the fitted gain reaches 0 at ~{_flops(t.zero_flops)} training FLOPs "
            + (
                f"({where:.1f} doublings beyond the largest scale; an extrapolation)"
                if where > 0
                else "(already inside the sweep: the sign has turned)"
            )
        )
    lof = (
        f" A line does not describe the gains well (lack-of-fit p = {t.lack_of_fit_p:.2g}); read "
        "the per-scale gains."
        if np.isfinite(t.lack_of_fit_p) and t.lack_of_fit_p < ALPHA
        else ""
    )
    return f"{head}{gains}; {trend}: {word}. {mde}.{lof}"


__all__ = [
    "VERDICTS",
    "ScaleGain",
    "TrickAnalysis",
    "TrickTrend",
    "analyze_tricks",
    "paired_interval",
    "trend_fit",
    "value_pairs",
    "verdict_sentence",
]
