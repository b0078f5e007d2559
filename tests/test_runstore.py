"""harness/runstore.py: the one owner of run-folder names, states, "done", timestamps and writes."""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import runstore as R
from harness.runstore import MetricsCsv, RunStore, RunStoreError, SweepStore

REPO = Path(__file__).resolve().parents[1]


def test_runstore_and_analysis_collect_import_no_torch():
    code = (
        "import sys, harness.runstore, analysis.collect; "
        "sys.exit('torch imported' if 'torch' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_timestamp_format_utc_seconds():
    stamp = R.now_iso()
    parsed = dt.datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == dt.timedelta(0) and parsed.microsecond == 0


def test_folder_states_and_the_one_done(tmp_path):
    store = RunStore(tmp_path / "r")
    assert store.folder_state() == "new"
    store.create()
    store.write_status("running", new_attempt=True)
    assert store.folder_state() == "interrupted"  # status running, nobody owns it: resumable
    store.write_status("failed", error="x")
    assert store.folder_state() == "failed"
    (store / R.DONE).write_text("x")
    assert not store.is_done() and store.folder_state() == "failed"  # DONE alone is not done
    store.finish({"run_id": "r"})
    assert store.is_done() and store.folder_state() == "done" and store.status()["state"] == "done"
    with store.lock():
        assert RunStore(store.path).folder_state() == "done"


def test_failed_atomic_write_removes_its_temporary_file_and_names_the_path(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "r")
    store.create()
    monkeypatch.setattr(
        R.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
    )
    with pytest.raises(
        RunStoreError, match=r"cannot write .*result\.json: no space left on device"
    ):
        store.write_json(R.RESULT, {"a": 1})
    assert sorted(p.name for p in store.path.iterdir()) == ["checkpoints", "logs"]  # no .tmp left


def test_clean_tmp_removes_leftovers_of_killed_writers(tmp_path):
    store = RunStore(tmp_path / "r")
    store.create()
    (store / ".status.json.tmp.123").write_text("x")
    (store.checkpoints / ".last.ckpt.tmp.456").write_text("x")
    (store / "metrics.csv").write_text("step,metric,value,time\n")
    assert len(store.clean_tmp()) == 2
    assert sorted(p.name for p in store.path.iterdir()) == ["checkpoints", "logs", "metrics.csv"]


def test_metrics_restart_without_checkpoint_and_torn_lines(tmp_path):
    m = MetricsCsv(tmp_path / "metrics.csv")
    m.append(1, {"loss": 1.0})
    m.append(2, {"loss": 0.5})
    with open(m.path, "a") as f:
        f.write("3,loss,0.2")  # torn by a kill / full disk: no newline, no time
    with open(m.path, "a") as f:
        f.write("\n4,lo")
    assert [r["step"] for r in m.read()] == [1, 2, 3]
    m.truncate_after(2)
    assert [r["step"] for r in m.read()] == [1, 2]
    m.truncate_after(-1)  # a restart without checkpoint drops the repeated attempt
    assert m.read() == [] and m.path.read_text() == "step,metric,value,time\n"


def test_metrics_records_read_both_forms_keep_text_and_skip_torn_rows(tmp_path):
    """MetricsCsv.records is how analysis reads metrics.csv: the harness's long form and the
    wide form of older runs, values as written ('nan' kept, empty cells left out), torn rows
    skipped, None for a file that is absent or has no step column."""
    m = MetricsCsv(tmp_path / "long.csv")
    m.append(0, {"train/loss": 0.9, "val/auc": 0.6})
    m.append(10, {"train/loss": float("nan")})
    with open(m.path, "a") as f:
        f.write("2")  # torn: a step and nothing else
    assert m.records() == [
        (0, "train/loss", "0.9"),
        (0, "val/auc", "0.6"),
        (10, "train/loss", "nan"),
    ]
    wide = tmp_path / "wide.csv"
    wide.write_text("step,epoch,train/loss,val/auc\n0,0,0.9,\n10,0,0.5,0.7\nx,0,1.0,1.0\n")
    assert MetricsCsv(wide).records() == [
        (0, "train/loss", "0.9"),
        (10, "train/loss", "0.5"),
        (10, "val/auc", "0.7"),
    ]
    (tmp_path / "bad.csv").write_text("nothing,here\n1,2\n")
    assert MetricsCsv(tmp_path / "bad.csv").records() is None
    assert MetricsCsv(tmp_path / "absent.csv").records() is None


def test_analysis_names_no_run_file_literally():
    """analysis/ reaches run and sweep folders through the run store: no string in its code is
    one of the store's file names (docstrings and messages may mention them inside sentences)."""
    import ast

    names = {
        v
        for k, v in vars(R).items()
        if k.isupper() and isinstance(v, str) and ("." in v or v in ("DONE", "checkpoints"))
    }
    assert {"metrics.csv", "result.json", ".sweep", "floor.json", "sweep.yaml"} <= names
    found = []
    for path in sorted((REPO / "analysis").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_sweep_store_ledger_and_set_aside(tmp_path):
    sweep = SweepStore(tmp_path / "s")
    sweep.ledger.record("a", "local", pid=os.getpid())
    assert sweep.ledger.latest()["a"]["pid"] == os.getpid()
    sweep.run("a").create()
    (sweep.path / "a" / R.RESULT).write_text("{}")
    dest = sweep.set_aside("a")
    assert (dest / R.RESULT).exists() and not (sweep.path / "a").exists()
    with sweep.lock():
        assert SweepStore(sweep.path).owner()["pid"] == os.getpid()
    assert SweepStore(sweep.path).owner() is None


def test_availability_is_the_one_check_before_starting_a_run(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.availability() == ("free", None)
    with RunStore(store.path).lock():  # another owner (a lock is not shared across objects)
        state, owner = store.availability()
        assert state == "owned" and owner["pid"] == os.getpid()
    assert store.availability() == ("free", None)
    (store / R.RESULT).write_text("{}")
    (store / R.DONE).write_text("x")
    assert store.availability() == ("done", None)


def test_done_needs_a_readable_result(tmp_path):
    store = RunStore(tmp_path / "r")
    store.create()
    store.finish({"run_id": "r"})
    for damage, problem in (("{ torn", "not valid JSON"), ("[1]", "not a JSON object")):
        (store / R.RESULT).write_text(damage)
        assert store.marked_done() and not store.is_done()
        assert store.folder_state() == "interrupted"  # resumable: re-evaluated by a plain rerun
        line = store.done_problem()
        assert line.startswith(f"{store / R.RESULT}: {problem}") and "trains it again" in line
    store.discard_stale_done()
    assert not (store / R.DONE).exists() and store.done_problem() is None
