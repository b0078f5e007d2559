"""Shared steps of the converters: id remapping, requests, sampled negatives, the chronological
split, statistics and an atomic write of the contract folder (docs/converters.md).

Every converter reads its raw log into events and positive impressions, says what it knows of the
log in a `LogDescription`, and hands both to `finish_conversion`, the one tail they share: sampled
negatives and requests, the time context, item_pop, the split, the manifest and the write."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    USERS,
    Behavior,
    Feature,
    Manifest,
    SplitRule,
)
from harness.data.counts import events_before
from harness.data.features import ITEM_POP, time_context_features, user_id_feature


def remap(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ids -> contiguous 1-based ids (0 stays free for padding), ordered by raw id."""
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.astype(np.int64) + 1, uniq


def lookup(raw: np.ndarray, uniq: np.ndarray) -> np.ndarray:
    """Map raw ids through a `remap` table; ids absent from it map to 0 (missing)."""
    pos = np.searchsorted(uniq, raw).clip(0, max(len(uniq) - 1, 0))
    return np.where(uniq[pos] == raw, pos + 1, 0).astype(np.int64)


NEGATIVES = ("popularity", "popularity_asof", "uniform")
ENGINES = ("pandas", "duckdb")  # in memory (the default); streamed in bounded memory (stream.py)


def check_engine(source: str, engine: str) -> None:
    """A converter's `engine` option, or an error naming the option and the valid values."""
    if engine not in ENGINES:
        raise ValueError(
            f"{source}: --opt engine={engine!r} is not an engine; use --opt engine=pandas (in "
            f"memory, the default) or --opt engine=duckdb (bounded memory, for large logs)."
        )


@dataclass(frozen=True)
class AsOfPopularity:
    """Negatives drawn with probability proportional to (the item's events strictly before the
    request + 1): the popularity a sampler running at request time would know.

    `negatives="popularity"` weights by the whole log's counts, future included, so early in the log
    the sampled negatives are items that only become popular later: the candidate's popularity so
    far (`item_pop`) then tells negatives apart weakly early on and strongly late, and a model
    fitted on the early (train) part meets a different relation in val/test
    (docs/learning-history.md, section 12)."""

    items: np.ndarray  # item of each popularity event, sorted by ts
    ts: np.ndarray  # their times, ascending

    @classmethod
    def of(cls, items: np.ndarray, ts: np.ndarray) -> AsOfPopularity:
        order = np.argsort(ts, kind="stable")
        return cls(np.asarray(items, np.int64)[order], np.asarray(ts, np.int64)[order])

    def draw(self, rng: np.random.Generator, ts: np.ndarray, n_items: int) -> np.ndarray:
        """One item per request time: with probability before / (before + n_items) a uniformly
        chosen earlier event's item (so item i comes with probability count_i / (before +
        n_items)), else a uniform item (the +1 of every item): P(i) = (count_i + 1) / (before +
        n_items), exactly, vectorised."""
        before = np.searchsorted(self.ts, ts, side="left")
        from_events = rng.random(len(ts)) * (before + n_items) < before
        pick = (rng.random(len(ts)) * before).astype(np.int64)
        event_item = (
            self.items[np.minimum(pick, max(len(self.items) - 1, 0))] if len(self.items) else 0
        )
        uniform = rng.integers(1, n_items + 1, len(ts))
        return np.where(from_events, event_item, uniform)


def popularity_weights(
    events: pd.DataFrame, n_items: int, negatives: str
) -> np.ndarray | AsOfPopularity | None:
    """The negative sampler's weights from the log's click events (behavior 1): whole-log counts
    + 1 ("popularity"), counts so far + 1 ("popularity_asof") or None ("uniform")."""
    clicks = events.behavior.to_numpy() == 1
    if negatives == "popularity":
        items = events.item_id.to_numpy()[clicks]
        return np.bincount(items, minlength=n_items + 1)[1:].astype(float) + 1.0
    if negatives == "popularity_asof":
        return AsOfPopularity.of(events.item_id.to_numpy()[clicks], events.ts.to_numpy()[clicks])
    return None


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    n_items: int,
    exclude_keys: np.ndarray,
    weights: np.ndarray | AsOfPopularity | None = None,
    max_rounds: int = 200,
    ts: np.ndarray | None = None,
) -> np.ndarray:
    """One negative item (1..n_items) per entry of `users`, never an item in the user's
    `exclude_keys` (sorted unique user * (n_items + 1) + item). Rejection sampling, vectorised per
    round. `weights`: None (uniform), static per-item weights, or AsOfPopularity (needs `ts`, the
    request time of each entry)."""
    asof = isinstance(weights, AsOfPopularity)
    if asof and ts is None:
        raise ValueError("sample_negatives: as-of popularity needs the request times (ts)")
    p = None if weights is None or asof else weights / weights.sum()
    out = np.zeros(len(users), np.int64)
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        if len(todo) == 0:
            return out
        if asof:
            cand = weights.draw(rng, ts[todo], n_items)
        else:
            cand = rng.choice(np.arange(1, n_items + 1), size=len(todo), p=p)
        keys = users[todo] * (n_items + 1) + cand
        pos = np.searchsorted(exclude_keys, keys).clip(0, max(len(exclude_keys) - 1, 0))
        hit = (exclude_keys[pos] == keys) if len(exclude_keys) else np.zeros(len(keys), bool)
        out[todo[~hit]] = cand[~hit]
        todo = todo[hit]
    raise ValueError(
        f"could not sample negatives for {len(todo)} rows after {max_rounds} rounds: "
        f"those users interacted with almost every item; lower neg_ratio."
    )


def build_impressions(
    pos: pd.DataFrame,
    *,
    n_items: int,
    neg_ratio: int,
    exclude_keys: np.ndarray,
    weights: np.ndarray | AsOfPopularity | None,
    seed: int,
) -> pd.DataFrame:
    """Positive candidates (user_id, ts, item_id, click, conversion) plus `neg_ratio` sampled
    negatives per positive row, grouped into requests (one per (user, ts)), sorted by
    (ts, request_id, item_id). Negatives get click = conversion = 0."""
    rng = np.random.default_rng(seed)
    parts = [pos]
    if neg_ratio > 0:
        u = np.repeat(pos.user_id.to_numpy(), neg_ratio)
        t = np.repeat(pos.ts.to_numpy(), neg_ratio)
        neg = pd.DataFrame(
            {
                "user_id": u,
                "ts": t,
                "item_id": sample_negatives(rng, u, n_items, exclude_keys, weights, ts=t),
                "click": 0,
                "conversion": 0,
            }
        )
        parts.append(neg)
    im = pd.concat(parts, ignore_index=True)
    im = im.sort_values(["ts", "user_id", "item_id", "click"], kind="stable", ignore_index=True)
    new = np.ones(len(im), bool)
    new[1:] = (im.ts.to_numpy()[1:] != im.ts.to_numpy()[:-1]) | (
        im.user_id.to_numpy()[1:] != im.user_id.to_numpy()[:-1]
    )
    im.insert(0, "request_id", np.cumsum(new).astype(np.int64))
    return im


def interacted_keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(user.astype(np.int64) * (n_items + 1) + item)


def split_times(ts_at, n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(val_start, test_start): the request times at the (1 - val - test) and (1 - test) quantiles
    of `n` impression times, `ts_at(k)` being the k-th smallest (0-based). A function rather than an
    array so that the streaming engine can answer it from disk (converters/stream.py)."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise ValueError(f"val_frac + test_frac must be in [0, 1), got {val_frac} + {test_frac}")
    val_start = (
        int(ts_at(min(int(n * (1 - val_frac - test_frac)), n - 1)))
        if val_frac
        else int(ts_at(n - 1)) + 1
    )
    test_start = (
        int(ts_at(min(int(n * (1 - test_frac)), n - 1))) if test_frac else int(ts_at(n - 1)) + 1
    )
    return val_start, max(test_start, val_start)


def chronological_split(im: pd.DataFrame, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Split times at the (1 - val - test) and (1 - test) quantiles of request time; impressions with
    ts >= val_start are val, ts >= test_start are test (whole requests: they share ts)."""
    ts = np.sort(im.ts.to_numpy())
    val_start, test_start = split_times(ts.__getitem__, len(ts), val_frac, test_frac)
    im["split"] = np.where(
        im.ts >= test_start, "test", np.where(im.ts >= val_start, "val", "train")
    )
    return val_start, test_start


def dataset_stats(events: pd.DataFrame, im: pd.DataFrame, manifest: Manifest) -> dict:
    split = {}
    for s in ("train", "val", "test"):
        m = (im.split == s).to_numpy()
        split[s] = SplitCounts(
            int(m.sum()),
            int(im.request_id[m].nunique()),
            int(im.click[m].sum()),
            int(im.conversion[m].sum()),
        )
    return format_stats(
        manifest,
        events=len(events),
        users=events.user_id.nunique(),
        items=events.item_id.nunique(),
        impressions=len(im),
        requests=im.request_id.nunique(),
        behaviors=events.behavior.value_counts().sort_index().to_dict(),
        per_user=events.groupby("user_id").size().to_numpy(),
        splits=split,
    )


@dataclass
class SplitCounts:
    """What the manifest's stats say of one split, as counts (summed over batches when streaming)."""

    impressions: int = 0
    requests: int = 0
    clicks: int = 0
    conversions: int = 0


def format_stats(
    manifest: Manifest,
    *,
    events: int,
    users: int,
    items: int,
    impressions: int,
    requests: int,
    behaviors: dict[int, int],
    per_user: np.ndarray,
    splits: dict[str, SplitCounts],
) -> dict:
    """The manifest's `stats` from counts: one formatter for both engines, so that they agree.
    Rates are float(sum) / n, which is what pandas' mean of a 0/1 int column computes."""
    names = dict(zip(range(1, len(manifest.behaviors) + 1), manifest.behavior_names()))
    split = {
        s: {
            "impressions": c.impressions,
            "requests": c.requests,
            "click_rate": float(c.clicks) / c.impressions if c.impressions else None,
            "conversion_rate": float(c.conversions) / c.impressions if c.impressions else None,
        }
        for s, c in splits.items()
    }
    q = np.percentile(per_user, [50, 90, 99]) if len(per_user) else [0, 0, 0]
    return {
        "events": int(events),
        "users": int(users),
        "items": int(items),
        "impressions": int(impressions),
        "requests": int(requests),
        "behaviors": {names[int(k)]: int(v) for k, v in sorted(behaviors.items())},
        "events_per_user": {
            "min": int(per_user.min()) if len(per_user) else 0,
            "p50": float(q[0]),
            "p90": float(q[1]),
            "p99": float(q[2]),
            "max": int(per_user.max()) if len(per_user) else 0,
        },
        "splits": split,
    }


def write_folder(
    out: Path,
    manifest: Manifest,
    events: pd.DataFrame,
    im: pd.DataFrame,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    *,
    overwrite: bool = False,
    extra_stats: dict | None = None,
) -> Path:
    """Write the contract folder atomically: into a temporary sibling, then renamed into place.
    An existing `out` is never touched unless overwrite=True."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} exists; choose another --out or pass overwrite=True (--overwrite)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = replace(
        manifest, stats={**dataset_stats(events, im, manifest), **(extra_stats or {})}
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        events.to_parquet(tmp / EVENTS, index=False)
        im.to_parquet(tmp / IMPRESSIONS, index=False)
        if users is not None:
            users.to_parquet(tmp / USERS, index=False)
        if items is not None:
            items.to_parquet(tmp / ITEMS, index=False)
        manifest.save(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def need_file(raw: Path, *names: str) -> Path:
    """The first of `names` present in `raw`, or a clear error."""
    for n in names:
        if (raw / n).exists():
            return raw / n
    raise FileNotFoundError(
        f"{raw}: none of {list(names)} found; point the converter at the folder holding the raw files."
    )


def add_time_context(im: pd.DataFrame, utc_offset_h: int = 0, hour: bool = True) -> None:
    """Context features from the request time: hour of day (1..24) and weekday (1 = Monday .. 7)."""
    local = im.ts.to_numpy() + utc_offset_h * 3600
    if hour:
        im["hour"] = (local // 3600) % 24 + 1
    im["weekday"] = ((local // 86400) + 3) % 7 + 1  # 1970-01-01 was a Thursday


def add_item_popularity(im: pd.DataFrame, events: pd.DataFrame) -> Feature:
    """The candidate's popularity so far, as an impression feature (`item_pop`): log1p of the item's
    events, every user and behaviour, with ts strictly before the impression (an as-of count: nothing
    of the request's own second or later). Why a column and not only the item embedding: a sequence
    model sees one user's history, and an item embedding learns popularity only for items frequent in
    train; a cold or rising item's count across all users is information the model cannot form from
    its input (docs/converters.md, "item_pop"; the floor's measurement in docs/learning-history.md)."""
    n = events_before(
        events.item_id.to_numpy(), events.ts.to_numpy(), im.item_id.to_numpy(), im.ts.to_numpy()
    )
    im["item_pop"] = np.log1p(n).astype(np.float32)
    return ITEM_POP


# ---------------------------------------------------------------------------------------------
# the tail every converter shares
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TimeContext:
    """The context features taken from the request time (add_time_context)."""

    utc_offset_h: int = 0  # the source's clock, for the local hour of day and weekday
    hour: bool = True  # False for a log with day resolution only (no hour of day)
    hour_description: str = ""

    def features(self) -> tuple[Feature, ...]:
        return time_context_features(hour=self.hour, hour_description=self.hour_description)


@dataclass(frozen=True, kw_only=True)
class LogDescription:
    """What a converter says of its log. The manifest's other fields come from the tail: the
    item vocabulary, the split, and the features user_id (first), then these `features`, then the
    time context and item_pop (last)."""

    name: str
    source: str
    side_fields: tuple[str, ...]
    features: tuple[Feature, ...]  # the source's own features (users, items, side fields)
    behaviors: tuple[Behavior, ...]
    intent_order: tuple[str, ...]
    labels: dict[str, Any]
    notes: str


def finish_conversion(
    out: Path,
    log: LogDescription,
    *,
    events: pd.DataFrame,
    positives: pd.DataFrame,
    n_users: int,
    n_items: int,
    neg_ratio: int,
    weights: np.ndarray | None,
    seed: int,
    context: TimeContext,
    item_pop: bool,
    val_frac: float,
    test_frac: float,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    overwrite: bool = False,
    extra_stats: dict | None = None,
) -> Path:
    """From the events (sorted by (user_id, ts)) and the positive impressions to a written contract
    folder: `neg_ratio` sampled negatives per positive never among the user's items, requests, the
    time context, item_pop (when asked), the chronological split and the manifest."""
    im = build_impressions(
        positives,
        n_items=n_items,
        neg_ratio=neg_ratio,
        weights=weights,
        seed=seed,
        exclude_keys=interacted_keys(events.user_id.to_numpy(), events.item_id.to_numpy(), n_items),
    )
    add_time_context(im, utc_offset_h=context.utc_offset_h, hour=context.hour)
    pop = (add_item_popularity(im, events),) if item_pop else ()
    val_start, test_start = chronological_split(im, val_frac, test_frac)
    manifest = build_manifest(log, n_users, n_items, context, pop, val_start, test_start)
    return write_folder(
        out, manifest, events, im, users, items, overwrite=overwrite, extra_stats=extra_stats
    )


def build_manifest(
    log: LogDescription,
    n_users: int,
    n_items: int,
    context: TimeContext,
    pop: tuple[Feature, ...],
    val_start: int,
    test_start: int,
) -> Manifest:
    """The manifest (stats aside) of a converted log, for both engines."""
    return Manifest(
        name=log.name,
        source=log.source,
        item_vocab=n_items + 1,
        side_fields=log.side_fields,
        features=(user_id_feature(n_users), *log.features, *context.features(), *pop),
        behaviors=log.behaviors,
        intent_order=log.intent_order,
        split=SplitRule(val_start_ts=val_start, test_start_ts=test_start),
        labels=log.labels,
        notes=log.notes,
    )
