"""The data-contract validator: every violation of a dataset folder, each with file, column, an
example row and the fix (docs/data-contract.md is the contract it checks).

`validate(folder) -> list[Violation]` never stops at the first problem: each check runs over whole
columns (vectorised) and reports how many rows break it and the first one. Events are read one
row group at a time and impressions one batch of rows at a time (keyed.table_batches); a check that
crosses a boundary carries what it needs (the previous row's sort key, the open request, the
splits seen, the count of rows without history), so a long log is checked in bounded memory: what
is held grows with the users and items (their ids, each user's first event), not with the rows.
The report lists the checks in the order they run, whatever the files' row-group layout. Nothing
is written to the dataset (a request check over request ids in no particular order spills to a
temporary folder; keyed.KeyPartitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    MANIFEST,
    SPLITS,
    USERS,
    ContractError,
    Manifest,
    n_rows,
    read_table,
    table_files,
    table_schema,
    table_source,
)
from harness.data.keyed import KeyPartitions, table_batches

DOC = "docs/data-contract.md"


@dataclass(frozen=True, kw_only=True)
class Violation:
    file: str
    column: str
    kind: str  # short tag: missing_file, dtype, unsorted, vocab, ...
    message: str
    fix: str
    rows: int = 0  # how many rows break it (0: file- or column-level)
    example: dict[str, Any] = field(
        default_factory=dict
    )  # first offending row: {"row": i, col: value, ...}
    severity: str = "error"  # error: the dataset cannot be used; warning: usable, but look at it

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = (
            ("warning: " if not self.is_error else "")
            + f"{self.file}"
            + (f" [{self.column}]" if self.column else "")
        )
        ex = f"\n    example: {self.example}" if self.example else ""
        n = f" ({self.rows:,} rows)" if self.rows else ""
        return f"{where}: {self.kind}: {self.message}{n}{ex}\n    fix: {self.fix}"


class _Report:
    def __init__(self) -> None:
        self.items: list[Violation] = []
        self._agg: dict[tuple[str, str, str], Violation] = {}
        self._order: dict[tuple[str, str, str], int] = {}  # each check's place (note)
        self.unreadable: set[str] = set()

    def add(self, **kw: Any) -> None:
        self.items.append(Violation(**kw))

    def note(self, key: tuple[str, str, str]) -> None:
        """Give a row-level check its place in the report at its first call, found or not: the
        report then lists checks in the order they run, whatever row group finds them first (a
        file's row-group layout does not reorder the report)."""
        self._order.setdefault(key, len(self._order))

    def rows(
        self,
        table: pa.Table,
        mask: np.ndarray,
        offset: int,
        *,
        file: str,
        column: str,
        kind: str,
        message: str,
        fix: str,
        show: tuple[str, ...] = (),
        severity: str = "error",
    ) -> None:
        """Aggregate a row-level check (possibly over several row groups) into one violation."""
        self.note((file, column, kind))
        n = int(np.count_nonzero(mask))
        if n == 0:
            return
        example: dict[str, Any] = {}
        if (file, column, kind) not in self._agg:
            i = int(np.flatnonzero(mask)[0])
            cols = [c for c in dict.fromkeys((*show, column)) if c in table.column_names]
            example = {"row": offset + i, **{c: _py(table.column(c)[i].as_py()) for c in cols}}
        self.found(
            file=file,
            column=column,
            kind=kind,
            message=message,
            fix=fix,
            rows=n,
            example=example,
            severity=severity,
        )

    def found(self, **kw: Any) -> None:
        """Add kw['rows'] offending rows to the check's violation; the first example is kept (a
        later batch's rows come after the earlier ones')."""
        v = Violation(**kw)
        key = (v.file, v.column, v.kind)
        self.note(key)
        if key in self._agg:
            old = self._agg[key]
            v = Violation(**(kw | {"rows": old.rows + v.rows, "example": old.example}))
        self._agg[key] = v

    def held(self, key: tuple[str, str, str]) -> Violation | None:
        """The violation aggregated so far for a check (for a check decided at the end)."""
        return self._agg.get(key)

    def result(self) -> list[Violation]:
        agg = sorted(self._agg.items(), key=lambda kv: self._order[kv[0]])
        return self.items + [v for _, v in agg]


class _readable:
    """`with _readable(rep, fname, path):` turns a damaged parquet file (truncated footer, corrupt
    pages, not parquet at all) into one 'unreadable' violation naming the file, and skips the rest
    of that file's checks."""

    def __init__(self, rep: _Report, fname: str, path: Path):
        self.rep, self.fname, self.path = rep, fname, path

    def __enter__(self) -> None:
        if self.fname in self.rep.unreadable:
            raise _Skip

    def __exit__(self, typ, err, tb) -> bool:
        if typ is _Skip:
            return True
        if err is None or not isinstance(err, (pa.ArrowException, OSError)):
            return False
        if self.fname not in self.rep.unreadable:
            self.rep.unreadable.add(self.fname)
            self.rep.add(
                file=self.fname,
                column="",
                kind="unreadable",
                message=f"cannot read {self.path}: {type(err).__name__}: {str(err).strip()}",
                fix="the file is truncated or corrupt (an interrupted copy or write?): write it again "
                "(rerun the converter, or df.to_parquet) and validate again",
            )
        return True


class _Skip(Exception):
    pass


def unreadable_files(folder: str | Path) -> list[Violation]:
    """Read every parquet file of the folder in full; one violation per damaged file. Used to name
    the file when a reader that is not the validator (the data module, stats) fails."""
    rep = _Report()
    for fname in (EVENTS, IMPRESSIONS, USERS, ITEMS):
        try:
            path = table_source(folder, fname)
        except ContractError:
            continue  # the validator reports it; this function names damaged files only
        if path is None:
            continue
        with _readable(rep, fname, path):
            for f in table_files(path):
                pf = pq.ParquetFile(f)
                for rg in range(pf.num_row_groups):
                    pf.read_row_group(rg)
    return rep.result()


def _py(v: Any) -> Any:
    return float(v) if isinstance(v, (np.floating,)) else v


def _sources(rep: _Report, folder: Path) -> dict[str, Path | None]:
    """Each table's file or folder of parts (contract.table_source); a folder of parts that is
    empty, ambiguous or mixes schemas is one 'parts' violation naming the part and the fix, and
    that table's other checks are skipped (they would only repeat it)."""
    src: dict[str, Path | None] = {}
    for fname in (EVENTS, IMPRESSIONS, USERS, ITEMS):
        try:
            src[fname] = table_source(folder, fname)
            if src[fname] is not None and src[fname].is_dir():
                table_schema(src[fname])
        except (pa.ArrowException, OSError):
            pass  # a damaged part: the table's own check reports it as 'unreadable', named
        except ContractError as e:
            src[fname] = folder / fname
            rep.unreadable.add(fname)
            rep.add(
                file=fname,
                column="",
                kind="parts",
                message=str(e).split(" Fix: ")[0],
                fix=str(e).split(" Fix: ")[-1],
            )
    return src


# ---------------------------------------------------------------------------------------------
INT_FIX = "store it as an integer column (int64), e.g. df[col] = df[col].astype('int64')"


def _check_columns(
    rep: _Report,
    fname: str,
    schema: pa.Schema,
    ints: list[str],
    floats: list[str],
    strings: list[str],
) -> set[str]:
    """Missing columns and wrong dtypes; returns the columns that are present with a usable dtype."""
    ok = set()
    for col, want in [
        *((c, "int") for c in ints),
        *((c, "float") for c in floats),
        *((c, "str") for c in strings),
    ]:
        if col not in schema.names:
            rep.add(
                file=fname,
                column=col,
                kind="missing_column",
                message=f"required column '{col}' is absent",
                fix=f"add column '{col}' ({want}) to {fname} ({DOC})",
            )
            continue
        t = schema.field(col).type
        good = {
            "int": pa.types.is_integer(t),
            "float": pa.types.is_floating(t) or pa.types.is_integer(t),
            "str": pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_dictionary(t),
        }[want]
        if not good:
            fix = {
                "int": INT_FIX,
                "float": "store it as float32/float64",
                "str": "store split as strings 'train' / 'val' / 'test'",
            }[want]
            rep.add(
                file=fname, column=col, kind="dtype", message=f"dtype {t}, expected {want}", fix=fix
            )
        else:
            ok.add(col)
    return ok


def _vocab(
    rep: _Report,
    t: pa.Table,
    off: int,
    fname: str,
    col: str,
    lo: int,
    hi: int,
    what: str,
    show: tuple[str, ...] = (),
) -> None:
    v = t.column(col).to_numpy(zero_copy_only=False)
    rep.rows(
        t,
        (v < lo) | (v >= hi),
        off,
        file=fname,
        column=col,
        kind="vocab",
        message=f"ids outside [{lo}, {hi}) ({what})",
        fix=f"re-index '{col}' to 1..{hi - 1} (0 = missing) or raise its vocab_size in {MANIFEST}",
        show=show,
    )


def _finite(
    rep: _Report, t: pa.Table, off: int, fname: str, col: str, show: tuple[str, ...] = ()
) -> None:
    v = t.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
    rep.rows(
        t,
        ~np.isfinite(v),
        off,
        file=fname,
        column=col,
        kind="non_finite",
        message="NaN or infinite values in a numeric column",
        fix=f"impute or drop them (e.g. fill with the column median) before writing {fname}",
        show=show,
    )


def _numeric_feats(m: Manifest, table: str) -> list[str]:
    return [f.name for f in m.features if f.table == table and f.kind == "numeric"]


def _cat_feats(m: Manifest, table: str) -> list[str]:
    return [f.name for f in m.features if f.table == table and f.kind == "categorical"]


@dataclass(kw_only=True)
class _Dataset:
    """What the checks share: the manifest, where each table lies, and what one check learns for a
    later one (the ids of users.parquet / items.parquet, the items' side fields, each user's first
    event)."""

    folder: Path
    manifest: Manifest
    src: dict[str, Path | None]
    exists: dict[str, bool]  # the table is there (a file or a folder of parts)
    present: dict[str, bool]  # ... and usable: not already reported as broken 'parts'
    vocab: dict[str, int | None]  # categorical feature -> vocab_size
    users_ids: np.ndarray | None = None  # sorted unique user ids of users.parquet
    items_ids: np.ndarray | None = None  # sorted unique item ids of items.parquet
    item_side: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # (sorted item ids, sides)
    first_event: tuple[np.ndarray, np.ndarray] | None = None  # (sorted users, first event ts)

    @property
    def user_vocab(self) -> int:
        """The upper bound of user ids: user_id's vocab_size when declared, else none."""
        return self.vocab.get("user_id") or np.iinfo(np.int64).max


def validate(folder: str | Path) -> list[Violation]:
    """Every contract violation of the dataset folder (empty list: valid). The checks run in this
    order, each a named step below; the report keeps the order in which they find things."""
    folder = Path(folder)
    rep = _Report()
    ds = _open(rep, folder)
    if ds is None:
        return rep.result()
    _check_files(rep, ds)
    _check_lookup_table(rep, ds, "users", USERS, "user_id")
    _check_lookup_table(rep, ds, "items", ITEMS, "item_id")
    _read_item_sides(rep, ds)
    _check_events(rep, ds)
    _check_impressions(rep, ds)
    return rep.result()


# ---- the manifest and the files --------------------------------------------------------------
def _open(rep: _Report, folder: Path) -> _Dataset | None:
    """The manifest and each table's source; None (with a 'manifest' violation) when the manifest
    cannot be read: nothing else can be checked without it."""
    try:
        m = Manifest.load(folder)
    except ContractError as e:
        rep.add(
            file=MANIFEST,
            column="",
            kind="manifest",
            message=str(e),
            fix=f"see {DOC} for the manifest fields",
        )
        return None
    src = _sources(rep, folder)
    # a table reported as 'parts' is there but unusable: not missing, and not checked further
    exists = {f: src[f] is not None for f in (EVENTS, IMPRESSIONS, USERS, ITEMS)}
    return _Dataset(
        folder=folder,
        manifest=m,
        src=src,
        exists=exists,
        present={f: exists[f] and f not in rep.unreadable for f in exists},
        vocab={f.name: f.vocab_size for f in m.features if f.kind == "categorical"},
    )


def _check_files(rep: _Report, ds: _Dataset) -> None:
    """The two required tables, and users/items wherever the manifest declares features in them."""
    for f in (EVENTS, IMPRESSIONS):
        if not ds.exists[f]:
            rep.add(
                file=f,
                column="",
                kind="missing_file",
                message=f"required file {f} is absent",
                fix=f"write {ds.folder / f} or its parts {ds.folder / f.removesuffix('.parquet')}/"
                f"part-*.parquet ({DOC})",
            )
    for table, f in (("users", USERS), ("items", ITEMS)):
        feats = [x.name for x in ds.manifest.features if x.table == table]
        if feats and not ds.exists[f]:
            rep.add(
                file=f,
                column=",".join(feats),
                kind="missing_file",
                message=f"manifest declares features {feats} in table '{table}' but {f} is absent",
                fix=f"write {f} with {table[:-1]}_id and those columns, or move the features' table",
            )


# ---- users.parquet / items.parquet -----------------------------------------------------------
def _check_lookup_table(rep: _Report, ds: _Dataset, table: str, fname: str, idc: str) -> None:
    """users.parquet or items.parquet: columns, 1-based unique ids, feature vocabularies, finite
    numerics, a batch of rows at a time; only the ids are held (bounded by the users or items),
    for the duplicate check and the impressions' unknown_user / unknown_item checks."""
    if not ds.present[fname]:
        return
    m = ds.manifest
    with _readable(rep, fname, ds.src[fname]):
        ok = _check_columns(
            rep,
            fname,
            table_schema(ds.src[fname]),
            [idc, *_cat_feats(m, table)],
            _numeric_feats(m, table),
            [],
        )
        id_parts: list[np.ndarray] = []
        off = 0
        for t in table_batches(ds.src[fname], sorted(ok)):
            if idc in ok:
                hi = m.item_vocab if idc == "item_id" else ds.user_vocab
                _vocab(rep, t, off, fname, idc, 1, hi, "ids are 1-based; 0 is padding")
                rep.note((fname, idc, "duplicate_id"))  # found over every batch's ids, below
                id_parts.append(t.column(idc).to_numpy())
            for c in _cat_feats(m, table):
                if c in ok and c != idc:
                    _vocab(rep, t, off, fname, c, 0, ds.vocab[c], "categorical feature", (idc,))
            for c in _numeric_feats(m, table):
                if c in ok:
                    _finite(rep, t, off, fname, c, (idc,))
            off += len(t)
            del t  # free this batch before the next is read
        if idc in ok:
            ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
            _duplicate_ids(rep, fname, idc, ids)
            if table == "users":
                ds.users_ids = np.unique(ids)
            else:
                ds.items_ids = np.unique(ids)


def _duplicate_ids(rep: _Report, fname: str, idc: str, ids: np.ndarray) -> None:
    """Every row whose id appeared on an earlier row; the first such row is the example."""
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(ids.size, bool)
    dup[first] = False
    n = int(np.count_nonzero(dup))
    if n:
        i = int(np.flatnonzero(dup)[0])
        rep.found(
            file=fname,
            column=idc,
            kind="duplicate_id",
            message=f"{idc} appears more than once",
            fix=f"keep one row per {idc}",
            rows=n,
            example={"row": i, idc: int(ids[i])},
        )


def _read_item_sides(rep: _Report, ds: _Dataset) -> None:
    """The items' side fields, sorted by item id, to check the events' copies against."""
    if not ds.present[ITEMS]:
        return
    with _readable(rep, ITEMS, ds.src[ITEMS]):
        sides = [c for c in ds.manifest.side_fields if c in table_schema(ds.src[ITEMS]).names]
        it = read_table(ds.src[ITEMS], columns=["item_id", *sides])
        order = np.argsort(it.column("item_id").to_numpy(), kind="stable")
        ds.item_side = (
            it.column("item_id").to_numpy()[order],
            {c: it.column(c).to_numpy()[order] for c in sides},
        )


# ---- events.parquet, one row group at a time -------------------------------------------------
@dataclass(kw_only=True)
class _EventScan:
    """What the event checks carry from one row group to the next."""

    ok: set[str]  # the columns present with a usable dtype
    show: tuple[str, ...]  # the columns an example row shows
    off: int = 0  # rows of the earlier row groups
    last_key: tuple[int, int] | None = None  # (user_id, ts) of the previous row
    carry: pa.Table | None = None  # last (user, ts) group of the previous row group
    first_parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def _check_events(rep: _Report, ds: _Dataset) -> None:
    """events.parquet in bounded memory: columns, not empty, then each row group's order, ids
    and side fields; finally each user's first event (for the impressions' no_history check)."""
    if not ds.present[EVENTS]:
        return
    m = ds.manifest
    with _readable(rep, EVENTS, ds.src[EVENTS]):
        ok = _check_columns(
            rep,
            EVENTS,
            table_schema(ds.src[EVENTS]),
            ["user_id", "ts", "behavior", "item_id", *m.side_fields],
            [],
            [],
        )
        if n_rows(ds.src[EVENTS]) == 0:
            rep.add(
                file=EVENTS,
                column="",
                kind="empty",
                message="the behaviour log has no rows: every impression would have an empty history, "
                "so a sequence model could not learn from it",
                fix=f"write the users' events to {EVENTS} ({DOC}); check the converter's filters",
            )
        scan = _EventScan(ok=ok, show=tuple(c for c in ("user_id", "ts") if c in ok))
        for f in table_files(ds.src[EVENTS]):
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=sorted(ok))
                _check_event_order(rep, t, scan)
                dup_keys = [c for c in ("user_id", "ts", "item_id", "behavior") if c in ok]
                if len(dup_keys) == 4 and len(t):
                    scan.carry = _duplicates(rep, t, scan.carry, scan.off, dup_keys, scan.show)
                _check_event_ids(rep, ds, t, scan)
                _check_event_sides(rep, ds, t, scan)
                scan.off += len(t)
                del t  # free this row group before the next is read: one held, not two
        ds.first_event = _first_events(scan.first_parts)


def _check_event_order(rep: _Report, t: pa.Table, scan: _EventScan) -> None:
    """Sorted by (user_id, ts) across row groups, no negative ts; notes each user's first event."""
    if not {"user_id", "ts"} <= scan.ok:
        return
    u, ts = t.column("user_id").to_numpy(), t.column("ts").to_numpy()
    bad = np.zeros(len(u), bool)
    bad[1:] = (u[1:] < u[:-1]) | ((u[1:] == u[:-1]) & (ts[1:] < ts[:-1]))
    if scan.last_key is not None and len(u):
        bad[0] = (u[0], ts[0]) < scan.last_key
    rep.rows(
        t,
        bad,
        scan.off,
        file=EVENTS,
        column="ts",
        kind="unsorted",
        message="events are not sorted by (user_id, ts)",
        fix="sort: df.sort_values(['user_id', 'ts'], kind='stable') before writing",
        show=scan.show,
    )
    if len(u):
        scan.last_key = (int(u[-1]), int(ts[-1]))
        # each user's first event (events are sorted by (user_id, ts); unsorted ones are an
        # error above): is there any history before an impression?
        users, first = np.unique(u, return_index=True)
        scan.first_parts.append((users, ts[first]))
    rep.rows(
        t,
        ts < 0,
        scan.off,
        file=EVENTS,
        column="ts",
        kind="timestamp",
        message="negative timestamps",
        fix="store ts as int64 epoch seconds",
        show=scan.show,
    )


def _check_event_ids(rep: _Report, ds: _Dataset, t: pa.Table, scan: _EventScan) -> None:
    """User ids, behaviour ids, item ids and side fields inside their vocabularies."""
    m, ok, off, show = ds.manifest, scan.ok, scan.off, scan.show
    if "user_id" in ok:
        _vocab(rep, t, off, EVENTS, "user_id", 1, ds.user_vocab, "user ids are 1-based", show)
    if "behavior" in ok:
        n_beh = len(m.behaviors)
        b = t.column("behavior").to_numpy()
        rep.rows(
            t,
            (b < 1) | (b > n_beh),
            off,
            file=EVENTS,
            column="behavior",
            kind="behavior",
            message=f"unknown behaviour ids (manifest declares 1..{n_beh}: {list(m.behavior_names())})",
            fix="map behaviours to the ids declared in manifest.behaviors (0 is never an event)",
            show=show,
        )
    if "item_id" in ok:
        _vocab(rep, t, off, EVENTS, "item_id", 1, m.item_vocab, "item ids are 1-based", show)
    for s in m.side_fields:
        if s in ok:
            _vocab(rep, t, off, EVENTS, s, 0, ds.vocab[s], "side field", show)


def _check_event_sides(rep: _Report, ds: _Dataset, t: pa.Table, scan: _EventScan) -> None:
    """Each event's side fields equal its item's in items.parquet (when that table exists)."""
    if ds.item_side is None or "item_id" not in scan.ok:
        return
    ids, sides = ds.item_side
    item = t.column("item_id").to_numpy()
    pos = np.minimum(np.searchsorted(ids, item), max(ids.size - 1, 0))
    known = ids.size > 0
    found = (ids[pos] == item) if known else np.zeros(item.size, bool)
    for s, vals in sides.items():
        if s in scan.ok:
            bad = found & (t.column(s).to_numpy() != vals[pos])
            rep.rows(
                t,
                bad,
                scan.off,
                file=EVENTS,
                column=s,
                kind="side_mismatch",
                message=f"'{s}' of the event differs from the item's '{s}' in {ITEMS}",
                fix=f"write each event's side fields from {ITEMS} (join on item_id) so "
                f"sequence and candidate see the same values",
                show=(*scan.show, "item_id"),
            )


def _first_events(
    first_parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted users, each one's first event ts) from the row groups' parts; None without any."""
    if not first_parts:
        return None
    users = np.concatenate([p[0] for p in first_parts])
    firsts = np.concatenate([p[1] for p in first_parts])
    order = np.lexsort((firsts, users))
    users, firsts = users[order], firsts[order]
    keep = np.ones(len(users), bool)
    keep[1:] = users[1:] != users[:-1]
    return users[keep], firsts[keep]


# ---- impressions.parquet, one batch at a time ------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Impressions:
    """One batch of the impressions table as the checks read it."""

    t: pa.Table
    ok: set[str]  # the columns present with a usable dtype
    show: tuple[str, ...]  # the columns an example row shows
    off: int  # rows of the earlier batches: the row number of the batch's first row

    def col(self, c: str) -> np.ndarray:
        return self.t.column(c).to_numpy(zero_copy_only=False)


REQUEST = (IMPRESSIONS, "request_id", "request")
REQUEST_MESSAGE = "a request_id spans several users or timestamps"
REQUEST_FIX = "give each (user_id, ts) request its own request_id"


class _RequestCheck:
    """'a request_id spans several users or timestamps': every row whose (user_id, ts) differs from
    the previous row of its request_id, in row order, counted and exemplified as a whole-table
    check would.

    When the request ids never decrease in row order (the converters number requests in time
    order), each request's rows are contiguous and the previous row of its request is the previous
    row: one pass, carrying the last row across batches. Ids in another order (hashed ids, an id
    reused at a later ts) need every row of a request together: `finish` then reads the three
    columns again into KeyPartitions grouped by request_id (on disk past PARTITION_ROWS rows), so
    memory is one partition, never the table."""

    def __init__(self) -> None:
        self.last: tuple[int, int, int] | None = None  # (request_id, user_id, ts) of the last row
        self.ids_ascend = True
        self.run = _Report()  # the one-pass result, used while ids_ascend holds

    def add(self, im: _Impressions) -> None:
        if not self.ids_ascend:
            return
        rid, u, ts = im.col("request_id"), im.col("user_id"), im.col("ts")
        if np.any(rid[1:] < rid[:-1]) or (self.last is not None and rid[0] < self.last[0]):
            self.ids_ascend = False
            return
        mix = np.zeros(len(rid), bool)
        mix[1:] = (rid[1:] == rid[:-1]) & ((u[1:] != u[:-1]) | (ts[1:] != ts[:-1]))
        if self.last is not None:
            mix[0] = rid[0] == self.last[0] and (u[0] != self.last[1] or ts[0] != self.last[2])
        self.run.rows(
            im.t,
            mix,
            im.off,
            file=IMPRESSIONS,
            column="request_id",
            kind="request",
            message=REQUEST_MESSAGE,
            fix=REQUEST_FIX,
            show=im.show,
        )
        self.last = (int(rid[-1]), int(u[-1]), int(ts[-1]))

    def finish(self, rep: _Report, src: Path) -> None:
        if self.ids_ascend:
            if (v := self.run.held(REQUEST)) is not None:
                rep.found(**{f.name: getattr(v, f.name) for f in fields(v)})
            return
        count, first = 0, None
        with KeyPartitions(n_rows(src), ("request_id", "row", "user_id", "ts")) as parts:
            off = 0
            for t in table_batches(src, ["request_id", "user_id", "ts"]):
                col = [t.column(c).to_numpy() for c in ("request_id", "user_id", "ts")]
                parts.add(col[0], np.arange(off, off + len(t)), col[1], col[2])
                off += len(t)
            for p in parts.partitions():
                # stable: a request's rows stay in row order, as in the whole table
                order = np.argsort(p["request_id"], kind="stable")
                r, row, u, ts = (p[c][order] for c in ("request_id", "row", "user_id", "ts"))
                mix = np.zeros(len(r), bool)
                mix[1:] = (r[1:] == r[:-1]) & ((u[1:] != u[:-1]) | (ts[1:] != ts[:-1]))
                count += int(np.count_nonzero(mix))
                if mix.any():
                    i = int(np.flatnonzero(mix)[np.argmin(row[mix])])
                    if first is None or row[i] < first["row"]:
                        first = {"row": row[i], "request_id": r[i], "user_id": u[i], "ts": ts[i]}
        if count:
            rep.found(
                file=IMPRESSIONS,
                column="request_id",
                kind="request",
                message=REQUEST_MESSAGE,
                fix=REQUEST_FIX,
                rows=count,
                example={k: int(v) for k, v in first.items()},
            )


@dataclass(kw_only=True)
class _ImpressionScan:
    """What the impression checks carry from one batch to the next; nothing here grows with the
    table's length (the previous row's sort key, the splits seen, the count of rows without
    history and its first example, the request check's last row)."""

    ok: set[str]
    show: tuple[str, ...]
    off: int = 0  # rows of the earlier batches
    last_key: tuple[int, int] | None = None  # (ts, request_id) of the previous row
    splits: set[str] = field(default_factory=set)
    no_history: _Report = field(default_factory=_Report)  # held until the share is known
    no_history_rows: int = 0
    request: _RequestCheck | None = None


def _check_impressions(rep: _Report, ds: _Dataset) -> None:
    """impressions.parquet in bounded memory, one batch of rows at a time: columns, rows in every
    split, order and requests, histories, ids, labels and the chronological split. A check that
    crosses a batch boundary carries what it needs in _ImpressionScan."""
    if not ds.present[IMPRESSIONS]:
        return
    m, src = ds.manifest, ds.src[IMPRESSIONS]
    with _readable(rep, IMPRESSIONS, src):
        ints = [
            "request_id",
            "user_id",
            "ts",
            "item_id",
            "click",
            "conversion",
            *(c for c in _cat_feats(m, "impressions") if c not in ("user_id", "item_id")),
        ]
        floats = _numeric_feats(m, "impressions") + (
            ["p_click", "p_conversion"] if m.has_oracle else []
        )
        ok = _check_columns(rep, IMPRESSIONS, table_schema(src), ints, floats, ["split"])
        total = n_rows(src)
        if total == 0:
            rep.add(
                file=IMPRESSIONS,
                column="",
                kind="empty",
                message="no impressions: nothing to train or evaluate on",
                fix=f"write the shown candidates with their labels to {IMPRESSIONS} ({DOC})",
            )
        scan = _ImpressionScan(
            ok=ok,
            show=tuple(c for c in ("request_id", "user_id", "ts") if c in ok),
            request=_RequestCheck() if {"request_id", "user_id", "ts"} <= ok else None,
        )
        history = ds.first_event is not None and {"user_id", "ts"} <= ok
        for t in table_batches(src, sorted(ok)):
            im = _Impressions(t=t, ok=ok, show=scan.show, off=scan.off)
            _check_impression_order(rep, im, scan)
            if history:
                _no_history_rows(rep, im, ds.first_event, scan)
            _check_impression_ids(rep, ds, im)
            _check_labels(rep, m, im)
            _check_split(rep, m, im, scan)
            scan.off += len(t)
            del t, im  # free this batch before the next is read: one held, not two
        if scan.request is not None:
            scan.request.finish(rep, src)
        if history and total:
            _no_history(rep, scan, total)
        if total and "split" in ok:
            _check_empty_splits(rep, m, scan.splits)


def _check_empty_splits(rep: _Report, m: Manifest, seen: set[str]) -> None:
    """Some impressions in each of train, val and test."""
    for split in SPLITS:
        if split not in seen:
            rep.add(
                file=IMPRESSIONS,
                column="split",
                kind="empty_split",
                message=f"split '{split}' has no impressions: the run needs train to learn, val "
                f"to select and test to report",
                fix=f"check manifest.split (val from ts {m.split.val_start_ts}, test from ts "
                f"{m.split.test_start_ts}) against the impressions' time range",
            )


def _check_impression_order(rep: _Report, im: _Impressions, scan: _ImpressionScan) -> None:
    """No negative ts; sorted by (ts, request_id) across batches; one (user, ts) per request."""
    t, ok, show = im.t, im.ok, im.show
    if "ts" in ok:
        rep.rows(
            t,
            im.col("ts") < 0,
            im.off,
            file=IMPRESSIONS,
            column="ts",
            kind="timestamp",
            message="negative timestamps",
            fix="store ts as int64 epoch seconds",
            show=show,
        )
    if not {"ts", "request_id"} <= ok:
        return
    ts, rid = im.col("ts"), im.col("request_id")
    bad = np.zeros(len(ts), bool)
    bad[1:] = (ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (rid[1:] < rid[:-1]))
    if scan.last_key is not None:
        bad[0] = (int(ts[0]), int(rid[0])) < scan.last_key
    scan.last_key = (int(ts[-1]), int(rid[-1]))
    rep.rows(
        t,
        bad,
        im.off,
        file=IMPRESSIONS,
        column="ts",
        kind="unsorted",
        message="impressions are not sorted by (ts, request_id)",
        fix="sort: df.sort_values(['ts', 'request_id'], kind='stable') before writing",
        show=show,
    )
    if scan.request is not None:
        # a request is one (user, time): its impressions share one behaviour sequence. Found at
        # the end (_RequestCheck.finish); its place in the report is here.
        rep.note(REQUEST)
        scan.request.add(im)


def _check_impression_ids(rep: _Report, ds: _Dataset, im: _Impressions) -> None:
    """Item and user ids in their vocabularies and known to items/users.parquet when those exist;
    the impressions' own features in range and finite."""
    m, t, ok, show = ds.manifest, im.t, im.ok, im.show
    if "item_id" in ok:
        _vocab(
            rep,
            t,
            im.off,
            IMPRESSIONS,
            "item_id",
            1,
            m.item_vocab,
            "item ids are 1-based",
            show + ("item_id",),
        )
        if ds.items_ids is not None:
            rep.rows(
                t,
                ~np.isin(im.col("item_id"), ds.items_ids),
                im.off,
                file=IMPRESSIONS,
                column="item_id",
                kind="unknown_item",
                message=f"candidate items without a row in {ITEMS}",
                fix=f"add those items to {ITEMS} (their item features are joined from it)",
                show=show,
            )
    if "user_id" in ok:
        _vocab(
            rep, t, im.off, IMPRESSIONS, "user_id", 1, ds.user_vocab, "user ids are 1-based", show
        )
        if ds.users_ids is not None:
            rep.rows(
                t,
                ~np.isin(im.col("user_id"), ds.users_ids),
                im.off,
                file=IMPRESSIONS,
                column="user_id",
                kind="unknown_user",
                message=f"impressions whose user has no row in {USERS}",
                fix=f"add those users to {USERS}: when {USERS} exists it must hold every user of "
                f"the impressions (a user without events is allowed: an empty history)",
                show=show,
            )
    for c in _cat_feats(m, "impressions"):
        if c in ok and c not in ("user_id", "item_id"):
            _vocab(rep, t, im.off, IMPRESSIONS, c, 0, ds.vocab[c], "categorical feature", show)
    for c in _numeric_feats(m, "impressions"):
        if c in ok:
            _finite(rep, t, im.off, IMPRESSIONS, c, show)


def _check_labels(rep: _Report, m: Manifest, im: _Impressions) -> None:
    """0/1 labels, conversion only after a click (unless the manifest allows it), and the oracle's
    probabilities in [0, 1]."""
    t, ok, show = im.t, im.ok, im.show
    for c in ("click", "conversion"):
        if c in ok:
            rep.rows(
                t,
                ~np.isin(im.col(c), (0, 1)),
                im.off,
                file=IMPRESSIONS,
                column=c,
                kind="label",
                message="labels must be 0 or 1",
                fix=f"binarise '{c}' (e.g. (x > 0).astype('int64'))",
                show=show,
            )
    if {"click", "conversion"} <= ok and m.labels.get("conversion_requires_click", True):
        rep.rows(
            t,
            (im.col("conversion") == 1) & (im.col("click") != 1),
            im.off,
            file=IMPRESSIONS,
            column="conversion",
            kind="conversion_without_click",
            message="conversion = 1 on an impression with click = 0",
            fix="set conversion = click & conversion, or set labels.conversion_requires_click: false "
            f"in {MANIFEST} if your funnel allows it",
            show=(*show, "click"),
        )
    for c in ("p_click", "p_conversion"):
        if c in ok:
            p = im.col(c).astype(np.float64)
            rep.rows(
                t,
                ~(np.isfinite(p) & (p >= 0) & (p <= 1)),
                im.off,
                file=IMPRESSIONS,
                column=c,
                kind="probability",
                message="true probabilities must be finite and in [0, 1]",
                fix=f"store probabilities, not logits, in '{c}'",
                show=show,
            )


def _check_split(rep: _Report, m: Manifest, im: _Impressions, scan: _ImpressionScan) -> None:
    """Split values from SPLITS, and chronological: derived from ts by manifest.split. Notes the
    splits seen (for the empty_split check at the end)."""
    if "split" not in im.ok:
        return
    t, show = im.t, im.show
    sp = np.asarray(im.col("split")).astype(str)
    scan.splits.update(np.unique(sp).tolist())
    rep.rows(
        t,
        ~np.isin(sp, SPLITS),
        im.off,
        file=IMPRESSIONS,
        column="split",
        kind="split",
        message=f"split values must be one of {list(SPLITS)}",
        fix="relabel the split column",
        show=show,
    )
    if "ts" in im.ok:
        ts = im.col("ts")
        want = np.where(
            ts >= m.split.test_start_ts,
            "test",
            np.where(ts >= m.split.val_start_ts, "val", "train"),
        )
        rep.rows(
            t,
            np.isin(sp, SPLITS) & (sp != want),
            im.off,
            file=IMPRESSIONS,
            column="split",
            kind="leakage",
            message=f"split is not chronological: it disagrees with manifest.split "
            f"(val from ts {m.split.val_start_ts}, test from ts {m.split.test_start_ts})",
            fix="derive split from ts: train < split.val_start_ts <= val < split.test_start_ts <= test",
            show=show,
        )


# `validate` warns when at least this share of the impressions has an empty history (no event of
# their user strictly before their ts): a sequence model then learns little or nothing from the
# history. Real logs have some cold start (new users, the first days of a log); the converted
# Taobao/Tmall/MovieLens samples and the synthetic worlds are far below it. docs/data-contract.md.
NO_HISTORY_WARN = 0.5


NO_HISTORY = (IMPRESSIONS, "ts", "no_history")


def _no_history_rows(
    rep: _Report,
    im: _Impressions,
    first_event: tuple[np.ndarray, np.ndarray],
    scan: _ImpressionScan,
) -> None:
    """Count the batch's impressions without a prior event of their user (and keep the first
    one); whether to warn is decided on the whole table's share, at the end (_no_history)."""
    rep.note(NO_HISTORY)
    user, ts = im.col("user_id"), im.col("ts")
    users, firsts = first_event
    pos = np.minimum(np.searchsorted(users, user), max(users.size - 1, 0))
    if users.size:
        has = (users[pos] == user) & (firsts[pos] < ts)
    else:
        has = np.zeros(user.size, bool)
    empty = ~has
    scan.no_history_rows += int(np.count_nonzero(empty))
    scan.no_history.rows(
        im.t,
        empty,
        im.off,
        file=IMPRESSIONS,
        column="ts",
        kind="no_history",
        message="",
        fix="",
        show=im.show,
        severity="warning",
    )


def _no_history(rep: _Report, scan: _ImpressionScan, total: int) -> None:
    """Warn when NO_HISTORY_WARN or more of the impressions have no prior event of their user."""
    share = scan.no_history_rows / total
    held = scan.no_history.held(NO_HISTORY)
    if share < NO_HISTORY_WARN or held is None:
        return
    what = (
        "no impression has any prior event"
        if share == 1.0
        else f"{share:.0%} of the impressions have no prior event"
    )
    rep.found(
        file=IMPRESSIONS,
        column="ts",
        kind="no_history",
        message=f"{what} of their user in {EVENTS} (ts strictly before the impression's): their "
        f"behaviour sequences are empty, so a sequence model cannot learn from the history "
        f"(warned at >= {NO_HISTORY_WARN:.0%})",
        fix=f"check that {EVENTS} holds the impressions' users and that both files' ts are epoch "
        f"seconds of the same clock; a log that starts with its impressions needs events from "
        f"before them",
        rows=held.rows,
        example=held.example,
        severity="warning",
    )


def _duplicates(
    rep: _Report,
    t: pa.Table,
    carry: pa.Table | None,
    off: int,
    keys: list[str],
    show: tuple[str, ...],
) -> pa.Table:
    """Exact duplicate events (same user_id, ts, item_id and behavior) within a row group and across
    its boundary with the previous one (events are sorted by (user_id, ts), so a duplicate of a row
    sits in the same (user, ts) group). Returns the last (user, ts) group, carried to the next."""
    n_carry = 0 if carry is None else len(carry)
    both = t.select(keys) if carry is None else pa.concat_tables([carry, t.select(keys)])
    cols = [both.column(k).to_numpy() for k in keys]
    order = np.lexsort(cols[::-1])
    same = np.ones(len(order) - 1, bool) if len(order) > 1 else np.zeros(0, bool)
    for c in cols:
        same &= c[order][1:] == c[order][:-1]
    dup = np.zeros(len(order), bool)
    dup[order[1:][same]] = True
    rep.rows(
        t,
        dup[n_carry:],
        off,
        file=EVENTS,
        column="item_id",
        kind="duplicate_event",
        message="exact duplicate events (same user_id, ts, item_id, behavior): each repeats a token of "
        "the history",
        fix="drop them if they are double-logged "
        "(df.drop_duplicates(['user_id', 'ts', 'item_id', 'behavior'])); keep them if the log "
        "really records repeated actions within one second",
        show=(*show, "item_id"),
        severity="warning",
    )
    u, ts = cols[0], cols[1]
    last = (u == u[-1]) & (ts == ts[-1])
    return both.filter(pa.array(last))


def errors(problems: list[Violation]) -> list[Violation]:
    return [p for p in problems if p.is_error]
