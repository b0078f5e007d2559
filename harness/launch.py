"""The job callable: one run, resumable, requeue-aware.

Submitted by every executor (debug in-process, local as `python -m harness.launch RUN_DIR`, SLURM
through submitit). It lives in the package so that jobs can import it (a callable defined in a test
file cannot be unpickled on the node).

Requeue has one owner: submitit. On timeout or preemption submitit calls `checkpoint()`; it returns
the same callable on the same run folder, submitit requeues the job (same job id), and
`harness.train.train_run` resumes from `<run_dir>/checkpoints/last.ckpt`. Lightning's own SLURM
auto-requeue is switched off by train_run (SLURMEnvironment(auto_requeue=False)).

Ownership: train_run holds the run folder's lock while it trains. A launcher that finds the folder
owned by another live process waits HARNESS_LOCK_WAIT_S (default 30 s: a requeued job may start
while its predecessor is still exiting), then exits with code 75 (runstore.EXIT_BUSY) and one line
naming the owner. User errors (config, data contract, disk) end in one `error:` line, not a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import submitit

from harness.config import ConfigError, load_config
from harness.runstore import (
    CONFIG,
    EXIT_BUSY,
    Busy,
    Interrupted,
    RunStore,
    RunStoreError,
    process_rank,
    raise_on_signals,
    restore_signals,
)

# How long a launcher waits for its run folder when another process still owns it (e.g. the
# previous attempt of a requeued job still exiting) before it gives up with exit code EXIT_BUSY.
LOCK_WAIT_S = float(os.environ.get("HARNESS_LOCK_WAIT_S", "30"))


def _set_threads() -> None:
    """Match torch's thread count to the CPUs the scheduler gave this task (nothing pins them here)."""
    n = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("HARNESS_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(max(1, int(n)))


def attempt_record(event: str) -> dict[str, Any]:
    """What logs/jobs.jsonl says about this attempt (the run store adds time, host, pid)."""
    return {
        "event": event,
        "slurm_job_id": _slurm_job_id(),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
    }


def _slurm_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class LaunchRun(submitit.helpers.Checkpointable):
    """`LaunchRun()(run_dir)` trains the run whose resolved config is <run_dir>/config.yaml."""

    def __call__(self, run_dir: str) -> dict[str, Any]:
        from harness.train import train_run  # torch and the models: in the job, not in the driver

        path = Path(run_dir)
        cfg = load_config(path / CONFIG, stored=True)  # written by the driver, maybe an older one
        _set_threads()
        return train_run(cfg, path, attempt=attempt_record("start"), lock_wait_s=LOCK_WAIT_S)

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        # Called by submitit in the job on timeout/preemption (rank 0). The state to resume from is
        # the run's own checkpoints/last.ckpt, written by train_run at its checkpoint cadence.

        if process_rank() == 0:
            try:
                RunStore(run_dir).record_attempt(**attempt_record("requeue"))
            except RunStoreError as err:
                print(f"warning: {err}", file=sys.stderr)
        return submitit.helpers.DelayedSubmission(LaunchRun(), run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(
            "usage: python -m harness.launch RUN_DIR   (RUN_DIR holds the config.yaml to train)",
            file=sys.stderr,
        )
        return 2
    # a SIGTERM (cancel) before training starts: one line, exit 128 + signal
    previous = raise_on_signals()
    try:
        return _main(argv[0])
    except Interrupted as err:  # e.g. while the libraries are imported
        print(f"interrupted: {err}; nothing was started", file=sys.stderr)
        return err.exit_code
    finally:
        restore_signals(previous)


def _main(run_dir: str) -> int:
    # pandas, Lightning and torch: on use only (a launcher's usage error needs none of them)
    from harness.data.contract import ContractError
    from harness.system import NonFiniteLossError

    try:
        LaunchRun()(run_dir)
    except Interrupted as err:
        print(f"interrupted: {err}; a plain rerun of the sweep resumes it", file=sys.stderr)
        return err.exit_code
    except Busy as err:
        print(f"error: {err}; not training it twice", file=sys.stderr)
        return EXIT_BUSY
    except (ConfigError, ContractError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RunStoreError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
