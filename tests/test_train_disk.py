"""Full and read-only disks, leaked temporary files, resume without a checkpoint: a run ends with a
message naming the path, status.json says failed, no `.tmp.<pid>` file stays, and a rerun after the
space is back finishes with the same metrics.csv as an uninterrupted run."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import runstore as R
from harness.config import RunConfig
from harness.runstore import RunStore, RunStoreError
from harness.train import main as train_main
from harness.train import train_run
from tests import train_support as S

pytestmark = pytest.mark.usefixtures(
    "one_torch_thread", "stand_in"
)  # tests/conftest.py, as is `world`


def make_cfg(world: Path, **over) -> RunConfig:
    return S.make_cfg(world, steps=6, ckpt_every=3, log_every=1, **over)


def _tmp_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp" in p.name]


def _metric_keys(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["step"], r["metric"]) for r in csv.DictReader(f)]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_on_a_full_disk_fails_cleanly_and_resumes(world, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = make_cfg(world)
    import harness.callbacks as C

    real_save = C.torch.save

    def half_then_full(obj, f):  # a few bytes reach the temporary file, then the disk is full
        f.write(b"partial")
        _enospc()

    monkeypatch.setattr(C.torch, "save", half_then_full)
    with pytest.raises(RunStoreError) as info:
        train_run(cfg, run_dir)
    msg = str(info.value)
    assert "no space left on device" in msg and str(run_dir / "checkpoints" / "last.ckpt") in msg
    status = RunStore(run_dir).status()
    assert status["state"] == "failed" and "no space left" in status["error"]
    assert _tmp_files(run_dir) == []
    assert RunStore(run_dir).owner() is None  # the lock went with the failure

    monkeypatch.setattr(C.torch, "save", real_save)  # space is back: the rerun starts over
    result = train_run(cfg, run_dir)
    assert result["train"]["steps"] == 6 and RunStore(run_dir).is_done()
    assert _tmp_files(run_dir) == []
    keys = _metric_keys(run_dir)
    assert len(keys) == len(
        set(keys)
    )  # the first attempt's rows (no checkpoint) were not kept twice


class _FillsUp:
    """A real file on a disk with `room` bytes left: a write past that fails with ENOSPC, as the
    kernel's would, so torch.save's own zip writer meets the full disk (and turns it into
    `RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            _enospc()
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_inside_torch_save_is_named_and_loses_nothing(world, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = make_cfg(world)  # 6 steps, a checkpoint every 3
    ckpt_opens = []

    def full_at_the_second_checkpoint(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        if ".last.ckpt.tmp" in str(path):
            ckpt_opens.append(path)
            if len(ckpt_opens) == 2:
                return _FillsUp(f, room=1000)
        return f

    monkeypatch.setattr(R, "open", full_at_the_second_checkpoint, raising=False)
    with pytest.raises(RunStoreError) as info:
        train_run(cfg, run_dir)
    msg = str(info.value)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert msg.startswith(f"cannot write {ckpt}: no space left on device; free space there")
    assert "--retry-failed" in msg and "resumes from its last checkpoint" in msg
    assert "enforce fail" not in msg and "unexpected pos" not in msg
    # torch's own writer met the full disk: its RuntimeError is kept under the OSError
    assert isinstance(info.value.__cause__, OSError)
    assert "unexpected pos" in str(info.value.__cause__.__cause__)
    status = RunStore(run_dir).status()
    assert status["state"] == "failed" and status["error"] == msg
    assert RunStore(run_dir).folder_state() == "failed"
    assert _tmp_files(run_dir) == []
    from harness.trainer_setup import load_checkpoint

    assert load_checkpoint(ckpt)["global_step"] == 3  # the last good checkpoint is intact

    monkeypatch.undo()  # space is back: the rerun resumes from step 3
    S.register_tiny_model(monkeypatch)
    result = train_run(cfg, run_dir)
    assert result["train"]["steps"] == 6 and RunStore(run_dir).is_done()
    assert RunStore(run_dir).read_json("provenance.json")["decisions"]["resumed_from_step"] == 3
    keys = _metric_keys(run_dir)
    assert len(keys) == len(set(keys))
    # the failed save came after step 3's checkpoint and the rows Lightning logs at step 3 (batch
    # 4's): the resumed run logged them again and they replaced the old ones, so the curve is the
    # uninterrupted run's
    ref = tmp_path / "ref"
    train_run(cfg, ref)
    curve = lambda d: [  # noqa: E731
        (r["step"], r["metric"], r["value"])
        for r in R.MetricsCsv(d / "metrics.csv").read()
        if r["metric"].startswith("train/")
    ]
    assert curve(run_dir) == curve(ref)


def test_status_is_recorded_even_when_no_new_file_fits(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "run")
    store.create()
    store.write_status("running", new_attempt=True)
    real = R.atomic_write_text

    def full(path, text):
        if Path(path).name == R.STATUS:
            raise RunStoreError(
                R.disk_message(OSError(errno.ENOSPC, "No space left on device"), path)
            ) from OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(R, "atomic_write_text", full)
    store.write_status("failed", error="disk full")  # rewritten in place: no new file needed
    assert store.status()["state"] == "failed" and store.status()["attempts"] == 1


def test_leaked_temporary_files_are_removed_by_the_next_owner(world, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for p in (run_dir / ".status.json.tmp.99999", run_dir / "checkpoints" / ".last.ckpt.tmp.99999"):
        p.write_text("left by a killed process")
    train_run(make_cfg(world, **{"train.max_steps": 2}), run_dir)
    assert _tmp_files(run_dir) == []


def test_read_only_runs_dir_is_a_clear_message(world, tmp_path, monkeypatch, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(make_cfg(world).to_yaml())
    runs = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def ro_mkdir(self, *a, **k):
        if str(self).startswith(str(runs)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", ro_mkdir)
    assert train_main(["--config", str(cfg_path), "--runs-dir", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "read-only file system" in err and str(runs) in err and "--runs-dir" in err
    assert "Traceback" not in err


def test_sweep_driver_survives_a_failing_mark_failed(tmp_path, monkeypatch, capsys):
    """Two runs fail (no dataset); recording the first failure hits a full disk: the driver says so
    and still runs the second."""
    from harness import sweep as SW
    from tests.sweep_support import write_sweep

    path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"))
    calls = []

    def full(self, error):
        calls.append(self.path)
        raise RunStoreError(f"cannot write {self.path / 'status.json'}: no space left on device")

    monkeypatch.setattr(RunStore, "mark_failed", full)
    rc = SW.main(
        [str(path), "--executor", "local", "--runs-dir", str(tmp_path / "runs"), "--no-describe"]
    )
    out = capsys.readouterr().out
    assert rc == 1 and len(calls) == 2 and out.count("] failed ") == 2, out
    assert "could not record the failure" in out and "no_such_dataset" in out


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_a_real_full_tmpfs(world, tmp_path):
    """A run folder on a small tmpfs filled to the brim: the run fails with the path named, leaves no
    temporary file and status failed; after space is freed, the rerun finishes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        run_dir = mnt / "run"
        cfg = make_cfg(world)
        RunStore(run_dir).create()
        st = os.statvfs(mnt)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 24 * 1024))  # ~24 KB left
        with pytest.raises(RunStoreError, match="no space left on device") as info:
            train_run(cfg, run_dir)
        assert str(run_dir) in str(info.value)
        assert RunStore(run_dir).status()["state"] == "failed"
        assert _tmp_files(run_dir) == []
        filler.unlink()
        assert train_run(cfg, run_dir)["train"]["steps"] == 6
        assert _tmp_files(run_dir) == [] and RunStore(run_dir).is_done()
        keys = _metric_keys(run_dir)
        assert len(keys) == len(set(keys))
    finally:
        subprocess.run(["umount", str(mnt)])


def test_launch_log_keeps_the_runs_own_error(tmp_path, capsys):
    """The driver keeps the launcher's output tail in memory: the run's own error line reaches the
    driver's output even when launch.log could not hold it."""
    from harness import sweep as SW
    from tests.sweep_support import write_sweep

    path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"), seeds=(0,))
    rc = SW.main(
        [str(path), "--executor", "local", "--runs-dir", str(tmp_path / "runs"), "--no-describe"]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "error: data.dataset:" in out and "| error: data.dataset" in out, out
    (run_dir,) = [
        p for p in (tmp_path / "runs" / "runs_test").iterdir() if not p.name.startswith(".")
    ]
    log = (run_dir / "logs" / "launch.log").read_text()
    assert "no_such_dataset" in log and "Traceback" not in log
    assert "no_such_dataset" in RunStore(run_dir).status()["error"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_a_real_read_only_runs_dir(tmp_path):
    """A runs directory on a read-only mount: the sweep driver and the trainer each say so in one
    line naming the folder, no traceback."""
    from tests.sweep_support import write_sweep

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode
        != 0
    ):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"), seeds=(0,))
        env = {**os.environ, "WANDB_MODE": "disabled"}
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness.sweep",
                str(path),
                "--runs-dir",
                str(mnt),
                "--executor",
                "local",
                "--no-describe",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            timeout=120,
        )
        assert p.returncode == 2 and "read-only file system" in p.stderr and str(mnt) in p.stderr, (
            p.stderr
        )
        assert "Traceback" not in p.stderr
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(
            "data: {dataset: synthetic:ci}\nmodel: {name: onetrans, size: onetrans-tiny}\n"
        )
        p = subprocess.run(
            [sys.executable, "-m", "harness.train", "--config", str(cfg), "--runs-dir", str(mnt)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            timeout=120,
        )
        assert (
            p.returncode == 1
            and "read-only file system" in p.stderr
            and "Traceback" not in p.stderr
        ), p.stderr
    finally:
        subprocess.run(["umount", str(mnt)])
