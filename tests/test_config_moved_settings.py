"""Settings with one home (issue #23): train.request_level reaches the models that have it, old
spellings are clear errors naming the new key, and run ids from before the move are unchanged
(existing run folders are still found and resumed).

The GOLDEN_* ids were computed by the harness before the move (main at 51b4422) from the same
settings in their old places; they pin that the canonical form hashes a moved setting as before.
"""

from __future__ import annotations

import pytest
import yaml

from harness.config import ConfigError, RunConfig, apply_overrides, load_config, run_id
from harness.resolved import execution
from harness.sweepfile import SweepFileError, parse_sweep, resolve
from model.features import tiny_spec
from model.registry import MODELS, build_model

ONETRANS = {"model": {"name": "onetrans", "size": "onetrans-tiny"}}
# onetrans-tiny with model.overrides {request_level: true, match_init: true}, hashed before the move
GOLDEN_REQUEST_LEVEL = "bb376fbfe1b5"
# onetrans-tiny with every default (train.request_level off hashes as its absence)
GOLDEN_ONETRANS_TINY = "91e7c683044c"


def _cfg(**dotted) -> RunConfig:
    return apply_overrides(RunConfig.from_dict(ONETRANS), dotted)


def _old_form(cfg: RunConfig) -> dict:
    """cfg's dict as the harness wrote config.yaml before the move."""
    d = cfg.to_dict()
    if d["train"].pop("request_level"):
        d["model"]["overrides"]["request_level"] = True
    return d


# ---- the new key -------------------------------------------------------------------------------


def test_train_request_level_reaches_onetrans():
    cfg = _cfg(**{"train.request_level": True})
    kw, decisions = execution(cfg)
    assert kw == {"request_level": True}
    assert decisions["request_level"] == {"value": True, "reason": "requested"}
    model = build_model("onetrans", tiny_spec(8), "onetrans-tiny", {}, kw)
    assert model.request_level is True
    kw, decisions = execution(_cfg())
    assert kw == {} and decisions["request_level"]["value"] is False


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"onetrans"}))
def test_a_baseline_asked_for_request_level_is_a_clear_error(name):
    """No baseline has an S side to share: the error says why and how to turn it off per row."""
    cfg = apply_overrides(
        RunConfig.from_dict({"model": {"name": name, "size": "tiny"}}),
        {"train.request_level": True},
    )
    with pytest.raises(
        ConfigError, match=f"model '{name}' has no request-level switch.*zip `set` column"
    ):
        execution(cfg)


def test_request_level_with_full_attention_names_both_keys():
    cfg = _cfg(**{"train.request_level": True, "model.overrides.causal": False})
    with pytest.raises(ConfigError, match="needs model.overrides.causal = true"):
        execution(cfg)


# ---- the old spellings ------------------------------------------------------------------------


def test_old_request_level_spelling_names_the_file_and_the_new_key(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "model: {name: onetrans, size: onetrans-tiny, overrides: {request_level: true}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "model.overrides.request_level" in msg
    assert "write train.request_level instead" in msg
    with pytest.raises(ConfigError, match="write train.request_level instead"):
        apply_overrides(_cfg(), ["model.overrides.request_level=true"])


def test_old_request_level_spelling_is_a_clean_cli_error(tmp_path, capsys):
    from harness.train import main

    path = tmp_path / "run.yaml"
    path.write_text("model: {name: onetrans, size: onetrans-tiny}\n")
    assert main(["--config", str(path), "--set", "model.overrides.request_level=true"]) == 2
    err = capsys.readouterr().err
    assert "write train.request_level instead" in err and "Traceback" not in err


def test_old_request_level_spelling_in_a_sweep_file_names_file_and_run(tmp_path):
    data = {
        "name": "s",
        "base": ONETRANS,
        "grid": {"data.seq_len": [4, 8]},
        "resources": {"default": {"accelerator": "cpu"}},
        "presets": {"ci": {"set": {"model.overrides.request_level": True}}},
    }
    path = tmp_path / "s.yaml"
    with pytest.raises(SweepFileError) as e:
        resolve(parse_sweep(data, path=path, preset="ci"), check_model=False)
    assert str(path) in str(e.value) and "write train.request_level instead" in str(e.value)


def test_a_zip_set_column_gives_rows_their_own_settings(tmp_path):
    """The per-row `set` column: dotted settings for some rows only, named like a model.overrides
    row ({} adds nothing), not an analysis axis; a key that is no run-config key is refused."""
    data = {
        "name": "s",
        "base": ONETRANS,
        "zip": [
            {
                "model.name": ["dcnv2_din", "onetrans"],
                "model.size": ["tiny", "onetrans-tiny"],
                "set": [{}, {"train.request_level": True}],
            }
        ],
        "resources": {"default": {"accelerator": "cpu"}},
    }
    runs = resolve(parse_sweep(data, path=tmp_path / "s.yaml"), check_model=True)
    assert [r.name for r in runs] == [
        "dcnv2_din-tiny-s0",
        "onetrans-onetrans-tiny-request_level-on-s0",
    ]
    assert [r.cfg.train.request_level for r in runs] == [False, True]
    assert all("set" not in r.plan.axes for r in runs)
    data["zip"][0]["set"] = [{}, {"train.request_levle": True}]
    with pytest.raises(
        SweepFileError, match=r"zip\[0\]\.set\[1\]\.train\.request_levle: not a run-config key"
    ):
        parse_sweep(data, path=tmp_path / "s.yaml")
    data["zip"][0]["set"] = [{}, "train.request_level=true"]
    with pytest.raises(SweepFileError, match="each row of a `set` column is a mapping"):
        parse_sweep(data, path=tmp_path / "s.yaml")


# ---- run identity: ids from before the move stay, old run folders are found and resumed ---------


def test_request_level_hashes_as_before_the_move():
    on = _cfg(**{"train.request_level": True, "model.overrides.match_init": True})
    assert run_id(on) == GOLDEN_REQUEST_LEVEL
    assert run_id(_cfg()) == GOLDEN_ONETRANS_TINY
    assert run_id(on) != run_id(apply_overrides(on, {"train.request_level": False}))


def test_a_stored_config_of_before_the_move_loads_with_its_id(tmp_path):
    """A run folder's config.yaml written before the move (request_level under model.overrides)
    reads as train.request_level, with the folder's id; a person's config with it is an error."""
    new = _cfg(**{"train.request_level": True, "model.overrides.match_init": True})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_old_form(new), sort_keys=False))
    stored = load_config(path, stored=True)
    assert stored == new and run_id(stored) == GOLDEN_REQUEST_LEVEL
    with pytest.raises(ConfigError, match="write train.request_level instead"):
        load_config(path)


def test_train_run_reads_an_old_run_folder_with_its_id(tmp_path):
    """train_run compares a folder's config.yaml with the run it is asked to train: an old folder's
    file is read (not refused) and its id is the folder's own."""
    from harness.train import train_run

    folder = tmp_path / GOLDEN_REQUEST_LEVEL
    folder.mkdir()
    old = _cfg(**{"train.request_level": True, "model.overrides.match_init": True})
    (folder / "config.yaml").write_text(yaml.safe_dump(_old_form(old), sort_keys=False))
    with pytest.raises(ConfigError, match=f"holds run {GOLDEN_REQUEST_LEVEL} "):
        train_run(_cfg(), folder)


# ---- devices, nodes and accelerator: resources only -------------------------------------------

# onetrans-tiny hashed before the move, with train.{devices, num_nodes, accelerator} as the sweep
# file parser copied them from the class (2 x 2 CPU; 4 GPUs) and as a lone run set it (gpu)
GOLDEN_RESOURCES = {
    "b8eff77568fc": {"resources.devices": 2, "resources.nodes": 2, "resources.accelerator": "cpu"},
    "d0db54ba9c54": {"resources.devices": 4, "resources.accelerator": "gpu"},
    "89be894a5d87": {"resources.accelerator": "gpu"},
}


@pytest.mark.parametrize("rid", sorted(GOLDEN_RESOURCES))
def test_devices_nodes_accelerator_hash_as_before_the_move(rid):
    assert run_id(_cfg(**GOLDEN_RESOURCES[rid])) == rid


def test_resources_are_part_of_the_id_only_through_devices_nodes_accelerator():
    base = run_id(_cfg())
    assert run_id(_cfg(**{"resources.mem_gb": 99, "resources.partition": "p"})) == base
    for change in (
        {"resources.devices": 2},
        {"resources.nodes": 2},
        {"resources.accelerator": "cpu"},
    ):
        assert run_id(_cfg(**change)) != base, change


@pytest.mark.parametrize(
    "old, new",
    [
        ("devices", "resources.devices"),
        ("num_nodes", "resources.nodes"),
        ("accelerator", "resources.accelerator"),
    ],
)
def test_old_device_spellings_name_the_new_key(tmp_path, old, new):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {{name: onetrans, size: onetrans-tiny}}\ntrain: {{{old}: 1}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert f"'train.{old}' is no longer a key here: write {new} instead" in str(e.value)
    with pytest.raises(ConfigError, match=f"write {new} instead"):
        apply_overrides(_cfg(), [f"train.{old}=1"])


def test_old_device_spelling_is_a_clean_cli_error(tmp_path, capsys):
    from harness.train import main

    path = tmp_path / "run.yaml"
    path.write_text("model: {name: onetrans, size: onetrans-tiny}\n")
    assert main(["--config", str(path), "--set", "train.devices=2"]) == 2
    err = capsys.readouterr().err
    assert "write resources.devices instead" in err and "Traceback" not in err


def test_a_sweep_file_sets_devices_through_its_resource_class_only(tmp_path):
    data = {
        "name": "s",
        "base": ONETRANS,
        "grid": {"data.seq_len": [4, 8]},
        "resources": {"default": {"accelerator": "cpu", "devices": 2, "nodes": 3}},
        "presets": {"ci": {"set": {"train.num_nodes": 2}}},
    }
    path = tmp_path / "s.yaml"
    runs = resolve(parse_sweep(data, path=path), check_model=False)
    assert {(r.cfg.resources.devices, r.cfg.resources.nodes) for r in runs} == {(2, 3)}
    with pytest.raises(SweepFileError) as e:
        resolve(parse_sweep(data, path=path, preset="ci"), check_model=False)
    assert str(path) in str(e.value) and "write resources.nodes instead" in str(e.value)
    # a class is a scheduler request: gpu or cpu; auto is a lone run's default only
    data["resources"]["default"]["accelerator"] = "auto"
    with pytest.raises(
        SweepFileError, match=r"resources.default: accelerator must be one of \('gpu', 'cpu'\)"
    ):
        parse_sweep(data, path=path)


def test_a_stored_config_with_train_devices_loads_with_its_id(tmp_path):
    """config.yaml of a sweep run written before the move (train.devices/num_nodes/accelerator
    beside the resources section) and of a lone run (train.accelerator auto, resources cpu)."""
    for settings, rid in (
        (GOLDEN_RESOURCES["d0db54ba9c54"], "d0db54ba9c54"),
        ({}, GOLDEN_ONETRANS_TINY),
    ):
        new = _cfg(**settings)
        d = new.to_dict()
        res = d["resources"]
        d["train"] |= {
            "devices": res["devices"],
            "num_nodes": res["nodes"],
            "accelerator": res["accelerator"],
        }
        if res["accelerator"] == "auto":  # the old lone-run default of the resources section
            res["accelerator"] = "cpu"
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        stored = load_config(path, stored=True)
        assert stored == new and run_id(stored) == rid
        with pytest.raises(ConfigError, match="is no longer a key here"):
            load_config(path)


def test_the_trick_analysis_pairs_runs_finished_before_and_after_the_move(tmp_path):
    """analysis.tricks pairs runs by their recorded configs: a result.json of before the move
    reads as the same config as one of after."""
    import json

    from analysis.tricks import read_config

    new = _cfg(**{"train.request_level": True, "resources.accelerator": "cpu"})
    old = _old_form(new)
    old["train"] |= {"devices": 1, "num_nodes": 1, "accelerator": "cpu"}
    for name, cfg in (("old", old), ("new", new.to_dict())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps({"config": cfg}))
    assert read_config(tmp_path / "old") == read_config(tmp_path / "new")
