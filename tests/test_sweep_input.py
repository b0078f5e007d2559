"""Issue #21, sweep-file and CLI input: each bad input ends in one clear line naming the field, the
problem and the fix (no traceback); big grids plan fast and are warned about; the executor line comes
first; a wrong-shaped ledger line or a wrong-typed status.json field is named and survived."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import sweep as S
from harness.config import ConfigError, apply_overrides, load_config
from harness.runstore import Ledger, RunStore
from harness.sweepfile import (
    CHECK_ALL_UP_TO,
    SweepFileError,
    _covering,
    expand,
    load_sweep,
    resolve,
)
from tests.data_support import write_tiny_folder

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

BASE = {
    "name": "inp",
    "base": {
        "data": {"dataset": "synthetic:ci", "seq_len": 8},
        "model": {"name": "onetrans", "size": "onetrans-tiny"},
        "train": {"max_steps": 2, "optimizer": "adamw", "precision": "32-true"},
        "logging": {"wandb": "disabled", "progress_bar": False},
    },
    "grid": {"data.seq_len": [4, 8]},
    "seeds": [0],
    "resources": {"default": {"devices": 1, "accelerator": "cpu", "cpus_per_task": 1}},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


# ------------------------------------------------------------------ non-finite and negative numbers


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan", "1e999", "Infinity"])
def test_non_finite_learning_rate_is_refused(value):
    cfg = load_config(TINY, check_model=False)
    with pytest.raises(ConfigError, match=r"train\.lr = .* is not a finite number; give a finite"):
        apply_overrides(cfg, [f"train.lr={value}"], check_model=False)


def test_negative_learning_rate_names_the_fix():
    cfg = load_config(TINY, check_model=False)
    with pytest.raises(ConfigError, match=r"train\.lr must be > 0, got -0\.001; give a positive"):
        apply_overrides(cfg, ["train.lr=-1e-3"], check_model=False)


def test_cli_refuses_inf_lr_in_one_line():
    proc = cli("-m", "harness.train", "--config", str(TINY), "--set", "train.lr=inf", "--describe")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lr = inf is not a finite number" in lines[0]


def test_sweep_file_with_inf_lr_names_file_and_run(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["grid"]["train.lr"] = [0.001, float("inf")]
    path = write(tmp_path, data)
    with pytest.raises(SweepFileError, match=r"s\.yaml: run len4-lrinf-s0: train\.lr = inf"):
        resolve(load_sweep(path), check_model=False)


# ---------------------------------------------------------------------------- duplicate grid values


def test_duplicate_grid_values_of_different_types_are_called_duplicates(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["grid"]["data.seq_len"] = [8, "8"]
    with pytest.raises(SweepFileError) as info:
        load_sweep(write(tmp_path, data))
    msg = str(info.value)
    assert "grid.data.seq_len repeats a value: 8 and '8' are duplicates" in msg
    assert "quotes make YAML read a string" in msg and "remove one" in msg
    assert "baseline" not in msg


# -------------------------------------------------------------------------------- --only with bad YAML


def test_only_with_broken_yaml_is_one_line(tmp_path):
    path = write(tmp_path, BASE)
    proc = cli(
        "-m",
        "harness.sweep",
        "plan",
        str(path),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-describe",
        "--only",
        "data.seq_len=[1",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'[1' is not valid YAML" in lines[0]
    assert "--only data.seq_len=1024" in lines[0]


# --------------------------------------------------------------------------------------- big grids


def big_grid(tmp_path: Path, n: int = 100) -> Path:
    data = json.loads(json.dumps(BASE))
    data["grid"] = {
        "data.seq_len": list(range(1, n + 1)),
        "train.lr": [round(1e-4 * (i + 1), 6) for i in range(n)],
    }
    data["presets"] = {"other": {"set": {"train.max_steps": 3}}}
    return write(tmp_path, data)


def test_unselected_preset_check_covers_every_value_of_a_big_grid(tmp_path):
    sweep = load_sweep(big_grid(tmp_path), None)
    runs = expand(sweep)
    assert len(runs) == 10_000 > CHECK_ALL_UP_TO
    cover = _covering(runs)
    assert len(cover) <= 200  # the sum of the axis lengths, not their product
    for key in sweep.grid:
        assert {r.axes[key] for r in cover} == set(sweep.grid[key])


def test_a_bad_value_deep_in_an_unselected_preset_of_a_big_grid_is_still_found(tmp_path):
    data = yaml.safe_load(big_grid(tmp_path).read_text())
    data["presets"]["other"]["grid"] = {"train.lr": [*data["grid"]["train.lr"][:-1], -1.0]}
    path = write(tmp_path, data)
    with pytest.raises(
        SweepFileError, match=r"(?s)train\.lr must be > 0, got -1\.0.*preset .other."
    ):
        load_sweep(path, None)


def test_plan_warns_above_the_run_threshold_and_the_threshold_is_overridable(tmp_path):
    path = write(tmp_path, BASE)  # 2 runs
    for warn_runs, warned in ((1, True), (2, False), (0, False)):
        err = io.StringIO()
        S.run_sweep(
            path,
            command="plan",
            runs_dir=tmp_path / "runs",
            describe=False,
            warn_runs=warn_runs,
            out=io.StringIO(),
            err=err,
        )
        text = err.getvalue()
        assert ("plans 2 runs (more than --warn-runs 1" in text) == warned, text
        if warned:
            assert "grid: data.seq_len 2 x 1 seed(s)" in text and "--warn-runs 2" in text


@pytest.mark.slow
def test_ten_thousand_point_grid_plans_with_a_warning(tmp_path):
    """The issue's case end to end (not timed: ~5 s of CPU, was ~100 s): every run in the table,
    params/FLOPs described once per distinct model, the size warning first."""
    out, err = io.StringIO(), io.StringIO()
    outcome = S.run_sweep(
        big_grid(tmp_path), command="plan", runs_dir=tmp_path / "runs", out=out, err=err
    )
    assert len(outcome.rows) == 10_000 and all(r.params for r in outcome.rows)
    assert "plans 10,000 runs (more than --warn-runs 1,000" in err.getvalue()
    assert "10000 runs: 10000 new" in out.getvalue()


# ---------------------------------------------------------------------------- the executor line


def fake_sinfo(tmp_path: Path) -> dict:
    """A PATH whose `sinfo` answers like a one-node test cluster (the issue's case)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sinfo = bin_dir / "sinfo"
    sinfo.write_text("#!/bin/sh\necho 'debug*'\n")
    sinfo.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_executor_and_why_is_the_first_line(tmp_path, monkeypatch):
    path = write(tmp_path, BASE)
    env = fake_sinfo(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    out = io.StringIO()
    outcome = S.run_sweep(
        path, dry_run=True, runs_dir=tmp_path / "runs", describe=False, out=out, err=io.StringIO()
    )
    first = out.getvalue().splitlines()[0]
    assert outcome.executor == "slurm"
    assert first.startswith("executor: slurm (default: SLURM controller answers `sinfo`")
    assert "these runs ask for CPUs only: --executor local runs them on this machine" in first
    out = io.StringIO()
    S.run_sweep(
        path,
        dry_run=True,
        executor="local",
        runs_dir=tmp_path / "runs",
        describe=False,
        out=out,
        err=io.StringIO(),
    )
    assert out.getvalue().splitlines()[0] == "executor: local (requested with --executor)"


# ------------------------------------------------------------------------ ledger and status.json


def test_wrong_shaped_ledger_line_is_named_and_nothing_is_destroyed(tmp_path):
    path = write(tmp_path, BASE)
    runs_dir = tmp_path / "runs"
    ledger = Ledger(runs_dir / "inp")
    ledger.record("aaaaaaaaaaaa", "local", pid=1)
    with open(ledger.path, "a") as f:
        f.write(json.dumps({"run_id": "bbbbbbbbbbbb", "job": "12"}) + "\n")  # no 'executor'
        f.write("[1, 2]\n")
    before = ledger.path.read_bytes()
    # status: the line is named, ignored, and the plan is shown
    proc = cli("-m", "harness.sweep", "status", str(path), "--runs-dir", str(runs_dir))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warn = proc.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith(
        f"warning: {ledger.path} line 2: missing 'executor'"
    )
    assert "fix or delete that line" in warn[0] and "(and 1 more bad line(s))" in warn[0]
    assert "2 runs:" in proc.stdout
    # run: refused in one line, nothing started, the ledger untouched
    proc = cli("-m", "harness.sweep", "run", str(path), "--runs-dir", str(runs_dir))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [x for x in proc.stderr.strip().splitlines() if x]
    assert len(err) == 1 and err[0].startswith(f"error: {ledger.path} line 2: missing 'executor'")
    assert "nothing was started" in err[0]
    assert ledger.path.read_bytes() == before
    assert not any(p.is_dir() and p.name != ".sweep" for p in (runs_dir / "inp").iterdir())
    assert (
        Ledger(runs_dir / "inp").problems()[1].startswith(f"{ledger.path} line 3: expected a JSON")
    )


def test_wrong_typed_status_field_is_named_and_the_retry_rewrites_it(tmp_path, capsys):
    store = RunStore(tmp_path / "run")
    store.create()
    (store / "status.json").write_text(
        json.dumps({"state": "failed", "attempts": "three", "jobs": 7, "error": "boom"})
    )
    problems = store.status_problems()
    assert (
        len(problems) == 2 and "'attempts' is \"three\" (str), expected an integer" in problems[0]
    )
    assert store.folder_state() == "failed"  # the well-typed fields still count
    store.add_job("123")  # the dispatcher mirrors a job id: no TypeError on `jobs: 7`
    status = store.write_status("running", new_attempt=True)  # what a retry's train_run does
    assert status["attempts"] == 1 and status["jobs"] == ["123"]
    assert store.status_problems() == []
    assert json.loads((store / "status.json").read_text())["state"] == "running"
    (store / "status.json").write_text(json.dumps({"state": 3, "attempts": True}))
    store.write_status("running", new_attempt=True)
    err = capsys.readouterr().err
    assert "warning: " in err and "'state' is 3 (int)" in err and "rewritten" in err


def test_a_retry_survives_a_wrong_typed_status_field(tmp_path, capsys):
    """The issue's case through the driver: a failed run whose status.json says attempts "three"
    used to fail every retry in write_status (int("three")); the retry now runs (and fails for the
    run's own reason, its dataset), names the field, and rewrites the file."""
    from tests.sweep_support import write_sweep

    path = write_sweep(tmp_path, str(tmp_path / "no_such_dataset"), seeds=(0,))
    runs = tmp_path / "runs"
    S.run_sweep(path, executor="debug", runs_dir=runs, describe=False, out=io.StringIO())
    (run,) = [p for p in (runs / "runs_test").iterdir() if not p.name.startswith(".")]
    status = json.loads((run / "status.json").read_text())
    status["attempts"] = "three"
    (run / "status.json").write_text(json.dumps(status))
    capsys.readouterr()
    S.run_sweep(
        path,
        executor="debug",
        runs_dir=runs,
        describe=False,
        retry_failed=True,
        out=io.StringIO(),
    )
    err = capsys.readouterr().err
    assert f"{run / 'status.json'}: 'attempts' is \"three\" (str)" in err
    status = json.loads((run / "status.json").read_text())
    assert status["attempts"] == 1 and "no_such_dataset" in status["error"]
    assert "invalid literal" not in json.dumps(status)


# ------------------------------------------------------------------- real-data presets convert once


def tmall_sweep(tmp_path: Path, raw: Path) -> tuple[Path, Path]:
    folder = tmp_path / "data_cache" / "tmall"
    data = json.loads(json.dumps(BASE))
    data["base"]["data"] = {
        "dataset": str(folder),
        "seq_len": 8,
        "batch_size": 256,  # a Tmall request holds up to 235 impressions
        "eval_batch_size": 4096,
    }
    data["base"]["train"]["max_steps"] = 2
    data["grid"] = {"data.seq_len": [8]}
    data["datasets"] = {str(folder): {"convert": "tmall", "raw": str(raw)}}
    return write(tmp_path, data), folder


def test_plan_of_a_dataset_not_yet_converted_says_when_flops_appear(tmp_path):
    """The plan's cost column needs the folder's manifest (vocabularies size the model): before the
    `datasets:` entry converts it, the plan says so in one line instead of a describe error."""
    path, folder = tmall_sweep(tmp_path, tmp_path / "no_raw")
    out = io.StringIO()
    S.run_sweep(path, dry_run=True, runs_dir=tmp_path / "runs", describe=True, out=out)
    text = out.getvalue()
    assert f"params/FLOPs of the runs on {folder}: shown once the folder exists" in text
    assert "describe failed" not in text


def test_missing_raw_folder_is_one_line_and_nothing_is_converted(tmp_path):
    path, folder = tmall_sweep(tmp_path, tmp_path / "no_raw")
    out = io.StringIO()
    S.run_sweep(path, dry_run=True, runs_dir=tmp_path / "runs", describe=False, out=out)
    assert f"dataset {folder}: not converted yet; `run` converts it first" in out.getvalue()
    with pytest.raises(S.SweepError) as info:
        S.run_sweep(
            path, executor="debug", runs_dir=tmp_path / "runs", describe=False, out=io.StringIO()
        )
    msg = str(info.value)
    assert f"datasets.{folder}: the raw folder {tmp_path / 'no_raw'} does not exist" in msg
    assert "python -m harness.data convert tmall RAW_DIR --out" in msg and "\n" not in msg
    assert not folder.exists()


@pytest.mark.realdata
def test_real_data_folder_is_converted_on_first_use_then_reused(tmp_path, shared_data):
    path, folder = tmall_sweep(tmp_path, shared_data / "tmall-2014-brand-log")
    out = io.StringIO()
    outcome = S.run_sweep(
        path, executor="debug", runs_dir=tmp_path / "runs", describe=False, out=out
    )
    text = out.getvalue()
    assert outcome.code == 0 and [r.status for r in outcome.rows] == ["done"], text
    assert (
        f"converting tmall logs {shared_data / 'tmall-2014-brand-log'} once into {folder}" in text
    )
    assert (folder / "manifest.yaml").exists()
    out = io.StringIO()
    S.run_sweep(path, executor="debug", runs_dir=tmp_path / "runs", describe=False, out=out)
    assert "converting" not in out.getvalue() and "nothing to run: 1/1 runs done" in out.getvalue()


def test_a_folder_converted_before_item_pop_is_named_and_left_alone(tmp_path, capsys):
    """A `datasets:` folder whose manifest predates the item_pop feature gets one warning with the
    reconvert command; the folder is not touched (runs are keyed by config, not data content)."""
    path, folder = tmall_sweep(tmp_path, tmp_path / "raw")
    write_tiny_folder(folder, n_events=200, n_requests=40)
    before = (folder / "manifest.yaml").read_text()
    assert "item_pop" not in before
    S.run_sweep(path, dry_run=True, runs_dir=tmp_path / "runs", describe=False, out=io.StringIO())
    err = capsys.readouterr().err
    assert f"dataset {folder}: converted before the converters wrote item_pop" in err
    assert "--overwrite" in err and (folder / "manifest.yaml").read_text() == before
    # once converted with the feature (labels.item_pop recorded), no warning
    man = yaml.safe_load(before)
    man.setdefault("labels", {})["item_pop"] = True
    (folder / "manifest.yaml").write_text(yaml.safe_dump(man))
    S.run_sweep(path, dry_run=True, runs_dir=tmp_path / "runs", describe=False, out=io.StringIO())
    assert "item_pop" not in capsys.readouterr().err


def test_length_presets_declare_how_their_real_data_is_made():
    sweep = load_sweep(REPO / "sweeps" / "length.yaml", "taobao")
    for preset, source in (("taobao", "taobao"), ("tmall", "tmall")):
        runs = resolve(load_sweep(REPO / "sweeps" / "length.yaml", preset), check_model=False)
        (dataset,) = {r.cfg.data.dataset for r in runs}
        assert sweep.datasets[dataset].convert == source


def test_tiny_config_trains_at_the_documented_rate():
    # docs/learning-history.md: OneTrans stalls at lr 5e-3 on the history and learns at 1e-3
    assert load_config(TINY, check_model=False).train.lr == 1e-3
    assert "lr 1e-3" in (REPO / "docs" / "learning-history.md").read_text()
