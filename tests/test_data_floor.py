"""The count-feature floor (harness/data/floor.py): features against a per-row reference, the fit on a
planted world (near 1) and its control (near 0.5), the cache, the stats CLI and the sweep's
.sweep/floor.json with the results table that says when a run is below it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harness.data.__main__ import main
from harness.data.contract import ITEMS
from harness.data.floor import (
    CACHE_NAME,
    FloorFeatures,
    FloorTooLarge,
    compute_floor,
    reference_features,
)
from harness.data.planted import PlantedConfig, generate_planted
from tests.data_support import edit, write_tiny_folder

WINDOWS = (1, 3, 8, 50)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_items", [True, False])
def test_features_match_the_per_row_reference(tmp_path, seed, with_items):
    """Fresh random data with ts ties, a user without history and 3 behaviours; the candidates' side
    values come from items.parquet, or from the events when there is none (an item never logged: 0)."""
    folder = write_tiny_folder(tmp_path / "tiny", seed=seed, n_events=300, n_requests=40)
    if not with_items:
        (folder / ITEMS).unlink()
    feats = FloorFeatures(folder, WINDOWS)
    for L in WINDOWS:
        names, ref = reference_features(folder, L)
        assert feats.names == names
        np.testing.assert_allclose(feats.matrix(L), ref, err_msg=f"L={L}")
    # the features actually vary (the check is not vacuous)
    X = feats.matrix(8)
    assert (X > 0).mean(0)[names.index("item_in_window")] > 0
    assert (X > 0).mean(0)[names.index("category_in_window")] > 0.3


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    cfg = PlantedConfig(n_users=300, window=8)
    return (
        generate_planted(root / "rule", cfg, seed=0),
        generate_planted(
            root / "control", PlantedConfig(n_users=300, window=8, mismatch_users=True)
        ),
    )


def test_floor_reads_a_planted_count_and_nothing_in_its_control(planted):
    """click = the candidate's brand among the last 8 events: brand_in_window at L 8 decides it, so
    the floor is near 1 there (and lower at L 2, which sees only part of the window); with the events
    handed to other users the same labels are noise to it (near 0.5)."""
    rule, control = planted
    f = compute_floor(rule, [2, 8], cache=False)
    by_len = {r["seq_len"]: r for r in f["records"]}
    assert by_len[8]["test"]["ctr_auc"] > 0.99 and by_len[8]["val"]["ctr_auc"] > 0.99
    assert by_len[2]["test"]["ctr_auc"] < by_len[8]["test"]["ctr_auc"] - 0.05
    coef = by_len[8]["coef"]
    assert (
        max(coef, key=lambda k: abs(coef[k])) == "brand_in_window" and coef["brand_in_window"] > 0
    )
    assert by_len[8]["fit"]["converged"]
    c = compute_floor(control, [8], cache=False)["records"][0]
    assert abs(c["test"]["ctr_auc"] - 0.5) < 0.05 and abs(c["val"]["ctr_auc"] - 0.5) < 0.05


def test_floor_ablation_drops_a_feature(planted):
    """floor_at(drop=...): without the feature the planted rule lives in, the floor falls (item
    counts still carry part of the rule); the coefficients name only the kept features; an unknown
    name is a clear error."""
    from harness.data.floor import FloorFeatures, floor_at

    rule, _ = planted
    feats = FloorFeatures(rule, [8])
    full = floor_at(feats, 8)
    without = floor_at(feats, 8, drop=["brand_in_window"])
    assert "brand_in_window" not in without["coef"] and set(without["coef"]) < set(full["coef"])
    assert without["val"]["ctr_auc"] < full["val"]["ctr_auc"] - 0.05
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['nope'\] to drop"):
        floor_at(feats, 8, drop=["nope"])


def test_cache_is_reused_and_refreshed_when_the_data_change(tmp_path):
    folder = write_tiny_folder(tmp_path / "tiny", n_events=300, n_requests=60)
    a = compute_floor(folder, [4, 8])
    assert a["cached"] == [] and (folder / CACHE_NAME).exists()
    b = compute_floor(folder, [8, 16])
    assert b["cached"] == [8] and b["records"][0] == a["records"][1]
    edit(folder, "impressions.parquet", lambda df: df.assign(click=1 - df["click"]))
    c = compute_floor(folder, [8])
    assert c["cached"] == [] and c["fingerprint"] != a["fingerprint"]
    assert c["records"][0]["coef"] != a["records"][1]["coef"]
    with pytest.raises(FloorTooLarge, match="harness.data stats"):
        compute_floor(folder, [32], max_events=10)  # not cached and too large for the driver
    assert compute_floor(folder, [8], max_events=10)["cached"] == [8]  # cached: no limit


def test_stats_cli_prints_the_floor_table(planted, capsys):
    rule, _ = planted
    assert main(["stats", str(rule), "--floor", "8", "2", "--no-floor-cache"]) == 0
    text = capsys.readouterr().out
    assert "prior events/imp" in text  # the usual statistics come first
    head = text.index("count-feature floor")
    table = text[head:].splitlines()
    assert "val AUC" in table[1] and "test AUC" in table[1]
    assert table[2].split()[0] == "2" and table[3].split()[0] == "8"
    assert float(table[3].split()[3]) > 0.99  # test AUC at L 8
    assert any(line.split()[:1] == ["brand_in_window"] for line in table)
    assert main(["stats", str(rule), "--floor", "8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["floor"]["records"][0]["seq_len"] == 8 and "users" in doc
    assert main(["stats", str(rule), "--floor", "0"]) == 2
    assert "--floor" in capsys.readouterr().err


def _row(run_dir: Path, dataset: str, seq_len: int, auc: float | None):
    cfg = SimpleNamespace(
        data=SimpleNamespace(
            dataset=dataset,
            seq_len=seq_len,
            synthetic_preset=None,
            data_seed=0,
            cache_dir="data_cache",
        )
    )
    result = (
        {"model": "onetrans", "size": "tiny", "metrics": {"test": {"ctr_auc": auc}}}
        if auc is not None
        else None
    )
    return SimpleNamespace(
        run=SimpleNamespace(cfg=cfg, name=f"len{seq_len}"),
        run_dir=run_dir,
        status="done" if auc is not None else "queued",
        result=result,
    )


def test_sweep_writes_floor_json_and_results_say_below(planted, tmp_path):
    from harness.sweep import read_floor, results_lines, write_floor

    rule, _ = planted
    sweep_dir = tmp_path / "runs" / "length-x"
    said: list[str] = []
    write_floor([_row(sweep_dir / "a", str(rule), 8, None)], sweep_dir, said.append)
    write_floor(  # an --only subset later: the first window stays in the file
        [_row(sweep_dir / "b", str(rule), 2, None), _row(sweep_dir / "c", "/nowhere", 2, None)],
        sweep_dir,
        said.append,
    )
    assert any("/nowhere is not on this machine" in line for line in said)
    doc = json.loads((sweep_dir / ".sweep" / "floor.json").read_text())
    assert [r["seq_len"] for r in doc["datasets"][0]["records"]] == [2, 8]
    floor = read_floor(sweep_dir)
    f8 = floor[(str(rule), 8)]["ctr_auc"]
    rows = [
        _row(sweep_dir / "a", str(rule), 8, f8 - 0.1),
        _row(sweep_dir / "b", str(rule), 2, 0.99),
    ]
    text = "\n".join(results_lines(rows))
    assert "floor ctr_auc" in text and "(model below)" in text
    assert "below the count-feature floor" in text and f"len8 {-0.1:+.4f}" in text
    assert "len2 " not in text.split("below the count-feature floor")[1]


def test_window_split_script_splits_the_floor_by_window(planted):
    """scripts/window_split.py --floor: the whole-split AUC is the floor's own, and the split parts
    are the AUCs they claim (recomputed here from the floor's features and a fresh fit)."""
    import importlib.util

    from harness.data.floor import floor_at

    path = Path(__file__).resolve().parents[1] / "scripts" / "window_split.py"
    spec = importlib.util.spec_from_file_location("window_split", path)
    ws = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ws)
    rule, _ = planted
    got = ws.floor_split(rule, 8)
    feats = FloorFeatures(rule, [8])
    ref = floor_at(feats, 8)
    hit = feats.counts(8)[:, feats.names.index("item_in_window")] > 0
    for split in ("val", "test"):
        assert got[split]["auc"] == pytest.approx(ref[split]["ctr_auc"], abs=1e-4)
        s = feats.split == split
        assert got[split]["share_in"] == pytest.approx(hit[s & (feats.click == 1)].mean(), abs=1e-4)
        assert 0.0 <= got[split]["auc_out"] <= 1.0 and 0.0 <= got[split]["auc_in"] <= 1.0
    # window_aucs on a hand-made case: in-window positives all above every negative -> auc_in 1
    from harness.metrics import window_aucs

    y = np.array([1, 1, 0, 0, 1, 0])
    score = np.array([5.0, 4.0, 1.0, 2.0, 0.5, 3.0])
    hit = np.array([True, True, False, False, False, False])
    out = window_aucs(y, score, hit)
    assert out["auc_in"] == 1.0 and out["share_in"] == pytest.approx(2 / 3, abs=1e-4)
    assert (
        out["auc_out"] == 0.0
    )  # the one out-of-window positive (0.5) is below all three negatives
