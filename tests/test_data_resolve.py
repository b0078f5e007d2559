"""harness/data/resolve.py: the one place a dataset name becomes a folder (and a planning manifest);
the trainer and the sweep driver go through it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.data import resolve, synth
from harness.data.contract import ContractError, Manifest
from tests.data_support import write_tiny_folder


def test_a_synthetic_name_is_its_cache_folder_and_nothing_is_generated(tmp_path):
    folder = resolve.dataset_folder("synthetic:ci", 3, tmp_path)
    assert folder == synth.cached_folder("ci", 3, tmp_path)
    assert folder.parent == tmp_path and "synth-ci-s3-" in folder.name
    assert list(tmp_path.iterdir()) == []  # only named, not made
    assert not resolve.is_ready("synthetic:ci", 3, tmp_path)


def test_a_path_is_itself():
    assert resolve.dataset_folder("data/tmall", 5, "elsewhere") == Path("data/tmall")
    assert resolve.synthetic_preset("data/tmall") is None


def test_an_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(
        ContractError, match="no synthetic preset 'nope'; choose one of .*synthetic:ci"
    ):
        resolve.dataset_folder("synthetic:nope", 0, tmp_path)
    with pytest.raises(ContractError, match="synthetic:laptop"):
        resolve.ensure_dataset("synthetic:nope", 0, tmp_path)


def test_ensure_dataset_generates_a_synthetic_world_through_the_cache(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        synth, "ensure_synthetic", lambda *a, **k: calls.append((a, k)) or Path("made")
    )
    assert resolve.ensure_dataset("synthetic:ci", 2, tmp_path, progress=True) == Path("made")
    assert calls == [(("ci", 2, tmp_path), {"progress": True})]
    # a folder is returned as given: nothing to generate
    assert resolve.ensure_dataset(tmp_path / "d") == tmp_path / "d" and len(calls) == 1


def test_planning_manifest_needs_no_data(tmp_path):
    assert resolve.planning_manifest("synthetic:ci", 1) == synth.manifest_for("ci", 1)
    folder = write_tiny_folder(tmp_path / "tiny")
    assert resolve.planning_manifest(folder) == Manifest.load(folder)
    with pytest.raises(ContractError, match="not a dataset folder"):
        resolve.planning_manifest(tmp_path / "absent")


def test_train_impressions_estimate_reads_stats_else_the_generators_expectation(tmp_path):
    # a synthetic world not generated yet: the generator's expectation
    assert resolve.train_impressions_estimate("synthetic:ci", 0, tmp_path) == (
        synth.expected_train_impressions("ci")
    )
    # a folder: its manifest's statistics; none recorded -> unknown
    folder = write_tiny_folder(tmp_path / "tiny")
    assert resolve.train_impressions_estimate(folder) is None
    m = Manifest.load(folder)
    replace(m, stats={"splits": {"train": {"impressions": 123}}}).save(folder)
    assert resolve.train_impressions_estimate(folder) == 123
    assert resolve.train_impressions_estimate(tmp_path / "absent") is None


def test_the_trainer_resolves_through_the_one_resolver(tmp_path, monkeypatch):
    from harness.config import RunConfig
    from harness.resolved import resolve as resolve_run

    cfg = RunConfig.from_dict({"data": {"dataset": "synthetic:ci", "cache_dir": str(tmp_path)}})
    seen = []
    for name in ("ensure_dataset", "planning_manifest", "train_impressions_estimate"):
        real = getattr(resolve, name)
        monkeypatch.setattr(
            resolve, name, lambda *a, _real=real, _n=name, **k: seen.append(_n) or _real(*a, **k)
        )
    monkeypatch.setattr(synth, "ensure_synthetic", lambda *a, **k: tmp_path / "world")
    dataset = resolve_run(cfg).dataset  # what the trainer, describe and the plan read
    assert dataset.ensure() == tmp_path / "world"
    assert dataset.manifest == synth.manifest_for("ci", 0)
    assert dataset.train_impressions == synth.expected_train_impressions("ci")
    assert seen == ["ensure_dataset", "planning_manifest", "train_impressions_estimate"]
