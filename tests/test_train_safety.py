"""No file in a run folder can run code: a planted checkpoint whose pickle asks to execute a command
is refused with a clear message when a run resumes, and the command never runs; the harness's own
checkpoints load weights-only and resume as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import run_id
from harness.runstore import RunStore
from harness.train import train_run
from harness.trainer_setup import UnsafeCheckpointError, load_checkpoint
from tests import train_support as S

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread", "stand_in")


class Payload:
    """Unpickling this calls os.system(command): what a crafted last.ckpt would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant(run_dir: Path, marker: Path) -> Path:
    """A real torch checkpoint (zip format, global_step and a state_dict) with the payload inside."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"global_step": 2, "state_dict": {"w": torch.zeros(2)}, "x": Payload(f"touch {marker}")},
        ckpt,
    )
    return ckpt


def test_the_payload_would_run_under_an_unsafe_load(tmp_path):
    # the test's own control: the planted file really is a code-execution payload
    marker = tmp_path / "marker"
    ckpt = plant(tmp_path / "run", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_resume_refuses_a_planted_checkpoint_and_runs_nothing(world, tmp_path):
    cfg = S.make_cfg(world, steps=4, ckpt_every=2, log_every=1)
    run_dir = tmp_path / "runs" / "test" / run_id(cfg)
    marker = tmp_path / "marker"
    ckpt = plant(run_dir, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        train_run(cfg, run_dir)
    msg = str(info.value)
    assert str(ckpt) in msg and "refused" in msg and "posix.system" in msg
    assert "mv " in msg and ".refused" in msg  # the fix
    assert not marker.exists()
    status = RunStore(run_dir).status()
    assert status["state"] == "failed" and "refused to load checkpoint" in status["error"]
    # the fix in the message works: moved aside, the run starts over and finishes
    ckpt.rename(ckpt.with_name("last.ckpt.refused"))
    assert train_run(cfg, run_dir)["train"]["steps"] == 4
    assert not marker.exists()


def test_the_cli_says_it_in_one_line_and_exits_non_zero(world, tmp_path):
    cfg = S.make_cfg(world, steps=4, ckpt_every=2, log_every=1)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    run_dir = tmp_path / "run"
    marker = tmp_path / "marker"
    plant(run_dir, marker)
    p = subprocess.run(
        [sys.executable, "-m", "tests.train_support", "--config", str(cfg_path)]
        + ["--run-dir", str(run_dir)],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr
    assert "error: refused to load checkpoint" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_the_harness_checkpoints_load_weights_only(world, tmp_path):
    cfg = S.make_cfg(world, steps=4, ckpt_every=2, log_every=1)
    train_run(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and "optimizer_states" in ckpt and "callbacks" in ckpt


def test_a_torn_checkpoint_is_named(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(UnsafeCheckpointError, match="cannot read checkpoint .*last.ckpt"):
        load_checkpoint(bad)
