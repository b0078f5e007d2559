"""harness/resolved.py: one run config resolved once, read by describe, the sweep plan and _train."""

from __future__ import annotations

import dataclasses

import pytest

from harness import sweep as S
from harness.config import ConfigError, RunConfig, apply_overrides, check_model_config, run_id
from harness.data import synth
from harness.resolved import resolve

ONETRANS = {
    "data": {"dataset": "synthetic:ci", "seq_len": 8, "batch_size": 32},
    "model": {"name": "onetrans", "size": "onetrans-tiny"},
}


def _cfg(tmp_path, **over) -> RunConfig:
    cfg = RunConfig.from_dict(ONETRANS)
    return apply_overrides(cfg, {"data.cache_dir": str(tmp_path / "cache"), **over})


def test_resolve_decides_everything_the_config_implies_without_touching_data(tmp_path):
    cfg = _cfg(tmp_path, **{"train.recompute": True, "train.compile": True})
    r = resolve(cfg)
    assert r.run_id == run_id(cfg)
    assert r.model_config == check_model_config(cfg.model)
    # onetrans compiles block by block: the switch goes to build(), the decision says so
    assert r.execution_kwargs() == {"recompute": True, "compile_blocks": True}
    assert r.decisions["compile"]["value"] == "blocks"
    assert dict(r.axes) == {
        "seq_len": 8,
        **{f: getattr(r.model_config, f) for f in ("n_layers", "d_model", "n_heads")},
    }
    assert r.dataset.folder == synth.cached_folder("ci", 0, tmp_path / "cache")
    assert r.dataset.manifest == synth.manifest_for("ci", 0)
    assert r.dataset.train_impressions == synth.expected_train_impressions("ci")
    assert r.feature_spec == synth.manifest_for("ci", 0).feature_spec(
        8, n_gap_buckets=cfg.data.n_gap_buckets
    )
    assert not (tmp_path / "cache").exists()  # planning generated nothing


def test_the_resolved_config_cannot_be_changed_by_its_readers(tmp_path):
    r = resolve(_cfg(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.run_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.decisions["compile"] = {}  # type: ignore[index]
    handed = r.execution_decisions()
    handed["compile"]["value"] = "changed"  # a copy: the trainer extends it with its own
    assert r.decisions["compile"]["value"] is False


def test_a_switch_the_model_lacks_fails_at_resolution(tmp_path):
    cfg = _cfg(tmp_path, **{"train.request_level": True, "model.overrides.causal": False})
    with pytest.raises(ConfigError, match="needs model.overrides.causal = true"):
        resolve(cfg)


def test_planned_samples_are_steps_times_batch_else_epochs_times_the_train_split(tmp_path):
    steps = resolve(_cfg(tmp_path, **{"train.max_steps": 10, "resources.devices": 2}))
    assert steps.planned_train_samples() == 10 * 32 * 2
    epochs = resolve(_cfg(tmp_path, **{"train.max_steps": -1, "train.max_epochs": 3}))
    assert epochs.planned_train_samples() == 3 * synth.expected_train_impressions("ci")


def test_describe_and_the_plans_cost_column_read_the_resolved_config(tmp_path):
    from harness.sweepfile import load_sweep
    from harness.sweepfile import resolve as resolve_sweep
    from harness.train import describe

    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(
        "name: s\naxis: length\nbase:\n"
        "  data: {dataset: 'synthetic:ci', seq_len: 8, batch_size: 32, "
        f"cache_dir: '{tmp_path / 'cache'}'}}\n"
        "  model: {name: onetrans, size: onetrans-tiny}\n"
        "  train: {max_steps: 10}\n"
        "grid: {data.seq_len: [8, 16]}\n"
    )
    runs = resolve_sweep(load_sweep(sweep_file))
    rows, note = S.build_rows(runs, tmp_path / "runs" / "s")
    assert note == ""
    for run, row in zip(runs, rows, strict=True):
        r = resolve(run.cfg)
        d = describe(run.cfg)
        assert d == r.description  # --describe prints the resolved description
        assert row.params == d["params"]["dense"]
        assert row.flops_example == d["flops"]["train_per_example"] > 0
        assert (
            row.flops_total
            == row.flops_example * r.planned_train_samples()
            == (row.flops_example * 10 * 32)
        )
    assert rows[1].flops_example > rows[0].flops_example  # seq_len is read, not shared
    assert not (tmp_path / "cache").exists()  # the plan generated no data
