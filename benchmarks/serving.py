"""Serving and training benchmark of KV-cached OneTrans (issue #8).

Serving: for every history length L and candidates-per-request C, score one request
(`OneTransScorer.score(history, candidates)`) with the cache on (S-side once per request, stage II
for the candidates) and off (the plain model(batch): every candidate recomputes the S-side), and
report p50 / p99 latency per request and candidates/s. Every cell also checks that the two paths
give the same probabilities (max |Δp| is saved), so a speed-up is never measured on a wrong path.

Training: one optimiser-free step (forward + backward of the summed BCE losses) on R requests x C
candidates, plain model(batch) vs request_level_forward (S-side once per request).

    python benchmarks/serving.py                       # default grid (onetrans-mini shape)
    python benchmarks/serving.py --size onetrans-s     # the paper's OneTrans-S shape (slow on CPU)
    python benchmarks/serving.py --quick               # seconds; what tests/test_kv_benchmark.py runs
    python benchmarks/serving.py --device cuda --precision bf16 --spec paper --size onetrans-l \
        --lengths 1484 --candidates 100 --no-train     # the paper's serving cell on a GPU

--device cuda times each call up to a torch.cuda.synchronize (inputs already on the device, so the
latency is model time); --precision bf16 runs under bf16 autocast; --spec paper uses the assumed
paper feature layout (model.onetrans.paper_feature_spec) instead of the small tiny_spec.

Prints a table and writes JSON (--out, default benchmarks/results/serving.json). Timings on a
shared CPU are pessimistic: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from model.features import IMPRESSION_KEYS, SEQ_KEYS, random_batch, tiny_spec  # noqa: E402
from model.kv_cache import GraphedScorer, OneTransScorer, request_level_forward  # noqa: E402
from model.onetrans import paper_feature_spec  # noqa: E402
from model.registry import build_model  # noqa: E402


def machine_info(device: str = "cpu") -> dict:
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _amp(args):
    """bf16 autocast for --precision bf16; bf16-true runs a bf16 model without autocast."""
    dev = torch.device(args.device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (with few repetitions p99 is the slowest run; n is saved next to it)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def timed_reps(fn, *, reps: int, budget_s: float, warmup: int = 1) -> list[float]:
    """Run fn warmup times, then up to reps timed times, stopping early once budget_s is spent
    (at least one timed run)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def build(args, seq_len: int, seed: int = 0):
    """(spec, model): the benchmarked OneTrans (--size, --override, --attention, --spec) for histories of
    seq_len events, on --device, in eval mode."""
    torch.manual_seed(seed)
    spec = paper_feature_spec(seq_len) if args.spec == "paper" else tiny_spec(seq_len=seq_len)
    model = build_model("onetrans", spec, args.size, args.overrides, {"attention": args.attention})
    model = model.to(args.device).eval()
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)
    return spec, model


def requests(spec, n_cand: int, n: int, seed: int, device: str = "cpu") -> list[tuple[dict, dict]]:
    """n single-request (history, candidates) pairs with full-length histories."""
    out = []
    for i in range(n):
        b = random_batch(
            spec,
            n_requests=1,
            per_request=n_cand,
            min_len=spec.seq_len,
            generator=torch.Generator().manual_seed(seed + i),
            device=device,
        )
        out.append(
            ({k: b[k] for k in SEQ_KEYS}, {k: b[k] for k in IMPRESSION_KEYS if k != "req_index"})
        )
    return out


def bench_serving(args) -> list[dict]:
    rows = []
    for L in args.lengths:
        spec, model = build(args, L)
        for C in args.candidates:
            reqs = requests(spec, C, 4, seed=L + C, device=args.device)
            cell = {"seq_len": L, "candidates": C}
            probs = {}
            paths = [True, False] + (["graph"] if args.graph else [])
            for cache in paths:
                scorer = (
                    GraphedScorer(model)
                    if cache == "graph"
                    else OneTransScorer(model, cache=cache, max_batch=args.max_batch)
                )
                counter, first = itertools.count(), {}

                def run() -> None:
                    i = next(counter) % len(reqs)
                    with _amp(args):
                        p_ctr = scorer.score(*reqs[i])["ctr"]
                    _sync(args.device)
                    if i == 0:
                        first["ctr"] = p_ctr  # kept for the parity check (no extra run)

                # the big cache-off cells skip the warm-up: one run takes minutes on a CPU, and the
                # cache-on pass just warmed the same model and shapes
                warmup = (
                    0 if (not cache and C * L > 200_000 and args.device == "cpu") else args.warmup
                )
                tag = "graph" if cache == "graph" else ("on" if cache else "off")
                try:
                    times = timed_reps(run, reps=args.reps, budget_s=args.budget_s, warmup=warmup)
                except Exception as err:  # noqa: BLE001 - only the graph path may fail soft
                    if cache != "graph":
                        raise
                    cell["cache_graph"] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
                    print(f"L={L:5d} C={C:5d} | graph path FAILED: {cell['cache_graph']['error']}")
                    continue
                probs[cache] = first["ctr"]
                cell[f"cache_{tag}"] = {
                    "p50_ms": 1e3 * statistics.median(times),
                    "p99_ms": 1e3 * percentile(times, 99),
                    "cands_per_s": C / statistics.median(times),
                    "n_reps": len(times),
                }
            cell["speedup_cands_per_s"] = (
                cell["cache_on"]["cands_per_s"] / cell["cache_off"]["cands_per_s"]
            )
            cell["max_abs_dprob"] = float((probs[True].float() - probs[False].float()).abs().max())
            if (
                args.graph and "graph" in probs
            ):  # the CUDA-graph path (cache on, one graph per shape)
                cell["max_abs_dprob_graph"] = float(
                    (probs["graph"].float() - probs[False].float()).abs().max()
                )
                cell["graphed"] = bool(GraphedScorer(model).graph)
                g = cell["cache_graph"]
                print(
                    f"L={L:5d} C={C:5d} | graph p50 {g['p50_ms']:9.3f} ms p99 {g['p99_ms']:9.3f} ms "
                    f"(CUDA graph: {cell['graphed']}) |dp|max vs off {cell['max_abs_dprob_graph']:.1e}",
                    flush=True,
                )
            rows.append(cell)
            on, off = cell["cache_on"], cell["cache_off"]
            print(
                f"L={L:5d} C={C:5d} | on p50 {on['p50_ms']:9.2f} ms p99 {on['p99_ms']:9.2f} ms {on['cands_per_s']:10.1f} c/s"
                f" | off p50 {off['p50_ms']:9.2f} ms p99 {off['p99_ms']:9.2f} ms {off['cands_per_s']:10.1f} c/s"
                f" | x{cell['speedup_cands_per_s']:6.1f} |dp|max {cell['max_abs_dprob']:.1e}",
                flush=True,
            )
    return rows


def bench_training(args) -> list[dict]:
    rows = []
    for L in args.train_lengths:
        spec, model = build(args, L)
        model.train()
        for C in args.train_candidates:
            R = max(1, args.train_impressions // C)
            batch = random_batch(
                spec,
                n_requests=R,
                per_request=C,
                min_len=L // 2,
                generator=torch.Generator().manual_seed(L * 7 + C),
                device=args.device,
            )
            cell = {"seq_len": L, "candidates_per_request": C, "requests": R, "impressions": R * C}
            for name, fwd in (
                ("plain", model),
                ("request_level", lambda b: request_level_forward(model, b)),
            ):

                def step() -> None:
                    model.zero_grad(set_to_none=True)
                    with _amp(args):
                        out = fwd(batch)
                        loss = torch.nn.functional.binary_cross_entropy_with_logits(
                            out["ctr"].float(), batch["click"]
                        ) + torch.nn.functional.binary_cross_entropy_with_logits(
                            out["cvr"].float(), batch["conversion"]
                        )
                    loss.backward()
                    _sync(args.device)

                times = timed_reps(step, reps=args.reps, budget_s=args.budget_s)
                cell[name] = {"step_p50_ms": 1e3 * statistics.median(times), "n_reps": len(times)}
            cell["speedup"] = cell["plain"]["step_p50_ms"] / cell["request_level"]["step_p50_ms"]
            rows.append(cell)
            print(
                f"train L={L:5d} C/req={C:4d} R={R:4d} | plain {cell['plain']['step_p50_ms']:9.1f} ms"
                f" | request-level {cell['request_level']['step_p50_ms']:9.1f} ms | x{cell['speedup']:5.2f}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", default="onetrans-mini", help="onetrans size (model/onetrans.py SIZES)"
    )
    p.add_argument(
        "--override", action="append", default=[], help="Config field=value (repeatable)"
    )
    p.add_argument(
        "--attention",
        default="sdpa",
        choices=("auto", "reference", "sdpa", "flash", "sdpa_causal"),
        help="attention backend (the model's execution switch)",
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--candidates", type=int, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--train-lengths", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--train-candidates", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--train-impressions", type=int, default=64, help="impressions per training step"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=100,
        help="candidates per forward chunk (paper: 100 per GPU)",
    )
    p.add_argument("--reps", type=int, default=20, help="timed repetitions per cell (at most)")
    p.add_argument(
        "--budget-s", type=float, default=10.0, help="stop repeating a cell after this many seconds"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed runs before each cell's timed ones"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (timed up to a synchronize)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "bf16-true"),
        default="fp32",
        help="bf16 = bf16 autocast; bf16-true = bf16 weights, no autocast",
    )
    p.add_argument(
        "--graph",
        action="store_true",
        help="also time model.kv_cache.GraphedScorer (cache on, one CUDA graph per shape; eager on CPU)",
    )
    p.add_argument(
        "--spec",
        choices=("tiny", "paper"),
        default="tiny",
        help="feature layout: tiny_spec (default) or the assumed paper layout",
    )
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny model and grid (a test runs this)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.json")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.lengths, args.candidates = "onetrans-tiny", [32], [1, 10]
        args.train_lengths, args.train_candidates, args.train_impressions = [32], [1, 4], 8
        args.reps, args.budget_s = 2, 0.5
    from harness.config import ConfigError, parse_override  # the run config's own `--set` parser

    try:
        args.overrides = dict(parse_override(item) for item in args.override)
    except ConfigError as err:
        raise SystemExit(f"--override: {err}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info(args.device)
    print(
        f"# serving benchmark: size={args.size} overrides={args.overrides} device={args.device} "
        f"precision={args.precision} spec={args.spec} threads={info['threads']} loadavg={info['loadavg']}",
        flush=True,
    )
    with torch.no_grad():
        serving = bench_serving(args)
    training = [] if args.no_train else bench_training(args)
    result = {
        "benchmark": "serving",
        "size": args.size,
        "overrides": args.overrides,
        "attention": args.attention,
        "quick": args.quick,
        "max_batch": args.max_batch,
        "device": args.device,
        "precision": args.precision,
        "graph": args.graph,
        "spec": args.spec,
        "machine": info,
        "loadavg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "serving": serving,
        "training": training,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"# wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
