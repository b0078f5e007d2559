"""What the train epoch's order does to a model: a length preset's runs at one length, each trained
through `harness.train` (the real run path, run folders under --out) with one order setting
changed, and their val / test CTR AUC printed and appended to OUT/rows.jsonl
(docs/data-module.md, "An epoch order with locality").

    python scripts/order_quality.py --preset laptop --seq-len 32 \\
        --variant chrono --variant uniform --variant blocks:64:16 --variant blocks:256:4

A variant is `chrono` (the preset as it is: data.shuffle false unless the preset says otherwise),
`uniform` (data.shuffle: true) or `blocks:B:W` (data.shuffle: true, data.shuffle_block: B,
data.shuffle_window: W). Compare on val; the runs keep their folders, so a rerun only reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import apply_overrides  # noqa: E402
from harness.sweepfile import load_sweep, resolve  # noqa: E402
from harness.train import train_run  # noqa: E402


def variant_overrides(variant: str) -> dict:
    if variant == "chrono":
        return {}
    if variant == "uniform":
        return {"data.shuffle": True}
    kind, _, rest = variant.partition(":")
    block, _, window = rest.partition(":")
    if kind != "blocks" or not block.isdigit() or not window.isdigit():
        raise SystemExit(f"--variant {variant!r}: give chrono, uniform or blocks:B:W (integers)")
    return {
        "data.shuffle": True,
        "data.shuffle_block": int(block),
        "data.shuffle_window": int(window),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sweep", default="sweeps/length.yaml")
    p.add_argument("--preset", default="laptop")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--variant", action="append", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/order_quality"))
    a = p.parse_args(argv)
    overrides = {v: variant_overrides(v) for v in a.variant}  # every variant checked first
    runs = [r for r in resolve(load_sweep(a.sweep, a.preset)) if r.cfg.data.seq_len == a.seq_len]
    if not runs:
        raise SystemExit(f"{a.sweep} --preset {a.preset}: no run at data.seq_len {a.seq_len}")
    a.out.mkdir(parents=True, exist_ok=True)
    for variant, over in overrides.items():
        for r in runs:
            cfg = apply_overrides(r.cfg, over)
            t = time.time()
            name = f"{a.preset}-{variant.replace(':', '_')}-L{a.seq_len}-s{cfg.seed}"
            res = train_run(cfg, a.out / name)
            m = res["metrics"]
            row = {
                "preset": a.preset,
                "variant": variant,
                "seq_len": a.seq_len,
                "seed": cfg.seed,
                "val_ctr_auc": m["val"]["ctr_auc"],
                "test_ctr_auc": m["test"]["ctr_auc"],
                "steps": res["train"]["steps"],
                "wall_s": round(time.time() - t, 1),
            }
            print(json.dumps(row), flush=True)
            with (a.out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
