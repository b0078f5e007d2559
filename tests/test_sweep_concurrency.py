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
        # the class asks 1 CPU: 1 torch thread, though the driver ran one run at a time
        # (harness.executors.local_threads: the same figures alone or beside other runs)
        threads = json.loads((run_dir / "provenance.json").read_text())["decisions"]["threads"]
        assert threads["value"] == 1, threads


def test_deleting_the_lock_files_lets_no_second_owner_in(tmp_path):
    # the lock is on the folder itself: removing every file the lock writes changes nothing
    run = RunStore(tmp_path / "run")
    sweep = SweepStore(tmp_path / "sweep")
    holders = [_hold("run", run.path, 120), _hold("sweep", sweep.path, 120)]
    try:
        for folder in (run.path, sweep.meta):
            for p in folder.iterdir():
                if p.is_file():
                    p.unlink()
        assert not any(p.is_file() for p in run.path.iterdir())
        with pytest.raises(Busy, match="another process"):  # its owner record is gone, not it
            run.lock()
        with pytest.raises(Busy):
            sweep.lock()
        assert run.owner() == {} and run.folder_state() == "running"
        # a second trainer on the run folder refuses (exit 75), a second driver waits or refuses
        launch = subprocess.run(
            [sys.executable, "-m", "harness.launch", str(run.path)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
            timeout=300,
        )
        assert launch.returncode != 0 and not (run.path / "status.json").exists(), launch.stderr
    finally:
        for h in holders:
            h.kill()
            h.wait()
    with run.lock(), sweep.lock():  # the kernel dropped both with their holders
        assert run.owned


def test_lock_file_fallback_retries_when_the_file_was_replaced(tmp_path, monkeypatch):
    """Where a directory cannot be flocked (NFS), the lock file is used; a file deleted and
    created again between our open and our flock is detected by its inode, and the lock taken
    on the file the path names."""
    import harness.runstore as R

    monkeypatch.setattr(R.FolderLock, "NO_DIR_FLOCK", frozenset())
    lock = R.FolderLock(tmp_path / "f", "lock", "test folder")
    lock.on_folder = False
    (tmp_path / "f").mkdir()
    real_flock, calls = R.fcntl.flock, []

    def racing_flock(fd, op):
        calls.append(op)
        if len(calls) == 1:  # another process removes the file and makes a new one meanwhile
            (tmp_path / "f" / "lock").unlink()
            (tmp_path / "f" / "lock").write_text("")
        return real_flock(fd, op)

    monkeypatch.setattr(R.fcntl, "flock", racing_flock)
    lock.acquire()
    try:
        assert len(calls) == 2  # retried once
        assert os.stat(lock.path).st_ino == os.fstat(lock._fd).st_ino
        monkeypatch.setattr(R.fcntl, "flock", real_flock)
        other = R.FolderLock(tmp_path / "f", "lock", "test folder")
        other.on_folder = False
        with pytest.raises(Busy):
            other.acquire()
    finally:
        lock.release()


def test_run_and_sweep_folders_stay_inside_the_runs_dir(tmp_path, capsys):
    from harness.train import main as train_main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data: {dataset: synthetic:ci}\nmodel: {name: onetrans, size: onetrans-tiny}\n")
    runs = tmp_path / "deep" / "runs"
    for bad in ("..", "../elsewhere", "/tmp/abs", "a/../../b"):
        rc = train_main(["--config", str(cfg), "--runs-dir", str(runs), "--set", f"sweep={bad}"])
        err = capsys.readouterr().err
        # refused by the config check, and the run folder itself is confined (runstore)
        assert rc == 2 and f"sweep = {bad!r} must be" in err and "Traceback" not in err, err
        assert "sweep=my-sweep" in err
    assert not (tmp_path / "deep").exists()  # nothing written anywhere
    from harness.runstore import OutsideRunsDir, run_dir_for

    for bad in ("..", "a/../..", "/abs", "", "."):
        with pytest.raises(OutsideRunsDir, match="outside the runs directory"):
            run_dir_for(runs, bad, "abc")
    assert run_dir_for(runs, "group/length", "abc") == runs / "group" / "length" / "abc"
    path = write_sweep(tmp_path, "synthetic:ci", seeds=(0,), name="../up")
    from harness import sweep as SW

    rc = SW.main([str(path), "--runs-dir", str(runs), "--executor", "debug", "--no-describe"])
    err = capsys.readouterr().err
    assert rc == 2 and "'name' must be" in err and "'../up'" in err, err  # the sweep file check
    assert not (tmp_path / "deep").exists()
