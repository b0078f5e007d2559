"""The streaming engine (engine=duckdb) for the Tmall and MovieLens converters against their
in-memory engine, on generated raw logs of each format and on the shared samples: the same
contract row for row but the sampled negatives (tests/test_data_stream.py's checks), and the
same errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data.converters import convert
from tests.test_data_stream import assert_same_contract, table

pytest.importorskip("duckdb")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 rows and parts of 256: requests, click windows and parts straddle chunks."""
    from harness.data.converters import stream

    monkeypatch.setattr(stream, "CHUNK", 64)
    monkeypatch.setattr(stream, "PART_ROWS", 256)


def tmall_log(raw: Path, rows: int = 3000, seed: int = 4) -> Path:
    """A t_alibaba_data.csv: sparse raw ids, Zipf brands, unsorted days (many events a day tie),
    duplicate rows, buys before and after clicks."""
    rng = np.random.default_rng(seed)
    month, day = rng.integers(4, 9, rows), rng.integers(1, 29, rows)
    df = pd.DataFrame(
        {
            "user_id": rng.integers(1, 50, rows) * 1013,
            "brand_id": 10 + rng.zipf(1.3, rows) % 200,
            "type": rng.choice([0, 1, 2, 3], rows, p=[0.8, 0.08, 0.06, 0.06]),
            "visit_datetime": [f"{m}-{d}" for m, d in zip(month, day)],
        }
    )
    df = pd.concat([df, df.iloc[:40]])
    raw.mkdir(parents=True)
    df.to_csv(raw / "t_alibaba_data.csv", index=False)
    return raw


def movielens_log(raw: Path, rows: int = 3000, seed: int = 5, gz: bool = True) -> Path:
    """ratings.dat[.gz], users.dat, movies.dat: bursts of ratings in one second, a few duplicate
    (user, second, movie) ratings (the file's order breaks the tie), listed movies nobody rated,
    titles without a year, latin-1 text."""
    rng = np.random.default_rng(seed)
    users = np.unique(rng.integers(1, 80, rows) * 3)
    r = pd.DataFrame(
        {
            "user": rng.choice(users, rows),
            "movie": 1 + rng.zipf(1.4, rows) % 150,
            "rating": rng.integers(1, 6, rows),
            "ts": 978_300_000 + rng.integers(0, 5000, rows) // 10 * 10,
        }
    )
    r = r.drop_duplicates(["user", "movie"])
    dup = r.iloc[:20].assign(rating=lambda d: 6 - d.rating)  # same (user, ts, movie), rating
    r = pd.concat([r, dup])
    text = "\n".join("::".join(map(str, t)) for t in r.itertuples(index=False)) + "\n"
    raw.mkdir(parents=True)
    if gz:
        with gzip.open(raw / "ratings.dat.gz", "wt") as f:
            f.write(text)
    else:
        (raw / "ratings.dat").write_text(text)
    genres = ["Comedy", "Drama|Romance", "Film-Noir", "Sci-Fi|Action", "Unknown"]
    movies = [
        f"{m}::Film {m} ({1920 + m % 80})::{genres[m % 5]}" if m % 7 else f"{m}::Café {m}::Drama"
        for m in range(1, 171)  # 151..170 listed, never rated
    ]
    (raw / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    ages = [1, 18, 25, 35, 45, 50, 56]
    lines = [f"{u}::{'FM'[u % 2]}::{ages[u % 7]}::{u % 21}::{10000 + u % 13}" for u in users]
    (raw / "users.dat").write_text("\n".join(lines) + "\n")
    return raw


# ---- Tmall ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("negatives", ["popularity", "popularity_asof", "uniform"])
def test_tmall_streaming_matches_in_memory(tmp_path, small_chunks, negatives):
    raw = tmall_log(tmp_path / "raw")
    opts = {"neg_ratio": 4, "negatives": negatives, "seed": 5}
    mem = convert("tmall", raw, tmp_path / "mem", **opts)
    st = convert("tmall", raw, tmp_path / "st", engine="duckdb", threads=2, **opts)
    assert len(list((st / "impressions").glob("part-*.parquet"))) > 1
    assert_same_contract(mem, st, 4)
    if negatives == "popularity_asof":  # a rerun draws the same negatives
        again = convert("tmall", raw, tmp_path / "again", engine="duckdb", threads=1, **opts)
        pd.testing.assert_frame_equal(
            table(st, "impressions.parquet"), table(again, "impressions.parquet")
        )


def test_tmall_streaming_no_item_pop_no_negatives(tmp_path):
    raw = tmall_log(tmp_path / "raw", rows=800)
    opts = {"neg_ratio": 0, "item_pop": False, "val_frac": 0.2, "test_frac": 0.0}
    mem = convert("tmall", raw, tmp_path / "mem", **opts)
    st = convert("tmall", raw, tmp_path / "st", engine="duckdb", **opts)
    assert_same_contract(mem, st, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "user_id,brand_id,type,visit_datetime\n1,2,0,6-4\n1,3,0,June 5\n",
            r"row 3 visit_datetime = 'June 5'",
        ),
        (
            "user_id,brand_id,type,visit_datetime\n1,2,0,6-4\n1,3,7,6-5\n",
            r"row 3 type = 7; expected one of \[0, 1, 2, 3\]",
        ),
        (
            "user,brand_id,type,visit_datetime\n1,2,0,6-4\n",
            r"header \['user', .*expected \['user_id'",
        ),
    ],
)
def test_tmall_streaming_errors_are_the_in_memory_ones(tmp_path, text, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t_alibaba_data.csv").write_text(text)
    for engine in ("pandas", "duckdb"):
        with pytest.raises(ValueError, match=message):
            convert("tmall", raw, tmp_path / engine, engine=engine)
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # nothing left behind


# ---- MovieLens -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("neg_ratio", "gz"), [(0, True), (3, False)])
def test_movielens_streaming_matches_in_memory(tmp_path, small_chunks, neg_ratio, gz):
    raw = movielens_log(tmp_path / "raw", gz=gz)
    opts = {"neg_ratio": neg_ratio, "seed": 2}
    mem = convert("movielens", raw, tmp_path / "mem", **opts)
    st = convert("movielens", raw, tmp_path / "st", engine="duckdb", threads=2, **opts)
    assert len(list((st / "events").glob("part-*.parquet"))) > 1
    assert_same_contract(mem, st, neg_ratio)


def test_movielens_streaming_missing_user_row(tmp_path):
    raw = movielens_log(tmp_path / "raw", rows=300)
    lines = (raw / "users.dat").read_text().splitlines()
    (raw / "users.dat").write_text("\n".join(lines[1:]) + "\n")
    for engine in ("pandas", "duckdb"):
        with pytest.raises(ValueError, match=r"have ratings but no row"):
            convert("movielens", raw, tmp_path / engine, engine=engine)


# ---- the options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["tmall", "movielens"])
def test_streaming_options_name_the_option_and_a_valid_value(tmp_path, source):
    raw = (tmall_log if source == "tmall" else movielens_log)(tmp_path / "raw", rows=200)
    with pytest.raises(ValueError, match=rf"{source}: --opt engine='spark'.*engine=pandas.*duckdb"):
        convert(source, raw, tmp_path / "a", engine="spark")
    with pytest.raises(ValueError, match=rf"{source}: --opt memory_limit='lots'.*=4GB"):
        convert(source, raw, tmp_path / "a", engine="duckdb", memory_limit="lots")
    with pytest.raises(ValueError, match=rf"{source}: --opt threads=0"):
        convert(source, raw, tmp_path / "a", engine="duckdb", threads=0)
    assert not (tmp_path / "a").exists()


# ---- the shared samples --------------------------------------------------------------------------
@pytest.mark.realdata
def test_tmall_streaming_matches_in_memory_on_the_shared_sample(shared_data, tmp_path):
    raw = shared_data / "tmall-2014-brand-log"
    opts = {"negatives": "popularity_asof"}
    mem = convert("tmall", raw, tmp_path / "mem", **opts)
    st = convert("tmall", raw, tmp_path / "st", engine="duckdb", **opts)
    assert_same_contract(mem, st, 4)


@pytest.mark.realdata
def test_movielens_streaming_matches_in_memory_on_the_shared_sample(shared_data, tmp_path):
    raw = shared_data / "movielens-1m-subset"
    mem = convert("movielens", raw, tmp_path / "mem", neg_ratio=1)
    st = convert("movielens", raw, tmp_path / "st", engine="duckdb", neg_ratio=1)
    assert_same_contract(mem, st, 1)
