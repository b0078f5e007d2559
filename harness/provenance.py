"""provenance.json: what code, packages and device produced a run, and each execution decision
(precision, attention, compile, recompute, W&B mode, threads) together with the reason for it.

Decisions are made here, before training, from the config and the device, never by trying one
thing and falling back on failure.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from harness.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "lightning",
    "numpy",
    "pandas",
    "pyarrow",
    "wandb",
    "submitit",
    "flash-attn",
    "onetrans-harness",
)

# Dense bf16 peak FLOP/s by device name (for MFU); no entry = no stated peak = MFU is null.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def git_state(repo: Path = REPO) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "sha": sha,
        "dirty": bool(status) if status is not None else None,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "note": None if sha else "not a git checkout (or git missing): code version unknown",
    }


def packages() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(accelerator: str) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu")
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
    }
    if cuda:
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm"] = {
            k: os.environ[k]
            for k in (
                "SLURM_JOB_ID",
                "SLURM_ARRAY_JOB_ID",
                "SLURM_ARRAY_TASK_ID",
                "SLURM_NODELIST",
                "SLURM_CPUS_PER_TASK",
                "SLURM_NTASKS",
                "SLURM_RESTART_COUNT",
            )
            if k in os.environ
        }
    return info


def peak_flops(device: dict[str, Any], precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, reason) for MFU; None on CPU or an unknown GPU (no stated peak)."""
    if not device.get("cuda"):
        return None, "CPU: no stated peak, MFU not reported"
    name = device.get("gpu", "")
    for key, peak in PEAK_BF16_FLOPS.items():  # most specific names first
        if key in name:
            # one reference peak for every precision, so MFUs of fp32 and bf16 runs compare
            return (
                peak,
                f"{key} dense bf16 peak {peak:.3g} FLOP/s (used for every precision; run: {precision})",
            )
    return None, f"no peak FLOP/s known for {name!r}; MFU not reported"


def decide_precision(cfg: RunConfig) -> tuple[str, str]:
    p, acc = cfg.train.precision, cfg.resources.accelerator
    cuda = torch.cuda.is_available() and acc in ("auto", "gpu")
    if p == "auto":
        if cuda and torch.cuda.is_bf16_supported():
            return (
                "bf16-mixed",
                "auto: CUDA device supports bf16 (the paper trains in mixed precision)",
            )
        if cuda:
            return "32-true", "auto: this CUDA device has no bf16 support"
        return "32-true", "auto: on CPU bf16 matmuls are ~50x slower than fp32 (infra.md §2)"
    if p == "bf16-mixed" and not cuda:
        return p, "requested (note: slow on CPU)"
    return p, "requested"


def decide_threads(num_workers: int = 0) -> tuple[int, str]:
    """torch's intra-op threads for this run. Oversubscribing a core is ruinous on CPU (OpenMP
    threads spin at barriers: 2 threads with the other core busy ran a tiny OneTrans step ~20x
    slower than 1 thread here), so the budget is the cores this process may use, minus the data
    workers that run beside it. HARNESS_NUM_THREADS (set by the local executor) or SLURM's
    SLURM_CPUS_PER_TASK (TaskPlugin=task/none pins nothing) give the budget when present."""
    explicit = os.environ.get("HARNESS_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        budget, why = int(explicit), "HARNESS_NUM_THREADS"
    else:
        slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if slurm.isdigit() and int(slurm) > 0:
            budget, why = int(slurm), "SLURM_CPUS_PER_TASK"
        else:
            try:
                budget = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                budget = os.cpu_count() or 1
            why = "cores available to this process"
    if num_workers > 0:
        budget, why = budget - num_workers, f"{why} minus {num_workers} data worker(s)"
    n = max(1, budget)
    torch.set_num_threads(n)
    return n, why


def collect(cfg: RunConfig, decisions: dict[str, Any]) -> dict[str, Any]:
    return {
        "git": git_state(),
        "packages": packages(),
        "device": device_info(cfg.resources.accelerator),
        "command": sys.argv,
        "decisions": decisions,
    }
