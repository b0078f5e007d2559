"""The count-feature floor beside the model, per configuration (mostly: per sequence length).

`harness/data/floor.py` fits the floor (a logistic regression on train over log1p history counts:
candidate item, item side fields and per-behaviour item counts among the last L events, history
length, item popularity so far) and the sweep driver writes it, per dataset and window L, to
`<runs>/<sweep>/.sweep/floor.json`. This module only reads that JSON (the analysis never imports
torch). A configuration's window is its `axes.seq_len`; a sweep that does not vary seq_len (depth,
width) is compared with the floor at its one window when the file holds exactly one.

The floor is not a ceiling: a model below it leaves signal that its own input holds unused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.runstore import SweepStore

FLOOR_METRICS = ("ctr_auc", "ctr_uauc", "ctr_logloss")


def find_floors(run_dirs) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """(sweep label -> seq_len -> {split: metrics, "dataset": name}, warnings), from the
    `.sweep/floor.json` of every sweep folder holding runs; keyed by the folder's name and the
    sweep name inside (a preset's runs carry the folder's name as their sweep label)."""
    floors: dict[str, dict[int, dict]] = {}
    warnings: list[str] = []
    for parent in sorted({Path(d).parent for d in run_dirs}):
        f = SweepStore(parent).floor
        if not f.exists():
            continue
        try:
            doc = json.loads(f.read_text())
            datasets = doc["datasets"]
            by_len: dict[int, dict] = {}
            for e in datasets[:1]:
                for r in e["records"]:
                    by_len[int(r["seq_len"])] = {
                        "dataset": e.get("data.dataset") or e.get("dataset"),
                        **{s: r.get(s) or {} for s in ("train", "val", "test")},
                    }
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.append(f"count-feature floor not used: {f}: {err}")
            continue
        if len(datasets) > 1:
            warnings.append(
                f"{f}: floors of {len(datasets)} datasets; the report compares with the first "
                f"({datasets[0].get('data.dataset')})"
            )
        for key in dict.fromkeys([parent.name, str(doc.get("sweep") or parent.name)]):
            floors.setdefault(key, by_len)
    return floors, warnings


def floor_table(
    done: pd.DataFrame,
    split: str,
    floors: dict[str, dict[int, dict]],
    flags: pd.DataFrame | None = None,
    include_flagged: bool = False,
    metrics=("ctr_auc", "ctr_uauc"),
) -> pd.DataFrame:
    """One row per (sweep, model, size, window): the model's mean over the runs the fits use, the
    floor at that window, model − floor, `below floor` (the mean under the floor; for logloss,
    above it), and the seed noise of that difference: a 95% t interval from the seed sd pooled over
    the (sweep, model, size)'s windows (`model − floor lo/hi`) and `vs floor`, one of "above",
    "level" (the interval holds 0: the seeds cannot tell the two apart), "below", or, with one seed
    per window and so no noise estimate, "above (1 seed)" / "below (1 seed)"."""
    from .quality import excluded_for

    cols = ["sweep", "model", "size", "seq_len", "runs", "dataset"]
    if done.empty or not floors:
        return pd.DataFrame(columns=cols)
    flags = flags if flags is not None else pd.DataFrame(columns=["run_id", "metrics"])
    rows = []
    d = done[done["sweep"].isin(list(floors))].copy()
    if "axes.seq_len" in d:
        d["_L"] = pd.to_numeric(d["axes.seq_len"], errors="coerce")
    else:
        d["_L"] = np.nan
    for sweep, g in d.groupby("sweep"):
        fl = floors[str(sweep)]
        if g["_L"].isna().all():
            if len(fl) != 1:
                continue  # the window is not on the runs' axes and the floor has several
            g = g.assign(_L=next(iter(fl)))
        for key, h in g.groupby(["model", "size", "_L"], dropna=False):
            model, size, L = key
            rec = fl.get(int(L)) if pd.notna(L) else None
            if rec is None:
                continue
            row = {
                "sweep": sweep,
                "model": model,
                "size": size,
                "seq_len": int(L),
                "runs": len(h),
                "dataset": rec.get("dataset"),
            }
            for m in metrics:
                col, f = f"{split}.{m}", (rec.get(split) or {}).get(m)
                if col not in h or f is None:
                    continue
                use = h if include_flagged else h[~h["run_id"].isin(excluded_for(flags, m))]
                v = pd.to_numeric(use[col], errors="coerce").dropna()
                if not len(v):
                    continue
                mean = float(v.mean())
                row[f"model {m}"] = mean
                row[f"floor {m}"] = float(f)
                row[f"{m} model − floor"] = mean - float(f)
                row[f"{m} below floor"] = bool(mean > f if "logloss" in m else mean < f)
                row[f"_{m} values"] = v.to_numpy(float)
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=cols)
    table = pd.DataFrame(rows).sort_values(["sweep", "model", "seq_len"]).reset_index(drop=True)
    for m in metrics:
        if f"_{m} values" in table:
            _add_seed_noise(table, m)
            table = table.drop(columns=f"_{m} values")
    return table


def _add_seed_noise(table: pd.DataFrame, m: str) -> None:
    """`m model − floor lo/hi` and `m vs floor` per row, in place. The floor is one deterministic
    number per window (no seeds), so the difference's noise is the model mean's: the seed sd pooled
    over the configuration's windows (analysis.fit.pooled_seed_sd: seed noise does not depend much on
    L, and two seeds per window alone give one degree of freedom) over sqrt(runs), times the t
    quantile at the pooled degrees of freedom. The floor's own sampling error (a finite test set)
    is shared with the model's score on the same impressions and is left out, as the report's
    other comparisons on one test set leave it out."""
    from scipy.stats import t as student_t

    from .fit import pooled_seed_sd

    diff, lo, hi = f"{m} model − floor", f"{m} model − floor lo", f"{m} model − floor hi"
    table[lo], table[hi], table[f"{m} vs floor"] = np.nan, np.nan, None
    # for logloss, lower is better: "above" the floor means under it
    sign = -1.0 if "logloss" in m else 1.0
    for _, g in table.groupby(["sweep", "model", "size"], dropna=False):
        g = g[g[f"_{m} values"].notna()]
        if g.empty:
            continue
        values = [np.asarray(x) for x in g[f"_{m} values"]]
        y = np.concatenate(values)
        config = np.concatenate([np.full(len(x), i) for i, x in enumerate(values)])
        dof = int(sum(len(x) - 1 for x in values))
        sd = pooled_seed_sd(y, config)
        for idx, x in zip(g.index, values):
            d = float(table.at[idx, diff])
            if dof == 0:
                table.at[idx, f"{m} vs floor"] = (
                    "above" if sign * d >= 0 else "below"
                ) + " (1 seed)"
                continue
            half = float(student_t.ppf(0.975, dof)) * sd / np.sqrt(len(x))
            table.at[idx, lo], table.at[idx, hi] = d - half, d + half
            if sign * (d - sign * half) > 0:
                verdict = "above"
            elif sign * (d + sign * half) < 0:
                verdict = "below"
            else:
                verdict = "level"
            table.at[idx, f"{m} vs floor"] = verdict


def floor_metric(headline: str) -> str:
    """The metric the floor sentence is about: the headline one when the floor has it, else CTR AUC."""
    return headline if headline in FLOOR_METRICS else "ctr_auc"


def floor_sentences(table: pd.DataFrame, metric: str, split: str) -> list[str]:
    """One sentence per (sweep, model): the windows where the model's mean is below the floor beyond
    its seed noise (the `vs floor` interval of floor_table below 0), those where the two are level
    within it, and those where the model is above; each with model − floor and its 95% interval."""
    below_col, diff_col, vs_col = (
        f"{metric} below floor",
        f"{metric} model − floor",
        f"{metric} vs floor",
    )
    if table.empty or below_col not in table:
        return []
    out = []
    for (sweep, model), g in table.dropna(subset=[below_col]).groupby(["sweep", "model"]):
        g = g.sort_values("seq_len")
        vs = (
            g[vs_col].astype(str)
            if vs_col in g
            else g[below_col].map({True: "below", False: "above"})
        )
        low, level, high = (
            g[vs.str.startswith("below")],
            g[vs == "level"],
            g[vs.str.startswith("above")],
        )
        head = (
            f"**Count-feature floor** ({sweep}: {model}; {split} {metric}, a logistic regression on "
            "history counts at the same window, harness/data/floor.py): "
        )

        def at(part):
            def one(r):
                ci = ""
                if pd.notna(r.get(f"{diff_col} lo", np.nan)):
                    ci = f" [{r[f'{diff_col} lo']:+.4f}, {r[f'{diff_col} hi']:+.4f}]"
                elif str(r.get(vs_col, "")).endswith("(1 seed)"):
                    ci = ", 1 seed"
                return f"L {r.seq_len} ({r[diff_col]:+.4f}{ci})"

            return ", ".join(one(r) for _, r in part.iterrows())

        parts = []
        if len(low):
            parts.append(f"**the model's mean is BELOW the floor** at {at(low)}")
        if len(level):
            parts.append(f"level with it within seed noise at {at(level)}")
        if len(high):
            every = " every window:" if not len(low) and not len(level) else ""
            parts.append(f"above it at{every} {at(high)}")
        text = head + "; ".join(parts) + "."
        if len(level):
            text += (
                " 'Level': the 95% interval of model − floor (seed sd pooled over the windows) "
                "holds 0, so these seeds cannot tell the model from the floor there."
            )
        if len(low):
            text += (
                " Below the floor, the model leaves unused a signal its own input holds (counts "
                "of the candidate in its window): suspect training (steps, learning rate) or "
                "the model's use of the history before reading its scaling."
            )
        out.append(text)
    return out
