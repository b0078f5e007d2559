"""The streaming taobao engine (engine=duckdb, converters/stream.py) against the in-memory one
(Tmall and MovieLens: tests/test_data_stream_logs.py, with these helpers):
everything deterministic row for row (events, items, positives, requests, splits, the manifest),
the negatives by their rules and distributions, reruns identical, the errors clear."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.data.contract import read_table, table_source
from harness.data.converters import convert
from harness.data.counts import events_before

duckdb = pytest.importorskip("duckdb")
from harness.data.converters import stream  # noqa: E402


def generated_log(raw: Path, rows: int = 4000, seed: int = 3) -> Path:
    """A small UserBehavior log with what the rules must handle: repeated (user, ts) requests,
    duplicate rows, buys before and after views, items in two categories, and a truncated last
    line (its user dropped)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(1, 40, rows) * 7  # raw ids are not dense
    item = 1000 + rng.zipf(1.3, rows) % 300
    cat = item % 11 + (rng.random(rows) < 0.05)  # a few items seen in a second category
    beh = rng.choice(["pv", "fav", "cart", "buy"], rows, p=[0.8, 0.05, 0.05, 0.1])
    ts = 1_511_539_200 + rng.integers(0, 3 * 86_400, rows) // 600 * 600  # many equal times
    df = pd.DataFrame({"u": user, "i": item, "c": cat, "b": beh, "t": ts})
    df = pd.concat([df, df.iloc[:50]]).sort_values(["u", "t"], kind="stable")  # duplicates
    raw.mkdir(parents=True)
    text = df.to_csv(header=False, index=False) + "7,1001,3,pv"  # user 7 truncated
    (raw / "UserBehavior.csv").write_text(text)
    return raw


def table(folder: Path, name: str) -> pd.DataFrame:
    return read_table(table_source(folder, name)).to_pandas()


def per_request(im: pd.DataFrame) -> pd.DataFrame:
    g = im.groupby("request_id")
    cols = {
        "user_id": g.user_id.first(),
        "ts": g.ts.first(),
        "rows": g.size(),
        "clicks": g.click.sum(),
        "conversions": g.conversion.sum(),
        "split": g.split.first(),
        "weekday": g.weekday.first(),
    }
    if "hour" in im:  # not in a day-resolution log (Tmall)
        cols["hour"] = g.hour.first()
    return pd.DataFrame(cols)


def logged(im: pd.DataFrame, ev: pd.DataFrame) -> np.ndarray:
    """The impressions that are not sampled negatives: a (user, item) pair of the events (every
    positive; in MovieLens every rating, click or not). A sampled negative never is one."""
    n = int(max(ev.item_id.max(), im.item_id.max())) + 1
    return np.isin(im.user_id.to_numpy() * n + im.item_id.to_numpy(), ev.user_id * n + ev.item_id)


def assert_same_contract(mem: Path, st: Path, neg_ratio: int) -> None:
    """The deterministic part is identical; the negatives obey the rules."""
    man_mem = yaml.safe_load((mem / "manifest.yaml").read_text())
    man_st = yaml.safe_load((st / "manifest.yaml").read_text())
    assert man_mem == man_st  # stats, split times, vocabularies, labels
    ev = table(mem, "events.parquet")
    pd.testing.assert_frame_equal(ev, table(st, "events.parquet"))
    for side in ("items.parquet", "users.parquet"):
        assert (mem / side).exists() == (st / side).exists()
        if (mem / side).exists():
            pd.testing.assert_frame_equal(table(mem, side), table(st, side))
    im_mem, im_st = table(mem, "impressions.parquet"), table(st, "impressions.parquet")
    assert list(im_mem.columns) == list(im_st.columns)
    assert list(im_mem.dtypes) == list(im_st.dtypes)
    pos = [im[logged(im, ev)].reset_index(drop=True) for im in (im_mem, im_st)]
    pd.testing.assert_frame_equal(*pos)  # positives, their labels, requests, item_pop, split
    pd.testing.assert_frame_equal(per_request(im_mem), per_request(im_st))
    # the streamed negatives: never an item of the user, item_pop the as-of count of the item
    neg = im_st[~logged(im_st, ev)]
    assert (neg.click == 0).all() and (neg.conversion == 0).all()
    assert len(neg) == neg_ratio * len(pos[1])
    seen = set(zip(ev.user_id, ev.item_id))
    assert not any((u, i) in seen for u, i in zip(neg.user_id, neg.item_id))
    assert ((neg.item_id >= 1) & (neg.item_id < man_st["item_vocab"])).all()
    if "item_pop" in im_st:
        n = events_before(ev.item_id, ev.ts, im_st.item_id, im_st.ts)
        np.testing.assert_array_equal(im_st.item_pop.to_numpy(), np.log1p(n).astype(np.float32))
    keys = ["ts", "user_id", "item_id", "click"]
    assert im_st[keys].apply(tuple, axis=1).is_monotonic_increasing


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows and parts of 256: requests, click windows and parts straddle chunks."""
    monkeypatch.setattr(stream, "CHUNK", 64)
    monkeypatch.setattr(stream, "PART_ROWS", 256)


@pytest.mark.parametrize("negatives", ["popularity", "popularity_asof", "uniform"])
def test_streaming_matches_in_memory(tmp_path, small_chunks, negatives):
    raw = generated_log(tmp_path / "raw")
    opts = {"neg_ratio": 4, "negatives": negatives, "seed": 5}
    mem = convert("taobao", raw, tmp_path / "mem", **opts)
    st = convert("taobao", raw, tmp_path / "st", engine="duckdb", threads=2, **opts)
    assert len(list((st / "impressions").glob("part-*.parquet"))) > 1
    assert len(list((st / "events").glob("part-*.parquet"))) > 1
    assert_same_contract(mem, st, 4)
    # a rerun draws the same negatives (seeded, fixed chunks whatever DuckDB's batches)
    again = convert("taobao", raw, tmp_path / "again", engine="duckdb", threads=1, **opts)
    pd.testing.assert_frame_equal(
        table(st, "impressions.parquet"), table(again, "impressions.parquet")
    )


def test_streaming_options_no_item_pop_no_negatives_splits(tmp_path):
    raw = generated_log(tmp_path / "raw", rows=1500)
    opts = {"neg_ratio": 0, "item_pop": False, "val_frac": 0.2, "test_frac": 0.0}
    mem = convert("taobao", raw, tmp_path / "mem", **opts)
    st = convert("taobao", raw, tmp_path / "st", engine="duckdb", **opts)
    assert_same_contract(mem, st, 0)


def test_streaming_output_validates_like_in_memory(tmp_path, capsys):
    from harness.data.__main__ import main

    raw = generated_log(tmp_path / "raw")
    for name, engine in (("mem", "pandas"), ("st", "duckdb")):
        convert("taobao", raw, tmp_path / name, engine=engine)
    reports = []
    for name in ("mem", "st"):
        main(["validate", str(tmp_path / name)])
        reports.append(capsys.readouterr().out.replace(str(tmp_path / name), "DIR"))
    assert reports[0] == reports[1] and "valid" in reports[0]


@pytest.mark.realdata
@pytest.mark.parametrize("negatives", ["popularity", "popularity_asof"])
def test_streaming_matches_in_memory_on_the_shared_sample(shared_data, tmp_path, negatives):
    raw = shared_data / "taobao-userbehavior-prefix"
    mem = convert("taobao", raw, tmp_path / "mem", negatives=negatives)
    st = convert("taobao", raw, tmp_path / "st", negatives=negatives, engine="duckdb")
    assert_same_contract(mem, st, 4)


# ---- the sampler's distributions ---------------------------------------------------------------
def test_streamed_asof_draws_count_plus_one_and_never_the_future():
    """P(item | t) = (clicks of the item strictly before t + 1) / (clicks before t + n_items), as
    common.AsOfPopularity, whether the earlier click lies before the chunk (the counts) or in its
    window; chi-square on 200k draws per time, the clicks streamed in chunks of 3."""
    from scipy.stats import chisquare

    n_items = 5
    items = np.array([1, 1, 1, 2, 3, 3, 5, 4, 4, 4])
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 50, 50, 50])
    rows = iter([{"ts": ts[i : i + 3], "item_id": items[i : i + 3]} for i in range(0, 10, 3)])
    clicks = stream.AsOfCounts(rows, n_items)
    sampler = stream.Sampler("popularity_asof", n_items, np.random.default_rng(0), None, clicks)
    n = 200_000
    first = sampler.draw(np.zeros(n, np.int64))  # no clicks before: uniform
    later = sampler.draw(np.r_[np.full(n, 5), np.full(n, 50)])  # counts + window
    for draw, counts in (
        (first, [0] * 5),
        (later[:n], [3, 1, 0, 0, 0]),  # before 5: clicks at 1..4
        (later[n:], [3, 1, 2, 0, 1]),  # before 50: item 4's clicks at 50 not yet
    ):
        assert draw.min() >= 1 and draw.max() <= n_items
        expect = (np.array(counts) + 1.0) / (sum(counts) + n_items)
        seen = np.bincount(draw, minlength=n_items + 1)[1:]
        assert chisquare(seen, expect * n).pvalue > 1e-3, (seen, expect)


@pytest.mark.parametrize("side", ["left", "right"])
def test_sorted_rank_is_searchsorted_exactly(side):
    """counts.sorted_rank (the sampler's search) returns what searchsorted(side) does, key by key:
    ties, keys equal to entries, below the first and above the last included (fresh inputs)."""
    from harness.data.counts import sorted_rank

    rng = np.random.default_rng()
    a = np.sort(rng.integers(0, 50, 200)).astype(float)  # many repeated entries
    keys = np.concatenate([rng.integers(-5, 60, 5_000).astype(float), rng.random(5_000) * 50, a])
    rng.shuffle(keys)
    np.testing.assert_array_equal(sorted_rank(a, keys, side), a.searchsorted(keys, side=side))
    assert sorted_rank(a, keys[:0], side).shape == (0,)


@pytest.mark.parametrize("negatives", ["popularity", "uniform"])
def test_sampler_draws_are_generator_choice_exactly(negatives):
    """The streamed sampler draws, chunk after chunk, exactly the items Generator.choice(items, p=)
    would from the same seed (the draws it made before it searched with sorted_rank)."""
    n_items, seed = 1_000, int(np.random.default_rng().integers(1 << 30))
    w = None
    if negatives == "popularity":
        w = np.random.default_rng(seed).zipf(1.3, n_items).astype(float) + 1.0
        w /= w.sum()
    sampler = stream.Sampler(negatives, n_items, np.random.default_rng(seed), w)
    ref = np.random.default_rng(seed)
    for n in (1, 4_096, 777, 20_000):
        got = sampler.draw(np.zeros(n, np.int64))
        np.testing.assert_array_equal(got, ref.choice(np.arange(1, n_items + 1), size=n, p=w))


def test_streamed_negatives_follow_the_popularity_weights(tmp_path):
    """End to end: on a log where no user touches most items, the negatives' item frequencies
    match (whole-log clicks + 1) among the items no sampled user touched (chi-square)."""
    from scipy.stats import chisquare

    raw = tmp_path / "raw"
    raw.mkdir()
    # 200 users with one view each of items 1..5 (weights 1 + clicks); items 6..30 never viewed
    # by anyone, but bought once each by user 999 (no clicks: weight 1)
    views = [f"{u},{1 + u % 5},1,pv,{1000 + u}" for u in range(1, 201)]
    buys = [f"999,{i},1,buy,{500 + i}" for i in range(6, 31)]
    (raw / "UserBehavior.csv").write_text("\n".join(views + buys) + "\n")
    st = convert("taobao", raw, tmp_path / "st", engine="duckdb", neg_ratio=40, seed=2)
    ev, im = table(st, "events.parquet"), table(st, "impressions.parquet")
    clicks = np.bincount(ev.item_id[ev.behavior == 1], minlength=31)[1:] + 1.0
    neg = im[im.click == 0]
    # each user excludes its own viewed item: the expected frequency of item i sums, over the
    # negatives, w_i / (total weight - the user's item weight) where i is not the user's item
    user_item = ev[ev.behavior == 1].set_index("user_id").item_id
    per_neg = user_item.loc[neg.user_id].to_numpy()
    expect = np.zeros(30)
    for own in np.unique(per_neg):  # 5 distinct own items: a loop over items, not rows
        w = clicks.copy()
        w[own - 1] = 0
        expect += (per_neg == own).sum() * w / w.sum()
    seen = np.bincount(neg.item_id, minlength=31)[1:]
    assert chisquare(seen, expect).pvalue > 1e-3


# ---- errors ------------------------------------------------------------------------------------
def test_streaming_errors_name_the_option_and_the_fix(tmp_path, monkeypatch):
    raw = generated_log(tmp_path / "raw", rows=200)
    with pytest.raises(ValueError, match=r"engine='spark'.*engine=pandas.*engine=duckdb"):
        convert("taobao", raw, tmp_path / "a", engine="spark")
    with pytest.raises(ValueError, match=r"memory_limit='lots'.*memory_limit=4GB"):
        convert("taobao", raw, tmp_path / "a", engine="duckdb", memory_limit="lots")
    with pytest.raises(ValueError, match=r"threads=0"):
        convert("taobao", raw, tmp_path / "a", engine="duckdb", threads=0)
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[scale\]'"):
        convert("taobao", raw, tmp_path / "a", engine="duckdb")
    assert not (tmp_path / "a").exists()


def test_streaming_unknown_behavior_names_the_row(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "UserBehavior.csv").write_text("1,2,3,pv,100\n1,3,3,click,101\n")
    with pytest.raises(ValueError, match=r"row 2 has behavior 'click'"):
        convert("taobao", raw, tmp_path / "st", engine="duckdb")
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the work and temporary folders are removed on failure
