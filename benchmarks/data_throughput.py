"""Data-module throughput: impressions (samples) per second and peak memory per seq_len and worker count.

    python benchmarks/data_throughput.py --out runs/bench/data_throughput.json
    python benchmarks/data_throughput.py --data DIR          # any contract folder (synth preset, converter)
    python benchmarks/data_throughput.py --quick             # tiny, seconds (used by the tests)

Each (seq_len, num_workers) point runs in a fresh subprocess so its peak RSS (main process, and the
DataLoader worker when num_workers=1) is its own. Default data: a generated random contract folder
whose users all hold more than max(seq_len) events before every request (full sequences: the worst
case for the gather) and `--per-request` impressions per request (8, like the synthetic world).
Samples = impressions; the table also shows sequence rows per batch (R) since the gather cost scales
with R x seq_len.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_folder(
    out: Path,
    *,
    n_users: int,
    events_per_user: int,
    requests_per_user: int,
    per_request: int,
    n_items: int = 50_000,
    seed: int = 0,
) -> Path:
    """A random contract folder: every request comes after all of its user's events."""
    from harness.data.contract import Behavior, Manifest, SplitRule
    from harness.data.features import categorical, hour_feature, numeric, user_id_feature

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_ev = n_users * events_per_user
    user = np.repeat(np.arange(1, n_users + 1), events_per_user)
    ts = np.tile(np.arange(events_per_user, dtype=np.int64) * 60, n_users) + rng.integers(
        0, 30, n_ev
    )
    ts = np.sort(ts.reshape(n_users, events_per_user), axis=1).reshape(-1)
    cat = rng.integers(1, 200, n_items + 1)
    brand = rng.integers(1, 1000, n_items + 1)
    item = rng.integers(1, n_items + 1, n_ev)
    pd.DataFrame(
        {
            "user_id": user,
            "ts": ts,
            "behavior": rng.integers(1, 4, n_ev),
            "item_id": item,
            "category": cat[item],
            "brand": brand[item],
        }
    ).to_parquet(out / "events.parquet", index=False)
    n_req = n_users * requests_per_user
    t0 = events_per_user * 60 + 100
    req_ts = t0 + np.sort(rng.integers(0, 86_400, n_req))
    req_user = rng.integers(1, n_users + 1, n_req)
    rep = np.repeat(np.arange(n_req), per_request)
    n = len(rep)
    click = (rng.random(n) < 0.2).astype(np.int64)
    split = np.where(rep >= 0.9 * n_req, "test", np.where(rep >= 0.8 * n_req, "val", "train"))
    pd.DataFrame(
        {
            "request_id": rep + 1,
            "user_id": req_user[rep],
            "ts": req_ts[rep],
            "item_id": rng.integers(1, n_items + 1, n),
            "hour": rng.integers(1, 25, n),
            "click": click,
            "conversion": click * (rng.random(n) < 0.1),
            "split": split,
        }
    ).to_parquet(out / "impressions.parquet", index=False)
    pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age": rng.integers(1, 8, n_users),
            "activity": rng.normal(size=n_users),
        }
    ).to_parquet(out / "users.parquet", index=False)
    pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "category": cat[1:],
            "brand": brand[1:],
            "price": rng.lognormal(3, 1, n_items),
        }
    ).to_parquet(out / "items.parquet", index=False)
    Manifest(
        name="bench-random",
        source="benchmarks/data_throughput.py",
        item_vocab=n_items + 1,
        side_fields=("category", "brand"),
        features=(
            user_id_feature(n_users),
            categorical("age", "user", "users", 8),
            numeric("activity", "user", "users"),
            categorical("category", "item", "items", 200),
            categorical("brand", "item", "items", 1000),
            numeric("price", "item", "items"),
            hour_feature(),
        ),
        behaviors=(
            Behavior(name="click", id=1),
            Behavior(name="cart", id=2),
            Behavior(name="purchase", id=3),
        ),
        intent_order=("purchase", "cart", "click"),
        split=SplitRule(
            val_start_ts=int(req_ts[int(0.8 * n_req)]), test_start_ts=int(req_ts[int(0.9 * n_req)])
        ),
    ).save(out)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def proc_status_mb(pid: int | str, key: str) -> float:
    """VmRSS / VmHWM (peak) of a live process from /proc, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_peak_mb() -> float | None:
    """Largest peak RSS among this process's live children (the DataLoader worker)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    peaks = [proc_status_mb(p, "VmHWM") for p in pids if Path(f"/proc/{p}").exists()]
    return max(peaks) if peaks else None


def measure_one(
    folder: str,
    seq_len: int,
    num_workers: int,
    batch_size: int,
    seconds: float,
    max_batches: int,
    batching: str,
) -> dict:
    """One point, in this process: set-up time, then impressions/s over the train loader."""
    import torch

    from harness.data.datamodule import OneTransDataModule

    torch.set_num_threads(1)  # "one worker process": one core
    base_rss = proc_status_mb("self", "VmRSS")  # interpreter + torch + lightning
    t = time.perf_counter()
    dm = OneTransDataModule(
        folder, seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, batching=batching
    )
    dm.setup()
    setup_s = time.perf_counter() - t
    setup_rss = peak_rss_mb()
    dl = dm.train_dataloader()
    it = iter(dl)
    for _ in range(2):  # warm-up: worker start, first plan
        next(it)
    n_imp = n_rows = n_batches = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds and n_batches < max_batches:
        try:
            b = next(it)
        except StopIteration:
            dl.sampler.set_epoch(dl.sampler.epoch + 1)
            it = iter(dl)
            continue
        n_imp += b["req_index"].shape[0]
        n_rows += b["seq_item"].shape[0]
        n_batches += 1
    dt = time.perf_counter() - t
    worker_peak = children_peak_mb() if num_workers else None
    return {
        "seq_len": seq_len,
        "num_workers": num_workers,
        "batch_size": batch_size,
        "batching": batching,
        "batches": n_batches,
        "samples": n_imp,
        "seconds": round(dt, 3),
        "samples_per_s": round(n_imp / dt, 1),
        "mean_impressions_per_batch": round(n_imp / max(n_batches, 1), 1),
        "mean_seq_rows_per_batch": round(n_rows / max(n_batches, 1), 1),
        "setup_s": round(setup_s, 2),
        "rss_mb_before_data": round(base_rss, 1),
        "peak_rss_mb_after_setup": round(setup_rss, 1),
        "peak_rss_mb_main": round(peak_rss_mb(), 1),
        "peak_rss_mb_worker": round(worker_peak, 1) if worker_peak is not None else None,
    }


def report_row(r: dict) -> None:
    worker = (
        f", worker {r['peak_rss_mb_worker']:.0f} MB" if r["peak_rss_mb_worker"] is not None else ""
    )
    print(
        f"seq_len {r['seq_len']:5d}  workers {r['num_workers']}  {r['samples_per_s']:>10,.0f} samples/s  "
        f"B~{r['mean_impressions_per_batch']:.0f} R~{r['mean_seq_rows_per_batch']:.0f}  peak RSS main "
        f"{r['peak_rss_mb_main']:.0f} MB (before data {r['rss_mb_before_data']:.0f}){worker}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, help="a contract folder (default: generate a random one)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=1024, help="impressions per batch (at most)")
    p.add_argument("--batching", choices=["requests", "fixed"], default="requests")
    p.add_argument(
        "--per-request", type=int, default=8, help="impressions per request in the generated data"
    )
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per point")
    p.add_argument("--max-batches", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="tiny data, short runs (for tests)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one point, print JSON
    a = p.parse_args(argv)

    if a.one:
        print(
            json.dumps(
                measure_one(
                    a.one,
                    a.seq_lens[0],
                    a.workers[0],
                    a.batch_size,
                    a.seconds,
                    a.max_batches,
                    a.batching,
                )
            )
        )
        return 0
    if a.quick:
        a.seq_lens, a.users, a.seconds, a.max_batches, a.batch_size = [16, 64], 40, 0.5, 20, 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.data
        if folder is None:
            t = time.perf_counter()
            folder = make_folder(
                Path(tmp) / "bench",
                n_users=a.users,
                events_per_user=max(a.seq_lens) + 100,
                requests_per_user=16,
                per_request=a.per_request,
            )
            print(f"generated {folder} in {time.perf_counter() - t:.1f}s", flush=True)
        rows = []
        for L in a.seq_lens:
            for w in a.workers:
                if a.quick:  # in-process: seconds, not a torch import per point
                    rows.append(
                        measure_one(
                            str(folder), L, w, a.batch_size, a.seconds, a.max_batches, a.batching
                        )
                    )
                    report_row(rows[-1])
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    str(folder),
                    "--seq-lens",
                    str(L),
                    "--workers",
                    str(w),
                    "--batch-size",
                    str(a.batch_size),
                    "--seconds",
                    str(a.seconds),
                    "--max-batches",
                    str(a.max_batches),
                    "--batching",
                    a.batching,
                ]
                res = subprocess.run(
                    cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
                )
                if res.returncode != 0:
                    print(res.stderr, file=sys.stderr)
                    return res.returncode
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                report_row(rows[-1])
    report = {
        "benchmark": "data_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "data": str(a.data)
        if a.data
        else f"generated random: {a.users} users, "
        f"{max(a.seq_lens) + 100} events each, {a.per_request} impressions/request",
        "quick": a.quick,
        "results": rows,
    }
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
