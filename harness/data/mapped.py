"""The data module's set-up out of core (`data.storage: mapped`): the arrays of `PreparedData`
built batch by batch into a folder of flat binary files once, then memory-mapped.

Why: the in-memory set-up (`prepared.prepare`) holds every impression with its joined features
and the whole event log in process memory: about 1.3 KB per raw log row at its peak, so a
100M-event log would need over 100 GB. Here the same arrays are written to disk by a pass over the
tables a batch of rows at a time (`keyed.table_batches`), and training reads them through the page
cache: resident memory is what the batches touch, which the kernel can drop at will (clean, file-
backed pages), plus what grows with requests, users and items only (the epoch plan, the users' and
items' tables).

What is held while building, whatever the log's length: one batch of impressions (about 1M rows,
with the request that straddles a batch boundary carried to the next), one row group of events,
the users' and items' feature tables, and, when request ids do not increase from request to request,
each request's first id at the end (to check that no id is used twice, 8 bytes per request).

Same arrays as `prepare` (the parity test compares them on fresh folders): ids, labels, as-of
offsets and events exactly; standardised numerics to float32 rounding, since their train mean and
standard deviation are summed by batch here (float64) rather than over the whole column at once.

Why our own code and not a library: the batches need random access by impression and request with
the as-of offsets precomputed (datamodule.py); torch's and pyarrow's streaming readers give
sequential record batches, and a memory-mapped numpy array is the plain tool for random access to
data larger than memory.

The folder is keyed by the dataset's files (path, size, modification time) and the manifest, so an
edited dataset builds a new one; it is built under a temporary name and renamed when complete, so
an interrupted build leaves nothing that is later read as finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    SPLITS,
    USERS,
    ContractError,
    Manifest,
    n_rows,
    table_files,
    table_schema,
    table_source,
)
from harness.data.keyed import table_batches
from harness.data.prepared import (
    REQUEST_COLUMNS,
    PreparedData,
    _FeatureJoin,
    _int_column,
    _raw_numerics,
    _requests_from,
)
from harness.data.sequences import EventStore

FORMAT = 1  # bump when the layout of the files changes: older folders are then rebuilt
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# flat arrays on disk
# ---------------------------------------------------------------------------------------------
class _Writer:
    """Arrays appended batch by batch to DIR/<name>.bin (raw, C order); `close` writes
    DIR/arrays.json with each array's dtype and shape."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, object] = {}
        self.meta: dict[str, tuple[str, tuple[int, ...], int]] = {}  # dtype, row shape, rows

    def add(self, name: str, values: np.ndarray, dtype=None) -> None:
        a = np.ascontiguousarray(values, dtype=dtype)
        if name not in self.files:
            self.files[name] = open(self.folder / f"{name}.bin", "wb")
            self.meta[name] = (a.dtype.str, tuple(a.shape[1:]), 0)
        dt, row, n = self.meta[name]
        if a.dtype.str != dt or tuple(a.shape[1:]) != row:
            raise AssertionError(f"{name}: {a.dtype}{a.shape} after {dt}{row}")  # a bug of ours
        self.files[name].write(a.tobytes())
        self.meta[name] = (dt, row, n + len(a))

    def flush(self) -> None:
        """Make what was added readable through a mapping of the files (the build reads back
        the as-of key, the raw numerics and the request arrays before it is done)."""
        for f in self.files.values():
            f.flush()

    def declare(self, name: str, dtype, row: tuple[int, ...] = ()) -> None:
        """An array that may receive no rows (an empty split, no numeric feature)."""
        if name not in self.files:
            self.add(name, np.zeros((0, *row), dtype))

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        meta = {k: {"dtype": d, "shape": [n, *row]} for k, (d, row, n) in self.meta.items()}
        (self.folder / "arrays.json").write_text(json.dumps(meta, indent=1))


def _open_arrays(folder: Path, *, random_access: bool = False) -> dict[str, np.ndarray]:
    """Every array of a built folder, memory-mapped read-only (nothing read yet).

    random_access: advise the kernel that the pages are read in no order (madvise MADV_RANDOM),
    so that a page fault reads that page and not the read-ahead window around it. Why: a
    uniformly shuffled epoch over arrays larger than the page cache faults on nearly every
    request, and the default read-around (the disk's read_ahead_kb, 8 MB here) then reads about
    a megabyte and a half from disk per impression for the few hundred bytes used. On the 100M-row
    log the advice cut the bytes read per impression about 100x and sped the uniform pass up
    1.4x on one machine and 14x on another (the disk's latency for a lone 4 KB read decides;
    quiet, docs/data-module.md, "An epoch order with locality"). Orders that read the arrays in
    long runs (chronological, data.shuffle_block) were slower with it, so they keep the default.
    """
    out = {}
    advice = getattr(mmap, "MADV_RANDOM", None)  # Linux and most Unixes; else no advice
    for name, m in json.loads((folder / "arrays.json").read_text()).items():
        shape, dtype = tuple(m["shape"]), np.dtype(m["dtype"])
        count = int(np.prod(shape))
        if count == 0:  # an empty file cannot be mapped
            out[name] = np.zeros(shape, dtype)
            continue
        with open(folder / f"{name}.bin", "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # outlives the descriptor
        if random_access and advice is not None:
            view.madvise(advice)
        out[name] = np.frombuffer(view, dtype, count=count).reshape(shape)  # read-only
    return out


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A torch view of a read-only mapping (torch warns that it cannot write there; nothing does:
    batches are gathered into new tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


# ---------------------------------------------------------------------------------------------
# the cache folder
# ---------------------------------------------------------------------------------------------
def fingerprint(folder: Path) -> str:
    """Names the built arrays of a dataset folder: its resolved path, the manifest's text and
    every table file's name, size and modification time (an edit or a reconversion changes it)."""
    h = hashlib.sha256(f"format {FORMAT}\n{folder.resolve()}\n".encode())
    h.update((folder / "manifest.yaml").read_bytes())
    for name in (EVENTS, IMPRESSIONS, USERS, ITEMS):
        src = table_source(folder, name)
        for f in table_files(src) if src is not None else []:
            st = f.stat()
            h.update(f"{f.relative_to(folder)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def prepare_mapped(
    folder: str | Path,
    manifest: Manifest,
    root: str | Path,
    *,
    progress: bool = True,
    random_access: bool = False,
) -> PreparedData:
    """The dataset's PreparedData memory-mapped from ROOT/<folder name>-<fingerprint>/, built
    there first when missing (about as long as the in-memory set-up; later runs open it at once).
    random_access: the pages will be read in no order (a uniformly shuffled epoch): see
    `_open_arrays`."""
    folder, root = Path(folder), Path(root)
    built = root / f"{folder.resolve().name}-{fingerprint(folder)}"
    if _damage(built) is not None:
        root.mkdir(parents=True, exist_ok=True)
        # one builder at a time: DDP ranks and parallel runs of a sweep wait for it, then open
        with open(root / f".{built.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            damage = _damage(built)
            if damage is not None:
                if built.exists():  # our own cache, damaged (a file removed or cut short)
                    print(f"data (mapped): {damage}; rebuilding it", file=sys.stderr)
                    shutil.rmtree(built)
                _build_once(folder, manifest, root, built, progress)
    return open_mapped(built, random_access=random_access)


def _damage(built: Path) -> str | None:
    """None when `built` is a complete build (every array file present at its recorded size),
    else what is wrong."""
    try:
        meta = json.loads((built / "arrays.json").read_text())
        json.loads((built / "info.json").read_text())
    except FileNotFoundError:
        return f"{built} is not built"
    except ValueError:
        return f"{built}: arrays.json or info.json is damaged"
    for name, m in meta.items():
        f = built / f"{name}.bin"
        want = int(np.prod(m["shape"])) * np.dtype(m["dtype"]).itemsize
        have = f.stat().st_size if f.exists() else None
        if have != want:
            return f"{f} has {have} bytes where {want} were written"
    return None


def _build_once(folder: Path, manifest: Manifest, root: Path, built: Path, progress: bool) -> None:
    """Build under a temporary name, renamed when complete (so never read half-built)."""
    tmp = root / f".{built.name}.{os.getpid()}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        from harness.runstore import full_disk  # on use: the error the run path reports

        with full_disk(
            lambda e: (
                f"cannot write {e.filename or tmp}: {e.strerror} while building the "
                f"memory-mapped dataset (data.storage=mapped needs about 80 bytes per "
                f"impression under {root}); free space there or point data.cache_dir at a "
                f"larger disk, or use data.storage=memory. Nothing was kept."
            )
        ):
            build(folder, manifest, tmp, progress=progress)
        os.rename(tmp, built)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_mapped(built: Path, *, random_access: bool = False) -> PreparedData:
    a = _open_arrays(built, random_access=random_access)
    info = json.loads((built / "info.json").read_text())
    split_code = np.asarray(a["req_split"])
    imp_names = info["imp"]
    return PreparedData(
        events=EventStore(
            table=_tensor(a["ev_table"]), ts_base=info["ts_base"], n_events=info["n_events"]
        ),
        imp={k: _tensor(a[f"imp_{k}"]) for k in imp_names},
        imp_req=a["imp_req"],
        req_lo=a["req_lo"],
        req_hi=a["req_hi"],
        req_start=_tensor(a["req_start"]),
        req_end=_tensor(a["req_end"]),
        req_ts=_tensor(a["req_ts"]),
        split_requests={s: np.flatnonzero(split_code == k) for k, s in enumerate(SPLITS)},
        num_mean=np.asarray(info["num_mean"], np.float64),
        num_std=np.asarray(info["num_std"], np.float64),
    )


# ---------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------
class _Progress:
    """Progress lines on stderr; `every`: at most one such line per that many seconds."""

    def __init__(self, on: bool) -> None:
        self.on, self.t0, self.last = on, time.monotonic(), 0.0

    def __call__(self, msg: str, every: float = 0.0) -> None:
        now = time.monotonic()
        if self.on and now - self.last >= every:
            self.last = now
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
            print(
                f"data (mapped): {msg} [{now - self.t0:.1f} s, peak RSS {peak:.2f} GB so far]",
                file=sys.stderr,
                flush=True,
            )


def build(folder: Path, manifest: Manifest, out: Path, *, progress: bool = True) -> None:
    """Write the PreparedData arrays of `folder` into `out` (see the module docstring)."""
    say = _Progress(progress)
    spec = manifest.feature_spec(1)
    w = _Writer(out)
    events = _Events(folder, manifest, spec)
    events.scan()
    say(f"events checked ({events.n:,} rows)")
    users = events.write(w)
    say("events written")
    info = _Impressions(folder, manifest, spec, events, users).write(w, say)
    w.close()
    info.update(ts_base=events.ts_base, n_events=events.n)
    (out / "info.json").write_text(json.dumps(info, indent=1))
    say("done")


class _Events:
    """The event log in two passes over its row groups: checks and ranges, then the EventStore
    table and the packed (user rank, ts) key of the as-of join (sequences.asof_offsets, "packed")."""

    def __init__(self, folder: Path, manifest: Manifest, spec) -> None:
        src = table_source(folder, EVENTS)
        if src is None:
            raise ContractError(
                f"{folder / EVENTS}: missing. Every dataset folder needs {EVENTS}, or its part "
                f"files events/part-*.parquet (docs/data-contract.md)."
            )
        self.src, self.where = src, str(src)
        self.side = list(manifest.side_fields)
        self.columns = ["user_id", "ts", "behavior", "item_id", *self.side]
        present = list(table_schema(src).names)
        missing = [c for c in self.columns if c not in present]
        if missing:
            raise ContractError(
                f"{self.where}: missing column(s) {missing}; present: {present}. "
                f"Add them (docs/data-contract.md)."
            )
        self.limits = {
            "item_id": (0, manifest.item_vocab, "Raise manifest item_vocab or remap ids."),
            "behavior": (
                1,
                spec.n_behaviors + 1,
                "Behaviour ids are 1..n as declared in manifest 'behaviors'.",
            ),
            **{
                name: (0, vocab, f"Raise vocab_size of '{name}' in the manifest.")
                for name, vocab in zip(self.side, spec.side_vocab)
            },
        }

    def _batches(self):
        at = 0
        for t in table_batches(self.src, self.columns):
            df = t.to_pandas()
            yield at, {c: _int_column(df, c, self.where) for c in self.columns}
            at += len(df)

    def scan(self) -> None:
        """Pass 1: sorted by (user_id, ts), ids inside their vocabularies (the messages of
        prepared._read_events, counts over the whole table), and the ranges that set the
        storage width and the as-of key."""
        prev = None
        bad = {c: [0, None] for c in self.limits}  # count, first (row, value)
        n, tmin, tmax, n_users, top = 0, None, None, 0, 0
        for at, c in self._batches():
            u, t = c["user_id"], c["ts"]
            if prev is not None:
                u, t = np.r_[prev[0], u], np.r_[prev[1], t]
            du, dt = np.diff(u), np.diff(t)
            wrong = np.flatnonzero((du < 0) | ((du == 0) & (dt < 0)))
            if len(wrong):
                i, row = int(wrong[0]), at + int(wrong[0]) + (0 if prev is None else -1)
                raise ContractError(
                    f"{self.where}: not sorted by (user_id, ts): row {row + 1} "
                    f"(user {u[i + 1]}, ts {t[i + 1]}) comes after "
                    f"(user {u[i]}, ts {t[i]}). Sort with "
                    f"df.sort_values(['user_id', 'ts'], kind='stable')."
                )
            n_users += int((du != 0).sum()) + (1 if prev is None and len(u) else 0)
            prev = (c["user_id"][-1:], c["ts"][-1:]) if len(c["ts"]) else prev
            for col, (lo, hi, _) in self.limits.items():
                v = c[col]
                out = np.flatnonzero((v < lo) | (v >= hi))
                if len(out):
                    if bad[col][1] is None:
                        bad[col][1] = (at + int(out[0]), v[out[0]])
                    bad[col][0] += len(out)
                elif len(v):
                    top = max(top, int(v.max()))
            if len(t):
                lo_t, hi_t = int(t.min()), int(t.max())
                tmin = lo_t if tmin is None else min(tmin, lo_t)
                tmax = hi_t if tmax is None else max(tmax, hi_t)
            n += len(c["ts"])
        for col, (count, first) in bad.items():  # in _read_events' order: item, behaviour, side
            if count:
                lo, hi, fix = self.limits[col]
                raise ContractError(
                    f"{self.where}: column '{col}' has {count} value(s) outside [{lo}, {hi}), "
                    f"e.g. row {first[0]} = {first[1]}. {fix}"
                )
        self.n, self.n_users = n, n_users
        self.ts_base = tmin if tmin is not None else 0
        self.tmax = tmax if tmax is not None else 0
        span = self.tmax - self.ts_base
        self.dtype = np.int32 if top < _INT32_MAX and span < _INT32_MAX else np.int64
        # the as-of key: user rank in the high bits, ts - min in the low ts_bits (clipped request
        # times go one past the newest event, hence + 2)
        self.ts_bits = max(1, (span + 2).bit_length())
        if n_users >= 2 ** (63 - self.ts_bits):
            raise ContractError(
                f"{self.where}: {n_users:,} users over a time span of {span:,} s do not fit the "
                f"as-of key of data.storage=mapped (users < 2**(63 - bits of the span)). Use "
                f"data.storage=memory, or store ts in coarser units."
            )

    def write(self, w: _Writer) -> np.ndarray:
        """Pass 2: the EventStore table (a zero row last: the padding target) and the as-of key.
        Returns the users in log order (one per user: bounded by users, not events)."""
        users, rank, prev_user = [], -1, None
        for _, c in self._batches():
            u = c["user_id"]
            cols = [c["item_id"], c["behavior"], c["ts"] - self.ts_base]
            cols += [c[s] for s in self.side]
            w.add("ev_table", np.stack(cols, 1), self.dtype)
            change = np.ones(len(u), bool)
            change[1:] = u[1:] != u[:-1]
            if len(u) and prev_user is not None and u[0] == prev_user:
                change[0] = False
            ranks = rank + np.cumsum(change)
            w.add("ev_key", (ranks << self.ts_bits) | (c["ts"] - self.ts_base), np.int64)
            users.append(u[change])
            if len(u):
                rank, prev_user = int(ranks[-1]), int(u[-1])
        w.add("ev_table", np.zeros((1, 3 + len(self.side))), self.dtype)
        w.declare("ev_key", np.int64)
        w.flush()
        self.key = None  # mapped on first use, now that the file is complete
        return np.concatenate(users) if users else np.zeros(0, np.int64)

    def offsets(self, out: Path, users: np.ndarray, req_user: np.ndarray, req_ts: np.ndarray):
        """(start, end) of each request's as-of slice: sequences.asof_offsets' "packed" method
        with this log's bit split (same offsets: they are positions, not keys)."""
        if self.key is None:
            self.key = (
                np.memmap(out / "ev_key.bin", np.int64, "r", shape=(self.n,))
                if self.n
                else np.zeros(0, np.int64)
            )
        if self.n == 0:
            z = np.zeros(len(req_user), np.int64)
            return z, z.copy()
        pos = np.searchsorted(users, req_user).clip(0, len(users) - 1)
        known = users[pos] == req_user
        base = pos.astype(np.int64) << self.ts_bits
        t = np.clip(req_ts, self.ts_base, self.tmax + 1) - self.ts_base
        start = np.searchsorted(self.key, base, side="left")
        end = np.searchsorted(self.key, base + t, side="left")
        return np.where(known, start, 0).astype(np.int64), np.where(known, end, 0).astype(np.int64)


class _Impressions:
    """The impressions a batch at a time, each batch cut after its last complete request (the
    rest carried to the next), checked and joined as in prepared.prepare."""

    def __init__(self, folder: Path, manifest: Manifest, spec, events: _Events, users) -> None:
        src = table_source(folder, IMPRESSIONS)
        if src is None:
            raise ContractError(
                f"{folder / IMPRESSIONS}: missing. Every dataset folder needs {IMPRESSIONS}, or "
                f"its part files impressions/part-*.parquet (docs/data-contract.md)."
            )
        self.folder, self.src, self.where = folder, src, str(src)
        self.manifest, self.spec, self.events, self.users = manifest, spec, events, users
        # columns of the impressions table itself: the request's, the features declared there,
        # the oracle's when the manifest says it has them
        feats = [
            n
            for n in (*spec.cat_names, *spec.num_names, *manifest.side_fields)
            if manifest.feature(n).table == "impressions"
        ]
        oracle = ["p_click", "p_conversion"] if manifest.has_oracle else []
        present = set(table_schema(src).names)
        wanted = list(dict.fromkeys([*REQUEST_COLUMNS, *feats, *oracle]))
        missing = [c for c in REQUEST_COLUMNS if c not in present]
        if missing:
            raise ContractError(
                f"{self.where}: missing column(s) {missing}; present: {sorted(present)}. "
                f"Add them (docs/data-contract.md)."
            )
        # a declared column that is absent is reported by the join, with its usual message
        self.columns = [c for c in wanted if c in present]
        self.tables: dict = {}  # users / items, read and indexed once
        # request ids strictly increasing from request to request (the converters number them in
        # time order): then no id can be used twice, and the whole-table check is skipped
        self.increasing, self.last_rid = True, None

    def _chunks(self):
        """(file row of the first row, DataFrame of whole requests)."""
        carry, at = None, 0
        for t in table_batches(self.src, self.columns):
            df = t.to_pandas()
            if carry is not None:
                df = pd.concat([carry, df], ignore_index=True)
            rid = _int_column(df, "request_id", self.where)
            starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
            cut = int(starts[-1]) if len(starts) else 0  # the last request may go on
            if cut:
                yield at, df.iloc[:cut].reset_index(drop=True)
                at += cut
            carry = df.iloc[cut:].reset_index(drop=True)
        if carry is not None and len(carry):
            yield at, carry

    def write(self, w: _Writer, say) -> dict:
        m, spec = self.manifest, self.spec
        n_total = n_rows(self.src)
        n_imp = n_req = 0
        sums = np.zeros(len(spec.num_names))
        n_train = 0
        out = w.folder
        for row0, df in self._chunks():
            try:
                n_req, n_imp, n_train = self._chunk(w, df, row0, n_req, n_imp, n_train, sums)
            except ContractError as e:  # counts in the message are this batch's
                raise ContractError(
                    f"{e} (counted in rows {row0}..{row0 + len(df) - 1}, the batch being prepared; "
                    f"`python -m harness.data validate {self.folder}` counts the whole table)"
                ) from None
            say(f"impressions {n_imp:,} / {n_total:,}", every=10.0)
        for name, dt, row in (
            ("imp_cand_item", _id_dtype(m.item_vocab), ()),
            ("imp_cand_side", _id_dtype(*spec.side_vocab), (len(m.side_fields),)),
            ("imp_ns_cat", _id_dtype(*spec.cat_vocab), (len(spec.cat_names),)),
            ("num_raw", np.float64, (len(spec.num_names),)),
            ("imp_click", np.float32, ()),
            ("imp_conversion", np.float32, ()),
            ("imp_user_id", np.int64, ()),
            ("imp_request_id", np.int64, ()),
            ("imp_ts", np.int64, ()),
            ("imp_req", np.int64, ()),
            *[(n, np.int64, ()) for n in ("req_lo", "req_hi", "req_ts", "req_rid")],
            ("req_split", np.int8, ()),
            ("req_start", np.int64, ()),
            ("req_end", np.int64, ()),
        ):
            w.declare(name, dt, row)
        if m.has_oracle:
            for col in ("p_click", "p_conversion"):
                w.declare(f"imp_{col}", np.float32)
        w.flush()
        self._check_requests_unique(out, n_req)
        mean, std = self._standardise(w, out, n_imp, sums, n_train)
        say(f"impressions written ({n_imp:,} rows, {n_req:,} requests)")
        imp = ["cand_item", "cand_side", "ns_cat", "ns_num", "click", "conversion"]
        imp += ["user_id", "request_id", "ts"]
        imp += ["p_click", "p_conversion"] if m.has_oracle else []
        return {"imp": imp, "num_mean": mean.tolist(), "num_std": std.tolist()}

    def _chunk(self, w: _Writer, df, row0: int, n_req: int, n_imp: int, n_train: int, sums):
        """One batch of whole requests checked, joined and appended; returns the running counts
        (requests, impressions, train impressions) and adds the train rows' numerics to `sums`."""
        m, spec, out = self.manifest, self.spec, w.folder
        req = _requests_from(df, m, self.where, row0)
        join = _FeatureJoin(self.folder, req, self.tables, row0)
        w.add("imp_cand_item", req.item, _id_dtype(m.item_vocab))
        cand_side = join.categoricals(m, m.side_fields, spec.side_vocab)
        w.add("imp_cand_side", cand_side, _id_dtype(*spec.side_vocab))
        ns_cat = join.categoricals(m, spec.cat_names, spec.cat_vocab)
        w.add("imp_ns_cat", ns_cat, _id_dtype(*spec.cat_vocab))
        nums = _raw_numerics(join, m, spec.num_names)
        w.add("num_raw", nums, np.float64)
        train = req.split == "train"
        sums += nums[train].sum(0)
        n_train += int(train.sum())
        for k, v in req.labels.items():
            w.add(f"imp_{k}", v.numpy())
        w.add("imp_user_id", req.user, np.int64)
        w.add("imp_request_id", req.rid, np.int64)
        w.add("imp_ts", req.ts, np.int64)
        if m.has_oracle:
            for col in ("p_click", "p_conversion"):
                if col not in df.columns:
                    raise ContractError(
                        f"{self.where}: manifest has_oracle is true but column '{col}' is missing."
                    )
                w.add(f"imp_{col}", df[col].to_numpy(dtype=np.float32))
        lo = req.req_lo
        w.add("imp_req", req.imp_req + n_req, np.int64)
        w.add("req_lo", lo + n_imp, np.int64)
        w.add("req_hi", req.req_hi + n_imp, np.int64)
        w.add("req_ts", req.ts[lo], np.int64)
        w.add("req_rid", req.rid[lo], np.int64)
        starts = np.r_[self.last_rid, req.rid[lo]] if self.last_rid is not None else req.rid[lo]
        self.increasing = self.increasing and bool((np.diff(starts) > 0).all())
        self.last_rid = int(req.rid[lo][-1]) if len(lo) else self.last_rid
        code = np.zeros(len(lo), np.int8)  # the index in SPLITS (names checked above)
        for k, s in enumerate(SPLITS):
            code[req.split[lo] == s] = k
        w.add("req_split", code)
        start, end = self.events.offsets(out, self.users, req.user[lo], req.ts[lo])
        w.add("req_start", start, np.int64)
        w.add("req_end", end, np.int64)
        n_imp += len(df)
        n_req += len(lo)
        return n_req, n_imp, n_train

    def _check_requests_unique(self, out: Path, n_req: int) -> None:
        """A request id used by two runs of rows: the impressions of a request are not contiguous
        (prepared._requests_from's check, across batches)."""
        if n_req < 2 or self.increasing:
            return
        # ids in another order (hashed, say): 8 bytes a request in memory, with np.unique's sort
        if len(np.unique(np.fromfile(out / "req_rid.bin", np.int64))) != n_req:
            raise ContractError(
                f"{self.where}: the impressions of a request are not contiguous; sort the file "
                f"by (ts, request_id) so each request is one run of rows."
            )

    def _standardise(self, w: _Writer, out: Path, n: int, sums, n_train: int):
        """imp_ns_num: the raw numerics standardised by the train split's mean and std (all
        impressions when there is none), as _standardised_numerics; raw values then removed."""
        k = len(self.spec.num_names)
        # read by slices into ordinary buffers, not through a mapping: a mapping read end to end
        # keeps every page it touched in this process's resident set until it is dropped
        split = np.fromfile(out / "req_split.bin", np.int8)
        train_code = SPLITS.index("train")
        step = 1 << 20

        def rows(lo: int, hi: int, train_only: bool) -> np.ndarray:
            r = _slice(out / "num_raw.bin", np.float64, k, lo, hi) if k else np.zeros((hi - lo, 0))
            if train_only:
                r = r[split[_slice(out / "imp_req.bin", np.int64, 0, lo, hi)] == train_code]
            return r

        use_train = n_train > 0
        count = n_train if use_train else n
        if not use_train:
            sums = np.zeros(k)
            for lo in range(0, n, step):
                sums += rows(lo, min(n, lo + step), False).sum(0)
        mean = sums / count if count else np.zeros(k)
        sq = np.zeros(k)
        for lo in range(0, n, step):
            sq += ((rows(lo, min(n, lo + step), use_train) - mean) ** 2).sum(0)
        std = np.sqrt(sq / count) if count else np.ones(k)
        std = np.where(std > 0, std, 1.0)
        for lo in range(0, n, step):
            w.add("imp_ns_num", ((rows(lo, min(n, lo + step), False) - mean) / std), np.float32)
        w.declare("imp_ns_num", np.float32, (k,))
        w.files.pop("num_raw").close()
        w.meta.pop("num_raw")
        (out / "num_raw.bin").unlink()
        return mean, std


def _slice(path: Path, dtype, width: int, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of a flat array file (rows of `width` values, 0: scalars) read into memory."""
    per = max(width, 1)
    item = np.dtype(dtype).itemsize
    a = np.fromfile(path, dtype, count=(hi - lo) * per, offset=lo * per * item)
    return a.reshape(-1, width) if width else a


def _id_dtype(*vocabs: int):
    """int32 when every id fits (below each vocabulary, checked), as prepared._i32 stores them."""
    return np.int32 if all(v <= _INT32_MAX for v in vocabs) else np.int64
