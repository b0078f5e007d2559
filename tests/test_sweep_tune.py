"""Sweep files: the `tune:` block (a per-point search) and the `budget:` block (matched compute).

A candidate is an ordinary run whose id is that of the same run planned without the search; a bad
tune or budget block is refused with the file and the field named; a budget derives each run's steps
from its model's training FLOPs per step and the plan states them."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import yaml

from harness.sweep import run_sweep
from harness.sweepfile import SweepFileError, expand, load_sweep, resolve, samples_per_step

REPO = Path(__file__).resolve().parents[1]

TUNED = {
    "name": "t",
    "base": {
        "data": {"dataset": "synthetic:ci", "seq_len": 8, "batch_size": 32},
        "model": {"name": "onetrans", "size": "onetrans-tiny"},
        "train": {"max_steps": 4, "optimizer": "adamw"},
    },
    "grid": {"data.seq_len": [4, 8]},
    "tune": {"train.lr": [3.0e-4, 1.0e-3, 3.0e-3], "by": "val.ctr_auc"},
    "seeds": [0, 1],
    "resources": {"default": {"devices": 1, "accelerator": "cpu"}},
    "presets": {"ci": {"tune": {"train.lr": [1.0e-4, 1.0e-3, 1.0e-2], "by": "val.ctr_uauc"}}},
}


def write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_candidate_is_a_run_of_its_own_with_the_point_it_belongs_to(tmp_path):
    runs = expand(load_sweep(write(tmp_path, TUNED)))
    assert len(runs) == 2 * 3 * 2  # points x candidates x seeds
    assert [r.name for r in runs[:6]] == [
        f"len4-lr{lr:g}-s{s}" for lr in (3e-4, 1e-3, 3e-3) for s in (0, 1)
    ]
    for r in runs:
        assert r.overrides["train.lr"] == r.tune["value"]
        assert r.tune["point"] == f"len{r.axes['data.seq_len']}" and r.tune["by"] == "val.ctr_auc"


def test_a_candidate_has_the_id_of_the_same_run_planned_without_the_search(tmp_path):
    """The tune label is a plan label, not part of the run config: the run at lr 1e-3 of the tuned
    sweep IS the run of the untuned sweep at lr 1e-3 (so finished runs are reused)."""
    tuned = resolve(load_sweep(write(tmp_path, TUNED)), check_model=False)
    plain = copy.deepcopy(TUNED)
    del plain["tune"], plain["presets"]
    plain["base"]["train"]["lr"] = 1.0e-3
    untuned = resolve(load_sweep(write(tmp_path, plain, "u.yaml")), check_model=False)
    at_1e3 = {(r.cfg.data.seq_len, r.cfg.seed): r.run_id for r in tuned if r.cfg.train.lr == 1e-3}
    assert at_1e3 == {(r.cfg.data.seq_len, r.cfg.seed): r.run_id for r in untuned}
    assert len({r.run_id for r in tuned}) == len(tuned)


def test_length_tuned_candidates_reuse_the_length_sweeps_runs():
    tuned = resolve(load_sweep(REPO / "sweeps" / "length_tuned.yaml", "laptop"), check_model=False)
    plain = resolve(load_sweep(REPO / "sweeps" / "length.yaml", "laptop"), check_model=False)
    assert {r.run_id for r in plain} <= {r.run_id for r in tuned}


def test_depth_laptop_tuned_candidates_reuse_the_depth_laptop_runs():
    """A preset may add a search to a file that has none: depth.yaml laptop-tuned is the laptop depth
    sweep with the rate searched, so its 1e-3 candidates are the untuned sweep's runs."""
    tuned = resolve(load_sweep(REPO / "sweeps" / "depth.yaml", "laptop-tuned"), check_model=False)
    plain = resolve(load_sweep(REPO / "sweeps" / "depth.yaml", "laptop"), check_model=False)
    assert len(tuned) == 3 * len(plain) and {r.run_id for r in plain} <= {r.run_id for r in tuned}


def test_a_preset_changes_the_candidates_and_the_metric(tmp_path):
    sweep = load_sweep(write(tmp_path, TUNED), "ci")
    assert sweep.tune.values == (1.0e-4, 1.0e-3, 1.0e-2) and sweep.tune.by == "val.ctr_uauc"


def _bad(tmp_path, mutate, preset=None) -> str:
    data = copy.deepcopy(TUNED)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(SweepFileError) as info:
        resolve(load_sweep(path, preset), check_model=False)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


@pytest.mark.parametrize(
    "mutate,expect",
    [
        # unknown key, with the closest valid one
        (lambda d: d["tune"].update({"train.lrr": d["tune"].pop("train.lr")}), "tune.train.lrr"),
        (lambda d: d["tune"].update({"train.lrr": d["tune"].pop("train.lr")}), "train.lr"),
        (lambda d: d["tune"].update({"train.lr": []}), "tune.train.lr must be a non-empty list"),
        (lambda d: d["tune"].update({"train.lr": 0.001}), "non-empty list"),
        (
            lambda d: d["tune"].update({"by": "test.ctr_auc"}),
            "tune.by = 'test.ctr_auc' is not a val",
        ),
        (lambda d: d["tune"].update({"by": "test.ctr_auc"}), "test split never chooses"),
        (lambda d: d["tune"].update({"by": "val.ctr_acu"}), "Did you mean 'ctr_auc'"),
        (lambda d: d["tune"].update({"by": "ctr_auc"}), "val.<metric>"),
        (lambda d: d["tune"].pop("by"), "tune.by is missing"),
        (lambda d: d["tune"].update({"train.weight_decay": [0.0, 0.1]}), "exactly one"),
        (lambda d: d.update({"tune": [1, 2]}), "'tune' must be a mapping"),
        (lambda d: d["tune"].update({"train.lr": [0.001, 0.001]}), "repeats a value"),
        (lambda d: d.update({"tune": {"data": [1, 2], "by": "val.ctr_auc"}}), "config section"),
        (
            lambda d: d.update({"tune": {"data.seq_len": [4, 8], "by": "val.ctr_auc"}}),
            "also a grid/zip axis",
        ),
    ],
)
def test_bad_tune_blocks_name_file_field_and_fix(tmp_path, mutate, expect):
    assert expect in _bad(tmp_path, mutate)


def test_bad_tune_inside_a_preset_names_the_preset(tmp_path):
    def mutate(d):
        d["presets"]["ci"]["tune"]["by"] = "test.ctr_auc"

    msg = _bad(tmp_path, mutate, preset="ci")
    assert "presets.ci.tune.by" in msg
    # an unselected preset is checked too
    assert "presets.ci.tune.by" in _bad(tmp_path, mutate)

    def shape(d):
        d["presets"]["ci"]["tune"]["train.lr"] = [1.0e-3, 1.0e-2]

    assert "not the key or their count" in _bad(tmp_path, shape, preset="ci")


def test_cli_plan_shows_candidates_and_cost(tmp_path):
    out = io.StringIO()
    run_sweep(write(tmp_path, TUNED), command="plan", runs_dir=tmp_path / "runs", out=out, err=out)
    text = out.getvalue()
    assert "lr=0.0003?" in text and "12 runs" in text
    assert "tune: train.lr over [0.0003, 0.001, 0.003]" in text
    assert "2 point(s) x 3 candidates x 2 seed(s) = 12 runs" in text
    assert "device-hours in all, 3x the untuned sweep" in text


# ------------------------------------------------------------------------------------ budget

BUDGETED = {
    "name": "b",
    "base": {
        "data": {"dataset": "synthetic:ci", "seq_len": 8, "batch_size": 32},
        "model": {"name": "onetrans", "size": "onetrans-tiny"},
        "train": {"max_steps": 4, "max_epochs": 50, "optimizer": "adamw"},
    },
    "zip": [
        {
            "model.name": ["dcnv2_din", "rankmixer_transformer", "onetrans"],
            "model.size": ["tiny", "tiny", "onetrans-tiny"],
        }
    ],
    "budget": {"train_flops": 1.0e10},
    "resources": {"default": {"devices": 1, "accelerator": "cpu"}},
}


def test_budget_derives_each_models_steps_from_its_flops_per_step(tmp_path):
    from harness.train import describe

    runs = resolve(load_sweep(write(tmp_path, BUDGETED)))
    steps = set()
    for r in runs:
        per_step = describe(r.cfg)["flops"]["train_per_example"] * samples_per_step(r.cfg)
        assert r.cfg.train.max_steps == int(1.0e10 // per_step)
        # the budget is spent to within one step, never exceeded
        assert 1.0e10 - per_step < r.cfg.train.max_steps * per_step <= 1.0e10
        steps.add(r.cfg.train.max_steps)
    assert len(steps) == 3  # the models differ in cost, so in steps


def test_budget_in_a_preset_and_the_plan_states_it(tmp_path):
    data = copy.deepcopy(BUDGETED)
    data["presets"] = {"small": {"budget": {"train_flops": "5e9"}}}  # YAML reads 5e9 as a string
    path = write(tmp_path, data)
    full = {r.cfg.model.name: r.cfg.train.max_steps for r in resolve(load_sweep(path))}
    half = {r.cfg.model.name: r.cfg.train.max_steps for r in resolve(load_sweep(path, "small"))}
    for model, n in full.items():
        assert half[model] in (n // 2, n // 2 + 1) or abs(half[model] - n / 2) <= 1
    out = io.StringIO()
    run_sweep(path, command="plan", preset="small", runs_dir=tmp_path / "runs", out=out, err=out)
    text = out.getvalue()
    assert "budget: 5G training FLOPs per run" in text
    for model, n in half.items():
        assert f"{model}/" in text and f"-> {n} steps" in text


@pytest.mark.parametrize(
    "budget,expect",
    [
        ({"train_flops": -1}, "must be a positive number"),
        ({"train_flops": "lots"}, "must be a positive number"),
        ({"flops": 1.0e10}, "must be {train_flops: FLOPS}"),
        ({"train_flops": 1.0e10, "steps": 3}, "unknown key 'budget.steps'"),
        ({"train_flops": 1.0}, "buys no step of this model"),
    ],
)
def test_bad_budgets_name_file_and_field(tmp_path, budget, expect):
    data = copy.deepcopy(BUDGETED)
    data["budget"] = budget
    path = write(tmp_path, data)
    with pytest.raises(SweepFileError) as info:
        resolve(load_sweep(path))
    assert str(path) in str(info.value) and expect in str(info.value)


@pytest.mark.parametrize("preset", ["ci-matched", "matched"])
def test_baselines_matched_presets_spend_one_budget_per_model(preset):
    from harness.train import describe

    sweep = load_sweep(REPO / "sweeps" / "baselines.yaml", preset)
    assert sweep.budget is not None
    for r in resolve(sweep):
        per_step = describe(r.cfg)["flops"]["train_per_example"] * samples_per_step(r.cfg)
        spent = r.cfg.train.max_steps * per_step
        assert sweep.budget - per_step < spent <= sweep.budget, r.name
