"""Is the relation between item popularity and clicks stable over the log? The AUC of the floor's
`item_pop` feature (the item's events so far, harness/data/floor.py) on the impressions whose
candidate is NOT among the user's last L events (the part of the task the history cannot answer),
per quarter of the train split in time and on val. A sampled-negatives log whose sampler looks at
the whole log (future included) shows a drift here; docs/learning-history.md section 12, D7.

    python scripts/popularity_drift.py DIR [--window 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.floor import FloorFeatures  # noqa: E402
from harness.metrics import auc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--window", type=int, default=64)
    a = ap.parse_args()
    f = FloorFeatures(a.folder, [a.window])
    counts = f.counts(a.window)
    names = list(f.names)
    out_of_window = counts[:, names.index("item_in_window")] == 0
    pop = counts[:, names.index("item_pop")].astype(np.float64)

    def report(label: str, rows: np.ndarray) -> None:
        m = rows & out_of_window
        y = f.click[m]
        if y.min() == y.max():
            print(f"{label:<14} (one class only)")
            return
        # sign-free: which way popularity points is what the sampler decided; the strength drifts
        a_pop = auc(y, pop[m])
        print(f"{label:<14} item_pop AUC {a_pop:.3f} (inverted {1 - a_pop:.3f}), n={m.sum():,}")

    train = np.flatnonzero(f.split == "train")  # impressions are sorted by time
    for q, part in enumerate(np.array_split(train, 4)):
        rows = np.zeros(len(f.split), bool)
        rows[part] = True
        report(f"train Q{q + 1}", rows)
    report("val", f.split == "val")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
