"""Ownership of run and sweep folders with real processes: two drivers on one sweep, a run folder
owned by a foreign process, locks released by a kill.

The two-driver test trains the smoke sweep's ci preset (4 tiny runs, 2 steps each) for real."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.runstore import EXIT_BUSY, Busy, RunStore, SweepStore
from harness.sweepfile import load_sweep, resolve
from tests.sweep_support import write_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "HARNESS_LOCK_WAIT_S": "0",
    "PYTHONPATH": str(REPO),
}

HOLD = """
import sys, time
from harness.runstore import RunStore, SweepStore
kind, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
store = RunStore(path) if kind == "run" else SweepStore(path)
store.lock()
print("held", flush=True)
time.sleep(seconds)
"""


def _hold(kind: str, path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, kind, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_names_its_owner_and_dies_with_it(tmp_path):
    run = RunStore(tmp_path / "run")
    holder = _hold("run", run.path, 60)
    try:
        owner = run.owner()
        assert owner is not None and owner["pid"] == holder.pid
        assert run.folder_state() == "running"
        with pytest.raises(Busy, match=f"pid {holder.pid}"):
            run.lock()
        # the driver's failure record never overwrites the status of a run another process owns
        assert run.mark_failed("launcher died") is False and run.status() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run.owner() is None  # SIGKILL: the kernel dropped the flock
    with run.lock():
        assert run.owned
    assert run.folder_state() == "new"


def _driver(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.sweep", *map(str, args), "--no-describe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        cwd=REPO,
        **kw,
    )


def test_launcher_refuses_and_driver_follows_a_run_another_process_owns(tmp_path):
    path = write_sweep(
        tmp_path, str(tmp_path / "no_such_dataset"), seeds=(0,), name="own", max_steps=2
    )
    runs = tmp_path / "runs"
    (run,) = resolve(load_sweep(path), check_model=False)
    run_dir = runs / "own" / run.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(run.cfg.to_yaml())
    holder = _hold("run", run_dir, 300)
    try:
        # the launcher itself: a clear refusal with its own exit code, nothing written
        launch = subprocess.run(
            [sys.executable, "-m", "harness.launch", str(run_dir)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
        )
        assert launch.returncode == EXIT_BUSY, launch.stderr
        assert f"pid {holder.pid}" in launch.stderr and "not training it twice" in launch.stderr
        assert "Traceback" not in launch.stderr and not (run_dir / "status.json").exists()
        # the driver: sees the owner and follows it; once the owner is gone, says how it ended
        driver = _driver(path, "--runs-dir", runs, "--executor", "local")
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if "following" in line:
                break
        holder.kill()
        holder.wait()
        out = "".join(lines) + driver.communicate(timeout=120)[0]
    finally:
        holder.kill()
        holder.wait()
    assert driver.returncode == 1, out
    assert "following" in out and f"pid {holder.pid}" in out, out
    assert "stopped" in out and "rerun the sweep to resume it" in out, out
    assert not (runs / "own" / ".sweep" / "ledger.jsonl").exists()  # nothing was launched


def test_second_driver_refuses_with_no_wait(tmp_path):
    path = write_sweep(
        tmp_path, str(tmp_path / "no_such_dataset"), seeds=(0,), name="own", max_steps=2
    )
    runs = tmp_path / "runs"
    holder = _hold("sweep", runs / "own", 30)
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness.sweep",
                str(path),
                "--runs-dir",
                str(runs),
                "--no-wait",
                "--executor",
                "local",
                "--no-describe",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
            timeout=60,
        )
    finally:
        holder.kill()
        holder.wait()
    assert (
        p.returncode == 3 and f"another driver owns {runs / 'own'}: pid {holder.pid}" in p.stderr
    ), p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_two_drivers_on_one_sweep_train_every_run_once(tmp_path):
    runs = tmp_path / "runs"
    args = (
        "sweeps/smoke.yaml",
        "--preset",
        "ci",
        "--executor",
        "local",
        "--runs-dir",
        runs,
        "--progress-every",
        1,
    )
    first = _driver(*args)
    time.sleep(0.3)
    second = _driver(*args)
    out1, _ = first.communicate(timeout=600)
    out2, _ = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    both = out1 + out2
    # one of them owned the sweep and trained the 4 runs; the other waited, said so, and found them done
    assert both.count("another driver owns") == 1, both
    trained_by, waited = (out1, out2) if "trained by this driver" in out1 else (out2, out1)
    assert "4/4 runs done (4 trained by this driver" in trained_by, both
    assert "nothing to run: 4/4 runs done" in waited and "skipped: 4 done" in waited, both
    sweep = SweepStore(runs / "smoke-ci")
    assert len(sweep.ledger.path.read_text().splitlines()) == 4
    for run_dir in (p for p in sweep.path.iterdir() if not p.name.startswith(".")):
        store = RunStore(run_dir)
        assert store.is_done() and len(store.attempts()) == 1 and store.status()["attempts"] == 1
        rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
        keys = [(r["step"], r["metric"]) for r in rows]
        assert len(keys) == len(set(keys)), f"duplicate metrics rows in {run_dir}"
        assert not list(run_dir.rglob(".*.tmp*"))
        assert json.loads((run_dir / "progress.json").read_text())["step"] == 2
