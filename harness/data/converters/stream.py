"""The out-of-core conversion engine (`--opt engine=duckdb`): a raw log (Taobao UserBehavior, Tmall
2014, MovieLens) to a contract folder in memory bounded independently of the log's length
(docs/converters.md, "Large logs"). Each format's reader, which loads the raw files into the
database's `ev` and `pos` tables, is in converters/stream_logs.py; this module is the shared tail.

DuckDB does what needs the whole log at once: parse the CSV, remap the ids, sort, group and join;
its sorts, group-bys and joins spill to a temporary directory past `memory_limit`. Python does what
is sequential in time, on fixed-size chunks streamed out of DuckDB in time order, holding only
tables sized by the items or users (never by the rows):

* sampled negatives: drawn per chunk of positives in time order (whole-log popularity, uniform, or
  as-of popularity from a sweep over the clicks, `ClickSweep`), then checked against the user's
  items by a DuckDB semi-join and the rejected ones redrawn, round after round, as
  `common.sample_negatives` does in memory;
* request ids, the time context, `item_pop` (a sweep over all events: counts so far per item) and
  the split, per chunk of the final impression order;
* the manifest's statistics, summed over the chunks.

Everything but the negatives is the in-memory engine's output row for row (events, positives,
labels, requests, splits, items, manifest; tests/test_data_stream.py). The negatives follow the
same distributions from a seeded generator (reruns are identical), not the same draws.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.contract import EVENTS, IMPRESSIONS, ITEMS, USERS
from harness.data.converters.common import (
    LogDescription,
    SplitCounts,
    TimeContext,
    build_manifest,
    format_stats,
    split_times,
)
from harness.data.counts import events_before, sorted_rank
from harness.data.features import ITEM_POP

CHUNK = 1 << 20  # rows per streamed chunk and per parquet row group
PART_ROWS = 1 << 22  # rows per part file of events/ and impressions/
MAX_ROUNDS = 200  # rejection rounds for the negatives, as common.sample_negatives
MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)$", re.IGNORECASE)


@dataclass(frozen=True)
class StreamSettings:
    """The engine's own options (`--opt memory_limit=4GB --opt threads=2 --opt temp_dir=PATH`)."""

    memory_limit: str = "4GB"  # DuckDB's, before it spills to disk; Python holds a few chunks more
    threads: int | None = None  # DuckDB's worker threads (None: every core)
    temp_dir: Path | None = None  # DuckDB's database and spill files (default: beside the output)

    def check(self, source: str) -> None:
        if not MEMORY_RE.match(str(self.memory_limit)):
            raise ValueError(
                f"{source}: --opt memory_limit={self.memory_limit!r} is not a size DuckDB reads; "
                f"give a number and a unit, e.g. --opt memory_limit=4GB (or 512MB)."
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(
                f"{source}: --opt threads={self.threads!r} must be a whole number >= 1 "
                f"(DuckDB's worker threads), e.g. --opt threads=2."
            )


def connect(db: Path, settings: StreamSettings):
    """A DuckDB database in `db` (a file: the log's tables live on disk, not in memory)."""
    try:
        # optional dependency (the 'scale' extra): only the streaming engine needs it
        import duckdb
    except ImportError as e:
        raise ImportError(
            "engine=duckdb needs DuckDB, which is not installed: pip install -e '.[scale]' "
            "(or convert with the default in-memory engine, --opt engine=pandas)."
        ) from e
    con = duckdb.connect(str(db / "convert.duckdb"))
    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
    con.execute(f"SET temp_directory = '{db / 'spill'}'")
    # ORDER BY results and COPY output must keep the query's order (the contract's sort rules)
    con.execute("SET preserve_insertion_order = true")
    if settings.threads:
        con.execute(f"SET threads = {int(settings.threads)}")
    return con


# ---- streaming helpers ---------------------------------------------------------------------------
def chunks(con, sql: str, size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The rows of an ordered query as numpy columns, `size` rows a chunk (the last fewer). Fixed
    sizes whatever batches DuckDB hands over, so that the seeded draws do not depend on them."""
    size = size or CHUNK
    cur = con.cursor()  # its own connection: several streams may be open at once
    rel = cur.sql(sql)
    # DuckDB 2 names it to_arrow_reader, 1.x fetch_arrow_reader
    reader = (rel.to_arrow_reader if hasattr(rel, "to_arrow_reader") else rel.fetch_arrow_reader)(
        size
    )
    held: list[pa.RecordBatch] = []
    n = 0
    for batch in reader:
        held.append(batch)
        n += batch.num_rows
        while n >= size:
            table = pa.Table.from_batches(held)
            yield _columns(table.slice(0, size))
            rest = table.slice(size)
            held, n = rest.to_batches(), rest.num_rows
    if n:
        yield _columns(pa.Table.from_batches(held))


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: table.column(c).to_numpy() for c in table.column_names}


class TimeStream:
    """Rows of (ts, item_id) in ascending ts, consumed as the request time advances: `take(t)`
    removes and returns the rows with ts < t, `peek(t)` returns them and keeps them."""

    def __init__(self, rows: Iterator[dict[str, np.ndarray]]):
        self.rows = rows
        self.ts = np.zeros(0, np.int64)
        self.item = np.zeros(0, np.int64)

    def _fill(self, t: int) -> None:
        while not len(self.ts) or self.ts[-1] < t:
            nxt = next(self.rows, None)
            if nxt is None:
                return
            self.ts = np.concatenate([self.ts, nxt["ts"]])
            self.item = np.concatenate([self.item, nxt["item_id"]])

    def peek(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        self._fill(t)
        k = int(np.searchsorted(self.ts, t, side="left"))
        return self.ts[:k], self.item[:k]

    def take(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        ts, item = self.peek(t)
        self.ts, self.item = self.ts[len(ts) :], self.item[len(ts) :]
        return ts, item


class AsOfCounts:
    """Per item, its events strictly before each query time, for queries in ascending time: counts
    before the chunk (item-sized) plus the chunk's own window of events (`counts.events_before`)."""

    def __init__(self, rows: Iterator[dict[str, np.ndarray]], n_items: int):
        self.stream = TimeStream(rows)
        self.counts = np.zeros(n_items + 1, np.int64)
        self.total = 0

    def window(self, t_lo: int, t_hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Absorb the events before t_lo into the counts; the events in [t_lo, t_hi) (ts, item)."""
        _, item = self.stream.take(t_lo)
        self.counts += np.bincount(item, minlength=len(self.counts))
        self.total += len(item)
        return self.stream.peek(t_hi)

    def before(self, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
        w_ts, w_item = self.window(int(ts[0]), int(ts[-1]))
        return self.counts[item] + events_before(w_item, w_ts, item, ts)


# ---- negatives -----------------------------------------------------------------------------------
@dataclass
class Sampler:
    """Draws candidate negatives for request times in ascending order, from the distribution the
    in-memory engine uses (common.popularity_weights): whole-log click counts + 1, as-of click
    counts + 1 (`AsOfPopularity.draw`'s scheme), or uniform."""

    negatives: str
    n_items: int
    rng: np.random.Generator
    weights: np.ndarray | None = None  # "popularity": per-item probabilities
    clicks: AsOfCounts | None = None  # "popularity_asof": the click sweep of this round
    cdf: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self):
        if self.weights is not None:  # as Generator.choice(p=weights) computes it at every call
            self.cdf = self.weights.cumsum()
            self.cdf /= self.cdf[-1]

    def draw(self, ts: np.ndarray) -> np.ndarray:
        # "popularity" and "uniform": Generator.choice(items, size, p=weights)'s draws exactly (one
        # uniform per row, searched in the cdf; tests/test_data_stream.py), searched with the
        # uniforms in sorted order: random keys into an item-sized cdf miss the cache at nearly
        # every step (4M items: ~1 us a key, most of a 100M-row log's negatives phase)
        if self.negatives != "popularity_asof":
            if self.cdf is None:
                return self.rng.integers(0, self.n_items, len(ts), dtype=np.int64) + 1
            return sorted_rank(self.cdf, self.rng.random(len(ts)), "right") + 1
        # P(i | t) = (clicks of i before t + 1) / (clicks before t + n_items), as AsOfPopularity:
        # with probability before / (before + n_items) the item of a uniformly chosen earlier click,
        # else a uniform item. An earlier click is one before the chunk (its item drawn from the
        # item-sized counts: click k of them in item order, the same distribution as in time order)
        # or one in the chunk's window before t.
        w_ts, w_item = self.clicks.window(int(ts[0]), int(ts[-1]))
        b0 = self.clicks.total
        before = b0 + np.searchsorted(w_ts, ts, side="left")
        from_events = self.rng.random(len(ts)) * (before + self.n_items) < before
        pick = (self.rng.random(len(ts)) * before).astype(np.int64)
        cum = np.cumsum(self.clicks.counts[1:])
        earlier = sorted_rank(cum, np.minimum(pick, max(b0 - 1, 0)), "right") + 1
        in_window = w_item[np.clip(pick - b0, 0, max(len(w_item) - 1, 0))] if len(w_item) else 0
        uniform = self.rng.integers(1, self.n_items + 1, len(ts))
        return np.where(from_events, np.where(pick < b0, earlier, in_window), uniform)


def sample_negatives(con, work: Path, *, neg_ratio: int, negatives: str, n_items: int, seed: int):
    """Table `neg(slot, user_id, ts, item_id)`: `neg_ratio` negatives per positive, never an item
    of the user's events. Round 1 draws for every slot in time order; a DuckDB semi-join against
    the user-item pairs finds the rejected ones, which the next round redraws (fewer each round)."""
    rng = np.random.default_rng(seed)
    weights = None
    if negatives == "popularity":
        counts = con.execute(
            "SELECT item_id, count(*) AS n FROM ev WHERE behavior = 1 GROUP BY item_id"
        ).fetchnumpy()
        w = np.ones(n_items, float)
        np.add.at(w, counts["item_id"] - 1, counts["n"].astype(float))
        weights = w / w.sum()
    con.execute("CREATE TABLE pairs AS SELECT DISTINCT user_id, item_id FROM ev")
    con.execute("CREATE TABLE neg (slot BIGINT, user_id BIGINT, ts BIGINT, item_id BIGINT)")
    if neg_ratio == 0:
        return
    # round 0 draws for every slot, slot = (rank of the positive in (ts, user, item) order) * r + j;
    # later rounds redraw the rejected slots (table todo)
    first = "SELECT user_id, ts FROM pos ORDER BY ts, user_id, item_id"
    left = 0
    for r in range(MAX_ROUNDS):
        clicks = None
        if negatives == "popularity_asof":
            sql = "SELECT ts, item_id FROM ev WHERE behavior = 1 ORDER BY ts, item_id"
            clicks = AsOfCounts(chunks(con, sql), n_items)
        sampler = Sampler(negatives, n_items, rng, weights, clicks)
        drawn = work / f"neg-round-{r}"
        with PartWriter(drawn) as out:
            if r == 0:
                done = 0
                for c in chunks(con, first, max(CHUNK // neg_ratio, 1)):
                    n = len(c["ts"])
                    slot = done + np.arange(n * neg_ratio, dtype=np.int64)
                    done += n * neg_ratio
                    rows = {k: np.repeat(v, neg_ratio) for k, v in c.items()}
                    out.write(pa.table({"slot": slot, **rows, "item_id": sampler.draw(rows["ts"])}))
            else:
                for c in chunks(con, "SELECT slot, user_id, ts FROM todo ORDER BY ts, slot"):
                    out.write(pa.table({**c, "item_id": sampler.draw(c["ts"])}))
        if not any(drawn.glob("*.parquet")):  # no positives: nothing to draw
            return
        files = f"'{drawn}/*.parquet'"
        con.execute(
            f"CREATE OR REPLACE TABLE todo AS SELECT d.slot, d.user_id, d.ts FROM "
            f"read_parquet({files}) d SEMI JOIN pairs p "
            f"ON d.user_id = p.user_id AND d.item_id = p.item_id"
        )
        con.execute(
            f"INSERT INTO neg SELECT * FROM read_parquet({files}) "
            f"WHERE slot NOT IN (SELECT slot FROM todo)"
        )
        shutil.rmtree(drawn)
        left = con.execute("SELECT count(*) FROM todo").fetchone()[0]
        if left == 0:
            con.execute("DROP TABLE todo")
            return
    raise ValueError(
        f"could not sample negatives for {left} rows after {MAX_ROUNDS} rounds: "
        f"those users interacted with almost every item; lower neg_ratio."
    )


# ---- writing -------------------------------------------------------------------------------------
class PartWriter:
    """Parquet part files DIR/<name>-00000.parquet, ... of PART_ROWS rows, row groups of CHUNK."""

    def __init__(self, folder: Path, name: str = "part"):
        self.folder, self.name = Path(folder), name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.parts = self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None or self.rows >= PART_ROWS:
            self.close()
            path = self.folder / f"{self.name}-{self.parts:05d}.parquet"
            self.writer = pq.ParquetWriter(path, table.schema)
            self.parts, self.rows = self.parts + 1, 0
        self.writer.write_table(table, row_group_size=CHUNK)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_events(con, folder: Path, sql: str) -> None:
    """events/part-*.parquet: the rows of `sql` (the log's events in the in-memory order)."""
    with PartWriter(folder) as out:
        for c in chunks(con, sql):
            out.write(pa.table(c))


@dataclass
class ImpressionState:
    """What the impression pass carries from one chunk to the next."""

    last_ts: int = -1
    last_user: int = -1
    requests: int = 0
    splits: dict[str, SplitCounts] = field(
        default_factory=lambda: {s: SplitCounts() for s in ("train", "val", "test")}
    )


def write_impressions(
    con,
    folder: Path,
    *,
    n_items: int,
    context: TimeContext,
    item_pop: bool,
    val_start: int,
    test_start: int,
) -> ImpressionState:
    """impressions/part-*.parquet: positives and negatives in the in-memory order (ts, user_id,
    item_id, click), with request ids (one per (user, ts), numbered in that order), the time
    context, item_pop and the split; the split counts summed for the manifest."""
    sql = (
        "SELECT user_id, ts, item_id, click, conversion FROM ("
        "SELECT user_id, ts, item_id, click, conversion, ord FROM pos UNION ALL "
        "SELECT user_id, ts, item_id, 0::BIGINT, 0::BIGINT, 0::BIGINT FROM neg"
        ") ORDER BY ts, user_id, item_id, click, ord"
    )
    # Both orders are materialised first, one sort at a time, then read by plain scans (which keep
    # insertion order): two ORDER BY streams open together hold both sorts at once, and on DuckDB
    # 2.0 that ran out of a 1GB memory_limit at 10M rows instead of spilling.
    con.execute(f"CREATE TABLE imp_sorted AS {sql}")
    con.execute("CREATE TABLE ev_by_ts AS SELECT ts, item_id FROM ev ORDER BY ts, item_id")
    events = AsOfCounts(chunks(con, "SELECT ts, item_id FROM ev_by_ts"), n_items)
    st = ImpressionState()
    with PartWriter(folder) as out:
        for c in chunks(con, "SELECT user_id, ts, item_id, click, conversion FROM imp_sorted"):
            ts, user = c["ts"], c["user_id"]
            new = np.ones(len(ts), bool)
            new[0] = (ts[0] != st.last_ts) or (user[0] != st.last_user)
            new[1:] = (ts[1:] != ts[:-1]) | (user[1:] != user[:-1])
            request_id = st.requests + np.cumsum(new)
            st.requests, st.last_ts, st.last_user = int(request_id[-1]), int(ts[-1]), int(user[-1])
            cols = {"request_id": request_id.astype(np.int64), **c}
            local = ts + context.utc_offset_h * 3600
            if context.hour:
                cols["hour"] = (local // 3600) % 24 + 1
            cols["weekday"] = ((local // 86400) + 3) % 7 + 1  # as common.add_time_context
            if item_pop:
                cols["item_pop"] = np.log1p(events.before(c["item_id"], ts)).astype(np.float32)
            split = np.where(ts >= test_start, "test", np.where(ts >= val_start, "val", "train"))
            cols["split"] = split.astype(object)
            for s, acc in st.splits.items():
                m = split == s
                acc.impressions += int(m.sum())
                acc.requests += int(new[m].sum())  # a request lies in one split (one ts)
                acc.clicks += int(c["click"][m].sum())
                acc.conversions += int(c["conversion"][m].sum())
            out.write(pa.table(cols))
    return st


# ---- one log through the engine ------------------------------------------------------------------
@dataclass
class StreamLog:
    """A log loaded into the database by its reader (converters/stream_logs.py): tables
    `ev(user_id, ts, behavior, item_id, ...)`, every event with remapped ids, and `pos(user_id,
    ts, item_id, click, conversion, ord)`, the logged impressions (`ord` breaks ties of equal
    (ts, user_id, item_id, click) rows as the in-memory engine's stable sort does; 0 where there
    are none); and what the converter says of the log, item- and user-sized tables only."""

    n_users: int
    n_items: int
    log: LogDescription
    events_sql: str  # the events table's rows and columns, in the contract's order (ORDER BY)
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    extra_stats: dict = field(default_factory=dict)


def settings_for(
    source: str, memory_limit: str, threads: int | None, temp_dir: str | None
) -> StreamSettings:
    """The engine's options of a converter's `convert`, checked (errors name `source`)."""
    settings = StreamSettings(memory_limit, threads, Path(temp_dir) if temp_dir else None)
    settings.check(source)
    return settings


def convert_stream(
    out: Path,
    load,
    *,
    context: TimeContext,
    neg_ratio: int,
    negatives: str,
    val_frac: float,
    test_frac: float,
    seed: int,
    item_pop: bool,
    overwrite: bool,
    settings: StreamSettings,
) -> Path:
    """A converter on DuckDB: `load(con) -> StreamLog` reads the raw log into the database, then
    the shared tail (common.finish_conversion's steps, streamed) writes the contract folder."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} exists; choose another --out or pass overwrite=True (--overwrite)."
        )
    split_times(lambda k: 0, 1, val_frac, test_frac)  # the fractions' check, before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    work_parent = Path(settings.temp_dir) if settings.temp_dir else out.parent
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.duckdb.", dir=work_parent))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    con = connect(work, settings)
    try:
        progress = Progress()
        log: StreamLog = load(con)
        progress("the log read: events and positives tables")
        n_items = log.n_items
        sample_negatives(
            con, work, neg_ratio=neg_ratio, negatives=negatives, n_items=n_items, seed=seed
        )
        progress("negatives")
        # the split: impression k in ts order is positive k // (1 + r) in ts order (each positive
        # comes with r negatives of its time)
        n_pos = con.execute("SELECT count(*) FROM pos").fetchone()[0]

        def ts_at(k: int) -> int:
            q = f"SELECT ts FROM pos ORDER BY ts LIMIT 1 OFFSET {k // (1 + neg_ratio)}"
            return con.execute(q).fetchone()[0]

        val_start, test_start = split_times(ts_at, n_pos * (1 + neg_ratio), val_frac, test_frac)
        write_events(con, tmp / EVENTS.removesuffix(".parquet"), log.events_sql)
        progress("events/ written")
        st = write_impressions(
            con,
            tmp / IMPRESSIONS.removesuffix(".parquet"),
            n_items=n_items,
            context=context,
            item_pop=item_pop,
            val_start=val_start,
            test_start=test_start,
        )
        progress("impressions/ written")
        if log.users is not None:
            log.users.to_parquet(tmp / USERS, index=False)
        if log.items is not None:
            log.items.to_parquet(tmp / ITEMS, index=False)
        pop = (ITEM_POP,) if item_pop else ()
        manifest = build_manifest(
            log.log, log.n_users, n_items, context, pop, val_start, test_start
        )
        stats = events_stats(con, manifest, st, n_pos * (1 + neg_ratio))
        replace(manifest, stats={**stats, **log.extra_stats}).save(tmp)
        con.close()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


class Progress:
    """One line per finished phase on stderr (a long conversion says where it is): the phase's
    wall time and the process's peak RSS so far."""

    def __init__(self):
        self.t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(
            f"convert (duckdb): {phase}: {now - self.t:.1f} s, peak RSS {peak:.2f} GB so far",
            file=sys.stderr,
            flush=True,
        )
        self.t = now


def events_stats(con, manifest, st: ImpressionState, n_im: int):
    """The manifest's stats (common.format_stats) from DuckDB's counts and the impression pass:
    users and items as the distinct ids of the events (MovieLens lists items nobody rated)."""
    beh = con.execute("SELECT behavior, count(*) AS n FROM ev GROUP BY behavior").fetchnumpy()
    per_user = con.execute("SELECT count(*) AS n FROM ev GROUP BY user_id").fetchnumpy()["n"]
    n_events, n_users, n_items = con.execute(
        "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM ev"
    ).fetchone()
    return format_stats(
        manifest,
        events=n_events,
        users=n_users,
        items=n_items,
        impressions=n_im,
        requests=st.requests,
        behaviors=dict(zip(beh["behavior"].tolist(), beh["n"].tolist())),
        per_user=per_user,
        splits=st.splits,
    )
