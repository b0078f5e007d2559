"""What the count-feature floor owes to each of its features: the floor's val/test CTR AUC per window
with all features, without one, and with that one alone.

    python scripts/floor_ablation.py DIR [--windows 8 128] [--feature item_pop] [--out FILE.json]

Prints one line per (window, variant) and saves the records as JSON. Figures in
docs/learning-history.md, section 11."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.floor import FloorFeatures, floor_at  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--feature", default="item_pop", help="the feature to ablate")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    feats = FloorFeatures(a.folder, a.windows)
    if a.feature not in feats.names:
        ap.error(f"{a.folder}: no floor feature {a.feature!r}; features: {feats.names}")
    others = [n for n in feats.names if n != a.feature]
    rows = []
    for L in a.windows:
        for variant, drop in (
            ("all", []),
            (f"without {a.feature}", [a.feature]),
            (f"{a.feature} alone", others),
        ):
            r = floor_at(feats, L, drop=drop)
            rows.append({"seq_len": L, "variant": variant, "val": r["val"], "test": r["test"]})
            print(
                f"L={L:<5} {variant:<24} val AUC {r['val']['ctr_auc']:.4f}  "
                f"test AUC {r['test']['ctr_auc']:.4f}",
                flush=True,
            )
    if a.out:
        a.out.write_text(json.dumps({"folder": str(a.folder), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
