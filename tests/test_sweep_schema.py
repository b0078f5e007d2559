"""Sweep-file validation: every bad input names the file, the key and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import cluster
from harness import executors as X
from harness.config import Resources
from harness.executors import submitit_parameters
from harness.sweepfile import SweepFileError, expand, load_sweep, parse_analysis, resolve

GOOD = {
    "name": "t",
    "base": {
        "data": {"dataset": "synthetic:ci", "seq_len": 8},
        "model": {"name": "onetrans", "size": "onetrans-tiny"},
    },
    "grid": {"data.seq_len": [4, 8], "train.lr": [0.001, 0.01]},
    "zip": [{"model.overrides.n_layers": [1, 2], "model.overrides.d_model": [16, 32]}],
    "baselines": [
        {"label": "dcn", "model": "dcnv2_din", "size": "tiny", "follow": ["data.seq_len"]}
    ],
    "seeds": [0, 1],
    "resources": {
        "default": {"devices": 1, "accelerator": "cpu"},
        "big": {"devices": 2, "accelerator": "cpu"},
    },
    "resource_rules": [{"when": {"model.overrides.n_layers": 2}, "class": "big"}],
    "analysis": {"x": "data.seq_len", "metrics": ["test.ctr_uauc"], "fit": "saturating"},
    "presets": {
        "ci": {
            "set": {"train.max_steps": 2},
            "grid": {"data.seq_len": [2, 3]},
            "baselines": {"dcn": {"size": "mini"}},
        }
    },
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bad(tmp_path, mutate, preset=None) -> str:
    data = copy.deepcopy(GOOD)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(SweepFileError) as info:
        resolve(load_sweep(path, preset), check_model=False)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


def test_good_file_expands_as_documented(tmp_path):
    runs = expand(load_sweep(write(tmp_path, GOOD)))
    # 2 seq_len x 2 lr x 2 zipped rows x 2 seeds = 16 base runs; baseline follows seq_len only: 2 x 2 seeds
    assert len(runs) == 16 + 4
    base = [r for r in runs if r.label == "base"]
    assert {r.resource_class for r in base if r.overrides["model.overrides.n_layers"] == 2} == {
        "big"
    }
    assert {r.resource_class for r in base if r.overrides["model.overrides.n_layers"] == 1} == {
        "default"
    }
    dcn = [r for r in runs if r.label == "dcn"]
    assert [r.axes for r in dcn] == [{"data.seq_len": 4}] * 2 + [{"data.seq_len": 8}] * 2
    assert all(
        r.overrides["model.name"] == "dcnv2_din" and r.overrides["model.overrides"] == {}
        for r in dcn
    )
    assert len({r.name for r in runs}) == len(runs)


def test_preset_changes_values_not_shape(tmp_path):
    path = write(tmp_path, GOOD)
    default, ci = expand(load_sweep(path)), expand(load_sweep(path, "ci"))
    assert len(default) == len(ci)
    assert sorted({r.axes.get("data.seq_len") for r in ci if r.label == "base"}) == [2, 3]
    assert all(r.overrides["train.max_steps"] == 2 for r in ci)
    assert {r.overrides["model.size"] for r in ci if r.label == "dcn"} == {"mini"}


def test_resolved_runs_derive_devices_from_one_value(tmp_path):
    runs = resolve(load_sweep(write(tmp_path, GOOD)), check_model=False)
    big = [r for r in runs if r.plan.resource_class == "big"]
    assert big and all(
        r.cfg.resources.devices == 2 and r.cfg.resources.accelerator == "cpu" for r in big
    )
    assert all(r.cfg.resources.gpus_per_node == 0 for r in big)  # cpu: tasks, no GPUs
    assert all(r.cfg.sweep == "t" and r.cfg.name == r.name for r in runs)


@pytest.mark.parametrize(
    "mutate,preset,expect",
    [
        (lambda d: d.update(gird={}), None, "Did you mean 'grid'"),
        (lambda d: d.pop("base"), None, "missing required key 'base'"),
        (
            lambda d: d["grid"].update({"data.seq_len": []}),
            None,
            "grid.data.seq_len must be a non-empty list",
        ),
        (lambda d: d["grid"].update({"data.seq_len": [4, 4]}), None, "repeats a value"),
        (lambda d: d["zip"][0].update({"model.overrides.d_model": [16]}), None, "equal length"),
        (
            lambda d: d["presets"]["ci"]["grid"].update({"data.seq_len": [2, 3, 4]}),
            "ci",
            "not the grid's shape",
        ),
        (
            lambda d: d["presets"]["ci"]["grid"].update({"data.seqlen": [2, 3]}),
            "ci",
            "Did you mean 'data.seq_len'",
        ),
        (lambda d: None, "cii", "Did you mean 'ci'"),
        (
            lambda d: d["resources"]["default"].update({"gpus": 1}),
            None,
            "unknown key 'resources.default.gpus'",
        ),
        (
            lambda d: d["resources"]["default"].update({"accelerator": "tpu"}),
            None,
            "accelerator must be one of",
        ),
        (lambda d: d["resource_rules"][0].update({"class": "bgi"}), None, "Did you mean 'big'"),
        (
            lambda d: d["baselines"][0].update({"follow": ["data.seqlen"]}),
            None,
            "Did you mean 'data.seq_len'",
        ),
        (lambda d: d["baselines"][0].update({"modle": "x"}), None, "Did you mean 'model'"),
        (lambda d: d["analysis"].update({"fit": "saturate"}), None, "Did you mean 'saturating'"),
        (lambda d: d.update(seeds=[0, 0]), None, "distinct integers"),
        (lambda d: d["grid"].update({"train.lrr": [1, 2]}), None, "Did you mean 'lr'"),
        (lambda d: d["grid"].update({"data.num_workers": [0, 1]}), None, "same run id"),
    ],
)
def test_bad_files_name_file_key_and_fix(tmp_path, mutate, preset, expect):
    assert expect in bad(tmp_path, mutate, preset)


@pytest.mark.parametrize("spelling", ["powerlaw", "saturating", "power"])
def test_fit_spellings_map_to_the_one_form_name(spelling):
    assert parse_analysis({"x": "data.seq_len", "fit": spelling}, "<sweep>", None).fit == "powerlaw"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SweepFileError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SweepFileError, match="not valid YAML"):
        load_sweep(p)


def test_submitit_parameters_one_value_rule():
    gpu = Resources(devices=4, accelerator="gpu", partition="p", account="a", qos="q")
    params = submitit_parameters(gpu, "x", max_parallel=2)
    assert params["tasks_per_node"] == params["gpus_per_node"] == 4
    assert (
        params["slurm_partition"] == "p"
        and params["slurm_account"] == "a"
        and params["slurm_qos"] == "q"
    )
    assert params["slurm_array_parallelism"] == 2
    cpu = submitit_parameters(Resources(devices=2, accelerator="cpu"), "x", None)
    assert cpu["tasks_per_node"] == 2 and "gpus_per_node" not in cpu


def test_one_resources_type_from_sweep_file_to_run_config_to_submitit(tmp_path):
    """A class of the sweep file is the run's `resources` section as it is; submitit gets it from there."""
    data = copy.deepcopy(GOOD)
    data["resources"]["big"].update(mem_gb=1.5, partition="p", time_min=30)
    runs = resolve(load_sweep(write(tmp_path, data)), check_model=False)
    big = next(r for r in runs if r.plan.resource_class == "big")
    assert (
        big.cfg.resources
        == big.resources
        == Resources(
            devices=2, accelerator="cpu", mem_gb=1.5, partition="p", time_min=30, cpus_per_task=8
        )
    )
    params = submitit_parameters(big.cfg.resources, "x", None)
    assert (
        params["mem_gb"] == 1.5 and params["timeout_min"] == 30 and params["slurm_partition"] == "p"
    )
    # a class the file leaves unsaid is a GPU job; a lone run config lets the Trainer pick (auto)
    # and asks the scheduler for no GPU
    data["resources"] = {"default": {}, "big": {}}
    (run, *_) = resolve(load_sweep(write(tmp_path, data)), check_model=False)
    assert run.cfg.resources.accelerator == "gpu" and run.cfg.resources.mem_gb == 64
    assert Resources().accelerator == "auto" and Resources().gpus_per_node == 0


def test_every_executor_has_the_one_interface(tmp_path):
    for name in ("debug", "local", "slurm"):
        ex = X.make_executor(name, tmp_path, None)
        assert isinstance(ex, X.Executor) and ex.name == name
        assert ex.on_this_machine == (name != "slurm") and ex.detached == (name == "slurm")
    # the state of a ledger entry is asked of the kind of executor that wrote it
    assert X.job_state({"executor": "debug", "pid": 1}, tmp_path) == "EXITED"
    assert (
        X.job_state({"executor": "slurm", "job_id": "7_1"}, tmp_path, {"7_1": "PENDING"})
        == "PENDING"
    )
    assert X.job_state(None, tmp_path) is None
    assert X.cancel({"a": {"executor": "debug", "pid": 1}}, {"a": tmp_path}) == []


def test_one_registry_names_the_executors(tmp_path, monkeypatch, capsys):
    """harness/executors.py EXECUTORS is read by the CLI's --executor choices, choose_executor and
    make_executor: a name added there is accepted by all three, an unknown one refused by all."""
    from harness import sweep

    class Extra(X.DebugExecutor):
        name = "extra"

    monkeypatch.setitem(X.EXECUTORS, "extra", Extra)
    assert cluster.choose_executor("extra") == ("extra", "requested with --executor")
    assert isinstance(X.make_executor("extra", tmp_path, None), Extra)
    with pytest.raises(SystemExit):  # argparse refuses before anything runs
        sweep.main([str(tmp_path / "none.yaml"), "--executor", "nope"])
    assert "choose from 'slurm', 'local', 'debug', 'extra'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="choose one of"):
        cluster.choose_executor("nope")
    with pytest.raises(ValueError, match="choose one of slurm, local, debug, extra"):
        X.make_executor("nope", tmp_path, None)


def test_local_and_debug_share_submit_and_follow():
    for name in ("submit", "follow"):
        assert getattr(X.LocalExecutor, name) is getattr(X.DebugExecutor, name)


def test_cluster_detection_asks_sinfo(monkeypatch, tmp_path):
    # an `sinfo` that exists but fails (installed client, no controller) must not count as a cluster
    fake = tmp_path / "sinfo"
    fake.write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    probe = cluster.probe_slurm()
    assert not probe.available and "exit 1" in probe.detail
    name, why = cluster.choose_executor(None)
    # the plan's executor line states the fact without the scheduler's error text
    assert name == "local" and "no SLURM cluster" in why and "Unable to contact" not in why
    with pytest.raises(RuntimeError, match="no cluster answers.*Unable to contact"):
        cluster.choose_executor("slurm")
    fake.write_text("#!/bin/sh\necho 'debug*'\n")
    assert cluster.probe_slurm().available


def test_cli_reports_bad_file_without_traceback(tmp_path):
    data = copy.deepcopy(GOOD)
    data["gird"] = {}
    path = write(tmp_path, data)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "status", str(path), "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Did you mean 'grid'" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_grid_and_typos_in_unselected_presets_are_errors(tmp_path):
    data = copy.deepcopy(GOOD)
    data["grid"] = {}
    with pytest.raises(SweepFileError, match="'grid' is empty"):
        load_sweep(write(tmp_path, data))
    data = copy.deepcopy(GOOD)
    data["presets"] = {
        "ci": {"set": {"train.max_steps": 2}},
        "laptop": {"set": {"train.max_step": 2}},
    }
    path = write(tmp_path, data)
    for preset in (None, "ci"):  # the typo is in 'laptop', reported whichever is selected
        with pytest.raises(SweepFileError, match="max_step") as info:
            load_sweep(path, preset)
        assert "laptop" in str(info.value)


def test_sweep_help_explains_the_subcommands():
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for word in ("plan ", "status ", "cancel ", "run ", "One driver owns a sweep folder"):
        assert word in proc.stdout, proc.stdout


def test_a_preset_may_change_the_seeds(tmp_path):
    data = copy.deepcopy(GOOD)
    data["presets"] = {"three": {"seeds": [5, 6, 7]}}
    path = write(tmp_path, data)
    base, three = expand(load_sweep(path)), expand(load_sweep(path, "three"))
    assert len(three) == 3 * len(base) // len(data["seeds"])
    assert sorted({r.seed for r in three}) == [5, 6, 7]
    data["presets"] = {"two": {"seeds": [0, 1]}, "bad": {"seeds": [1, 1]}}
    path = write(tmp_path, data)
    # every preset is checked at load
    with pytest.raises(SweepFileError, match=r"(?s)seeds.*preset 'bad'"):
        load_sweep(path, "two")
