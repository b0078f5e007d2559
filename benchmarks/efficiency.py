"""The paper's Table 5 (system optimisations) as ratios against the un-optimised OneTrans-S (issue #9).

Baseline: OneTrans-S shape, fp32, reference attention, no pyramid, no KV cache (plain per-impression
forward), no recomputation. Each row switches ONE optimisation on (spec §5 item 13: the rows are
individual, not cumulative), and a last row switches all of them on:

  + pyramid          Config.pyramid=True
  + KV cache         training: request_level_forward (S-side once per request);
                     serving: OneTransScorer(cache=True) (stage I once, stage II per candidate)
  + SDPA / flash     build(attention="auto") (flash-attn on CUDA when installed, else SDPA)
  + bf16 + recompute autocast bf16 and build(recompute=True). SKIPPED on CPU by default (CPU bf16
                     matmuls are ~50x slower than fp32, so the row would measure the CPU, not the
                     method); --cpu-bf16 runs it anyway.
  all                every row above together

Measured per variant, each in a fresh subprocess (so one variant's allocations cannot hide
another's peak): training step time (forward + backward, p50) and peak memory; serving p99
latency of one request with --serve-cands candidates and peak memory. Peak memory is
torch.cuda.max_memory_allocated on CUDA and the growth of the process's peak RSS during the
measured work on CPU (ru_maxrss after minus before, warm-up included; the model and batch are
built before; training and serving run in separate processes because the RSS peak never drops).

    python benchmarks/efficiency.py                 # OneTrans-S shape at a CPU-sized length/batch
    python benchmarks/efficiency.py --seq-len 1178 --requests 64 --cands 32   # paper-like, GPU
    python benchmarks/efficiency.py --quick         # tiny, seconds; tests/test_efficiency_bench.py

Prints the table (absolute baseline, then % change per row like the paper) and writes JSON
(--out, default benchmarks/results/efficiency.json). A variant that fails (e.g. out of memory) is
recorded in its row ("error": the child's last stderr lines), the other rows are still measured
and written, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The paper's Table 5 (spec §2.4): % change vs the un-optimised OneTrans-S.
PAPER = {
    "pyramid": {"train_ms": -28.7, "train_mem": -42.6, "serve_p99_ms": -8.4, "serve_mem": -6.9},
    "kv_cache": {"train_ms": -30.2, "train_mem": -58.4, "serve_p99_ms": -29.6, "serve_mem": -52.9},
    "sdpa": {"train_ms": -50.1, "train_mem": -58.9, "serve_p99_ms": -12.3, "serve_mem": -11.6},
    "bf16_recompute": {
        "train_ms": -32.9,
        "train_mem": -49.0,
        "serve_p99_ms": -69.1,
        "serve_mem": -30.0,
    },
}
VARIANTS = {
    "baseline": {},
    "pyramid": {"pyramid": True},
    "kv_cache": {"kv": True},
    "sdpa": {"attention": "auto"},
    "bf16_recompute": {"bf16": True, "recompute": True},
    "all": {"pyramid": True, "kv": True, "attention": "auto", "bf16": True, "recompute": True},
}
METRICS = ("train_ms", "train_mem", "serve_p99_ms", "serve_mem")


# ------------------------------------------------------------------------------------------
# child: one variant, one process
# ------------------------------------------------------------------------------------------


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def child(spec_json: str) -> dict:
    import torch

    from model.features import random_batch, tiny_spec
    from model.kv_cache import request_level_forward
    from model.registry import build_model

    a = json.loads(spec_json)
    v, device = a["variant"], a["device"]
    if a["threads"]:
        torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    spec = tiny_spec(seq_len=a["seq_len"])
    execution = {
        "attention": v.get("attention", "reference"),
        "recompute": v.get("recompute", False),
    }
    overrides = {"pyramid": v.get("pyramid", False), **a["overrides"]}
    model = build_model("onetrans", spec, a["size"], overrides, execution).to(device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=bool(v.get("bf16")))
    out: dict = {
        "variant": a["name"],
        "config": {**overrides, **execution},
        "kv": bool(v.get("kv")),
        "bf16": bool(v.get("bf16")),
    }

    if a["phase"] == "serve":
        return _serve(a, model, spec, amp, out)
    # --- training step
    batch = random_batch(
        spec,
        n_requests=a["requests"],
        per_request=a["cands"],
        min_len=spec.seq_len // 2,
        generator=torch.Generator().manual_seed(1),
        device=device,
    )
    fwd = (lambda b: request_level_forward(model, b)) if v.get("kv") else model
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with amp:
            o = fwd(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                o["ctr"].float(), batch["click"]
            ) + torch.nn.functional.binary_cross_entropy_with_logits(
                o["cvr"].float(), batch["conversion"]
            )
        loss.backward()
        _sync(device)

    base = _reset_peak(device)  # before the warm-up: its peak is the step's peak
    step()  # warm-up (allocator, lazy init)
    times = []
    t_end = time.perf_counter() + a["budget_s"]
    while len(times) < a["reps"] and (not times or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out["train_ms"] = 1e3 * statistics.median(times)
    out["train_mem"] = max(0, _peak_bytes(device) - base)
    out["train_reps"] = len(times)
    return out


def _serve(a: dict, model, spec, amp, out: dict) -> dict:
    """Serving: one request with serve_cands candidates (its own process: RSS peaks are monotonic)."""
    import torch

    from model.features import IMPRESSION_KEYS, SEQ_KEYS, random_batch
    from model.kv_cache import OneTransScorer

    v, device = a["variant"], a["device"]
    model.eval()
    req = random_batch(
        spec,
        n_requests=1,
        per_request=a["serve_cands"],
        min_len=spec.seq_len,
        generator=torch.Generator().manual_seed(2),
        device=device,
    )
    hist = {k: req[k] for k in SEQ_KEYS}
    cands = {k: req[k] for k in IMPRESSION_KEYS if k != "req_index"}
    scorer = OneTransScorer(model, cache=bool(v.get("kv")), max_batch=a["serve_cands"])

    def serve() -> None:
        with torch.no_grad(), amp:
            scorer.score(hist, cands)
        _sync(device)

    base = _reset_peak(device)
    serve()
    times = []
    t_end = time.perf_counter() + a["budget_s"]
    while len(times) < a["serve_reps"] and (not times or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        serve()
        times.append(time.perf_counter() - t0)
    s = sorted(times)
    out["serve_p99_ms"] = 1e3 * s[min(len(s) - 1, int(round(0.99 * len(s) + 0.5)) - 1)]
    out["serve_p50_ms"] = 1e3 * statistics.median(times)
    out["serve_mem"] = max(0, _peak_bytes(device) - base)
    out["serve_reps"] = len(times)
    return out


# ------------------------------------------------------------------------------------------
# parent: every variant, the table
# ------------------------------------------------------------------------------------------


def run_variant(name: str, args, variant: dict | None = None) -> dict:
    payload = {
        "name": name,
        "variant": VARIANTS[name] if variant is None else variant,
        "device": args.device,
        "size": args.size,
        "overrides": args.overrides,
        "seq_len": args.seq_len,
        "requests": args.requests,
        "cands": args.cands,
        "serve_cands": args.serve_cands,
        "reps": args.reps,
        "serve_reps": args.serve_reps,
        "budget_s": args.budget_s,
        "threads": args.threads,
    }
    out: dict = {}
    for phase in ("train", "serve"):  # one process per phase: peak RSS never goes down
        if args.inline:  # dry runs: no process start-ups (memory peaks then not per variant)
            out.update(child(json.dumps({**payload, "phase": phase})))
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps({**payload, "phase": phase})],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"variant {name} ({phase}) failed:\n{proc.stderr[-3000:]}")
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def fmt_row(name: str, r: dict, base: dict) -> str:
    if r.get("skipped"):
        return f"| {name:<16} | skipped: {r['skipped']} |"
    if r.get("error"):
        return f"| {name:<16} | FAILED: {r['error'].strip().splitlines()[-1][:120] if r['error'].strip() else '?'} |"
    cells = []
    for m in METRICS:
        ours = 100.0 * (r[m] / base[m] - 1.0) if base[m] else float("nan")
        paper = PAPER.get(name, {}).get(m)
        cells.append(
            f"{ours:+7.1f}%" + (f" ({paper:+.1f}%)" if paper is not None else "          ")
        )
    return f"| {name:<16} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--size", default="onetrans-s")
    p.add_argument(
        "--override", action="append", default=[], help="Config field=value (repeatable)"
    )
    p.add_argument("--seq-len", type=int, default=256, help="events per sequence (paper: 1178)")
    p.add_argument("--requests", type=int, default=4, help="requests per training batch")
    p.add_argument("--cands", type=int, default=8, help="candidates per request in training")
    p.add_argument(
        "--serve-cands", type=int, default=100, help="candidates per served request (paper: 100)"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--serve-reps", type=int, default=20)
    p.add_argument(
        "--budget-s", type=float, default=20.0, help="per measurement, after the first run"
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--cpu-bf16", action="store_true", help="run the bf16 rows on CPU too (slow)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--inline",
        action="store_true",
        help="run every variant in this process (fast dry runs; peak memory is then not per variant)",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "efficiency.json")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return {}
    if args.quick:
        args.size, args.seq_len, args.requests, args.cands, args.serve_cands = (
            "onetrans-tiny",
            32,
            2,
            4,
            10,
        )
        args.reps, args.serve_reps, args.budget_s = 2, 3, 1.0
    from harness.config import ConfigError, parse_override  # the run config's own `--set` parser

    try:
        args.overrides = dict(parse_override(item) for item in args.override)
    except ConfigError as err:
        raise SystemExit(f"--override: {err}") from None
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if args.device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    print(
        f"# Table 5 benchmark: {args.size} seq_len={args.seq_len} train {args.requests}x{args.cands} "
        f"serve 1x{args.serve_cands} on {args.device} loadavg={info['loadavg']}",
        flush=True,
    )
    rows: dict[str, dict] = {}
    for name in args.variants:
        v = VARIANTS[name]
        if v.get("bf16") and args.device == "cpu" and not args.cpu_bf16:
            if (
                name == "all"
            ):  # all-together on CPU: every optimisation except bf16 (said in the row)
                no_bf16 = {k: val for k, val in v.items() if k != "bf16"}
                rows[name] = {
                    **run_variant(name, args, no_bf16),
                    "note": "CPU: bf16 left out (recompute kept)",
                }
                continue
            rows[name] = {
                "skipped": "CPU bf16 matmuls are ~50x slower than fp32; run on a GPU or pass --cpu-bf16"
            }
            continue
        try:
            rows[name] = run_variant(name, args)
        except (
            RuntimeError
        ) as err:  # recorded, the other variants still run; exit status 1 at the end
            rows[name] = {"error": str(err)[-3000:]}
            print(f"  FAILED {name}: {str(err).strip().splitlines()[-1]}", flush=True)
            continue
        print(
            f"  measured {name}: train {rows[name]['train_ms']:.1f} ms, serve p99 {rows[name]['serve_p99_ms']:.1f} ms",
            flush=True,
        )
    base = rows.get("baseline")
    base = None if base is None or "error" in base else base
    lines = []
    if base:
        lines.append(
            f"un-optimised OneTrans-S shape (absolute): train {base['train_ms']:.1f} ms/step, "
            f"train mem {base['train_mem'] / 2**20:.1f} MiB, serve p99 {base['serve_p99_ms']:.1f} ms, "
            f"serve mem {base['serve_mem'] / 2**20:.1f} MiB"
        )
        lines.append(
            "| variant          | train time        | train memory      | serve p99         | serve memory      |"
        )
        lines.append(
            "|------------------|-------------------|-------------------|-------------------|-------------------|"
        )
        for name, r in rows.items():
            if name != "baseline":
                lines.append(fmt_row(name, r, base))
        lines.append(
            "ours (paper's Table 5 in brackets); each row alone vs the baseline; 'all' = every row together"
        )
    print("\n".join(lines))
    result = {
        "benchmark": "efficiency_table5",
        "size": args.size,
        "overrides": args.overrides,
        "seq_len": args.seq_len,
        "train_batch": {"requests": args.requests, "cands": args.cands},
        "serve_cands": args.serve_cands,
        "quick": args.quick,
        "inline": args.inline,
        "machine": info,
        "loadavg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_unit": "bytes",
        "memory_method": (
            "cuda max_memory_allocated"
            if args.device == "cuda"
            else "peak RSS growth during the measured work"
        ),
        "rows": rows,
        "paper_pct": PAPER,
        "table": lines,
        "ratios": {
            n: {m: r[m] / base[m] for m in METRICS if base and base[m]}
            for n, r in rows.items()
            if base and "skipped" not in r and "error" not in r
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"# wrote {args.out}")
    failed = [n for n, r in rows.items() if "error" in r]
    if failed and argv is None:
        raise SystemExit(f"efficiency: variants failed: {failed} (their rows hold the errors)")
    return result


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    main()
