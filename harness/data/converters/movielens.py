"""MovieLens-1M (ratings.dat[.gz], users.dat, movies.dat) -> the data contract.

Every rating is an impression of the rated movie: click = rating >= 4, conversion = rating == 5 (a
stated CVR stand-in: "loved" given "liked"; it implies click). Ratings of 3 or less are the natural
negatives; `neg_ratio` > 0 adds sampled never-rated movies as extra negatives. A request is one
(user, second): MovieLens users rate in bursts, so the ratings of one second share one history,
which (as-of, strictly before) never contains any rating of that second. See docs/converters.md.

Two engines, as taobao.py: `engine="pandas"` (the default, in memory) and `engine="duckdb"`
(converters/stream.py, bounded memory; same rows, sampled negatives other draws).
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.contract import Behavior
from harness.data.converters.common import (
    LogDescription,
    TimeContext,
    check_engine,
    finish_conversion,
    lookup,
    need_file,
    remap,
)
from harness.data.features import categorical, numeric

CONTEXT = TimeContext()  # hour of day and weekday, UTC
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def _read_dat(path: Path, n_fields: int, encoding: str = "latin-1") -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        text = f.read().decode(encoding)
    rows = [line.split("::") for line in text.splitlines() if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != n_fields]
    if bad:
        raise ValueError(
            f"{path}: line {bad[0] + 1} has {len(rows[bad[0]])} '::'-separated fields, "
            f"expected {n_fields}; is this the MovieLens-1M format?"
        )
    return rows


def read_ratings(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        text = (
            f.read().decode("latin-1").replace("::", ",")
        )  # numeric fields only: safe to re-delimit
    df = pd.read_csv(
        io.StringIO(text), header=None, names=["user", "movie", "rating", "ts"], dtype=np.int64
    )
    return df


def read_side_files(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """users.dat and movies.dat (user- and item-sized), with numeric raw ids."""
    users_raw = pd.DataFrame(
        _read_dat(need_file(raw, "users.dat"), 5),
        columns=["user", "gender", "age", "occupation", "zip"],
    )
    movies = pd.DataFrame(
        _read_dat(need_file(raw, "movies.dat"), 3), columns=["movie", "title", "genres"]
    )
    movies["movie"] = movies.movie.astype(np.int64)
    users_raw["user"] = users_raw.user.astype(np.int64)
    return users_raw, movies


def build_items(movies: pd.DataFrame, movie_uniq: np.ndarray) -> pd.DataFrame:
    """Per item (1-based rank of the raw movie id in `movie_uniq`): first listed genre (the side
    field; multi-genre is not in the contract), release year and decade."""
    n_items = len(movie_uniq)
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1)})
    genre = (
        movies.genres.str.split("|")
        .str[0]
        .map({g: i + 1 for i, g in enumerate(GENRES)})
        .fillna(0)
        .astype(np.int64)
    )
    year = movies.title.map(
        lambda t: int(m.group(1)) if (m := re.search(r"\((\d{4})\)\s*$", t)) else 0
    ).astype(np.int64)
    rows = lookup(movies.movie.to_numpy(), movie_uniq) - 1
    items["genre"] = 0
    items.loc[rows, "genre"] = genre.to_numpy()
    items["year"] = 0.0
    items.loc[rows, "year"] = year.to_numpy().astype(float)
    med = float(np.median(year[year > 0])) if (year > 0).any() else 1990.0
    items["year"] = items.year.where(items.year > 0, med)  # unknown year: median, stated in docs
    items["decade"] = ((items.year.astype(np.int64) // 10) - 190).clip(
        1, 11
    )  # 1910s -> 1 ... 2000s -> 11
    return items


def build_users(
    raw: Path, users_raw: pd.DataFrame, user_uniq: np.ndarray
) -> tuple[pd.DataFrame, int]:
    """users.parquet (only users with ratings, demographics as categorical ids) and how many zip
    codes."""
    u = users_raw.set_index("user").reindex(user_uniq)
    if u.gender.isna().any():
        missing = user_uniq[u.gender.isna().to_numpy()][:5]
        raise ValueError(
            f"{raw / 'users.dat'}: users {list(missing)} have ratings but no row; is users.dat complete?"
        )
    zip_id, zip_uniq = remap(u.zip.astype(str).to_numpy())
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, len(user_uniq) + 1),
            "gender": np.where(u.gender.to_numpy() == "F", 1, 2).astype(np.int64),
            "age": np.searchsorted(AGE_CODES, u.age.astype(np.int64).to_numpy()) + 1,
            "occupation": u.occupation.astype(np.int64).to_numpy() + 1,
            "zip": zip_id,
        }
    )
    return users, len(zip_uniq)


def convert(
    raw: Path,
    out: Path,
    *,
    neg_ratio: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    item_pop: bool = True,
    overwrite: bool = False,
    engine: str = "pandas",
    memory_limit: str = "4GB",
    threads: int | None = None,
    temp_dir: str | None = None,
) -> Path:
    """`engine`: "pandas" (in memory, the default) or "duckdb" (bounded memory, as taobao.convert:
    `memory_limit`, `threads` and `temp_dir` are DuckDB's; docs/converters.md, "Large logs").
    Sampled negatives (`neg_ratio` > 0) are uniform over the never-rated movies in both."""
    raw = Path(raw)
    check_engine("movielens", engine)
    ratings_file = need_file(raw, "ratings.dat", "ratings.dat.gz")
    if engine == "duckdb":
        # pyarrow and DuckDB only when asked for
        from harness.data.converters import stream, stream_logs

        def side(user_uniq: np.ndarray, rated: np.ndarray):
            users_raw, movies = read_side_files(raw)
            movie_uniq = np.unique(np.concatenate([movies.movie.to_numpy(), rated]))
            users, n_zip = build_users(raw, users_raw, user_uniq)
            log = description(raw, n_zip, neg_ratio, seed, item_pop)
            return movie_uniq, build_items(movies, movie_uniq), users, log

        settings = stream.settings_for("movielens", memory_limit, threads, temp_dir)
        return stream.convert_stream(
            out,
            lambda con: stream_logs.load_movielens(con, ratings_file, side),
            context=CONTEXT,
            neg_ratio=neg_ratio,
            negatives="uniform",
            val_frac=val_frac,
            test_frac=test_frac,
            seed=seed,
            item_pop=item_pop,
            overwrite=overwrite,
            settings=settings,
        )
    ratings = read_ratings(ratings_file)
    users_raw, movies = read_side_files(raw)

    # ids: users that rated, movies listed or rated; 1-based contiguous in raw-id order
    ratings["user_id"], user_uniq = remap(ratings.user.to_numpy())
    movie_uniq = np.unique(np.concatenate([movies.movie.to_numpy(), ratings.movie.to_numpy()]))
    ratings["item_id"] = lookup(ratings.movie.to_numpy(), movie_uniq)
    n_items = len(movie_uniq)
    items = build_items(movies, movie_uniq)
    users, n_zip = build_users(raw, users_raw, user_uniq)

    # events: ratings as three behaviours, sorted by (user, ts) with the movie id as stable tie-break
    r = ratings.rating.to_numpy()
    events = pd.DataFrame(
        {
            "user_id": ratings.user_id,
            "ts": ratings.ts,
            "behavior": np.select([r >= 5, r >= 4], [3, 2], 1).astype(np.int64),
            "item_id": ratings.item_id,
        }
    )
    events = events.sort_values(["user_id", "ts", "item_id"], kind="stable", ignore_index=True)
    events = events.join(items.set_index("item_id")[["genre", "decade"]], on="item_id")

    pos = pd.DataFrame(
        {
            "user_id": events.user_id,
            "ts": events.ts,
            "item_id": events.item_id,
            "click": (events.behavior >= 2).astype(np.int64),
            "conversion": (events.behavior == 3).astype(np.int64),
        }
    )
    return finish_conversion(
        out,
        description(raw, n_zip, neg_ratio, seed, item_pop),
        events=events,
        positives=pos,
        n_users=len(user_uniq),
        n_items=n_items,
        neg_ratio=neg_ratio,
        weights=None,
        seed=seed,
        context=CONTEXT,
        item_pop=item_pop,
        val_frac=val_frac,
        test_frac=test_frac,
        users=users,
        items=items[["item_id", "genre", "decade", "year"]],
        overwrite=overwrite,
    )


def description(raw: Path, n_zip: int, neg_ratio: int, seed: int, item_pop: bool) -> LogDescription:
    """What the converter says of the log (both engines)."""
    return LogDescription(
        name="movielens-1m",
        source=f"MovieLens-1M ({raw})",
        side_fields=("genre", "decade"),
        features=(
            categorical("gender", "user", "users", 3),
            categorical("age", "user", "users", len(AGE_CODES) + 1),
            categorical("occupation", "user", "users", 22),
            categorical("zip", "user", "users", n_zip + 1),
            categorical("genre", "item", "items", len(GENRES) + 1, "first listed genre"),
            categorical("decade", "item", "items", 12),
            numeric("year", "item", "items", "release year"),
        ),
        behaviors=(
            Behavior(name="rated", id=1),
            Behavior(name="liked", id=2),
            Behavior(name="loved", id=3),
        ),
        intent_order=("loved", "liked", "rated"),
        labels={
            "click": "rating >= 4",
            "conversion": "rating == 5 (stand-in; implies click)",
            "conversion_requires_click": True,
            "neg_ratio": neg_ratio,
            "seed": seed,
            "item_pop": item_pop,
        },
        notes="Impressions are the ratings themselves (+ neg_ratio sampled unrated movies per rating). See docs/converters.md.",
    )
