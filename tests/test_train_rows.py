"""No duplicated metric rows after a resume: a run stopped after its final checkpoint (during its
val/test evaluation), a finished run whose result.json was removed, and a run resumed from a
checkpoint whose next batch was already logged all end with each (step, metric) once, in the same
rows as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.runstore import MetricsCsv, RunStore
from harness.train import train_run
from tests import train_support as S

pytestmark = pytest.mark.usefixtures("one_torch_thread", "stand_in")


def _rows(run_dir: Path) -> list[tuple[int, str, float]]:
    return [
        (r["step"], r["metric"], r["value"]) for r in MetricsCsv(run_dir / "metrics.csv").read()
    ]


def _finished(world: Path, run_dir: Path) -> tuple[dict, list]:
    cfg = S.make_cfg(world, steps=6, ckpt_every=3, log_every=1, **{"train.eval_every_n_steps": 3})
    result = train_run(cfg, run_dir)
    rows = _rows(run_dir)
    assert len({(s, m) for s, m, _ in rows}) == len(rows)
    assert any(m.startswith("test/") for _, m, _ in rows)
    return result, rows


def test_a_finished_run_whose_result_was_removed_re_evaluates_without_duplicates(world, tmp_path):
    run_dir = tmp_path / "run"
    result, rows = _finished(world, run_dir)
    (run_dir / "result.json").unlink()
    again = train_run(
        S.make_cfg(world, steps=6, ckpt_every=3, log_every=1, **{"train.eval_every_n_steps": 3}),
        run_dir,
    )
    assert again["metrics"] == result["metrics"]
    assert _rows(run_dir) == rows  # the same rows, each once


def test_a_run_stopped_during_its_final_evaluation_resumes_without_duplicates(world, tmp_path):
    run_dir = tmp_path / "run"
    result, rows = _finished(world, run_dir)
    # what a kill during the test evaluation leaves: the final checkpoint, val and part of the
    # test rows in metrics.csv, status running, no result.json, no DONE
    (run_dir / "result.json").unlink()
    (run_dir / "DONE").unlink()
    RunStore(run_dir).write_status("running")
    last = max(s for s, _, _ in rows)
    test_rows = [(s, m) for s, m, _ in rows if m.startswith("test")]
    keep = set(test_rows[: len(test_rows) // 2])
    csv = MetricsCsv(run_dir / "metrics.csv")
    csv.drop(last, {m for s, m in test_rows if (s, m) not in keep})
    assert RunStore(run_dir).folder_state() == "interrupted"
    cfg = S.make_cfg(world, steps=6, ckpt_every=3, log_every=1, **{"train.eval_every_n_steps": 3})
    again = train_run(cfg, run_dir)
    assert again["metrics"] == result["metrics"]
    got = _rows(run_dir)
    assert len({(s, m) for s, m, _ in got}) == len(got)
    assert sorted(got) == sorted(rows)


# Train rows Lightning logs at the checkpoint's step after saving it (batch k+1's rows at step k)
# are replaced on resume, not doubled: tests/test_train_disk.py
# (test_a_full_disk_inside_torch_save_is_named_and_loses_nothing compares them with a reference).
