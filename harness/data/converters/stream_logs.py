"""The raw formats read into the streaming engine's database (`--opt engine=duckdb`,
converters/stream.py): each reader loads its log with DuckDB into the tables `ev` (the events,
remapped) and `pos` (the logged impressions with their labels) and returns a `stream.StreamLog`,
applying the in-memory converter's rules (taobao.py, tmall.py, movielens.py) and raising its
errors, in SQL over the whole log instead of a pandas frame of it. Only item- and user-sized
tables (the id maps, items.parquet, users.parquet) pass through Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.converters.common import LogDescription
from harness.data.converters.stream import CHUNK, StreamLog


# ---- shared steps --------------------------------------------------------------------------------
def remap_table(con, source: str, raw: str, ident: str) -> int:
    """Table `map_<raw>(<raw>, <ident>)`: raw id -> 1-based rank of the raw id (common.remap) over
    the distinct values of `source.raw`; returns how many."""
    con.execute(
        f"CREATE TABLE map_{raw} AS SELECT {raw}, row_number() OVER (ORDER BY {raw}) "
        f"AS {ident} FROM (SELECT DISTINCT {raw} FROM {source})"
    )
    return int(con.execute(f"SELECT count(*) FROM map_{raw}").fetchone()[0])


def clicks_then_buys(con) -> None:
    """Table `pos`: the distinct (user, ts, item) clicks (behaviour 1); converted when the user
    buys the item (behaviour 4) at or after the click (a last buy at or after it). Taobao, Tmall."""
    con.execute(
        "CREATE TABLE pos AS SELECT p.user_id, p.ts, p.item_id, 1::BIGINT AS click, "
        "(b.last_buy IS NOT NULL AND p.ts <= b.last_buy)::BIGINT AS conversion, 0::BIGINT AS ord "
        "FROM (SELECT DISTINCT user_id, ts, item_id FROM ev WHERE behavior = 1) p "
        "LEFT JOIN (SELECT user_id, item_id, max(ts) AS last_buy FROM ev WHERE behavior = 4 "
        "GROUP BY ALL) b ON p.user_id = b.user_id AND p.item_id = b.item_id"
    )


# ---- Taobao UserBehavior -------------------------------------------------------------------------
def load_taobao(con, csv: Path, behaviors: dict[str, int], describe) -> StreamLog:
    """taobao.convert's tables; `describe(n_categories)` is its description of the log."""
    info = read_taobao(con, csv, behaviors)
    n_users = remap_table(con, "clean", "raw_user", "user_id")
    n_items = remap_table(con, "clean", "raw_item", "item_id")
    n_cats = remap_table(con, "clean", "raw_category", "category_id")
    case = " ".join(f"WHEN '{b}' THEN {i}" for b, i in behaviors.items())
    con.execute(
        f"CREATE TABLE ev AS SELECT u.user_id, c.ts, (CASE c.behavior {case} END)::BIGINT AS "
        f"behavior, i.item_id, k.category_id FROM clean c JOIN map_raw_user u USING (raw_user) "
        f"JOIN map_raw_item i USING (raw_item) JOIN map_raw_category k USING (raw_category)"
    )
    # one category per item: the most frequent in the log, ties -> smallest id
    con.execute(
        "CREATE TABLE item_cat AS SELECT item_id, first(category_id ORDER BY n DESC, category_id) "
        "AS category FROM (SELECT item_id, category_id, count(*) AS n FROM ev GROUP BY ALL) "
        "GROUP BY item_id ORDER BY item_id"
    )
    clicks_then_buys(con)  # pv is the click
    con.execute("DROP VIEW clean")
    con.execute("DROP TABLE raw")
    return StreamLog(
        n_users=n_users,
        n_items=n_items,
        log=describe(n_cats),
        events_sql=(
            "SELECT e.user_id, e.ts, e.behavior, e.item_id, i.category FROM ev e "
            "JOIN item_cat i USING (item_id) ORDER BY e.user_id, e.ts, e.item_id, e.behavior"
        ),
        items=con.execute("SELECT item_id, category FROM item_cat ORDER BY item_id").df(),
        extra_stats={"source_rows": info},
    )


def read_taobao(con, csv: Path, behaviors: dict[str, int]) -> dict:
    """Table `clean` (the complete rows of the users without an incomplete row) from the CSV, and
    what was dropped: the in-memory `taobao.read_log`'s rule and report."""
    con.execute(
        "CREATE TABLE raw AS SELECT * FROM read_csv(?, header = false, delim = ',', "
        "auto_detect = false, null_padding = true, columns = {'raw_user': 'BIGINT', "
        "'raw_item': 'BIGINT', 'raw_category': 'BIGINT', 'behavior': 'VARCHAR', 'ts': 'BIGINT'})",
        [str(csv)],
    )
    broken = (
        "(raw_user IS NULL OR raw_item IS NULL OR raw_category IS NULL OR behavior IS NULL "
        "OR ts IS NULL)"
    )
    known = ", ".join(f"'{b}'" for b in behaviors)
    unknown = con.execute(
        f"SELECT count(*) FROM raw WHERE NOT {broken} AND behavior NOT IN ({known})"
    ).fetchone()[0]
    if unknown:
        raise ValueError(unknown_behavior_message(csv, behaviors))
    bad = con.execute(
        f"SELECT DISTINCT raw_user FROM raw WHERE {broken} AND raw_user IS NOT NULL ORDER BY raw_user"
    ).fetchnumpy()["raw_user"]
    con.execute(
        f"CREATE VIEW clean AS SELECT * FROM raw WHERE NOT {broken} "
        f"AND raw_user NOT IN (SELECT raw_user FROM raw WHERE {broken} AND raw_user IS NOT NULL)"
    )
    complete, users, broken_rows, bad_rows = con.execute(
        f"SELECT count(*) FILTER (NOT {broken}), count(DISTINCT raw_user) FILTER (NOT {broken}), "
        f"count(*) FILTER ({broken}), count(*) FILTER (NOT {broken} AND raw_user IN "
        f"(SELECT raw_user FROM raw WHERE {broken} AND raw_user IS NOT NULL)) FROM raw"
    ).fetchone()
    return {
        "raw_rows_complete": int(complete),
        "raw_users": int(users),
        "dropped_incomplete_rows": int(broken_rows),
        "dropped_users": [int(u) for u in bad],
        "dropped_user_rows": int(bad_rows),
    }


def unknown_behavior_message(csv: Path, behaviors: dict[str, int]) -> str:
    """The in-memory engine's message (the first such row, 1-based), found by reading the file in
    chunks: an error path, so a second read is fine."""
    names = ["user", "item", "category", "behavior", "ts"]
    offset = 0
    for df in pd.read_csv(csv, header=None, names=names, dtype={"behavior": str}, chunksize=CHUNK):
        bad = ~df.behavior.isin(list(behaviors)) & ~df.isna().any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            return (
                f"{csv}: row {offset + i + 1} has behavior {df.behavior.iloc[i]!r}; "
                f"expected one of {list(behaviors)}."
            )
        offset += len(df)
    return f"{csv}: a row has an unknown behavior; expected one of {list(behaviors)}."


# ---- Tmall 2014 brand log ------------------------------------------------------------------------
def load_tmall(
    con,
    csv: Path,
    log: LogDescription,
    *,
    columns: tuple[str, ...],
    type_to_behavior: dict[int, int],
    year: int,
    messages,
) -> StreamLog:
    """tmall.convert's tables: the header (`columns`), date and type checks with its `messages`
    (header, date, type: tmall.header_message, ...), ts = 00:00 UTC of the day in `year`, events
    sorted by (user, ts, brand, behaviour), clicks then buys."""
    header_message, date_message, type_message = messages
    with open(csv, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n").split(",")
    if header[:4] != list(columns):
        raise ValueError(header_message(csv, header))
    columns = {
        "user_id": "BIGINT",
        "brand_id": "BIGINT",
        "type": "BIGINT",
        "visit_datetime": "VARCHAR",
        **{f"extra_{k}": "VARCHAR" for k in range(len(header) - 4)},
    }
    # rn: the data row (1-based) for the errors' row numbers (row rn + 1 of the file)
    con.execute(
        "CREATE TABLE raw AS SELECT row_number() OVER () AS rn, * FROM read_csv(?, header = true, "
        f"delim = ',', auto_detect = false, columns = {columns!r})",
        [str(csv)],
    )
    md = r"'^\s*(\d{1,2})-(\d{1,2})\s*$'"
    bad = con.execute(
        f"SELECT rn, visit_datetime FROM raw WHERE NOT coalesce(regexp_matches(visit_datetime, "
        f"{md}), false) ORDER BY rn LIMIT 1"
    ).fetchone()
    if bad:
        raise ValueError(date_message(csv, bad[0] - 1, bad[1]))
    known = ", ".join(str(t) for t in type_to_behavior)
    bad = con.execute(
        f"SELECT rn, type FROM raw WHERE type NOT IN ({known}) ORDER BY rn LIMIT 1"
    ).fetchone()
    if bad:
        raise ValueError(type_message(csv, bad[0] - 1, bad[1]))
    n_users = remap_table(con, "raw", "user_id", "uid")
    n_items = remap_table(con, "raw", "brand_id", "item_id")
    case = " ".join(f"WHEN {t} THEN {b}" for t, b in type_to_behavior.items())
    day = (
        f"make_date({year}, regexp_extract(visit_datetime, {md}, 1)::INTEGER, "
        f"regexp_extract(visit_datetime, {md}, 2)::INTEGER)"
    )
    con.execute(
        f"CREATE TABLE ev AS SELECT u.uid AS user_id, "
        f"datediff('day', DATE '1970-01-01', {day})::BIGINT * 86400 AS ts, "
        f"(CASE r.type {case} END)::BIGINT AS behavior, i.item_id "
        f"FROM raw r JOIN map_user_id u USING (user_id) JOIN map_brand_id i USING (brand_id)"
    )
    con.execute("DROP TABLE raw")
    clicks_then_buys(con)
    return StreamLog(
        n_users=n_users,
        n_items=n_items,
        log=log,
        events_sql="SELECT user_id, ts, behavior, item_id FROM ev ORDER BY user_id, ts, item_id, behavior",
    )


# ---- MovieLens -----------------------------------------------------------------------------------
def load_movielens(con, ratings: Path, side) -> StreamLog:
    """movielens.convert's tables: the ratings (plain or gzip) through DuckDB; `side(user_uniq,
    rated)` -> (movie_uniq, items, users, log) is the in-memory converter's own code for users.dat
    and movies.dat (user- and item-sized), given the rating users' and the rated movies' raw ids."""
    # the file's order (rn) breaks ties of equal (user, ts, movie), as the in-memory stable sort
    con.execute(
        "CREATE TABLE raw AS SELECT row_number() OVER () AS rn, * FROM read_csv(?, header = false, "
        "delim = '::', auto_detect = false, columns = {'user': 'BIGINT', 'movie': 'BIGINT', "
        "'rating': 'BIGINT', 'ts': 'BIGINT'})",
        [str(ratings)],
    )
    user_uniq = con.execute("SELECT DISTINCT user FROM raw ORDER BY user").fetchnumpy()["user"]
    rated = con.execute("SELECT DISTINCT movie FROM raw ORDER BY movie").fetchnumpy()["movie"]
    movie_uniq, items, users, log = side(user_uniq, rated)
    maps = {
        "map_user": pd.DataFrame({"user": user_uniq, "user_id": np.arange(1, len(user_uniq) + 1)}),
        "map_movie": pd.DataFrame(
            {"movie": movie_uniq, "item_id": np.arange(1, len(movie_uniq) + 1)}
        ),
        "item_side": items[["item_id", "genre", "decade"]],
    }
    for name, frame in maps.items():
        con.register(f"{name}_frame", frame)
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_frame")
        con.unregister(f"{name}_frame")
    con.execute(
        "CREATE TABLE ev AS SELECT u.user_id, r.ts, (CASE WHEN r.rating >= 5 THEN 3 "
        "WHEN r.rating >= 4 THEN 2 ELSE 1 END)::BIGINT AS behavior, m.item_id, r.rn "
        "FROM raw r JOIN map_user u USING (user) JOIN map_movie m USING (movie)"
    )
    con.execute("DROP TABLE raw")
    # every rating is a logged impression: click = liked or loved, conversion = loved
    con.execute(
        "CREATE TABLE pos AS SELECT user_id, ts, item_id, (behavior >= 2)::BIGINT AS click, "
        "(behavior = 3)::BIGINT AS conversion, rn AS ord FROM ev"
    )
    return StreamLog(
        n_users=len(user_uniq),
        n_items=len(movie_uniq),
        log=log,
        events_sql=(
            "SELECT e.user_id, e.ts, e.behavior, e.item_id, i.genre, i.decade FROM ev e "
            "JOIN item_side i USING (item_id) ORDER BY e.user_id, e.ts, e.item_id, e.rn"
        ),
        items=items[["item_id", "genre", "decade", "year"]],
        users=users,
    )
