"""The sweep driver and interrupts, with real processes and real signals: Ctrl-C (SIGINT) or SIGTERM
to a local driver stops its runs at a checkpoint (state `interrupted`), starts nothing more, ends
with one line and exit code 128 + signal (no traceback); `python -m harness.sweep cancel` stops the
driver's queue as well as its running run; a plain rerun resumes the interrupted run from its
checkpoint (not --retry-failed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.runstore import RunStore
from harness.sweepfile import load_sweep, resolve
from tests.sweep_support import write_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}


def _sweep(tmp_path: Path, world: Path) -> tuple[Path, list[Path]]:
    """Two runs that would train far longer than the test (checkpoint every 2 steps). Epochs as
    well as steps unbounded in practice: one epoch of the tiny world can end before a second
    process (the `cancel` CLI) has started, and a run that is done cannot be cancelled."""
    path = write_sweep(
        tmp_path, str(world), seeds=(0, 1), name="intr", max_steps=100_000, max_epochs=10_000
    )
    runs = [
        tmp_path / "runs" / "intr" / r.run_id for r in resolve(load_sweep(path), check_model=False)
    ]
    return path, runs


def _driver(path: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.sweep", str(path), "--runs-dir", str(tmp_path / "runs")]
        + ["--executor", "local", "--max-parallel", "1", "--no-describe", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=REPO,
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.sweep", *args, "--no-describe"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=300,
    )


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        assert proc.poll() is None, f"driver ended before {what}: " + "".join(proc.communicate())
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _resumed_from(run: Path) -> int | None:
    prov = RunStore(run).read_json("provenance.json") or {}
    return (prov.get("decisions") or {}).get("resumed_from_step")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_stopped_driver_leaves_its_run_interrupted_and_a_plain_rerun_resumes_it(
    world, tmp_path, sig
):
    path, (first, second) = _sweep(tmp_path, world)
    driver = _driver(path, tmp_path)
    _wait(lambda: RunStore(first).has_checkpoint(), driver, "a first checkpoint")
    driver.send_signal(sig)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 128 + sig, out + err
    assert "Traceback" not in out + err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith(f"interrupted by {signal.Signals(sig).name}: 1 run(s) stopped"), err
    assert "run the same command again" in line
    assert (
        " interrupted " in out and "SIGTERM" in out
    )  # the run's own line: its launcher got SIGTERM
    assert RunStore(first).status()["state"] == "interrupted"
    assert RunStore(second).folder_state() == "new"  # the queue stopped: never started
    status = _cli("status", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert "2 runs: 1 interrupted, 1 new" in status.stdout, status.stdout

    # a plain rerun (no --retry-failed) resumes it from its checkpoint
    again = _driver(path, tmp_path)
    _wait(lambda: _resumed_from(first) is not None, again, "the resumed attempt")
    again.send_signal(signal.SIGINT)
    again.communicate(timeout=300)
    assert _resumed_from(first) >= 2 and RunStore(first).status()["attempts"] == 2


def test_cancel_stops_the_running_run_and_the_drivers_queue(world, tmp_path):
    path, (first, second) = _sweep(tmp_path, world)
    driver = _driver(path, tmp_path)
    _wait(lambda: RunStore(first).has_checkpoint(), driver, "a first checkpoint")
    cancel = _cli("cancel", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert cancel.returncode == 0 and "cancelled 1 job(s)" in cancel.stdout, cancel.stdout
    assert "asked the driver" in cancel.stdout
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, out + err  # not every run is done
    assert "Traceback" not in out + err
    assert " interrupted " in out and "not started: the sweep was cancelled" in out, out
    assert RunStore(first).status()["state"] == "interrupted"
    assert (
        RunStore(second).folder_state() == "new" and not (second / "logs" / "launch.log").exists()
    )
    ledger = (tmp_path / "runs" / "intr" / ".sweep" / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(x)["run_id"] for x in ledger] == [first.name]  # the second never launched
    # the next driver is not bound by the old request, and resumes both (interrupted and new)
    plan = _cli(str(path), "--runs-dir", str(tmp_path / "runs"), "--executor", "local", "--dry-run")
    assert "to run: 2" in plan.stdout and "--retry-failed" not in plan.stdout, plan.stdout
