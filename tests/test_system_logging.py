"""The training step logs only on the steps the trainer writes to its loggers
(RankingSystem._logs_this_step): metrics.csv holds the same rows, values and steps as a run that
calls self.log on every step, including a step count that is not a multiple of the cadence and
a run resumed from a mid-run checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.runstore import MetricsCsv, RunStore
from harness.system import RankingSystem
from harness.train import train_run
from tests import train_support as S

pytestmark = pytest.mark.usefixtures("one_torch_thread", "stand_in")


def _train_rows(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = MetricsCsv(run_dir / "metrics.csv").read()
    return [(r["step"], r["metric"], r["value"]) for r in rows if r["metric"].startswith("train/")]


def _cfg(world: Path, steps: int):
    return S.make_cfg(world, steps=steps, ckpt_every=4, log_every=3)


def test_gated_logging_writes_the_rows_of_logging_every_step(world, tmp_path, monkeypatch):
    gated = tmp_path / "gated"
    train_run(_cfg(world, 8), gated)
    with monkeypatch.context() as m:  # the old behaviour: self.log on every step
        m.setattr(RankingSystem, "_logs_this_step", lambda self: True)
        every = tmp_path / "every"
        train_run(_cfg(world, 8), every)
    rows = _train_rows(gated)
    assert rows == _train_rows(every)
    steps = sorted({s for s, _, _ in rows})
    assert len(steps) == 2, steps  # steps 3 and 6 of 8 (Lightning's cadence), nothing else
    names = {m for _, m, _ in rows}
    assert {"train/loss"} <= names
    assert any(m.startswith("train/grad_norm_") for m in names)
    assert any(m.startswith("train/lr_") for m in names)


def test_gated_logging_after_a_resume_writes_the_same_rows(world, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_run(_cfg(world, 8), straight)
    resumed = tmp_path / "resumed"
    step = RankingSystem.training_step

    def fails_at_step_6(self, batch, batch_idx):
        if self.global_step == 6:  # after the step-4 checkpoint and the step-5 rows
            raise RuntimeError("a crash mid-run")
        return step(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(RankingSystem, "training_step", fails_at_step_6)
        with pytest.raises(RuntimeError, match="a crash mid-run"):
            train_run(_cfg(world, 8), resumed)
    result = train_run(_cfg(world, 8), resumed)  # resumes from step 4
    assert result["train"]["steps"] == 8
    assert RunStore(resumed).read_json("provenance.json")["decisions"]["resumed_from_step"] == 4
    assert _train_rows(resumed) == _train_rows(straight)


def test_lr_decay_reaches_zero_at_the_runs_last_step(world, tmp_path):
    # the decay's total comes from Lightning (estimated_stepping_batches): 8 steps, linear
    cfg = S.make_cfg(world, steps=8, ckpt_every=4, log_every=1, **{"train.lr_decay": "linear"})
    run = tmp_path / "decay"
    train_run(cfg, run)
    lr = {s: v for s, m, v in _train_rows(run) if m == "train/lr_dense"}
    # logged before each optimiser step (as float32): the row of step k uses factor 1 - k / 8
    assert sorted(lr) == list(range(8))
    for k, v in sorted(lr.items()):
        assert v == pytest.approx(0.01 * (1 - k / 8), rel=1e-6), (k, v)
