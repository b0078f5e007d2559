"""One OneTrans training step under torch.profiler: the top kernels by device time (issue #16).

    python benchmarks/profile_step.py                                   # GPU: onetrans-l, paper length, bf16
    python benchmarks/profile_step.py --device cpu --size onetrans-tiny --batch 8 --seq-len 16 --precision fp32

The step is the one benchmarks/model_step.py times (same model, shape, batch and autocast: forward
of the CTR/CVR heads, mean loss, backward), run --warmup times unprofiled, then --steps times under
the profiler. On CUDA the table ranks kernels by their own device time (self_device_time_total:
GEMMs, attention, element-wise ...) and adds the device-busy fraction of the profiled wall time (a
low one means the step is launch- or host-bound); on CPU it ranks operators by self CPU time.
Kernel names are also sorted into rough classes (gemm / attention / other) by name. Writes JSON
(--out); --trace writes a Chrome trace as well (large: tens of MB for one OneTrans-L step).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.model_step import add_step_arguments, save_json, training_step  # noqa: E402

CLASSES = (
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa|softmax", re.I)),
    (
        "gemm",
        re.compile(
            r"gemm|xmma|cutlass|cublas|sm\d+_|matmul|aten::mm|aten::bmm|aten::addmm|"
            r"aten::linear|einsum",
            re.I,
        ),
    ),
)


def kernel_class(name: str) -> str:
    for cls, pattern in CLASSES:
        if pattern.search(name):
            return cls
    return "other"


def _self_time_us(evt, on_cuda: bool) -> float:
    if not on_cuda:
        return float(evt.self_cpu_time_total)
    for attr in ("self_device_time_total", "self_cuda_time_total"):  # renamed in torch 2.4+
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="onetrans-l")
    add_step_arguments(p)  # --batch --seq-len --device --precision --attention --compile
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--steps", type=int, default=1, help="profiled steps (times are summed over them)"
    )
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--trace", default="", help="also write a Chrome trace here")
    p.add_argument("--out", default="runs/bench/profile_step.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    model, spec, B, step = training_step(args.size, args, device)

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        wall_s = time.perf_counter() - t0
    if args.trace:
        prof.export_chrome_trace(args.trace)

    rows = []
    cpu = torch.autograd.DeviceType.CPU
    for evt in prof.key_averages():
        t = _self_time_us(evt, on_cuda)
        if t <= 0:
            continue
        # On CUDA keep device-side entries only (kernels, memcpy/memset): a CPU operator's "self device
        # time" is the time of the kernels it launched, which are listed as entries of their own.
        if on_cuda and getattr(evt, "device_type", None) == cpu:
            continue
        rows.append({"name": evt.key, "self_us": t, "calls": int(evt.count)})
    total_us = sum(r["self_us"] for r in rows)
    rows.sort(key=lambda r: -r["self_us"])
    for r in rows:
        r["share"] = r["self_us"] / total_us if total_us else None
        r["class"] = kernel_class(r["name"])
    by_class: dict[str, float] = {}
    for r in rows:
        by_class[r["class"]] = by_class.get(r["class"], 0.0) + r["self_us"]
    flops = model.flops_per_example()
    result = {
        "benchmark": "profile_step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "seq_len": spec.seq_len,
        "batch": B,
        "precision": args.precision,
        "compile": args.compile,
        "attention": list(model.attention_decision),
        "profiled_steps": args.steps,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "measure": "self device time per kernel (us)"
        if on_cuda
        else "self CPU time per operator (us)",
        "wall_ms_per_step": 1e3 * wall_s / args.steps,
        "profiled_total_ms_per_step": total_us / 1e3 / args.steps,
        # device busy time / wall time (CUDA): kernels may overlap across streams, so this is an upper bound
        "device_busy_fraction": (total_us / 1e6) / wall_s if on_cuda and wall_s > 0 else None,
        "class_share": {k: v / total_us for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])}
        if total_us
        else {},
        "train_flops_per_step": flops["train"] * B,
        "n_entries": len(rows),
        "top": rows[: args.top],
    }
    print(
        f"# profile of one {args.size} training step: batch {B}, seq_len {spec.seq_len}, {args.precision}, "
        f"attention {result['attention'][0]}, wall {result['wall_ms_per_step']:.1f} ms/step, "
        f"profiled {result['profiled_total_ms_per_step']:.1f} ms/step"
    )
    print(f"{'share':>6} {'self ms':>9} {'calls':>6} {'class':>9}  name")
    for r in rows[: args.top]:
        print(
            f"{100 * r['share']:5.1f}% {r['self_us'] / 1e3:9.2f} {r['calls']:>6} {r['class']:>9}  {r['name'][:110]}"
        )
    print("by class: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in result["class_share"].items()))
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
