"""OneTrans training-step benchmark: forward+backward time, samples/s, tokens/s, peak memory,
achieved TFLOP/s and MFU, per size; plus the mixed projection as one batched einsum vs a per-token
Python loop (the ratio is what the einsum buys).

    python benchmarks/model_step.py --out runs/bench/model_step.json                 # GPU defaults
    python benchmarks/model_step.py --device cpu --batch 2 --sizes onetrans-tiny,onetrans-s
    python benchmarks/model_step.py --quick                                          # seconds (tests)
    python benchmarks/model_step.py --precision bf16 --attention flash --compile      # H100 run

Shapes: onetrans-tiny on model.features.tiny_spec(64); onetrans-s / onetrans-l on the paper shape
(1178 / 1484 events + 12 / 16 NS-tokens = 1190 / 1500 tokens) with the assumed paper feature layout
(model.onetrans.paper_feature_spec). Full-length histories (no padding): the worst case. One
impression per request (the S-side is computed per impression either way; this keeps the
tokenizer FLOPs equal to the analytic count). FLOPs = the model's analytic train FLOPs (3 x forward,
docs/conventions.md). MFU = achieved / peak; on CUDA the peak is the GPU's dense bf16 peak looked up
from its name (dense_bf16_peak: H100 SXM / H200 989 TFLOP/s, ...; an unknown GPU counts as H100 SXM
and says so), overridden by --peak-tflops or the GPU_PEAK_TFLOPS environment variable; the value
and where it came from are recorded in the JSON. On CPU MFU is null unless a peak is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.features import random_batch, tiny_spec  # noqa: E402
from model.flops import mfu  # noqa: E402
from model.layers import MixedLinear  # noqa: E402
from model.onetrans import PAPER_SEQ_LEN, SIZES, build, paper_feature_spec  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; the first
# pattern contained in the lower-cased device name wins (so the specific names come first).
DENSE_BF16_PEAKS = (
    ("gh200", 989.0, "GH200 (H100/H200-class SXM): 989 TFLOP/s dense bf16"),
    ("h200", 989.0, "H200: 989 TFLOP/s dense bf16 (same tensor cores as H100 SXM)"),
    ("h100 nvl", 835.0, "H100 NVL: 835 TFLOP/s dense bf16"),
    ("h100 pcie", 756.0, "H100 PCIe: 756 TFLOP/s dense bf16"),
    ("h100", 989.0, "H100 SXM: 989 TFLOP/s dense bf16"),
    ("h800", 989.0, "H800 SXM: 989 TFLOP/s dense bf16"),
    ("b200", 2250.0, "B200: 2250 TFLOP/s dense bf16"),
    ("a100", 312.0, "A100: 312 TFLOP/s dense bf16"),
    ("l40s", 362.0, "L40S: 362 TFLOP/s dense bf16"),
)
DEFAULT_BATCH = {
    "cuda": {"onetrans-tiny": 2048, "onetrans-s": 256, "onetrans-l": 128},
    "cpu": {"onetrans-tiny": 64, "onetrans-s": 1, "onetrans-l": 1},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    fn, device: torch.device, warmup: int, steps: int, warm: list[float] | None = None
) -> list[float]:
    """Times of the measured steps; the warm-up steps' times (compilation included) go to warm."""
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if warm is not None:
            warm.append(time.perf_counter() - t0)
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def dense_bf16_peak(
    device_name: str | None, override: float | None = None
) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from) for MFU: override, else GPU_PEAK_TFLOPS, else the name's
    entry in DENSE_BF16_PEAKS, else H100 SXM's 989 for an unknown GPU (said), else None (CPU)."""
    if override is not None:
        return override, f"given: {override:g} TFLOP/s"
    env = os.environ.get("GPU_PEAK_TFLOPS", "").strip()
    if env:
        return float(env), f"GPU_PEAK_TFLOPS={env}"
    if device_name is None:
        return None, "CPU: no stated peak (MFU null)"
    low = device_name.lower()
    for pattern, peak, text in DENSE_BF16_PEAKS:
        if pattern in low:
            return peak, text
    return H100_BF16_DENSE_TFLOPS, (
        f"unknown GPU {device_name!r}: assumed H100 SXM's {H100_BF16_DENSE_TFLOPS:g} "
        "TFLOP/s dense bf16 (set GPU_PEAK_TFLOPS)"
    )


def spec_for(size: str, seq_len: int | None):
    if size in PAPER_SEQ_LEN:
        return paper_feature_spec(seq_len or PAPER_SEQ_LEN[size])
    return tiny_spec(seq_len or 64)


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options that define the training step (shape, device, precision, attention, compile); shared
    with benchmarks/profile_step.py, which profiles the same step."""
    p.add_argument(
        "--batch", type=int, default=0, help="impressions per step (0 = per-size default)"
    )
    p.add_argument(
        "--seq-len", type=int, default=0, help="events per sequence (0 = the size's own)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "bf16-true"),
        default="bf16" if torch.cuda.is_available() else "fp32",
        help="bf16 = bf16 autocast over fp32 weights; bf16-true = the model's weights in bf16, no autocast",
    )
    p.add_argument(
        "--attention",
        default="auto",
        choices=("auto", "reference", "sdpa", "flash", "sdpa_causal"),
    )
    p.add_argument("--compile", action="store_true", help="torch.compile every block")
    p.add_argument(
        "--no-fused-ops",
        action="store_true",
        help="the model's reference tokenizer / RMSNorm forms (execution switch fused_ops=False)",
    )


def training_step(
    size: str,
    args,
    device: torch.device,
    *,
    recompute: bool = False,
    compile_backend: str = "inductor",
):
    """The benchmarked step of one size (add_step_arguments' options): -> (model, spec, impressions per
    step, step), where step() runs forward, the mean CTR + CVR loss and backward."""
    inductor = compile_backend == "inductor"
    spec = spec_for(size, args.seq_len)
    B = args.batch or DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"][size]
    torch.manual_seed(0)
    model = (
        build(
            spec,
            SIZES[size],
            attention=args.attention,
            compile_blocks=args.compile and inductor,
            recompute=recompute,
            fused_ops=not getattr(args, "no_fused_ops", False),
        )
        .to(device)
        .train()
    )
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)
    # another backend (e.g. "eager": the dynamo path only, fast on CPU)
    if args.compile and not inductor:
        for b in model.blocks:
            b.compile(backend=compile_backend)
    batch = random_batch(
        spec,
        n_requests=B,
        per_request=1,
        min_len=spec.seq_len,
        generator=torch.Generator().manual_seed(0),
        device=device,
    )
    dtype = torch.bfloat16 if args.precision == "bf16" else None  # bf16-true: no autocast

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(batch)
            loss = out["ctr"].float().mean() + out["cvr"].float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return model, spec, B, step


def save_json(result: dict, path: str | Path) -> None:
    """Write a benchmark's record (its folder created) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


def bench_size(size: str, args, device: torch.device) -> dict:
    """One size's figures; a CUDA out-of-memory is recorded as {"error": ...} instead of raised."""
    try:
        return _bench_size(size, args, device)
    except torch.cuda.OutOfMemoryError as err:
        B = args.batch or DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"][size]
        torch.cuda.empty_cache()
        return {"size": size, "batch": B, "error": f"CUDA out of memory: {str(err)[:300]}"}


def _bench_size(size: str, args, device: torch.device) -> dict:
    model, spec, B, step = training_step(
        size, args, device, recompute=args.recompute, compile_backend=args.compile_backend
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm: list[float] = []
    times = _timed(step, device, args.warmup, args.steps, warm)
    t = statistics.median(times)
    flops = model.flops_per_example()
    achieved = flops["train"] * B / t
    achieved_causal = flops["train_causal"] * B / t
    peak_tflops, peak_source = dense_bf16_peak(
        torch.cuda.get_device_name(device) if device.type == "cuda" else None, args.peak_tflops
    )
    n_tokens = model.n_s_tokens + model.cfg.n_ns_tokens
    dynamo = None
    if args.compile:  # recompilations / graph breaks (cumulative over the process's sizes)
        from torch._dynamo.utils import counters

        dynamo = {
            k: {str(kk)[:200]: vv for kk, vv in list(v.items())[:20]}
            for k, v in counters.items()
            if v
        }
    return {
        "size": size,
        "batch": B,
        "seq_len": spec.seq_len,
        "input_tokens": n_tokens,
        "schedule": model.schedule,
        "params": model.param_counts(),
        "flops_per_example": flops,
        "attention": list(model.attention_decision),
        "precision": args.precision,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "recompute": args.recompute,
        "warmup_s_all": warm,
        "dynamo_counters": dynamo,
        "step_s_median": t,
        "step_s_all": times,
        "samples_per_s": B / t,
        "tokens_per_s": B * n_tokens / t,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "mfu": mfu(achieved, peak_tflops * 1e12 if peak_tflops else None),
        # attention counted over the causally visible pairs only (model/flops.attention_flops_causal)
        "achieved_tflops_causal": achieved_causal / 1e12,
        "mfu_causal": mfu(achieved_causal, peak_tflops * 1e12 if peak_tflops else None),
        "fused_ops": not getattr(args, "no_fused_ops", False),
        "peak_memory_gb": (
            torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        ),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        / 1e6,  # process-wide, cumulative
    }


def bench_mixed_projection(size: str, args, device: torch.device) -> dict:
    """Q-sized mixed projection of the NS rows (N tokens, d -> ffn_mult*d), fwd+bwd: einsum vs loop."""
    cfg = SIZES[size]
    B = args.batch or DEFAULT_BATCH["cuda" if device.type == "cuda" else "cpu"][size]
    B = max(B, 8)
    d, n = cfg.d_model, cfg.n_ns_tokens
    lin = MixedLinear(d, cfg.ffn_mult * d, n).to(device)
    x = torch.randn(B, n, d, device=device, requires_grad=True)
    res = {}
    for name, fn in (("einsum", lin.forward_ns), ("loop", lin.forward_ns_loop)):

        def step(fn=fn):
            fn(x).sum().backward()

        res[name] = statistics.median(_timed(step, device, args.warmup, max(args.steps, 5)))
    return {
        "size": size,
        "batch": B,
        "n_ns": n,
        "d_in": d,
        "d_out": cfg.ffn_mult * d,
        "einsum_s": res["einsum"],
        "loop_s": res["loop"],
        "loop_over_einsum": res["loop"] / res["einsum"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="onetrans-tiny,onetrans-s,onetrans-l")
    add_step_arguments(p)
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend with --compile (inductor = the model's own; eager = graph capture only)",
    )
    p.add_argument("--recompute", action="store_true", help="activation recomputation per block")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak for MFU (default: the GPU's dense bf16 peak by name, or GPU_PEAK_TFLOPS; none on CPU)",
    )
    p.add_argument(
        "--no-mixed", action="store_true", help="skip the einsum-vs-loop mixed projection check"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--quick", action="store_true", help="onetrans-tiny only, tiny batch, 3 steps (for tests)"
    )
    p.add_argument("--out", default="runs/bench/model_step.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.seq_len, args.warmup, args.steps = "onetrans-tiny", 8, 16, 2, 3
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown sizes {unknown}; known: {sorted(SIZES)}")

    rows = [bench_size(s, args, device) for s in sizes]
    mixed = [] if args.no_mixed else [bench_mixed_projection(s, args, device) for s in sizes]
    result = {
        "benchmark": "model_step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "steps": rows,
        "mixed_projection": mixed,
    }

    print(
        f"{'size':14} {'batch':>6} {'tokens':>6} {'step ms':>9} {'samples/s':>10} {'tokens/s':>11} "
        f"{'TFLOP/s':>8} {'MFU':>6} {'mem GB':>7}  attention"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['size']:14} {r['batch']:>6}  {r['error'][:100]}")
            continue
        mem = r["peak_memory_gb"] if r["peak_memory_gb"] is not None else r["peak_rss_gb"]
        mfu_s = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"{r['size']:14} {r['batch']:>6} {r['input_tokens']:>6} {1e3 * r['step_s_median']:>9.1f} "
            f"{r['samples_per_s']:>10.1f} {r['tokens_per_s']:>11.0f} {r['achieved_tflops']:>8.3f} {mfu_s:>6} "
            f"{mem:>7.2f}  {r['attention'][0]}"
        )
    for m in mixed:
        print(
            f"mixed projection {m['size']}: einsum {1e3 * m['einsum_s']:.2f} ms, per-token loop "
            f"{1e3 * m['loop_s']:.2f} ms -> loop/einsum = {m['loop_over_einsum']:.2f}x"
        )
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
