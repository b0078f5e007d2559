"""Dataset statistics and the Bayes-optimal ("oracle") scores of a contract folder.

`compute_stats` is what `python -m harness.data stats DIR` prints and what the synthetic world stores
in manifest.stats at generation time: sizes, prior-history length percentiles per impression
(events of the user strictly before the impression), label rates per split and, when the
impressions carry p_click / p_conversion, the oracle AUC / UAUC / logloss per split and task
(CTR on every impression, CVR on clicked impressions; p_conversion is P(conversion | click)).
"""

from __future__ import annotations

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

# impressions per batch: about 110 bytes a row (the batch's columns, its sort order and prior
# keys), so 2M rows hold about 220 MB. Each batch re-reads the events' (user_id, ts) once: larger
# batches read the events fewer times, smaller ones hold less.
BATCH_ROWS = 1 << 21


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


def streamed_prior_counts(
    events_path: Path, imp_user: np.ndarray, imp_ts: np.ndarray
) -> np.ndarray:
    """Prior count per impression of one batch, reading events one row group at a time. Every row
    group of a (user, ts)-sorted file is a sorted slice, so a global rank is the sum of the ranks
    within each row group; memory stays at one row group plus the batch. The batch is ranked in
    key order once, so each row group ranks only the impressions of its own users (a contiguous
    slice): the work is about one rank per impression and row-group edge, not per row group."""
    hi_key = _pack(imp_user, imp_ts)
    order = np.argsort(hi_key, kind="stable")
    hi, lo = hi_key[order], _pack(imp_user[order], np.zeros_like(imp_ts))
    prior = np.zeros(hi.size, np.int64)
    for f in table_files(events_path):
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["user_id", "ts"])
            key = _pack(t.column("user_id").to_numpy(), t.column("ts").to_numpy())
            if not key.size:
                continue
            # an impression whose user is outside the row group ranks 0 in it (both ranks equal)
            first_user, last_user = int(key.min()) >> TS_BITS, int(key.max()) >> TS_BITS
            a, b = np.searchsorted(hi, [first_user << TS_BITS, (last_user + 1) << TS_BITS])
            prior[a:b] += np.searchsorted(key, hi[a:b], side="left") - np.searchsorted(
                key, lo[a:b], side="left"
            )
            del t, key  # free this row group before the next is read: one held, not two
    out = np.empty_like(prior)
    out[order] = prior
    return out


def events_per_user(events_path: Path) -> np.ndarray:
    """Events per user id (index = user id), one row group at a time."""
    per_user = np.zeros(0, np.int64)
    for f in table_files(events_path):
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            u = pf.read_row_group(rg, columns=["user_id"]).column("user_id").to_numpy()
            per_user = _add_counts(per_user, u)
    return per_user


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
    batch (a row group) at a time; what is held grows with the users (per-user counts) and the
    longest history (the prior-count histogram), not with the rows. The oracle scores (only when
    the impressions carry p_click) hold their five columns per split: exact AUC sorts them all."""
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
    prior_hist = np.zeros(0, np.int64)  # impressions per prior count
    imp_per_user = np.zeros(0, np.int64)
    prior_sum, n_imp = 0, 0
    requests = _DistinctIds()
    tally = {split: _SplitTally() for split in SPLITS}
    # a batch re-reads the events' (user_id, ts) once: batches as large as memory allows
    for t in table_batches(src[IMPRESSIONS], cols, BATCH_ROWS):
        user, ts = t.column("user_id").to_numpy(), t.column("ts").to_numpy()
        prior = streamed_prior_counts(src[EVENTS], user, ts)
        prior_hist = _add_counts(prior_hist, prior)
        prior_sum, n_imp = prior_sum + int(prior.sum()), n_imp + len(prior)
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
        del t, user, ts, prior, split  # free this batch before the next is read
    user_vocab = (
        manifest.feature("user_id").vocab_size
        if "user_id" in {f.name for f in manifest.features}
        else imp_per_user.size
    )
    user_vocab = max(user_vocab, imp_per_user.size if n_imp else 1)
    # ids past the vocabulary are not counted (an invalid dataset: validate names them)
    per_user_all = _fit(events_per_user(src[EVENTS]), user_vocab)
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
