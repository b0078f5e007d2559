"""The job callable: one run, resumable, requeue-aware.

Submitted by every executor (debug in-process, local as `python -m harness.launch RUN_DIR`, SLURM
through submitit). It lives in the package so that jobs can import it (a callable defined in a test
file cannot be unpickled on the node).

Requeue has one owner: submitit. On timeout or preemption submitit calls `checkpoint()`; it returns
the same callable on the same run folder, submitit requeues the job (same job id), and
`harness.train.train_run` resumes from `<run_dir>/checkpoints/last.ckpt`. Lightning's own SLURM
auto-requeue is switched off by train_run (SLURMEnvironment(auto_requeue=False)).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import submitit

JOBS_FILE = "jobs.jsonl"       # per run: one line per attempt (job id, host, time, restart count)


def _rank() -> int:
    for var in ("SLURM_PROCID", "RANK", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _set_threads() -> None:
    """Match torch's thread count to the CPUs the scheduler gave this task (nothing pins them here)."""
    n = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("HARNESS_NUM_THREADS")
    if n:
        import torch
        torch.set_num_threads(max(1, int(n)))


def record_attempt(run_dir: Path, **extra: Any) -> None:
    """Append this attempt to <run_dir>/logs/jobs.jsonl (rank 0 only)."""
    if _rank() != 0:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": os.uname().nodename, "pid": os.getpid(),
             "slurm_job_id": _slurm_job_id(), "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
             "resumed_from_checkpoint": (run_dir / "checkpoints" / "last.ckpt").exists(), **extra}
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "logs" / JOBS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _slurm_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class LaunchRun(submitit.helpers.Checkpointable):
    """`LaunchRun()(run_dir)` trains the run whose resolved config is <run_dir>/config.yaml."""

    def __call__(self, run_dir: str) -> dict[str, Any]:
        from harness.config import load_config
        from harness.train import train_run

        path = Path(run_dir)
        cfg = load_config(path / "config.yaml")
        _set_threads()
        record_attempt(path, event="start")
        return train_run(cfg, path)

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        # Called by submitit in the job on timeout/preemption (rank 0). The state to resume from is
        # the run's own checkpoints/last.ckpt, written by train_run at its checkpoint cadence.
        record_attempt(Path(run_dir), event="requeue")
        return submitit.helpers.DelayedSubmission(LaunchRun(), run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m harness.launch RUN_DIR   (RUN_DIR holds the config.yaml to train)", file=sys.stderr)
        return 2
    LaunchRun()(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
