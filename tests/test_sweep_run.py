"""The driver end to end with the debug (in-process) and local (subprocess) executors.

Failure paths use a dataset folder that does not exist (train_run fails fast, before any model is
built); the success/skip/resume path trains a real tiny run (marked slow: ~15 s quiet, minutes
on a loaded 2-core machine).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from harness import sweep as S
from tests.sweep_support import write_sweep

REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *args) -> tuple[int, str]:
    rc = S.main([*map(str, args), "--no-describe"])
    return rc, capsys.readouterr().out


def sweep(path: Path, **options) -> tuple[S.SweepOutcome, str]:
    """run_sweep as the CLI runs it: its outcome (rows, exit code) and what it printed."""
    out = io.StringIO()
    outcome = S.run_sweep(path, out=out, describe=False, **options)
    return outcome, out.getvalue()


def states(outcome: S.SweepOutcome) -> list[str]:
    return [r.status for r in outcome.rows]


@pytest.mark.parametrize("executor", ["debug", "local"])
def test_failed_runs_are_reported_and_retried_only_on_request(tmp_path, capsys, executor):
    path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"))
    runs = tmp_path / "runs"
    rc, out = cli(capsys, path, "--executor", executor, "--runs-dir", runs, "--max-parallel", 2)
    assert rc == 1 and out.count("] failed ") == 2, out
    assert states(S.run_sweep(path, command="status", runs_dir=runs, describe=False)) == [
        "failed",
        "failed",
    ]
    for d in (p for p in (runs / "runs_test").iterdir() if not p.name.startswith(".")):
        status = json.loads((d / "status.json").read_text())
        assert status["state"] == "failed" and "no_such_dataset" in status["error"]
        assert not (d / "DONE").exists()
        if executor == "local":  # the launcher's output is kept next to the run
            assert "no_such_dataset" in (d / "logs" / "launch.log").read_text()
    rc, out = cli(capsys, path, "--executor", executor, "--runs-dir", runs)
    assert "to run: 0; skipped: 2 failed" in out and "--retry-failed" in out
    outcome, out = sweep(
        path, executor=executor, runs_dir=runs, retry_failed=True, only=("seed=1",)
    )
    assert "to run: 1" in out and out.count("] failed ") == 1
    assert (
        outcome.code == 1
        and [r.run.plan.seed for r in outcome.rows] == [1]
        and states(outcome) == ["failed"]
    )
    ledger = (runs / "runs_test" / ".sweep" / "ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 3


@pytest.mark.slow
def test_debug_sweep_trains_skips_done_and_resumes_interrupted(tmp_path, capsys):
    path = write_sweep(tmp_path, "synthetic:ci", seeds=(0,))
    runs = tmp_path / "runs"
    outcome, out = sweep(path, executor="debug", runs_dir=runs)
    assert outcome.code == 0 and states(outcome) == ["done"] and outcome.executor == "debug"
    (run,) = [p for p in (runs / "runs_test").iterdir() if not p.name.startswith(".")]
    result = json.loads((run / "result.json").read_text())
    assert result["run_id"] == run.name and result["train"]["steps"] == 4
    (row,) = outcome.rows
    assert row.run_id == run.name and row.result == result and row.metrics == result["metrics"]

    rc, out = cli(capsys, path, "--executor", "debug", "--runs-dir", runs)
    assert rc == 0 and "to run: 0; skipped: 1 done" in out

    # a crash after the last checkpoint but before the record: no DONE, no result, status running
    (run / "DONE").unlink()
    (run / "result.json").unlink()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
    assert states(sweep(path, command="status", runs_dir=runs)[0]) == ["interrupted"]
    rc, out = cli(capsys, path, "--executor", "debug", "--runs-dir", runs)
    assert rc == 0 and "1/1 runs done" in out
    attempts = [json.loads(x) for x in (run / "logs" / "jobs.jsonl").read_text().splitlines()]
    assert [a["resumed_from_checkpoint"] for a in attempts] == [False, True]
    assert json.loads((run / "result.json").read_text())["train"]["steps"] == 4

    # --rerun-done keeps the old folder aside and trains again from scratch
    rc, out = cli(capsys, path, "--executor", "debug", "--runs-dir", runs, "--rerun-done")
    assert rc == 0 and "moved finished run" in out
    replaced = list((runs / "runs_test" / ".sweep" / "replaced").iterdir())
    assert len(replaced) == 1 and (replaced[0] / "result.json").exists()
    assert (run / "DONE").exists()
    assert len((run / "logs" / "jobs.jsonl").read_text().splitlines()) == 1


def test_the_driver_generates_a_synthetic_world_once_before_the_runs(tmp_path, capsys, monkeypatch):
    from harness.data import synth

    calls = []
    monkeypatch.setattr(
        synth, "ensure_synthetic", lambda *a, **k: calls.append(a)
    )  # nothing generated
    path = write_sweep(tmp_path, "synthetic:ci")
    data = yaml.safe_load(path.read_text())
    data["base"]["data"]["cache_dir"] = str(tmp_path / "cache")
    path.write_text(yaml.safe_dump(data))
    rc, out = cli(capsys, path, "--executor", "debug", "--runs-dir", tmp_path / "runs")
    # two runs of one world: the driver generates it once before the first run starts (the runs
    # themselves then find it cached; here, with generation mocked, they fail fast)
    assert calls[0] == ("ci", 0, str(tmp_path / "cache")) and rc == 1
    assert out.count("generating the synthetic world synthetic:ci (seed 0) once into") == 1
    assert out.index("generating the synthetic world") < out.index("] start ")


@pytest.mark.parametrize("damage", ["{ torn", "[1, 2]"])
def test_a_damaged_result_beside_done_is_named_and_re_evaluated(tmp_path, capsys, damage):
    from harness.runstore import MetricsCsv

    path = write_sweep(tmp_path, "synthetic:ci", seeds=(0,))
    runs = tmp_path / "runs"
    outcome, _ = sweep(path, executor="debug", runs_dir=runs)
    assert states(outcome) == ["done"]
    (run,) = [p for p in (runs / "runs_test").iterdir() if not p.name.startswith(".")]
    good = json.loads((run / "result.json").read_text())
    rows = MetricsCsv(run / "metrics.csv").read()
    (run / "result.json").write_text(damage)  # DONE stays

    rc = S.main(["status", str(path), "--runs-dir", str(runs), "--no-describe"])
    cap = capsys.readouterr()
    assert rc == 0 and "1 runs: 1 interrupted" in cap.out, cap.out
    (line,) = [x for x in cap.err.splitlines() if x.startswith("warning:")]
    assert str(run / "result.json") in line and "DONE" in line and "not counted as done" in line
    assert "re-evaluates it from its final checkpoint" in line and "Traceback" not in cap.err

    rc, out = cli(capsys, path, "--executor", "debug", "--runs-dir", runs)
    assert rc == 0 and "1/1 runs done" in out
    again = json.loads((run / "result.json").read_text())
    assert again["metrics"] == good["metrics"] and again["train"] == good["train"]
    assert (run / "DONE").exists()
    got = MetricsCsv(run / "metrics.csv").read()
    assert sorted((r["step"], r["metric"]) for r in got) == sorted(
        (r["step"], r["metric"]) for r in rows
    )  # re-evaluated: no row twice, none added


def test_dispatch_emits_events_and_only_the_cli_prints(tmp_path, capsys):
    """The dispatch code prints nothing: every line is a SweepEvent to the callback, progress lines
    carry the run and its state, and the CLI prints exactly the events' lines (dry run: same
    plan, so the same lines)."""
    path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"))
    runs = tmp_path / "runs"
    events: list[S.SweepEvent] = []
    outcome = S.run_sweep(
        path, executor="debug", runs_dir=runs, describe=False, on_event=events.append
    )
    assert capsys.readouterr() == ("", "")  # nothing printed
    assert outcome.code == 1 and {e.kind for e in events} <= set(S.EVENT_KINDS)
    assert events[0].kind == "plan" and events[0].text.startswith("executor: debug")
    failed = [e for e in events if e.kind == "progress" and e.state == "failed"]
    assert sorted(e.run_id for e in failed) == sorted(r.run_id for r in outcome.rows)
    assert events[-1].kind == "result" and events[-1].text.startswith("finished in")

    dry: list[S.SweepEvent] = []
    S.run_sweep(
        path,
        executor="debug",
        runs_dir=runs,
        describe=False,
        dry_run=True,
        retry_failed=True,
        on_event=dry.append,
    )
    rc = S.main(
        [str(path), "--executor", "debug", "--runs-dir", str(runs), "--no-describe"]
        + ["--dry-run", "--retry-failed"]
    )
    printed = capsys.readouterr()
    assert rc == 0 and printed.out == "".join(f"{e.text}\n" for e in dry if e.kind != "warning")
    assert printed.err == "".join(f"warning: {e.text}\n" for e in dry if e.kind == "warning")
    assert "to run: 2; skipped: none" in printed.out
