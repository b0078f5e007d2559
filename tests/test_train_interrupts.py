"""Interrupts are not failures, with real signals (subprocess + os.kill): SIGTERM and SIGINT stop
`python -m harness.train` at a batch end with a checkpoint saved there, the run is recorded
`interrupted`, the process exits 128 + signal with one line and no traceback, and rerunning the
same command resumes it to the result of an uninterrupted run, bitwise. The scheduler's USR2
(submitit's preemption / time-limit signal) is chained after our checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.runstore import MetricsCsv, RunStore
from harness.trainer_setup import load_checkpoint
from tests import train_support as S

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

pytestmark = pytest.mark.usefixtures("stand_in")


def _cfg_file(world: Path, tmp_path: Path) -> Path:
    # 2 epochs of ~15 batches, slowed down so a signal lands mid-run; no periodic checkpoint
    # before the end (ckpt_every 1000): a last.ckpt mid-run can only be the one saved on the signal
    cfg = S.make_cfg(
        world,
        steps=-1,
        ckpt_every=1000,
        log_every=1,
        **{
            "train.max_epochs": 2,
            "data.batch_size": 256,
            "data.shuffle": True,
            "model.overrides.sleep_s": 0.15,
        },
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _train(cfg_path: Path, run_dir: Path, prelude: str = "") -> subprocess.Popen:
    """`python -m harness.train` (with the stand-in model registered), optionally after `prelude`."""
    code = (
        prelude + "\nimport sys\nfrom tests import train_support as me\nme.register_globally()\n"
        "from harness.train import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(cfg_path), "--run-dir", str(run_dir)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_logged_step(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    """Poll metrics.csv (rows are appended as they are logged) until train/loss reached `step`."""
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = MetricsCsv(run_dir / "metrics.csv").read()
        if any(r["metric"] == "train/loss" and r["step"] >= step for r in rows):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"the run never logged step {step}")


def _loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["value"])
        for r in MetricsCsv(run_dir / "metrics.csv").read()
        if r["metric"] == "train/loss"
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_records_interrupted_and_the_rerun_resumes_exactly(
    world, tmp_path, sig
):
    cfg_path = _cfg_file(world, tmp_path)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _train(cfg_path, ref_dir)
    proc = _train(cfg_path, run_dir)
    _wait_for_logged_step(run_dir, 5, proc)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted:")]
    assert signal.Signals(sig).name in line and "checkpoint saved at step" in line
    assert "resume" in line
    store = RunStore(run_dir)
    status = store.status()
    assert status["state"] == "interrupted" and status["signal"] == signal.Signals(sig).name
    assert store.folder_state() == "interrupted" and not store.is_done()
    stopped_at = load_checkpoint(store.last_ckpt)["global_step"]  # saved on the signal
    assert 5 <= stopped_at < 30 and f"step {stopped_at}" in line

    resumed = _train(cfg_path, run_dir)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    assert ref.wait(timeout=600) == 0, ref.communicate()[1][-3000:]
    a, b = (json.loads((d / "result.json").read_text()) for d in (ref_dir, run_dir))
    assert a["train"]["steps"] > stopped_at
    assert b["metrics"] == a["metrics"] and b["train"] == a["train"]  # exact float equality
    wa, wb = (
        load_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (ref_dir, run_dir)
    )
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert _loss_curve(ref_dir) == _loss_curve(run_dir)
    st = store.status()
    assert st["state"] == "done" and st["attempts"] == 2
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["decisions"]["resumed_from_step"] == stopped_at


# what submitit installs in a SLURM job for its preemption / time-limit signal: requeue, then exit
FAKE_SUBMITIT = """
import signal, sys
from pathlib import Path
def _requeue(signum, frame):
    Path(sys.argv[sys.argv.index('--run-dir') + 1]).parent.joinpath('requeued').write_text('yes')
    sys.exit(-1)
signal.signal(signal.SIGUSR2, _requeue)
"""


def test_the_schedulers_usr2_checkpoints_first_then_submitit_requeues(world, tmp_path):
    cfg_path = _cfg_file(world, tmp_path)
    run_dir = tmp_path / "job" / "run"
    proc = _train(cfg_path, run_dir, prelude=FAKE_SUBMITIT)
    _wait_for_logged_step(run_dir, 4, proc)
    os.kill(proc.pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert (tmp_path / "job" / "requeued").read_text() == "yes"  # submitit's handler ran
    store = RunStore(run_dir)
    assert store.status()["state"] == "interrupted", store.status()
    assert "submitit requeued it" in store.status()["error"]
    assert load_checkpoint(store.last_ckpt)["global_step"] >= 4  # saved before the requeue
    assert store.folder_state() == "interrupted"


@pytest.mark.usefixtures("one_torch_thread")
def test_an_error_caused_by_the_stop_signal_is_an_interrupt_not_a_failure(world, tmp_path):
    from harness.runstore import Interrupted
    from harness.train import train_run

    cfg = S.make_cfg(
        world, steps=8, ckpt_every=2, log_every=1, **{"model.overrides.ctrl_c_then_fail_at": 4}
    )
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        train_run(cfg, tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is before  # train_run put the handlers back
    assert info.value.signum == signal.SIGINT and "RuntimeError while stopping" in str(info.value)
    store = RunStore(tmp_path / "run")
    assert store.status()["state"] == "interrupted" and store.folder_state() == "interrupted"
    assert load_checkpoint(store.last_ckpt)["global_step"] == 2  # the last periodic one stays
