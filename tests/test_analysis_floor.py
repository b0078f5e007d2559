"""The length report beside the count-feature floor (analysis/floor.py): read from
<sweep>/.sweep/floor.json, one row per window with model − floor and its seed-noise interval, and a
sentence that says where the model is below the floor, level with it, or above, and by how much."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from analysis.analyze import analyze
from analysis.collect import collect
from analysis.fit import FitSettings
from analysis.floor import find_floors, floor_sentences, floor_table
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
        assert gap < 0 and f"L {L} ({gap:+.4f} [" in line.split("above it")[0]
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


def _done(values_by_L: dict[int, list[float]], metric: str = "ctr_auc") -> pd.DataFrame:
    rows = [
        {
            "sweep": "s",
            "model": "m",
            "size": "z",
            "axes.seq_len": L,
            "run_id": f"{L}-{i}",
            f"test.{metric}": v,
        }
        for L, vs in values_by_L.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def _floors(floor_by_L: dict[int, float], metric: str = "ctr_auc") -> dict:
    return {"s": {L: {"dataset": "d", "test": {metric: f}} for L, f in floor_by_L.items()}}


def test_the_difference_gets_a_t_interval_from_the_seed_sd_pooled_over_windows():
    """Two seeds at three windows (seed differences 0.01, 0.004, 0.006): pooled sd by hand, 3
    degrees of freedom, half-width t(0.975, 3) sd / sqrt(2); a floor far under (above), one inside
    the interval (level) and one far over (below)."""
    vals = {8: [0.70, 0.71], 16: [0.75, 0.754], 32: [0.80, 0.806]}
    table = floor_table(
        _done(vals), "test", _floors({8: 0.60, 16: 0.753, 32: 0.90}), metrics=("ctr_auc",)
    )
    sd = np.sqrt((0.01**2 / 2 + 0.004**2 / 2 + 0.006**2 / 2) / 3)
    half = student_t.ppf(0.975, 3) * sd / np.sqrt(2)
    for _, r in table.iterrows():
        d = np.mean(vals[r.seq_len]) - {8: 0.60, 16: 0.753, 32: 0.90}[r.seq_len]
        assert r["ctr_auc model − floor lo"] == pytest.approx(d - half)
        assert r["ctr_auc model − floor hi"] == pytest.approx(d + half)
    assert list(table["ctr_auc vs floor"]) == ["above", "level", "below"]
    # the mean alone is under at L 16 (0.752 < 0.753): "below floor" says so, "vs floor" says level
    assert list(table["ctr_auc below floor"]) == [False, True, True]
    (line,) = floor_sentences(table, "ctr_auc", "test")
    below, rest = line.split("level with it within seed noise at")
    assert "BELOW the floor** at L 32 (-0.0970 [" in below and "L 16" not in below
    assert rest.startswith(" L 16 (-0.0010 [") and "above it at L 8 (+0.1050 [" in rest
    assert "holds 0" in line and "suspect training" in line


def test_logloss_is_better_under_the_floor_and_one_seed_has_no_interval():
    vals = {8: [0.40, 0.41], 16: [0.50, 0.51]}
    table = floor_table(
        _done(vals, "ctr_logloss"),
        "test",
        _floors({8: 0.5, 16: 0.3}, "ctr_logloss"),
        metrics=("ctr_logloss",),
    )
    assert list(table["ctr_logloss vs floor"]) == ["above", "below"]
    one = floor_table(
        _done({8: [0.70], 16: [0.75]}), "test", _floors({8: 0.71, 16: 0.70}), metrics=("ctr_auc",)
    )
    assert list(one["ctr_auc vs floor"]) == ["below (1 seed)", "above (1 seed)"]
    assert one["ctr_auc model − floor lo"].isna().all()
    (line,) = floor_sentences(one, "ctr_auc", "test")
    assert (
        "BELOW the floor** at L 8 (-0.0100, 1 seed)" in line
        and "above it at L 16 (+0.0500, 1 seed)" in line
    )
