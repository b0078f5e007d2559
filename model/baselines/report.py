"""Paper-scale accounting of the baselines next to Table 2 (dense params, training TFLOPs).

    python -m model.baselines.report [--size paper] [--seq-len 1178] [--out baselines_report.json]

Builds every baseline on the meta device (no memory, no weights) at paper_layout_spec(seq_len),
prints dense params and analytic training TFLOPs per 2048-example step beside Table 2, and the
FLOPs ratio to DCNv2+DIN for both (only ratios are comparable: spec §3).
"""

from __future__ import annotations

import argparse
import json

import torch

from ..registry import build_model
from . import BASELINES, TABLE2
from .common import paper_layout_spec


def report(size: str = "paper", seq_len: int = 1178) -> list[dict]:
    rows = []
    for name in BASELINES:
        with torch.device("meta"):
            model = build_model(name, paper_layout_spec(seq_len), size)
        tflops = model.flops_per_example()["train"] * 2048 / 1e12
        rows.append(
            {
                "model": name,
                "size": size,
                "seq_len": seq_len,
                "dense_params_M": model.param_counts()["dense"] / 1e6,
                "table2_params_M": TABLE2[name][0],
                "train_tflops_b2048": tflops,
                "table2_tflops": TABLE2[name][1],
            }
        )
    base, base_t2 = rows[0]["train_tflops_b2048"], rows[0]["table2_tflops"]
    for r in rows:
        r["flops_ratio_to_dcnv2"] = r["train_tflops_b2048"] / base
        r["table2_ratio_to_dcnv2"] = r["table2_tflops"] / base_t2
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m model.baselines.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--size", default="paper")
    ap.add_argument("--seq-len", type=int, default=1178)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    rows = report(args.size, args.seq_len)
    print(
        f"{'model':24s} {'params M':>9s} {'T2 M':>6s} {'TFLOPs':>8s} {'T2':>6s} {'ratio':>7s} {'T2 ratio':>8s}"
    )
    for r in rows:
        print(
            f"{r['model']:24s} {r['dense_params_M']:9.1f} {r['table2_params_M']:6.0f} {r['train_tflops_b2048']:8.2f} "
            f"{r['table2_tflops']:6.2f} {r['flops_ratio_to_dcnv2']:7.1f} {r['table2_ratio_to_dcnv2']:8.1f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
