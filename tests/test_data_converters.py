"""Converters: tiny raw fixtures written here (MovieLens, Taobao, Tmall) and the real copies."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.data.converters import convert
from harness.data.datamodule import OneTransDataModule


def load(folder: Path):
    return (
        pd.read_parquet(folder / "events.parquet"),
        pd.read_parquet(folder / "impressions.parquet"),
        yaml.safe_load((folder / "manifest.yaml").read_text()),
    )


def check_common(folder: Path, neg_ratio: int) -> None:
    ev, im, man = load(folder)
    # contract basics: sorted events, 1-based contiguous ids, request-contiguous impressions
    assert (ev.groupby("user_id").ts.apply(lambda s: s.is_monotonic_increasing)).all()
    assert ev.user_id.is_monotonic_increasing
    assert ev.item_id.min() >= 1 and im.item_id.max() < man["item_vocab"]
    assert sorted(ev.user_id.unique()) == list(range(1, ev.user_id.nunique() + 1))
    assert (im.conversion <= im.click).all()
    assert im.request_id.is_monotonic_increasing and im.ts.is_monotonic_increasing
    assert (im.groupby("request_id")[["user_id", "ts"]].nunique() == 1).all(axis=None)
    # chronological split
    order = {"train": 0, "val": 1, "test": 2}
    assert (im.split.map(order).diff().fillna(0) >= 0).all()
    # sampled negatives: exact ratio, never an item the user interacted with
    if neg_ratio:
        seen = set(zip(ev.user_id, ev.item_id))
        negs = im[im.click == 0]
        assert len(negs) == neg_ratio * int((im.click == 1).sum())
        assert not any((u, i) in seen for u, i in zip(negs.user_id, negs.item_id))
    # the data module reads it
    dm = OneTransDataModule(folder, seq_len=8, batch_size=64, drop_last=False)
    n = sum(b["req_index"].shape[0] for s in ("train", "val", "test") for b in dm.loader(s))
    assert n == len(im)


# ---- MovieLens --------------------------------------------------------------------------------
def write_movielens(raw: Path, gz: bool = True) -> Path:
    raw.mkdir(parents=True)
    ratings = [
        (1, 10, 5, 100),
        (1, 20, 3, 100),
        (1, 30, 4, 50),
        (2, 10, 1, 70),
        (2, 30, 5, 90),
        (2, 20, 4, 200),
        (3, 40, 2, 300),
        (3, 10, 5, 310),
        (3, 20, 4, 310),
        (3, 30, 3, 400),
    ]
    text = "".join(
        f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings
    )  # grouped by user, not by time
    if gz:
        with gzip.open(raw / "ratings.dat.gz", "wt") as f:
            f.write(text)
    else:
        (raw / "ratings.dat").write_text(text)
    (raw / "users.dat").write_text(
        "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::18::3::11111\n"
    )
    (raw / "movies.dat").write_bytes(
        "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action|Crime\n"
        "30::Alien (1979)::Horror|Sci-Fi\n40::Nosferatu (1922)::Horror\n"
        "50::Unrated (1990)::Drama\n".encode("latin-1")
    )
    return raw


@pytest.mark.parametrize("gz", [True, False])
def test_movielens_labels_ties_requests(tmp_path, gz):
    out = convert(
        "movielens",
        write_movielens(tmp_path / "raw", gz),
        tmp_path / "ml",
        val_frac=0.2,
        test_frac=0.2,
    )
    ev, im, man = load(out)
    assert len(ev) == 10 and len(im) == 10 and man["item_vocab"] == 6
    # user 1 at ts 100 rated movies 10 and 20: tie broken by item id, one request
    u1 = ev[ev.user_id == 1]
    assert u1.ts.tolist() == [50, 100, 100] and u1.item_id.tolist() == [3, 1, 2]
    assert im[(im.user_id == 1) & (im.ts == 100)].request_id.nunique() == 1
    # labels: rating >= 4 click, == 5 conversion; behaviour ids rated/liked/loved
    r = {(1, 1): 5, (1, 2): 3, (1, 3): 4, (3, 4): 2}
    for (u, i), rating in r.items():
        row = im[(im.user_id == u) & (im.item_id == i)].iloc[0]
        assert row.click == (rating >= 4) and row.conversion == (rating == 5)
        assert ev[(ev.user_id == u) & (ev.item_id == i)].behavior.iloc[0] == (
            3 if rating == 5 else 2 if rating == 4 else 1
        )
    items = pd.read_parquet(out / "items.parquet")
    assert (
        items.set_index("item_id").loc[1, "decade"] == 2001 // 10 - 190
    )  # Amélie parsed from latin-1
    check_common(out, 0)


def test_movielens_sampled_negatives_never_rated(tmp_path):
    out = convert(
        "movielens", write_movielens(tmp_path / "raw"), tmp_path / "ml", neg_ratio=2, seed=5
    )
    ev, im, _ = load(out)
    assert len(im) == 30
    neg = im.iloc[
        np.flatnonzero(
            ~im.set_index(["user_id", "item_id"]).index.isin(list(zip(ev.user_id, ev.item_id)))
        )
    ]
    assert len(neg) == 20 and (neg.click == 0).all()
    again = convert("movielens", tmp_path / "raw", tmp_path / "ml2", neg_ratio=2, seed=5)
    pd.testing.assert_frame_equal(im, pd.read_parquet(again / "impressions.parquet"))  # seeded


def test_existing_output_is_not_destroyed(tmp_path):
    raw = write_movielens(tmp_path / "raw")
    out = tmp_path / "ml"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert("movielens", raw, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown source"):
        convert("netflix", raw, tmp_path / "x")


# ---- Taobao -----------------------------------------------------------------------------------
def write_taobao(raw: Path) -> Path:
    raw.mkdir(parents=True)
    rows = [
        "1,100,7,pv,1000",
        "1,100,7,buy,1500",
        "1,200,8,pv,1600",
        "1,300,7,pv,1600",
        "2,300,7,buy,900",
        "2,300,7,pv,1000",
        "2,400,9,cart,1100",
        "2,500,9,pv,2000",
        "2,500,9,fav,2000",
        "3,600,9,pv,3000",
        "3,100,7,pv,3100",
    ]
    for i in range(40):  # more items so negatives can be sampled
        rows.append(f"4,{1000 + i},{10 + i % 3},pv,{500 + 10 * i}")
    (raw / "UserBehavior.csv").write_text("\n".join(rows) + "\n5,700,9,pv")  # truncated last line
    return raw


def test_taobao_truncation_conversion_negatives(tmp_path):
    out = convert("taobao", write_taobao(tmp_path / "raw"), tmp_path / "tb", neg_ratio=3, seed=1)
    ev, im, man = load(out)
    assert ev.user_id.nunique() == 4 and len(ev) == 51  # user 5 dropped with its line
    assert man["stats"]["source_rows"]["dropped_users"] == [5]
    assert man["stats"]["behaviors"] == {"click": 47, "fav": 1, "cart": 1, "buy": 2}
    pos = im[im.click == 1]
    assert len(pos) == 47 and (im.click == 0).sum() == 3 * 47
    # user 1 views item 100 then buys it -> conversion; user 2 bought item 300 before viewing -> none
    it = pd.read_parquet(out / "items.parquet")
    assert set(it.item_id) == set(range(1, man["item_vocab"]))
    users = sorted(ev.user_id.unique())
    conv = dict(zip(zip(pos.user_id, pos.ts), pos.conversion))
    assert (
        conv[(users[0], 1000)] == 1 and conv[(users[1], 1000)] == 0 and conv[(users[0], 1600)] == 0
    )
    check_common(out, 3)


# ---- Tmall ------------------------------------------------------------------------------------
def write_tmall(raw: Path) -> Path:
    raw.mkdir(parents=True)
    rows = [
        "user_id,brand_id,type,visit_datetime",
        "77,13,0,6-4",
        "77,12,0,6-4",
        "77,13,1,6-4",
        "77,12,0,4-15",
        "77,11,2,8-15",
        "77,12,3,5-1",
        "55,13,0,7-5",
        "55,11,0,7-5",
        "55,11,1,7-1",
    ]
    for i in range(30):
        rows.append(f"99,{100 + i},0,{5 + i % 3}-{1 + i}")
    (raw / "t_alibaba_data.csv").write_text("\n".join(rows) + "\n")
    return raw


def test_tmall_dates_ties_and_conversion(tmp_path):
    out = convert("tmall", write_tmall(tmp_path / "raw"), tmp_path / "tm", neg_ratio=2, seed=0)
    ev, im, man = load(out)
    assert len(ev) == 39 and ev.user_id.nunique() == 3
    u77 = ev[ev.user_id == 2]  # raw user 77 -> id 2
    day = pd.to_datetime(u77.ts, unit="s").dt.strftime("%Y-%m-%d").tolist()
    assert day == [
        "2014-04-15",
        "2014-05-01",
        "2014-06-04",
        "2014-06-04",
        "2014-06-04",
        "2014-08-15",
    ]
    # same-day tie: brand id, then behaviour id (click before buy)
    assert u77.item_id.tolist()[2:5] == [2, 3, 3] and u77.behavior.tolist()[2:5] == [1, 1, 4]
    pos = im[im.click == 1]
    conv = dict(zip(zip(pos.user_id, pos.ts, pos.item_id), pos.conversion))
    june4 = int(pd.Timestamp("2014-06-04").timestamp())
    assert conv[(2, june4, 3)] == 1 and conv[(2, june4, 2)] == 0  # same-day click-then-buy counts
    july5 = int(pd.Timestamp("2014-07-05").timestamp())
    assert conv[(1, july5, 1)] == 0  # bought on 7-1, before the click
    check_common(out, 2)


def test_tmall_bad_date_is_named(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t_alibaba_data.csv").write_text(
        "user_id,brand_id,type,visit_datetime\n1,2,0,6-4\n1,3,0,June 5\n"
    )
    with pytest.raises(ValueError, match=r"row 3 visit_datetime = 'June 5'"):
        convert("tmall", raw, tmp_path / "tm")


# ---- the real copies (statistics from their READMEs) ------------------------------------------
@pytest.mark.realdata
def test_real_copies_match_readmes(shared_data, tmp_path):
    ml = load(convert("movielens", shared_data / "movielens-1m-subset", tmp_path / "ml"))[2][
        "stats"
    ]
    assert (ml["events"], ml["users"], ml["items"]) == (487_650, 2_999, 3_615)
    assert ml["behaviors"] == {
        "rated": 127_216 + 53_838 + 27_472,
        "liked": 170_579,
        "loved": 108_545,
    }
    assert (
        ml["events_per_user"]["min"],
        ml["events_per_user"]["p50"],
        ml["events_per_user"]["max"],
    ) == (20, 89, 1_850)

    _, tb_im, tb_man = load(
        convert("taobao", shared_data / "taobao-userbehavior-prefix", tmp_path / "tb")
    )
    tb = tb_man["stats"]
    src = tb["source_rows"]
    assert (src["raw_rows_complete"], src["raw_users"], src["dropped_users"]) == (
        84_475,
        815,
        [100370],
    )
    assert tb["users"] == 814 and tb["events"] == 84_475 - src["dropped_user_rows"]
    full = {"click": 75_872, "fav": 2_356, "cart": 4_497, "buy": 1_750}  # README, before the drop
    assert sum(full.values()) == 84_475 and all(
        0 <= full[k] - tb["behaviors"][k] <= src["dropped_user_rows"] for k in full
    )
    assert (
        tb["impressions"] == 5 * int(tb_im.click.sum())
        and tb_im.click.sum() <= tb["behaviors"]["click"]
    )

    tm = load(convert("tmall", shared_data / "tmall-2014-brand-log", tmp_path / "tm"))[2]["stats"]
    assert (tm["events"], tm["users"], tm["items"]) == (182_880, 884, 9_531)
    assert tm["behaviors"] == {"click": 174_539, "buy": 6_984, "collect": 1_204, "cart": 153}
    assert (
        tm["events_per_user"]["min"],
        tm["events_per_user"]["p50"],
        tm["events_per_user"]["max"],
    ) == (1, 129.5, 2_407)


def test_converter_cli(tmp_path, capsys):
    import argparse

    from harness.data.converters.__main__ import add_convert_args, main_convert

    p = argparse.ArgumentParser()
    add_convert_args(p)
    raw = write_movielens(tmp_path / "raw")
    assert (
        main_convert(
            p.parse_args(["movielens", str(raw), str(tmp_path / "ml"), "--neg-ratio", "1"])
        )
        == 0
    )
    assert "10 events" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "ml" / "impressions.parquet")) == 20


# ---- item_pop: the candidate's events so far (every converter) --------------------------------
def reference_item_pop(ev: pd.DataFrame, im: pd.DataFrame) -> np.ndarray:
    """Plain per-impression count: the item's events, any user, ts strictly before the impression."""
    return np.array(
        [np.log1p(((ev.item_id == i) & (ev.ts < t)).sum()) for i, t in zip(im.item_id, im.ts)]
    )


@pytest.mark.parametrize("source", ["movielens", "taobao", "tmall"])
def test_item_pop_is_the_as_of_count(tmp_path, source):
    write = {"movielens": write_movielens, "taobao": write_taobao, "tmall": write_tmall}[source]
    out = convert(source, write(tmp_path / "raw"), tmp_path / "out", neg_ratio=2, seed=1)
    ev, im, man = load(out)
    feats = {f["name"]: f for f in man["features"]}
    assert feats["item_pop"]["kind"] == "numeric" and feats["item_pop"]["table"] == "impressions"
    assert man["labels"]["item_pop"] is True
    want = reference_item_pop(ev, im)
    assert want.max() > 0  # the fixture has items seen before some impression
    np.testing.assert_allclose(im.item_pop.to_numpy(), want, rtol=1e-6)
    # the model reads it as a numeric NS feature
    dm = OneTransDataModule(out, seq_len=8, batch_size=64, drop_last=False)
    assert "item_pop" in dm.feature_spec.num_names

    # the switch: without it the folder is the one converters wrote before the feature existed
    off = convert(source, tmp_path / "raw", tmp_path / "off", neg_ratio=2, seed=1, item_pop=False)
    ev2, im2, man2 = load(off)
    assert "item_pop" not in im2.columns and "item_pop" not in {f["name"] for f in man2["features"]}
    pd.testing.assert_frame_equal(im2, im.drop(columns="item_pop"))
    pd.testing.assert_frame_equal(ev2, ev)


# ---- the shared tail: one declaration of the common features ---------------------------------
@pytest.mark.parametrize("source", ["movielens", "taobao", "tmall"])
def test_every_converter_declares_the_shared_features_one_way(tmp_path, source):
    """converters/common.finish_conversion: user_id first, the source's own features, the time
    context (hour unless the log has days only, then weekday) and item_pop last, each exactly as
    harness/data/features.py declares it; the columns stay inside the declared vocabularies."""
    from harness.data.contract import Manifest
    from harness.data.features import ITEM_POP, time_context_features, user_id_feature

    write = {"movielens": write_movielens, "taobao": write_taobao, "tmall": write_tmall}[source]
    out = convert(source, write(tmp_path / "raw"), tmp_path / "out", neg_ratio=1)
    m = Manifest.load(out)
    ev, im, _ = load(out)
    context = time_context_features(
        hour=source != "tmall",
        hour_description="hour of day, Beijing time" if source == "taobao" else "",
    )
    assert m.features[0] == user_id_feature(int(ev.user_id.max()))
    assert m.features[-1 - len(context) : -1] == context
    assert m.features[-1] == ITEM_POP
    for f in context:
        col = im[f.name].to_numpy()
        assert col.min() >= 1 and col.max() < f.vocab_size


# ---- as-of popularity negatives ---------------------------------------------------------------
def test_asof_popularity_draws_count_plus_one_and_never_the_future():
    """P(item) = (the item's events strictly before t + 1) / (events before t + n_items): checked
    against the exact probabilities by a chi-square bound on 200k draws, at a time with history and
    at the log's start (no events before: uniform)."""
    from scipy.stats import chisquare

    from harness.data.converters.common import AsOfPopularity

    rng = np.random.default_rng(0)
    n_items = 5
    items = np.array([1, 1, 1, 2, 3, 3, 5, 4, 4, 4])  # the last three (item 4) at t = 50, later
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 50, 50, 50])
    pop = AsOfPopularity.of(items[::-1], ts[::-1])  # unsorted input is sorted by ts
    for t, counts in ((10, [3, 1, 2, 0, 1]), (50, [3, 1, 2, 0, 1]), (0, [0] * 5)):
        draw = pop.draw(rng, np.full(200_000, t), n_items)
        assert draw.min() >= 1 and draw.max() <= n_items
        expect = (np.array(counts) + 1.0) / (sum(counts) + n_items)
        seen = np.bincount(draw, minlength=n_items + 1)[1:]
        assert chisquare(seen, expect * len(draw)).pvalue > 1e-3, (t, seen, expect)
    # t = 50 counts only events strictly before 50: item 4 stays at its +1 share
    assert abs((pop.draw(rng, np.full(100_000, 50), n_items) == 4).mean() - 1 / 12) < 0.01


def test_taobao_asof_negatives_converts_and_records_the_choice(tmp_path):
    out = convert(
        "taobao",
        write_taobao(tmp_path / "raw"),
        tmp_path / "tb",
        neg_ratio=3,
        seed=1,
        negatives="popularity_asof",
    )
    _, im, man = load(out)
    assert man["labels"]["negatives"] == "popularity_asof"
    assert (im.click == 0).sum() == 3 * (im.click == 1).sum()
    check_common(out, 3)  # never an item the user interacted with, exact ratio
    with pytest.raises(ValueError, match="popularity_asof"):
        convert("taobao", tmp_path / "raw", tmp_path / "tb2", negatives="recent")
