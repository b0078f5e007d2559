"""Collecting run folders: finished runs become rows, unfinished ones are listed, bad input is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.collect import CollectError, collect, metric_split, x_value
from tests.fixtures.make_runs import SAMPLES, TRUTH, make_runs


@pytest.fixture(scope="module")
def length_runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("runs"), only="length")


def test_collect_lists_done_and_unfinished_runs(length_runs):
    c = collect([length_runs])
    t = TRUTH["length"]
    assert len(c.done) == len(t["values"]) * t["seeds"]
    states = sorted(c.problems["status"])
    assert states == ["failed", "incomplete", "running"]
    failed = c.problems[c.problems["status"] == "failed"].iloc[0]
    assert (
        "out of memory" in failed["error"]
        and failed["sweep"] == "length"
        and failed["model"] == "onetrans"
    )
    assert "no DONE" in c.problems[c.problems["status"] == "incomplete"].iloc[0]["error"]
    # one training-FLOPs axis for every finished run, from flops.train_total
    assert np.all(c.done["train_flops"] > 0)
    row = c.done.iloc[0]
    assert row["train_flops"] == pytest.approx(row["flops.train_per_example"] * SAMPLES)
    assert metric_split(c.done) == "test"
    assert sorted(x_value(c.done, "seq_len").unique()) == t["values"]


def test_train_flops_falls_back_to_per_example_times_samples(tmp_path):
    root = make_runs(tmp_path, only="width")
    res_path = next(root.rglob("result.json"))
    rec = json.loads(res_path.read_text())
    del rec["flops"]["train_total"]
    res_path.write_text(json.dumps(rec))
    c = collect([root])
    row = c.done[c.done["run_id"] == rec["run_id"]].iloc[0]
    assert row["train_flops"] == pytest.approx(
        rec["flops"]["train_per_example"] * rec["train"]["samples"]
    )


def test_several_roots_and_no_silent_duplicates(length_runs, tmp_path):
    other = make_runs(tmp_path, only="depth")
    c = collect([length_runs, other])
    assert set(c.done["sweep"]) == {"length", "depth"}
    twice = collect([length_runs, length_runs])
    assert len(twice.done) == len(collect([length_runs]).done)
    assert any("duplicate" in w for w in twice.warnings)


def test_bad_input_names_file_and_fix(tmp_path, length_runs):
    with pytest.raises(CollectError, match="not a directory"):
        collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectError, match="no run folders"):
        collect([tmp_path / "empty"])
    bad = make_runs(tmp_path / "bad", only="width")
    n_runs = len(collect([bad]).done)
    res = next(bad.rglob("result.json"))
    before = res.read_text()[:10]
    res.write_text(before)  # truncated file, with DONE beside it
    c = collect([bad])  # does not abort: the run is listed as corrupt, with its path
    assert len(c.done) == n_runs - 1
    corrupt = c.problems[c.problems["status"] == "corrupt"]
    assert (
        len(corrupt) == 1
        and str(res) in corrupt.iloc[0]["error"]
        and "not valid JSON" in corrupt.iloc[0]["error"]
    )
    assert corrupt.iloc[0]["sweep"] == "width"  # labels from config.yaml
    assert res.read_text() == before  # nothing destroyed
    rec_path = next(p for p in bad.rglob("result.json") if p != res)
    rec = json.loads(rec_path.read_text())
    del rec["metrics"]
    rec_path.write_text(json.dumps(rec))
    c = collect([bad])
    assert (c.problems["status"] == "corrupt").sum() == 2
    assert c.problems["error"].str.contains("'metrics' missing.*contracts.md").any()
    # a status.json that is not JSON next to a good result: the result is used, a warning names the file
    status = next(
        p for p in bad.rglob("status.json") if p.parent not in (res.parent, rec_path.parent)
    )
    status.write_text("{")
    c = collect([bad])
    assert len(c.done) == n_runs - 2 and any(str(status) in w for w in c.warnings)


def test_a_run_copied_into_another_sweep_folder_joins_that_sweep(length_runs, tmp_path):
    """docs/sweeps.md: a tuned sweep reuses the untuned sweep's finished runs by copying their folders
    (same run ids). The driver counts them as done in the new folder; the analysis must group them
    with the folder's sweep, not under the label of the sweep that first trained them."""
    import shutil

    src = collect([length_runs]).done.iloc[0]
    target = tmp_path / "length_tuned-laptop"
    (target / ".sweep").mkdir(parents=True)
    shutil.copytree(src["run_dir"], target / src["run_id"])
    row = collect([target]).done.iloc[0]
    assert row["sweep"] == "length_tuned-laptop" and row["copied_from_sweep"] == src["sweep"]
    # a runs folder that is not a sweep folder (no .sweep/) keeps the recorded label
    plain = tmp_path / "elsewhere"
    shutil.copytree(src["run_dir"], plain / src["run_id"])
    assert collect([plain]).done.iloc[0]["sweep"] == src["sweep"]
