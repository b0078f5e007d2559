"""Dispatch on a real one-node SLURM cluster (scripts/slurm_up.sh; scripts/test.sh starts it as root).

Marked `slurm`: skipped when `sinfo` fails. Every job runs the real harness.train.train_run through
harness.launch.LaunchRun (submitit), on tiny synthetic data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """The cluster as the tests need it: a partition answering, and accounting (sacct) for job states."""
    from harness.cluster import probe_slurm

    probe = probe_slurm()
    if not probe.available:
        pytest.skip(probe.reason)
    sacct = subprocess.run(
        ["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True
    )
    return {"partitions": probe.partitions, "accounting": sacct.returncode == 0}


def sweep_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def write_sweep(
    tmp_path: Path, name: str, train: dict, resources: dict | None = None, grid=None
) -> Path:
    data = {
        "name": name,
        "base": {
            "data": {
                "dataset": "synthetic:ci",
                "seq_len": 8,
                "batch_size": 32,
                "eval_batch_size": 256,
            },
            "model": {"name": "onetrans", "size": "onetrans-tiny"},
            "train": {"optimizer": "adamw", "precision": "32-true", **train},
            "logging": {"wandb": "disabled", "progress_bar": False},
        },
        "grid": grid or {"train.lr": [0.001]},
        "resources": {
            "default": resources
            or {
                "devices": 1,
                "accelerator": "cpu",
                "cpus_per_task": 1,
                "mem_gb": 2,
                "time_min": 20,
                "signal_delay_s": 30,
            }
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def wait_for(cond, timeout: float, what: str, poll: float = 1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ledger_job(sweep_dir: Path) -> str:
    lines = (sweep_dir / ".sweep" / "ledger.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["job_id"]


def squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%T", "-j", job_id], capture_output=True, text=True
    ).stdout
    return out.strip()


def test_ci_sweep_through_submitit_then_rerun_skips_everything(slurm_cluster, tmp_path):
    proc = sweep_cli(
        "sweeps/smoke.yaml", "--preset", "ci", "--executor", "slurm", "--runs-dir", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "executor: slurm" in proc.stdout and "4/4 runs done" in proc.stdout
    sweep_dir = tmp_path / "smoke-ci"
    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 4
    for d in dirs:
        assert (d / "DONE").exists()
        result = json.loads((d / "result.json").read_text())
        assert (
            result["run_id"] == d.name
            and result["sweep"] == "smoke-ci"
            and result["status"] == "done"
        )
        assert result["metrics"]["test"]["ctr_auc"] is not None
        attempts = [json.loads(x) for x in (d / "logs" / "jobs.jsonl").read_text().splitlines()]
        assert len(attempts) == 1 and attempts[0]["slurm_job_id"]  # ran under SLURM, once
    # one array for the single resource class: all four jobs share the array id
    ids = [
        json.loads(x)["job_id"]
        for x in (sweep_dir / ".sweep" / "ledger.jsonl").read_text().splitlines()
    ]
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1
    # a second invocation submits nothing
    again = sweep_cli(
        "sweeps/smoke.yaml", "--preset", "ci", "--executor", "slurm", "--runs-dir", str(tmp_path)
    )
    assert again.returncode == 0 and "to run: 0; skipped: 4 done" in again.stdout
    assert len((sweep_dir / ".sweep" / "ledger.jsonl").read_text().splitlines()) == 4


def test_killed_driver_does_not_resubmit_live_jobs_and_cancel_is_reported(slurm_cluster, tmp_path):
    if not slurm_cluster["accounting"]:
        pytest.skip("cancel states need slurmdbd (WITH_DBD=1 scripts/slurm_up.sh)")
    # long enough to outlast any load on the machine: cancel ends it (max_epochs is 1 by default,
    # about 1,200 steps of this world: a busy CI machine once let it finish before the restart)
    path = write_sweep(
        tmp_path, "longrun", {"max_steps": 100000, "max_epochs": 1000, "ckpt_every_n_steps": 50}
    )
    runs = tmp_path / "runs"
    first = sweep_cli(str(path), "--executor", "slurm", "--runs-dir", str(runs), "--no-wait")
    assert first.returncode == 0 and "submitted 1 job" in first.stdout
    sweep_dir = runs / "longrun"
    job = ledger_job(sweep_dir)
    wait_for(lambda: squeue_state(job) == "RUNNING", 120, f"job {job} to run")
    # the driver is gone; started again, it must see the live job and submit nothing
    again = sweep_cli(str(path), "--executor", "slurm", "--runs-dir", str(runs), "--no-wait")
    assert "to run: 0; skipped: 1 running" in again.stdout
    assert len((sweep_dir / ".sweep" / "ledger.jsonl").read_text().splitlines()) == 1
    cancel = sweep_cli(str(path), "--cancel", "--runs-dir", str(runs))
    assert cancel.returncode == 0 and "cancelled 1 job(s)" in cancel.stdout and job in cancel.stdout
    status = wait_for(
        lambda: (lambda p: p if " interrupted " in p.stdout else None)(
            sweep_cli("status", str(path), "--runs-dir", str(runs), "--no-describe")
        ),
        60,
        "the cancel to be reported",
    )
    # scancel's SIGTERM: the run saved a checkpoint and recorded itself interrupted, not failed
    assert "1 runs: 1 interrupted" in status.stdout
    assert (
        json.loads((run_dirs(sweep_dir)[0] / "status.json").read_text())["state"] == "interrupted"
    )
    # an interrupted run is resumed by a plain rerun (no --retry-failed)
    rerun = sweep_cli(str(path), "--executor", "slurm", "--runs-dir", str(runs), "--dry-run")
    assert "to run: 1" in rerun.stdout and "--retry-failed" not in rerun.stdout


def test_two_task_ddp_job_on_cpu_with_gloo(slurm_cluster, tmp_path):
    # devices: 2 -> 2 srun tasks per node = Trainer(devices=2), CPU accelerator -> gloo backend
    path = write_sweep(
        tmp_path,
        "ddp",
        {"max_steps": 4, "ckpt_every_n_steps": 2},
        resources={
            "devices": 2,
            "accelerator": "cpu",
            "cpus_per_task": 1,
            "mem_gb": 4,
            "time_min": 20,
        },
    )
    proc = sweep_cli(str(path), "--executor", "slurm", "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path / "runs" / "ddp")
    result = json.loads((run / "result.json").read_text())
    assert result["config"]["resources"]["devices"] == 2 and result["train"]["steps"] == 4
    job = ledger_job(tmp_path / "runs" / "ddp")
    logs = tmp_path / "runs" / "ddp" / ".sweep" / "submitit" / job.split("_")[0]
    text = "".join(p.read_text(errors="replace") for p in logs.glob("*_log.*"))
    # both ranks joined one process group (Lightning prints its DDP membership per rank)
    assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text, text[-3000:]
    # only rank 0 recorded the attempt
    assert len((run / "logs" / "jobs.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint_and_finishes_once(slurm_cluster, tmp_path):
    import submitit

    # enough steps that the interrupt lands before the end even when this test process is starved
    # on a loaded machine (60 steps once finished between the first checkpoint and the check)
    steps = 1500
    path = write_sweep(
        tmp_path, "requeue", {"max_steps": steps, "max_epochs": 10, "ckpt_every_n_steps": 10}
    )
    runs = tmp_path / "runs"
    first = sweep_cli(str(path), "--executor", "slurm", "--runs-dir", str(runs), "--no-wait")
    assert first.returncode == 0
    sweep_dir = runs / "requeue"
    job_id = ledger_job(sweep_dir)
    (run,) = run_dirs(sweep_dir)
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").exists(), 300, "a first checkpoint")
    assert not (run / "DONE").exists(), (
        "the run finished before it could be interrupted; raise max_steps"
    )
    # what a timeout looks like to the job: USR2 to its tasks; submitit checkpoints and requeues
    submitit.SlurmJob(folder=sweep_dir / ".sweep" / "submitit" / "%j", job_id=job_id)._interrupt(
        timeout=True
    )

    def ended():
        st = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
        return (run / "DONE").exists() or (
            st.get("state") == "failed" and squeue_state(job_id) == ""
        )

    wait_for(ended, 540, "the requeued job to end", poll=5)
    assert (run / "DONE").exists(), (run / "status.json").read_text()
    attempts = [json.loads(x) for x in (run / "logs" / "jobs.jsonl").read_text().splitlines()]
    events = [a["event"] for a in attempts]
    assert events == ["start", "requeue", "start"], attempts
    assert attempts[-1]["resumed_from_checkpoint"] and attempts[-1]["restart_count"] >= 1
    assert (
        attempts[0]["slurm_job_id"] == attempts[-1]["slurm_job_id"] == job_id
    )  # same job, requeued
    result = json.loads((run / "result.json").read_text())
    assert result["train"]["steps"] == steps
    prov = json.loads((run / "provenance.json").read_text())
    assert 0 < prov["decisions"]["resumed_from_step"] < steps
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    # the driver sees one finished run and submits nothing more
    again = sweep_cli("status", str(path), "--runs-dir", str(runs), "--no-describe")
    assert "1 runs: 1 done" in again.stdout
