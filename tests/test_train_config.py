"""harness.config: validation with helpful errors, YAML round trip, overrides, run identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config as C
from harness.config import ConfigError, RunConfig, apply_overrides, load_config, run_id, run_name
from tests import train_support as S

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("stand_in")  # tests/conftest.py


def _cfg(**kw) -> RunConfig:
    return RunConfig.from_dict({"model": {"name": S.MODEL, "size": "tiny"}, **kw})


def test_yaml_round_trip_is_lossless(tmp_path):
    cfg = _cfg(train={"lr": 3e-4, "optimizer": "paper"}, logging={"tags": ["a", "b"]}, seed=3)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    back = load_config(path)
    assert back == cfg
    assert back.logging.tags == ("a", "b") and isinstance(back.train.lr, float)


@pytest.mark.parametrize(
    "d, needle",
    [
        ({"train": {"lrr": 1e-3}}, "unknown key 'train.lrr'. Did you mean 'lr'?"),
        ({"trian": {}}, "unknown key 'trian'. Did you mean 'train'?"),
        (
            {"train": {"optimizer": "adam"}},
            "choose one of ['adamw', 'paper']. Did you mean 'adamw'?",
        ),
        ({"train": {"max_steps": 1.5}}, "train.max_steps = 1.5 (float); expected an integer"),
        ({"train": {"compile": "yes"}}, "expected true or false"),
        ({"data": {"batch_size": 0}}, "data.batch_size must be >= 1"),
        ({"model": {"name": "onetrnas"}}, "Did you mean 'onetrans'?"),
        ({"model": {"name": S.MODEL, "size": "tiyn"}}, "Did you mean 'tiny'?"),
        (
            {"model": {"name": S.MODEL, "size": "tiny", "overrides": {"d_modl": 8}}},
            "Did you mean 'd_model'?",
        ),
        (
            {"model": {"name": S.MODEL, "size": "tiny", "overrides": {"d_model": "big"}}},
            "give a value of that type",
        ),
        # execution switches live in train.* only (docs/training.md): the old model-option spellings name the new key
        (
            {
                "model": {
                    "name": "onetrans",
                    "size": "onetrans-tiny",
                    "overrides": {"attention": "sdpa"},
                }
            },
            "model.overrides.attention is no longer a model option: execution switches live in the run config; "
            "write train.attention instead",
        ),
        (
            {
                "model": {
                    "name": "onetrans",
                    "size": "onetrans-tiny",
                    "overrides": {"compile_blocks": True},
                }
            },
            "write train.compile instead",
        ),
        # the baselines' own attention switch before issue #23: one key, one vocabulary now
        (
            {
                "model": {
                    "name": "rankmixer_transformer",
                    "size": "tiny",
                    "overrides": {"attn_impl": "plain"},
                }
            },
            "model.overrides.attn_impl is no longer a model option: execution switches live in the "
            "run config; write train.attention instead (docs/training.md). Values: 'plain' is now "
            "'reference', 'sdpa' stays 'sdpa'.",
        ),
    ],
)
def test_bad_configs_name_file_key_and_closest_valid_name(tmp_path, d, needle):
    d = {"model": {"name": S.MODEL, "size": "tiny"}, **d}
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_resources_of_older_run_configs_stay_readable():
    """Run folders written before the sweep's resource class became the run config's `resources`
    say gpus_per_node; they load as devices + accelerator."""
    old = {
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "mem_gb": 2,
        "time_min": 10,
        "partition": "",
        "account": "",
        "qos": "",
    }
    cfg = RunConfig.from_dict({"model": {"name": S.MODEL, "size": "tiny"}, "resources": old})
    assert (
        cfg.resources.accelerator == "cpu"
        and cfg.resources.gpus_per_node == 0
        and cfg.resources.mem_gb == 2
    )
    gpu = RunConfig.from_dict(
        {"model": {"name": S.MODEL, "size": "tiny"}, "resources": {"gpus_per_node": 1}}
    )
    assert gpu.resources.devices == 1 and gpu.resources.accelerator == "gpu"
    assert RunConfig.from_dict(gpu.to_dict()) == gpu
    with pytest.raises(ConfigError, match="resources: gpus_per_node = 2 contradicts devices = 1"):
        RunConfig.from_dict(
            {
                "model": {"name": S.MODEL, "size": "tiny"},
                "resources": {"gpus_per_node": 2, "devices": 1},
            }
        )


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="choose one of"):
        C.TrainConfig(precision="fp16")
    assert C.TrainConfig(lr=1).lr == 1.0 and isinstance(C.TrainConfig(lr=1).lr, float)


def test_overrides_dotted_and_strings():
    cfg = _cfg()
    a = apply_overrides(cfg, {"train.max_steps": 10, "model.overrides.d_model": 16})
    b = apply_overrides(cfg, ["train.max_steps=10", "model.overrides.d_model=16"])
    assert a == b and a.train.max_steps == 10 and a.model.overrides == {"d_model": 16}
    c = apply_overrides(
        cfg, ["train.lr=3e-4", "logging.tags=[x, y]", "data.dataset=synthetic:small"]
    )
    assert (
        c.train.lr == 3e-4 and c.logging.tags == ("x", "y") and c.data.synthetic_preset == "small"
    )
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        apply_overrides(cfg, ["trian.lr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])
    with pytest.raises(ConfigError, match="write train.recompute instead"):
        apply_overrides(cfg, ["model.overrides.recompute=true"])
    with pytest.raises(
        ConfigError, match="write train.attention instead.*'plain' is now 'reference'"
    ):
        apply_overrides(cfg, ["model.overrides.attn_impl=sdpa"])


def test_train_attention_reaches_the_attention_baselines():
    """train.attention is the baselines' one attention setting: execution() hands it to build()."""
    from harness.resolved import execution

    base = {"model.name": "rankmixer_longer", "model.size": "tiny"}
    kw, _ = execution(apply_overrides(_cfg(), {**base, "train.attention": "sdpa"}))
    assert kw == {"attention": "sdpa"}
    kw, _ = execution(apply_overrides(_cfg(), base))
    assert kw == {}  # auto: the model decides (reference for the baselines)
    with pytest.raises(ConfigError, match="no attention switch"):
        execution(
            apply_overrides(_cfg(), {**base, "model.name": "dcnv2_din", "train.attention": "sdpa"})
        )


def test_old_switch_spelling_is_a_clean_cli_error(tmp_path, capsys):
    from harness.train import main

    path = tmp_path / "old.yaml"
    path.write_text("model: {name: onetrans, size: onetrans-tiny, overrides: {attention: sdpa}}\n")
    assert main(["--config", str(path), "--describe"]) == 2
    err = capsys.readouterr().err
    assert "write train.attention instead" in err and "Traceback" not in err


def test_run_id_covers_semantics_and_ignores_cadence_labels_and_resources():
    cfg = _cfg()
    rid = run_id(cfg)
    assert len(rid) == 12 and int(rid, 16) >= 0
    same = apply_overrides(
        cfg,
        {
            "data.num_workers": 4,
            "train.log_every_n_steps": 3,
            "train.eval_every_n_steps": 7,
            "train.ckpt_every_n_steps": 9,
            "logging.wandb": "disabled",
            "sweep": "other",
            "name": "x",
            "axis": "seq_len",
            "resources.partition": "gpu",
            "resources.qos": "high",
            "resources.account": "me",
            "resources.time_min": 999,
        },
    )
    assert run_id(same) == rid
    for change in (
        {"seed": 1},
        {"train.lr": 0.01},
        {"data.seq_len": 128},
        {"model.overrides.d_model": 16},
        {"train.optimizer": "paper"},
        {"data.dataset": "synthetic:small"},
    ):
        assert run_id(apply_overrides(cfg, change)) != rid, change


def test_run_id_is_stable_golden():
    # pins the hashing scheme: if this changes, every existing run folder is orphaned (bump SCHEMA on purpose)
    cfg = RunConfig.from_dict(
        {"model": {"name": "onetrans", "size": "onetrans-s"}}, check_model=False
    )
    assert run_id(cfg) == GOLDEN


GOLDEN = "f815d60447be"


def test_run_name_readable():
    cfg = _cfg(
        data={"seq_len": 1024},
        model={"name": S.MODEL, "size": "tiny", "overrides": {"n_layers": 6, "d_model": 256}},
    )
    assert run_name(cfg) == f"{S.MODEL}-tiny-len1024-w256-d6-s0"
    assert run_name(apply_overrides(cfg, {"name": "mine"})) == "mine"


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert files, "configs/ holds the example run configs"
    for f in files:
        load_config(f, check_model=False)
