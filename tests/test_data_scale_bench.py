"""benchmarks/data_scale.py at a small N: the generated log has the UserBehavior shape and every
step reports a wall time and a peak RSS measured in its own process."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import data_scale  # noqa: E402
import negatives_profile  # noqa: E402


def test_generated_log_has_the_userbehavior_shape(tmp_path):
    shape = data_scale.generate_log(tmp_path, 50_000, seed=1)
    df = pd.read_csv(tmp_path / "UserBehavior.csv", header=None, names=["u", "i", "c", "b", "ts"])
    assert len(df) == 50_000 and shape["users"] == round(50_000 / data_scale.ROWS_PER_USER)
    mix = df.b.value_counts(normalize=True)
    for name, share in data_scale.BEHAVIOUR_MIX.items():
        assert abs(mix[name] - share) < 0.01, name
    # Zipf popularity: the top 1% of items hold far more than 1% of the rows
    counts = np.sort(df.i.value_counts().to_numpy())[::-1]
    assert counts[: max(1, shape["items"] // 100)].sum() > 0.2 * len(df)
    assert df.ts.between(data_scale.START_TS, data_scale.START_TS + 9 * 86_400).all()
    assert df.groupby("i").c.nunique().max() == 1  # one category per item
    assert (df.groupby("u").ts.apply(lambda s: s.is_monotonic_increasing)).all()


def test_small_run_reports_every_step(tmp_path):
    out = tmp_path / "ds.json"
    assert data_scale.main(["--rows", "5000", "--out", str(out), "--work", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    assert list(res["steps"]) == [s for s in data_scale.STEPS if s != "prepare"]
    for name, s in res["steps"].items():
        assert s["wall_s"] > 0 and s["peak_rss_mb"] > 50, name  # a Python process, measured
    assert res["dataset"]["events"] == 5000
    assert res["steps"]["train_pass"]["result"]["impressions"] > 0
    ev = res["steps"]["eval_pass"]["result"]
    assert ev["val"]["impressions"] > 0 and ev["test"]["impressions"] > 0
    assert 0 <= ev["test"]["ctr_auc"] <= 1


def test_streaming_engine_and_chosen_steps(tmp_path):
    pytest.importorskip("duckdb")
    out = tmp_path / "ds.json"
    args = ["--rows", "5000", "--out", str(out), "--work", str(tmp_path), "--engine", "duckdb"]
    assert data_scale.main([*args, "--memory-limit", "1GB", "--steps", "convert,validate"]) == 0
    res = json.loads(out.read_text())
    assert list(res["steps"]) == ["convert", "validate"]
    assert res["settings"]["engine"] == "duckdb" and res["settings"]["memory_limit"] == "1GB"
    assert (tmp_path / "taobao" / "impressions").is_dir()  # part files
    assert res["dataset"]["events"] == 5000
    with pytest.raises(SystemExit):
        data_scale.main([*args, "--steps", "validate"])  # nothing to validate without convert


def test_mapped_storage_adds_its_build_step(tmp_path):
    # the batches themselves are compared with the in-memory set-up in tests/test_data_mapped.py
    out = tmp_path / "mapped.json"
    args = ["--rows", "5000", "--steps", "convert,train_pass,eval_pass", "--storage", "mapped"]
    args += ["--eval-sample-users", "0.5", "--out", str(out), "--work", str(tmp_path)]
    args += ["--train-max-s", "1e-9"]  # the timed part of an epoch: stops after its first batch
    assert data_scale.main(args) == 0
    res = json.loads(out.read_text())
    b = res["steps"]
    assert list(b) == ["convert", "prepare", "train_pass", "eval_pass"]
    assert res["settings"]["storage"] == "mapped"
    assert (tmp_path / "prepared").is_dir() and b["prepare"]["peak_rss_mb"] > 50
    tp = b["train_pass"]["result"]
    assert tp["batches"] == 1 < tp["of_batches"] and not tp["complete"]
    # one batch's time times the epoch's batches, up to pass_s's rounding to 0.01 s
    slack = 0.005 * tp["of_batches"] + 0.05
    assert tp["epoch_s_extrapolated"] == pytest.approx(tp["pass_s"] * tp["of_batches"], abs=slack)
    for split in ("val", "test"):
        ev = b["eval_pass"]["result"][split]
        assert 0 < ev["requests"] < ev["of_requests"]  # a seeded half of the users
    assert "RssFile_mb" in b["train_pass"]["result"]["memory_at_end"]


@pytest.mark.parametrize("shape", ["tmall", "movielens"])
def test_other_shapes_convert_and_validate(tmp_path, shape):
    # each shape's generated log goes through its own converter and the validator unchanged
    out = tmp_path / "ds.json"
    args = ["--rows", "20000", "--shape", shape, "--steps", "convert,validate,stats"]
    assert data_scale.main([*args, "--out", str(out), "--work", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    assert res["log"]["shape"] == shape and (tmp_path / shape / "manifest.yaml").is_file()
    assert res["settings"]["neg_ratio"] == {"tmall": 4, "movielens": 0}[shape]
    # movielens: at 20k rows (1,000 movies) the heaviest users reach the cap of a quarter of them
    assert res["dataset"]["events"] == res["log"]["rows"] > 0.7 * 20_000
    assert list(res["steps"]) == ["convert", "validate", "stats"]


def test_tmall_log_has_the_public_shape(tmp_path):
    data_scale.generate_log(tmp_path, 30_000, seed=2, shape="tmall")
    df = pd.read_csv(tmp_path / "t_alibaba_data.csv")
    assert list(df.columns) == ["user_id", "brand_id", "type", "visit_datetime"]
    assert len(df) == 30_000
    mix = df.type.value_counts(normalize=True)
    assert abs(mix[0] - 0.9544) < 0.01 and abs(mix[1] - 0.0382) < 0.01
    month = df.visit_datetime.str.split("-").str[0].astype(int)
    assert month.between(4, 8).all() and month.nunique() == 5


def test_movielens_log_rates_a_movie_once(tmp_path, monkeypatch):
    monkeypatch.setattr(data_scale, "CHUNK_ROWS", 7_000)  # several blocks
    shape = data_scale.generate_log(tmp_path, 30_000, seed=2, shape="movielens")
    r = pd.read_csv(tmp_path / "ratings.dat", sep="::", header=None, engine="python")
    assert len(r) == shape["rows"] <= 30_000 and not r.duplicated([0, 1]).any()
    assert r[2].between(1, 5).all() and (r.groupby(0)[3].diff().dropna() >= 0).all()
    users = (tmp_path / "users.dat").read_text().splitlines()
    assert len(users) == shape["users"] and set(r[0]) <= set(range(1, shape["users"] + 1))


def test_train_pass_orders_the_epoch_as_asked(tmp_path):
    out = tmp_path / "blocks.json"
    args = ["--rows", "5000", "--steps", "convert,train_pass", "--order", "blocks"]
    args += ["--shuffle-block", "32", "--shuffle-window", "2", "--out", str(out)]
    assert data_scale.main([*args, "--work", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["order"] == "blocks" and res["settings"]["shuffle_block"] == 32
    tp = res["steps"]["train_pass"]["result"]
    assert tp["complete"] and tp["impressions"] > 0
    folder = str(tmp_path / "taobao")
    opts = {"storage": "memory", "eval_sample_users": 0.0}
    for order, block, chrono in (
        ("blocks", 32, False),
        ("chronological", 0, True),
        ("uniform", 0, False),
    ):
        o = opts | {"order": order, "shuffle_block": 32, "shuffle_window": 2}
        dm = data_scale._datamodule(folder, 16, 64, o)
        assert (dm.shuffle_block, dm.chronological) == (block, chrono), order


def test_negatives_profile_times_the_phase_it_runs(tmp_path):
    """benchmarks/negatives_profile.py draws the negatives the streaming convert writes (as many,
    neg_ratio 4 per positive) and times the draws, the SQL and the writes."""
    pytest.importorskip("duckdb")
    from harness.data.converters import convert, stream

    data_scale.generate_log(tmp_path / "raw", 5_000, seed=1)
    out = tmp_path / "res" / "profile.json"
    assert negatives_profile.main([str(tmp_path / "raw"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    folder = convert("taobao", tmp_path / "raw", tmp_path / "st", engine="duckdb", neg_ratio=4)
    clicks = pd.read_parquet(folder / "impressions").click
    assert res["negative_rows"] == (clicks == 0).sum() == 4 * (clicks == 1).sum()
    assert res["seconds"]["draw"] > 0 and any(k.startswith("sql: ") for k in res["seconds"])
    assert not any((tmp_path / "res").glob(".negatives-profile.*"))  # its database removed
    assert stream.Sampler.draw.__qualname__ == "Sampler.draw"  # the timers undone
