"""Training-step figures for several execution variants in ONE process (issue #25): each variant is
benchmarks/model_step.py's step (same timing, FLOPs, MFU) with its own switches, so the on/off
comparison of every optimisation pays the torch/CUDA start-up once.

    python benchmarks/mfu_matrix.py --out OUT.json \\
        --variant before:size=onetrans-l,attention=sdpa,fused=0,precision=bf16 \\
        --variant after:size=onetrans-l,attention=sdpa_causal,fused=1,precision=bf16-true,batch=512

Keys: size, batch (0 = model_step's default), attention, fused (fused_ops 1/0), precision
(fp32 | bf16 = autocast | bf16-true = bf16 weights), compile (0/1), compile_backend, seq_len,
recompute (0/1: activation recomputation per block; its extra forward is not counted in MFU),
warmup / steps (this variant's own, e.g. fewer for a slow big batch).
Common options (--device, --warmup, --steps, --peak-tflops, --threads) apply to every variant. A
variant that fails (out of memory included) is recorded with its error; the others still run.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.model_step import bench_size, save_json  # noqa: E402

DEFAULTS = {
    "size": "onetrans-l",
    "batch": "0",
    "attention": "auto",
    "fused": "1",
    "precision": "bf16",
    "compile": "0",
    "compile_backend": "inductor",
    "seq_len": "0",
    "recompute": "0",
    "warmup": "",  # empty = the common --warmup / --steps
    "steps": "",
}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    opts = dict(DEFAULTS)
    for item in filter(None, rest.split(",")):
        key, eq, val = item.partition("=")
        if not eq or key not in DEFAULTS:
            raise SystemExit(
                f"--variant {text!r}: {item!r} is not key=value with a key of {sorted(DEFAULTS)}"
            )
        opts[key] = val
    if not name:
        raise SystemExit(f"--variant {text!r}: no name before ':'")
    return name, opts


def variant_args(opts: dict[str, str], common: argparse.Namespace) -> argparse.Namespace:
    """The argparse namespace benchmarks/model_step.py's bench_size expects."""
    return argparse.Namespace(
        batch=int(opts["batch"]),
        seq_len=int(opts["seq_len"]),
        device=common.device,
        precision=opts["precision"],
        attention=opts["attention"],
        compile=opts["compile"] == "1",
        compile_backend=opts["compile_backend"],
        no_fused_ops=opts["fused"] == "0",
        recompute=opts["recompute"] == "1",
        warmup=int(opts["warmup"]) if opts["warmup"] else common.warmup,
        steps=int(opts["steps"]) if opts["steps"] else common.steps,
        peak_tflops=common.peak_tflops,
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", required=True, help="name:key=value,...")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for text in args.variant:
        name, opts = parse_variant(text)
        t0 = time.perf_counter()
        try:
            row = bench_size(opts["size"], variant_args(opts, args), device)
        except Exception as err:  # noqa: BLE001 - recorded, the next variant still runs
            row = {
                "size": opts["size"],
                "error": f"{type(err).__name__}: {str(err)[:500]}",
                "traceback": traceback.format_exc()[-2000:],
            }
        row.update(variant=name, options=opts, wall_s=time.perf_counter() - t0)
        rows.append(row)
        if "error" in row:
            print(f"{name:28} ERROR {row['error'][:200]}", flush=True)
        else:
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "-"
            mfu_c = f"{100 * row['mfu_causal']:.1f}%" if row["mfu_causal"] is not None else "-"
            mem = row["peak_memory_gb"] if row["peak_memory_gb"] is not None else row["peak_rss_gb"]
            print(
                f"{name:28} {row['size']:13} b{row['batch']:<5} {1e3 * row['step_s_median']:8.1f} ms "
                f"{row['achieved_tflops']:8.2f} TFLOP/s MFU {mfu:>6} (causal-count {mfu_c:>6}) "
                f"mem {mem:6.2f} GB  [{row['attention'][0]}, {opts['precision']}, fused={opts['fused']}]",
                flush=True,
            )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {
        "benchmark": "mfu_matrix",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": {k: v for k, v in vars(args).items()},
        "rows": rows,
    }
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
