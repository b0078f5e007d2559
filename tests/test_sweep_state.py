"""Dispatcher state logic: the ledger, run classification, --only, and moving runs aside.

These build run folders by hand (the states a train_run leaves behind) to test the decisions the
driver takes from them; the end-to-end behaviour with the real train_run is in test_sweep_run*.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import executors as X
from harness import sweep as S
from harness.sweepfile import load_sweep, resolve

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def test_ledger_latest_wins_and_survives_a_torn_line(tmp_path):
    led = X.Ledger(tmp_path)
    led.record("a", "slurm", job_id="1")
    led.record("b", "local", pid=123)
    led.record("a", "slurm", job_id="7")
    with open(led.path, "a") as f:
        f.write('{"run_id": "c", "exec')  # a driver killed mid-write
    latest = led.latest()
    assert latest["a"]["job_id"] == "7" and latest["b"]["pid"] == 123 and "c" not in latest
    assert [e["job_id"] for e in led.history("a")] == ["1", "7"]


def _status(run_dir: Path, state: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"state": state}))


def test_classify_each_state(tmp_path):
    new = tmp_path / "new"
    assert S.classify(new, None, {})[0] == "new"

    done = tmp_path / "done"
    _status(done, "done")
    (done / "DONE").write_text("x")
    assert S.classify(done, None, {})[0] != "done"  # DONE without result.json is not done
    (done / "result.json").write_text("{}")
    assert S.classify(done, None, {})[0] == "done"

    failed = tmp_path / "failed"
    _status(failed, "failed")
    assert S.classify(failed, None, {})[0] == "failed"

    crashed = tmp_path / "crashed"  # died while running (killed node, killed driver)
    _status(crashed, "running")
    assert S.classify(crashed, None, {})[0] == "interrupted"

    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoints").mkdir(parents=True)
    (ckpt / "checkpoints" / "last.ckpt").write_text("x")
    assert S.classify(ckpt, None, {})[0] == "interrupted"

    # the scheduler's view wins over the folder while the job lives
    entry = {"executor": "slurm", "job_id": "42_1", "pid": None}
    assert S.classify(crashed, entry, {"42_1": "PENDING"}) == ("queued", "42_1")
    assert S.classify(crashed, entry, {"42_1": "RUNNING"})[0] == "running"
    assert S.classify(crashed, entry, {"42_1": "REQUEUED"})[0] == "running"
    assert S.classify(crashed, entry, {"42_1": "CANCELLED"})[0] == "cancelled"
    assert S.classify(new, entry, {"42_1": "OUT_OF_MEMORY"})[0] == "failed"
    assert S.classify(crashed, entry, {"42_1": "UNKNOWN"})[0] == "interrupted"


def test_local_pid_liveness_checks_the_command_line(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    # a live process that is NOT this run's launcher (pid reuse) must not count as running
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    mine = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; time.sleep(30)", "harness.launch", str(run_dir)]
    )
    try:
        import time

        time.sleep(1.0)  # let both children exec (before exec, /proc shows the parent's argv)
        assert X.job_state({"executor": "local", "pid": other.pid}, run_dir) == "EXITED"
        assert X.job_state({"executor": "local", "pid": mine.pid}, run_dir) == "RUNNING"
    finally:
        for p in (other, mine):
            p.kill()
            p.wait()
    assert X.job_state({"executor": "local", "pid": mine.pid}, run_dir) == "EXITED"


def test_mark_failed_keeps_other_keys_and_spares_done_runs(tmp_path):
    _status(tmp_path / "r", "running")
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    st["attempts"] = 3
    (tmp_path / "r" / "status.json").write_text(json.dumps(st))
    X.mark_failed(tmp_path / "r", "boom")
    st = json.loads((tmp_path / "r" / "status.json").read_text())
    assert st["state"] == "failed" and st["error"] == "boom" and st["attempts"] == 3
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "DONE").write_text("x")
    X.mark_failed(tmp_path / "d", "boom")
    assert not (tmp_path / "d" / "status.json").exists()


def test_only_filters_by_axis_label_and_dotted_key():
    runs = resolve(load_sweep(SWEEPS / "smoke.yaml", "ci"), check_model=False)
    assert [r.name for r in S.select(runs, ["label=dcnv2"])] == ["dcnv2-s0", "dcnv2-s1"]
    assert [r.name for r in S.select(runs, ["seed=1", "model.name=onetrans"])] == [
        "onetrans-tiny-s1"
    ]
    runs = resolve(load_sweep(SWEEPS / "length.yaml", "ci"), check_model=False)
    assert [r.name for r in S.select(runs, ["data.seq_len=8"])] == ["len8-s0"]
    with pytest.raises(SystemExit, match="matches no run"):
        S.select(runs, ["data.seq_len=9999"])
    with pytest.raises(SystemExit, match="expected key=value"):
        S.select(runs, ["data.seq_len"])


def test_set_aside_moves_never_deletes(tmp_path):
    run_dir = tmp_path / "sweep" / "abc"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text("{}")
    dest = S.set_aside(run_dir)
    assert not run_dir.exists() and (dest / "result.json").exists()
    assert dest.parent == tmp_path / "sweep" / ".sweep" / "replaced"


def test_status_and_dry_run_write_nothing(tmp_path, capsys):
    outcome = S.run_sweep(
        "sweeps/length.yaml",
        preset="ci",
        runs_dir=tmp_path,
        dry_run=True,
        executor="debug",
        describe=False,
    )
    assert outcome.code == 0 and "len16-s0" in [r.name for r in outcome.rows]
    assert [r.status for r in outcome.rows] == ["new"] * 5 and outcome.executor == "debug"
    assert not any(tmp_path.iterdir())


def test_main_prints_what_run_sweep_returns(tmp_path, capsys):
    """The CLI is run_sweep plus argument parsing: the same table, one row per returned run."""
    sweep = load_sweep(SWEEPS / "length.yaml", "ci")
    (done, *_) = resolve(sweep, check_model=False)
    d = tmp_path / "length-ci" / done.run_id
    d.mkdir(parents=True)
    (d / "result.json").write_text(
        json.dumps({"metrics": {"test": {"ctr_auc": 0.75}}, "model": "onetrans"})
    )
    (d / "DONE").write_text("")
    rc = S.main(
        [
            "status",
            "sweeps/length.yaml",
            "--preset",
            "ci",
            "--runs-dir",
            str(tmp_path),
            "--no-describe",
        ]
    )
    printed = capsys.readouterr().out
    outcome = S.run_sweep(
        "sweeps/length.yaml", command="status", preset="ci", runs_dir=tmp_path, describe=False
    )
    assert capsys.readouterr().out == printed and rc == outcome.code == 0
    assert [r.status for r in outcome.rows] == ["done"] + [
        "new"
    ] * 4 and "5 runs: 1 done, 4 new" in printed
    assert outcome.rows[0].metrics == {"test": {"ctr_auc": 0.75}} and "0.7500" in printed
    for row in outcome.rows:
        assert f"{row.run_id}  {row.name}" in printed
    with pytest.raises(S.SweepError, match="not found") as info:
        S.run_sweep(tmp_path / "nope.yaml")
    assert info.value.code == 2


def test_scheduler_job_ids_survive_the_runs_own_status_writes(tmp_path):
    """The dispatcher mirrors job ids into status.json; the run's own status writes keep them."""
    from harness.executors import _add_job_to_status, mark_failed
    from harness.runstore import RunStore

    run = RunStore(tmp_path / "run")
    run.create()
    _add_job_to_status(run.path, "41_0")
    run.write_status("running", new_attempt=True)
    _add_job_to_status(run.path, "41_0.requeue")
    run.write_status("running", new_attempt=True)
    status = run.status()
    assert status["jobs"] == ["41_0", "41_0.requeue"] and status["attempts"] == 2
    mark_failed(run.path, "node failure")
    assert run.status()["jobs"] == ["41_0", "41_0.requeue"] and run.status()["state"] == "failed"


def test_paper_scale_plan_estimates_epoch_runs_and_gpu_runs_are_not_run_on_the_cpu(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        S, "choose_executor", lambda requested: (requested or "local", "default: no SLURM cluster")
    )
    rc = S.main(["sweeps/length.yaml", "--dry-run", "--runs-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line[:1].isdigit() and "len" in line]
    assert rc == 0 and len(rows) == 5 and all(not line.rstrip().endswith(" -") for line in rows), (
        out
    )
    assert "device-hours" in out and "warning: 5 run(s) ask for GPUs" in err
    rc = S.main(["sweeps/length.yaml", "--runs-dir", str(tmp_path), "--no-describe"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: 5 run(s) ask for GPUs" in err and "--executor local" in err
    assert not any(
        p for p in tmp_path.rglob("*") if p.is_dir() and p.name != ".sweep" and p.parent != tmp_path
    )


def test_progress_text_shows_step_rate_and_eta(tmp_path):
    from harness.runstore import RunStore

    store = RunStore(tmp_path / "r")
    store.create()
    assert X.progress_text(store) is None
    store.write_progress(step=120, total=1200, phase="train", steps_per_s=2.1, eta_s=514.3)
    assert X.progress_text(store) == "step 120/1200 (10%), 2.1 steps/s, ETA 8m34s"
    store.write_progress(
        step=1200, total=1200, phase="final evaluation", steps_per_s=2.0, eta_s=0.0
    )
    assert X.progress_text(store) == "step 1200/1200 (100%), final evaluation"


def test_local_threads_are_the_class_cpus_within_the_machines_share():
    from harness.executors import local_threads

    assert local_threads(cpus_per_task=1, share=2) == 1  # alone on 2 cores: still the class's 1
    assert local_threads(cpus_per_task=8, share=2) == 2  # a GPU class on a laptop: its share
    assert local_threads(cpus_per_task=2, share=1) == 1  # two runs at once on 2 cores
    assert local_threads(cpus_per_task=0, share=4) == 1  # never below one thread
