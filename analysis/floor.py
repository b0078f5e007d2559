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
    floor at that window, model − floor, and `below floor` (the mean under the floor; for logloss,
    above it)."""
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
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows).sort_values(["sweep", "model", "seq_len"]).reset_index(drop=True)


def floor_metric(headline: str) -> str:
    """The metric the floor sentence is about: the headline one when the floor has it, else CTR AUC."""
    return headline if headline in FLOOR_METRICS else "ctr_auc"


def floor_sentences(table: pd.DataFrame, metric: str, split: str) -> list[str]:
    """One sentence per (sweep, model): at which windows the model's mean is below the floor, by how
    much, and where it is above."""
    below_col, diff_col = f"{metric} below floor", f"{metric} model − floor"
    if table.empty or below_col not in table:
        return []
    out = []
    for (sweep, model), g in table.dropna(subset=[below_col]).groupby(["sweep", "model"]):
        g = g.sort_values("seq_len")
        low, high = g[g[below_col].astype(bool)], g[~g[below_col].astype(bool)]
        head = (
            f"**Count-feature floor** ({sweep}: {model}; {split} {metric}, a logistic regression on "
            "history counts at the same window, harness/data/floor.py): "
        )

        def at(part):
            return ", ".join(f"L {r.seq_len} ({r[diff_col]:+.4f})" for _, r in part.iterrows())

        if len(low):
            text = head + f"**the model's mean is BELOW the floor** at {at(low)}"
            text += f"; above it at {at(high)}." if len(high) else " (every window)."
            text += (
                " Below the floor, the model leaves unused a signal its own input holds (counts "
                "of the candidate in its window): suspect training (steps, learning rate) or "
                "the model's use of the history before reading its scaling."
            )
        else:
            text = head + f"the model is above it at every window: {at(high)}."
        out.append(text)
    return out
