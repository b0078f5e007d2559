"""The report's "Tricks across scale" section: for every sweep whose file names `analysis: {trick:
[...]}`, each switch's gain per scale, its trend per doubling of training FLOPs and the verdict
(analysis/tricks.py). Kept apart from build.py so the section is one call there."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..analyze import Analysis
from ..tricks import TrickAnalysis, TrickTrend, analyze_tricks
from .spec import Section, Table, Text

METHOD = (
    "Runs are paired when their run configs differ only in the switch (and share the seed); the "
    "values of the sweep's other switches are the pair's context, and what else differs between "
    "pairs (depth, width, length) is the scale. Gain = on − off, signed so that positive is better "
    "(off − on for a logloss), with a paired t interval over seeds (95%; no interval with one "
    "seed). Trend = least-squares slope of every paired difference on log2(training FLOPs), i.e. "
    "the change of the gain per doubling of compute, with a 95% t interval from the scatter around "
    "the line (n − 2 dof). Verdict: **holds** (scale-invariant) when that interval contains 0; "
    "otherwise **grows** when the trend has the sign of the gain at the smallest scale, **fades** "
    "when it has the opposite sign, with the training FLOPs where the fitted gain reaches 0 (an "
    "extrapolation when beyond the sweep). MDE = the smallest trend per doubling the sweep detects "
    "(two-sided 5%, 80% power) from the seed-level variance of the paired differences."
)


def trick_analyses(an: Analysis) -> dict[str, TrickAnalysis]:
    """sweep label -> its trick analysis, for every sweep whose hints name switches."""
    done = an.collection.done
    out: dict[str, TrickAnalysis] = {}
    for sweep in sorted(done["sweep"].dropna().astype(str).unique()):
        h = an.hints.get(sweep)
        if h is None or not h.trick:
            continue
        runs = done[done["sweep"].astype(str) == sweep]
        # flagged runs (diverged, seed outliers) stay out as in the paper tables, unless
        # --include-flagged; a NaN metric drops only that metric's pair (non-finite differences)
        if not an.include_flagged and len(an.flags):
            bad = set(an.flags.loc[an.flags["reason"] != "nan_metric", "run_id"])
            runs = runs[~runs["run_id"].isin(bad)]
        metrics = [f"{an.split}.{m}" for m in (h.metrics or ("ctr_uauc",))]
        out[sweep] = analyze_tricks(runs, h.trick, metrics)
    return out


def trick_sections(an: Analysis, figure: Callable) -> list[Section]:
    """One "Tricks across scale" section (none when no sweep names switches). `figure(fig, name,
    caption)` saves a figure and returns its block (build_report's helper)."""
    analyses = trick_analyses(an)
    if not analyses:
        return []
    blocks: list = [Text(markdown=METHOD)]
    for sweep, ta in analyses.items():
        if not ta.trends:
            blocks.append(
                Text(
                    markdown=f"Sweep `{sweep}`: no switch could be measured. "
                    + " ".join(ta.notes or ["No pair of runs differs in a switch only."])
                )
            )
            continue
        lines = [f"- {t.sentence}" for t in ta.trends]
        blocks.append(Text(markdown=f"Sweep `{sweep}`:\n\n" + "\n".join(lines)))
        blocks.append(
            figure(
                gain_figure(ta.trends),
                f"tricks_{sweep}",
                f"Tricks across scale, sweep {sweep}: each switch's gain (on − off, positive = better) "
                "per scale with its 95% paired t interval over seeds, and the fitted trend on "
                "log2(training FLOPs).",
            )
        )
        blocks.append(
            Table(
                name=f"tricks_trends_{sweep}",
                frame=ta.trends_table(),
                caption="Trend of each switch's gain per doubling of training FLOPs (95% t "
                "interval), MDE, verdict and the extrapolated FLOPs where a fading gain reaches 0.",
            )
        )
        blocks.append(
            Table(
                name=f"tricks_gains_{sweep}",
                frame=ta.gains_table(),
                caption="Gain of each switch per scale: means of the two sides, paired difference "
                "and its 95% t interval over seeds.",
            )
        )
        for note in ta.notes:
            blocks.append(Text(markdown=f"- Note: {note}"))
    return [Section(title="Tricks across scale", blocks=[b for b in blocks if b is not None])]


def gain_figure(trends: list[TrickTrend]):
    """One panel per metric: the gain per scale (points with CIs) and the fitted line per switch; one
    legend below the panels (switch and verdict; the context is in the tables)."""
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(t.metric for t in trends))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.0 * len(metrics), 3.6), squeeze=False, sharex=True
    )
    handles: dict[str, object] = {}
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, t in enumerate(t for t in trends if t.metric == metric):
            x = np.array([s.flops for s in t.scales])
            y = np.array([s.gain for s in t.scales])
            lo = np.array([s.lo for s in t.scales])
            hi = np.array([s.hi for s in t.scales])
            err = np.vstack(
                [np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)]
            )
            # switches side by side at one scale (a small multiplicative shift keeps bars apart)
            pts = ax.errorbar(
                x * 1.04**i, y, yerr=err, fmt="o", ms=4, capsize=2, color=f"C{i % 10}"
            )
            if np.isfinite(t.slope) and len(x) > 1 and np.all(x > 0):
                grid = np.geomspace(x.min(), x.max(), 20)
                ax.plot(grid, t.intercept + t.slope * np.log2(grid), color=f"C{i % 10}", lw=1)
            # the short label unless a factorial design gives one switch several contexts
            short = t.label().split(" [")[0]
            same = [u for u in trends if u.metric == metric and u.label().split(" [")[0] == short]
            label = short if len(same) == 1 else t.label()
            handles.setdefault(label, pts)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("gain (on − off, + = better)")
        ax.set_title(metric, fontsize=9)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(len(handles), 4),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


__all__ = ["METHOD", "gain_figure", "trick_analyses", "trick_sections"]
