"""Dataset statistics and the Bayes-optimal ("oracle") scores of a contract folder.

`compute_stats` is what `python -m harness.data stats DIR` prints and what the synthetic world stores
in manifest.stats at generation time: sizes, prior-history length percentiles per impression
(events of the user strictly before the impression), label rates per split and, when the
impressions carry p_click / p_conversion, the oracle AUC / UAUC / logloss per split and task
(CTR on every impression, CVR on clicked impressions; p_conversion is P(conversion | click)).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
from harness.data.keyed import KeyPartitions, table_batches
from harness.metrics import split_metrics

PERCENTILES = (10, 50, 90, 99)

# impressions per batch: about 110 bytes a row (the batch's columns, its sorted keys and prior
# counts), so 2M rows hold about 220 MB; also the chunk in which spilled keys are read back.
BATCH_ROWS = 1 << 21

# events per bucket of users for the prior counts (_PriorHistogram): a bucket's packed keys are
# held at once, 8 bytes an event (64 MB) plus one row group read; a log with fewer events is one
# bucket, held while the impressions stream by, with nothing written to disk.
BUCKET_EVENTS = 1 << 23
MAX_BUCKETS = 256  # spill files open at once; a larger log gets larger buckets


TS_BITS = 34  # ts in [0, 2^34) seconds (until year 2514) packs with the user id into int64


def _pack(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    user, ts = np.asarray(user, np.int64), np.asarray(ts, np.int64)
    if ts.size and (ts.min() < 0 or ts.max() >= 1 << TS_BITS):
        raise ValueError(
            "ts must be int64 seconds in [0, 2^34); convert timestamps to epoch seconds"
        )
    return (user << TS_BITS) | ts


def prior_counts(
    ev_user: np.ndarray, ev_ts: np.ndarray, imp_user: np.ndarray, imp_ts: np.ndarray
) -> np.ndarray:
    """Number of the user's events with ts strictly before each impression's ts.
    Events must be sorted by (user_id, ts): one searchsorted over a packed (user, ts) key."""
    ev_key = _pack(ev_user, ev_ts)
    return (
        np.searchsorted(ev_key, _pack(imp_user, imp_ts), side="left")
        - np.searchsorted(ev_key, _pack(imp_user, np.zeros_like(imp_ts)), side="left")
    ).astype(np.int64)


def _pct(x: np.ndarray, q: float) -> int:
    """Percentile of a possibly empty array (0 when empty: an empty log has no history lengths)."""
    return int(np.percentile(x, q)) if x.size else 0


def _round(x: float) -> float:
    return float(round(x, 6)) if np.isfinite(x) else float("nan")


class _EventGroups:
    """The events' row groups (over table_files, in order) with their rows and smallest and
    largest user id, and the events per user id (index = user id): one read of user_id, a row
    group at a time."""

    def __init__(self, events_path: Path) -> None:
        self.per_user = np.zeros(0, np.int64)
        self.groups: list[tuple[Path, int, int, int, int]] = []  # file, row group, rows, min, max
        for f in table_files(events_path):
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                u = pf.read_row_group(rg, columns=["user_id"]).column("user_id").to_numpy()
                if u.size:
                    self.per_user = _add_counts(self.per_user, u)
                    self.groups.append((f, rg, u.size, int(u.min()), int(u.max())))

    def cuts(self, bucket_events: int) -> np.ndarray:
        """The first user id of each bucket after the first: row groups in file order, a new bucket
        at the first row group past `bucket_events` rows whose smallest user is above the last cut
        (the events being sorted by user, a bucket is a run of row groups, one at each end shared
        with the next or the previous when a user straddles them). A user's events never straddle
        two buckets; only the work per bucket depends on the cuts, not the counts."""
        cuts: list[int] = []
        rows = 0
        for (_, _, n, _, _), (_, _, _, next_min, _) in zip(self.groups, self.groups[1:]):
            rows += n
            if rows >= bucket_events and next_min > (cuts[-1] if cuts else self.groups[0][3]):
                cuts.append(next_min)
                rows = 0
        return np.asarray(cuts, np.int64)


class _Spill:
    """Each impression batch's packed (user, ts) keys, sorted, appended to one temporary file per
    bucket of users (8 bytes an impression on disk, under tempfile's directory: TMPDIR), then read
    back bucket by bucket in chunks. close() removes them, whatever happened; a full disk is a
    RunStoreError that names the space needed and where, the dataset folder untouched."""

    def __init__(self, n_buckets: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="harness-stats-"))
        self.files: list = []
        try:
            for k in range(n_buckets):
                self.files.append(open(self.dir / f"{k}.bin", "wb"))
        except BaseException:
            self.close()
            raise

    def add(self, key: np.ndarray, bounds: np.ndarray) -> None:
        """key sorted; bucket k gets key[bounds[k - 1]:bounds[k]] (bounds: the K - 1 inner cuts)."""
        edges = np.r_[0, bounds, key.size]
        with self._disk():
            for f, a, b in zip(self.files, edges[:-1], edges[1:]):
                if b > a:
                    f.write(memoryview(key[a:b]))

    def buckets(self, chunk: int) -> Iterator[Iterator[np.ndarray]]:
        """For each bucket in order, its keys in chunks of at most `chunk` (sorted runs)."""
        with self._disk():
            for f in self.files:
                f.close()  # flushed: a full disk shows here if not before
        for k in range(len(self.files)):
            yield self._chunks(self.dir / f"{k}.bin", chunk)

    @staticmethod
    def _chunks(path: Path, chunk: int) -> Iterator[np.ndarray]:
        with open(path, "rb") as f:
            while (key := np.fromfile(f, np.int64, chunk)).size:
                yield key

    def _disk(self) -> AbstractContextManager[None]:
        from harness.runstore import full_disk  # on use: the error the run path reports

        return full_disk(
            lambda e: (
                f"cannot write {e.filename or self.dir}: {e.strerror} while computing the "
                f"dataset statistics (the prior counts need about 8 bytes per impression of "
                f"temporary space under {self.dir.parent}); free space there or set TMPDIR to a "
                f"larger disk. The dataset was not changed and the temporary files were removed."
            )
        )

    def close(self) -> None:
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass  # a failed flush of a file about to be removed (a full disk): nothing lost
        shutil.rmtree(self.dir, ignore_errors=True)


class _PriorHistogram:
    """Impressions per prior count (the user's events strictly before the impression's ts), the
    impressions added a batch at a time, the events read twice whatever the number of batches:
    user_id once (_EventGroups: per-user counts and the buckets), (user_id, ts) once (a row group
    shared by two buckets is kept for the second). Users are cut into buckets of about
    BUCKET_EVENTS events; with one bucket its events are held and each batch is counted at once,
    else each batch's keys are spilled to its buckets' files (_Spill) and counted bucket by
    bucket at the end, against that bucket's events only. Memory: one batch, one bucket of events
    and the row groups at its ends (more only when one user has more events), one chunk of
    BATCH_ROWS spilled keys, per-user arrays. Only the histogram, the sum and the count come out:
    no per-impression order is kept."""

    def __init__(self, events: _EventGroups) -> None:
        self.events = events
        size = max(BUCKET_EVENTS, -(-sum(g[2] for g in events.groups) // MAX_BUCKETS))
        self.cuts = events.cuts(size)
        self.hist = np.zeros(0, np.int64)
        self.sum = self.n = 0
        self._cached: tuple[int, np.ndarray] | None = None
        self._spill = _Spill(self.cuts.size + 1) if self.cuts.size else None
        self._events = self._bucket_events(0) if self._spill is None else None

    def __enter__(self) -> _PriorHistogram:
        return self

    def __exit__(self, *exc) -> None:
        if self._spill is not None:
            self._spill.close()

    def add(self, user: np.ndarray, ts: np.ndarray) -> None:
        key = np.sort(_pack(user, ts))
        if self._spill is None:
            self._count(self._events, key)
        else:
            self._spill.add(key, np.searchsorted(key, self.cuts << TS_BITS))

    def finish(self) -> None:
        if self._spill is None:
            return
        for k, chunks in enumerate(self._spill.buckets(BATCH_ROWS)):
            events = self._bucket_events(k)
            for key in chunks:
                self._count(events, key)
            del events

    def _count(self, events: tuple[np.ndarray, int, np.ndarray], key: np.ndarray) -> None:
        """Prior counts of the impressions `key` (a few sorted runs: searchsorted is fast on
        them), from a bucket's events (_bucket_events): the rank of each key among the events
        less the rank of its user's first event."""
        ev_key, u0, starts = events
        at = np.clip((key >> TS_BITS) - u0, 0, starts.size - 1)
        prior = np.searchsorted(ev_key, key, side="left") - starts[at]
        self.hist = _add_counts(self.hist, prior)
        self.sum, self.n = self.sum + int(prior.sum()), self.n + prior.size

    def _bucket_events(self, k: int) -> tuple[np.ndarray, int, np.ndarray]:
        """The packed, sorted keys of the events of the row groups whose users meet bucket k's
        [cuts[k - 1], cuts[k]): every event of its users, and maybe some of a neighbour's at the
        ends, which change no count (a count is a difference of two ranks within one user's
        keys). Each row group is read once over the whole pass: the last one read is kept when
        the next bucket needs it too. With them the first user id u0 and the rank of each user's
        first event (_count)."""
        lo = int(self.cuts[k - 1]) if k > 0 else None
        hi = int(self.cuts[k]) if k < self.cuts.size else None
        parts, cached = [], None
        for i, (f, rg, _, umin, umax) in enumerate(self.events.groups):
            if (lo is not None and umax < lo) or (hi is not None and umin >= hi):
                continue
            if self._cached is not None and self._cached[0] == i:
                key = self._cached[1]
            else:
                t = pq.ParquetFile(f).read_row_group(rg, columns=["user_id", "ts"])
                key = _pack(t.column("user_id").to_numpy(), t.column("ts").to_numpy())
                del t
            if hi is not None and umax >= hi:
                cached = (i, key)  # its users from hi on: the next bucket's too
            parts.append(key)
        self._cached = cached
        key = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if key.size > 1 and np.any(key[1:] < key[:-1]):
            key.sort()  # row groups out of user order (not the contract): counts stay exact
        # rank of each user's first event, users u0 .. the last one + 1 (one per user id of the
        # range, as the other per-user arrays); users outside the range take the nearest end,
        # which is their rank too (0 below the first user, all of them past the last)
        u0 = int(key[0] >> TS_BITS) if key.size else 0
        u1 = int(key[-1] >> TS_BITS) if key.size else 0
        users = np.arange(u0, u1 + 2, dtype=np.int64) << TS_BITS
        return key, u0, np.searchsorted(key, users, side="left")


def _add_counts(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    """acc + the bincount of a batch's (non-negative int) values, grown to the larger of the two."""
    c = np.bincount(values)
    if c.size > acc.size:
        c[: acc.size] += acc
        return c
    acc[: c.size] += c
    return acc


def _fit(counts: np.ndarray, size: int) -> np.ndarray:
    """counts cut or zero-padded to `size` ids."""
    out = np.zeros(size, np.int64)
    out[: min(size, counts.size)] = counts[:size]
    return out


def histogram_percentile(hist: np.ndarray, q: float) -> int:
    """int(np.percentile(x, q)) of the values x whose counts are hist (hist[v] = how many x == v),
    with numpy's default ('linear') method step for step: the two order statistics around the
    virtual index (n - 1) * q / 100 and numpy's lerp between them; 0 when empty (as _pct). Lets a
    percentile of one count per impression be taken without holding one value per impression."""
    n = int(hist.sum())
    if n == 0:
        return 0
    cum = np.cumsum(hist)
    virtual = (n - 1) * (np.float64(q) / 100)
    lo = int(np.floor(virtual))
    hi = min(lo + 1, n - 1)
    a, b = np.searchsorted(cum, [lo, hi], side="right").astype(np.int64)
    t = virtual - lo
    diff = b - a
    return int(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


@dataclass
class _SplitTally:
    """One split's label statistics, summed batch by batch; the oracle's columns when scored."""

    impressions: int = 0
    ts_min: int | None = None
    ts_max: int | None = None
    clicks: int = 0
    conversions: int = 0
    conversions_of_clicks: int = 0
    oracle: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, click: np.ndarray, conv: np.ndarray, ts: np.ndarray) -> None:
        self.impressions += len(click)
        lo, hi = int(ts.min()), int(ts.max())
        self.ts_min = lo if self.ts_min is None else min(self.ts_min, lo)
        self.ts_max = hi if self.ts_max is None else max(self.ts_max, hi)
        self.clicks += int(click.sum())
        self.conversions += int(conv.sum())
        self.conversions_of_clicks += int(conv[click == 1].sum())

    def stats(self) -> dict[str, Any]:
        n, c = self.impressions, self.clicks
        return {
            "impressions": n,
            "ts_min": self.ts_min,
            "ts_max": self.ts_max,
            # integer sums over a count: the float the whole column's mean gives
            "click_rate": _round(c / n) if n else None,
            "conversion_rate": _round(self.conversions / n) if n else None,
            "cvr_given_click": _round(self.conversions_of_clicks / c) if c else None,
        }


class _DistinctIds:
    """How many distinct values an id column has, batch by batch: in one pass while the ids never
    decrease (the converters number requests in time order: count the changes), else from
    KeyPartitions (a second read, grouped by id, on disk past PARTITION_ROWS rows)."""

    def __init__(self) -> None:
        self.count, self.last, self.ascend = 0, None, True

    def add(self, ids: np.ndarray) -> None:
        if not self.ascend or not ids.size:
            return
        if np.any(ids[1:] < ids[:-1]) or (self.last is not None and ids[0] < self.last):
            self.ascend = False
            return
        self.count += int(np.count_nonzero(ids[1:] != ids[:-1])) + int(
            self.last is None or ids[0] != self.last
        )
        self.last = int(ids[-1])

    def result(self, src: Path, column: str) -> int:
        if self.ascend:
            return self.count
        count = 0
        with KeyPartitions(n_rows(src), (column,)) as parts:
            for t in table_batches(src, [column]):
                parts.add(t.column(column).to_numpy())
            for p in parts.partitions():
                count += int(np.unique(p[column]).size)
        return count


def compute_stats(folder: str | Path, manifest: Manifest | None = None) -> dict[str, Any]:
    """The statistics of a contract folder in bounded memory: impressions and events are read a
    batch (a row group) at a time, the impressions once and the events twice whatever their
    sizes (the prior counts: _PriorHistogram, which may spill 8 bytes an impression to a
    temporary folder); what is held grows with the users (per-user counts) and the longest
    history (the prior-count histogram), not with the rows. The oracle scores (only when the
    impressions carry p_click) hold their five columns per split: exact AUC sorts them all."""
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    cols = ["request_id", "user_id", "ts", "click", "conversion", "split"]
    if manifest.has_oracle:
        cols += ["p_click", "p_conversion"]
    src = {name: table_source(folder, name) for name in (EVENTS, IMPRESSIONS, USERS, ITEMS)}
    for name in (EVENTS, IMPRESSIONS):
        if src[name] is None:
            raise ContractError(
                f"{folder / name}: missing (or its parts {name.removesuffix('.parquet')}/"
                f"part-*.parquet); `python -m harness.data validate {folder}` lists what to fix."
            )
        table_schema(src[name])  # parts that disagree: named here, not deep in a reader
    imp_per_user = np.zeros(0, np.int64)
    requests = _DistinctIds()
    tally = {split: _SplitTally() for split in SPLITS}
    events = _EventGroups(src[EVENTS])
    with _PriorHistogram(events) as prior:
        for t in table_batches(src[IMPRESSIONS], cols, BATCH_ROWS):
            user, ts = t.column("user_id").to_numpy(), t.column("ts").to_numpy()
            prior.add(user, ts)
            imp_per_user = _add_counts(imp_per_user, user)
            requests.add(t.column("request_id").to_numpy())
            split = t.column("split")
            if pa.types.is_dictionary(split.type):
                split = split.cast(pa.string())
            for name, s in tally.items():
                m = pc.fill_null(pc.equal(split, name), False).to_numpy(zero_copy_only=False)
                if not m.any():
                    continue
                click, conv = t.column("click").to_numpy()[m], t.column("conversion").to_numpy()[m]
                s.add(click, conv, ts[m])
                if manifest.has_oracle:
                    s.oracle.append(
                        {"click": click, "conversion": conv, "user_id": user[m]}
                        | {k: t.column(k).to_numpy()[m] for k in ("p_click", "p_conversion")}
                    )
            del t, user, ts, split  # free this batch before the next is read
        prior.finish()
    prior_hist, prior_sum, n_imp = prior.hist, prior.sum, prior.n
    user_vocab = (
        manifest.feature("user_id").vocab_size
        if "user_id" in {f.name for f in manifest.features}
        else imp_per_user.size
    )
    user_vocab = max(user_vocab, imp_per_user.size if n_imp else 1)
    # ids past the vocabulary are not counted (an invalid dataset: validate names them)
    per_user_all = _fit(events.per_user, user_vocab)
    n_users = (
        n_rows(src[USERS])
        if src[USERS] is not None
        else int(np.count_nonzero(per_user_all | _fit(imp_per_user, user_vocab)))
    )
    n_items = n_rows(src[ITEMS]) if src[ITEMS] is not None else manifest.item_vocab - 1
    per_user = per_user_all[per_user_all > 0]
    stats: dict[str, Any] = {
        "users": int(n_users),
        "items": int(n_items),
        "events": n_rows(src[EVENTS]),
        "impressions": n_imp,
        "requests": requests.result(src[IMPRESSIONS], "request_id"),
        "events_per_user_percentiles": {},
        "prior_events_percentiles": {
            f"p{q}": histogram_percentile(prior_hist, q) for q in PERCENTILES
        },
        "prior_events_max": int(np.flatnonzero(prior_hist)[-1]) if n_imp else 0,
        "impressions_with_prior_ge_2048": int(prior_hist[2048:].sum()),
        "splits": {},
    }
    # an integer sum over a count: the float np.mean of the whole column gives
    stats["prior_events_percentiles"]["mean"] = _round(prior_sum / n_imp) if n_imp else 0.0
    stats["events_per_user_percentiles"] = {f"p{q}": _pct(per_user, q) for q in PERCENTILES}
    oracle: dict[str, dict[str, float]] = {}
    for split, s in tally.items():
        stats["splits"][split] = s.stats()
        if manifest.has_oracle and s.impressions:
            # the oracle's keys as a run's result.json has them: CTR on every impression, CVR on
            # the clicked ones, scored by the true probabilities
            cols_ = {k: np.concatenate([b[k] for b in s.oracle]) for k in s.oracle[0]}
            m = split_metrics(cols_, "clicked", oracle=True)
            oracle[split] = {k: _round(v) for k, v in m.items()}
    if oracle:
        stats["oracle"] = oracle
    return stats


def format_stats(manifest: Manifest, stats: dict[str, Any]) -> str:
    lines = [
        f"dataset {manifest.name} ({manifest.source})",
        f"  users {stats['users']:,}  items {stats['items']:,}  events {stats['events']:,}  "
        f"requests {stats['requests']:,}  impressions {stats['impressions']:,}",
        "  events per user   "
        + "  ".join(f"{k} {v}" for k, v in stats["events_per_user_percentiles"].items()),
        "  prior events/imp  "
        + "  ".join(f"{k} {v}" for k, v in stats["prior_events_percentiles"].items())
        + f"  max {stats['prior_events_max']}  (>=2048: {stats['impressions_with_prior_ge_2048']:,} imps)",
        f"  {'split':6s} {'imps':>10s} {'ctr':>8s} {'conv':>8s} {'cvr|clk':>8s}",
    ]
    for split, s in stats["splits"].items():

        def f(v):
            return f"{v:8.4f}" if v is not None else f"{'-':>8s}"

        lines.append(
            f"  {split:6s} {s['impressions']:10,d} {f(s['click_rate'])} {f(s['conversion_rate'])} "
            f"{f(s['cvr_given_click'])}"
        )
    if stats.get("oracle"):
        lines.append("  Bayes-optimal (oracle) scores from p_click / p_conversion:")
        keys = list(next(iter(stats["oracle"].values())))
        lines.append(f"  {'split':6s} " + " ".join(f"{k:>12s}" for k in keys))
        for split, o in stats["oracle"].items():
            lines.append(f"  {split:6s} " + " ".join(f"{o[k]:12.4f}" for k in keys))
    return "\n".join(lines)
