"""The length report beside the count-feature floor (analysis/floor.py): read from
<sweep>/.sweep/floor.json, one row per window, and a sentence that says where the model's mean is
below the floor and by how much."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.analyze import analyze
from analysis.collect import collect
from analysis.fit import FitSettings
from analysis.floor import find_floors, floor_sentences
from analysis.report.build import _floor_blocks, conclusions
from tests.fixtures.make_runs import make_runs

LENGTHS = [64, 128, 256, 512, 1024, 2048]


def _write_floor(sweep_dir, floor_auc):
    recs = [
        {"seq_len": L, "test": {"ctr_auc": a, "ctr_uauc": 0.5}, "val": {"ctr_auc": a}}
        for L, a in zip(LENGTHS, floor_auc)
    ]
    (sweep_dir / ".sweep").mkdir(exist_ok=True)
    doc = {"sweep": "length", "datasets": [{"data.dataset": "d", "records": recs}]}
    (sweep_dir / ".sweep" / "floor.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The length fixture (AUC = 0.70 + 0.01 log10 L: 0.718 at 64 ... 0.733 at 2048) with a floor
    of 0.70 up to L 512 and 0.75 at 1024 and 2048: the model is below it at the two longest."""
    runs = make_runs(tmp_path_factory.mktemp("floor") / "runs", only="length")
    _write_floor(runs / "length", [0.70] * 4 + [0.75] * 2)
    coll = collect([runs])
    floors, warnings = find_floors(coll.runs["run_dir"])
    assert not warnings and set(floors["length"]) == set(LENGTHS)
    return analyze(coll, settings=FitSettings(n_boot=100), metrics=("ctr_auc",), floors=floors)


def test_table_has_the_floor_beside_the_model_at_each_length(analysed):
    t = analysed.floor_table()
    assert list(t["seq_len"]) == LENGTHS
    assert list(t["ctr_auc below floor"]) == [False] * 4 + [True] * 2
    d = analysed.collection.done
    for _, r in t.iterrows():
        mean = d.loc[d["axes.seq_len"] == r["seq_len"], "test.ctr_auc"].mean()
        assert r["model ctr_auc"] == pytest.approx(mean)
        assert r["ctr_auc model − floor"] == pytest.approx(mean - r["floor ctr_auc"])
    assert not t["ctr_uauc below floor"].any()  # a floor UAUC of 0.5: the model is above it


def test_conclusions_say_where_the_model_is_below_and_by_how_much(analysed):
    t = analysed.floor_table()
    lines = [line for line in conclusions(analysed) if "Count-feature floor" in line]
    assert len(lines) == 1
    line = lines[0]
    assert "BELOW the floor" in line
    for L in (1024, 2048):
        gap = t.loc[t["seq_len"] == L, "ctr_auc model − floor"].item()
        assert gap < 0 and f"L {L} ({gap:+.4f})" in line.split("above it")[0]
    assert "L 64 (+" in line.split("above it")[1]
    text, table = _floor_blocks(analysed)
    assert "BELOW the floor" in text.markdown and table.name == "count_feature_floor"


def test_above_everywhere_and_no_floor(tmp_path):
    runs = make_runs(tmp_path / "runs", only="length")
    coll = collect([runs])
    assert find_floors(coll.runs["run_dir"]) == ({}, [])
    an = analyze(coll, settings=FitSettings(n_boot=100), metrics=("ctr_auc",))
    assert an.floor_table().empty and not any("floor" in c for c in conclusions(an))
    _write_floor(runs / "length", [0.6] * 6)
    an = analyze(
        coll,
        settings=FitSettings(n_boot=100),
        metrics=("ctr_auc",),
        floors=find_floors(coll.runs["run_dir"])[0],
    )
    (line,) = floor_sentences(an.floor_table(), "ctr_auc", "test")
    assert "above it at every window" in line and "BELOW" not in line
    assert np.all(an.floor_table()["ctr_auc model − floor"] > 0)
    (runs / "length" / ".sweep" / "floor.json").write_text("{not json")
    floors, warnings = find_floors(coll.runs["run_dir"])
    assert floors == {} and "floor.json" in warnings[0]
