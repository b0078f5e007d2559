"""The planted-history world: a tiny data-contract folder whose click is a known rule of the history.

    click = 1  exactly when the candidate's brand occurs among the user's last `window` events
               strictly before the impression (the as-of join's own rule)

Nothing else carries signal: events are uniform over the catalogue, candidates are uniform, the
context feature (hour) is noise. So a model scores above AUC 0.5 only through the behaviour
history, and it needs the candidate x history match to reach ~1.0. A control world with the events
handed to other users (`mismatch_users=True`, same impressions and labels) must stay near 0.5:
together they catch a history path that is cut, mis-joined or ignored (tests/test_planted_history.py;
docs/learning-history.md uses it to diagnose what a model can learn).

`p_click` holds the rule itself (the oracle is exact: AUC 1.0). Conversion is a coin flip on
clicks (P = 0.5): nothing to learn there.

    python -m harness.data planted --out DIR [--window 16 --n-brands 32 --seed 0 --control]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    USERS,
    Behavior,
    Manifest,
    SplitRule,
    new_dataset_folder,
)
from harness.data.features import categorical, hour_feature, numeric, user_id_feature
from harness.data.stats import compute_stats
from harness.data.synth import DAY, T0


@dataclass(frozen=True, kw_only=True)
class PlantedConfig:
    n_users: int = 1500
    n_brands: int = 32
    items_per_brand: int = 4
    brands_per_category: int = 4
    window: int = 16  # the rule looks at this many most recent events
    events_min: int = 8
    events_max: int = 48
    requests_per_user: int = 8
    candidates_per_request: int = 4
    days: int = 30
    val_frac: float = 0.8
    test_frac: float = 0.9
    mismatch_users: bool = False  # control: events belong to another user (labels unchanged)

    @property
    def n_items(self) -> int:
        return self.n_brands * self.items_per_brand


def planted_labels(
    ev_user: np.ndarray,
    ev_ts: np.ndarray,
    ev_brand: np.ndarray,
    imp_user: np.ndarray,
    imp_ts: np.ndarray,
    cand_brand: np.ndarray,
    window: int,
) -> np.ndarray:
    """1 where cand_brand is among the user's last `window` events strictly before imp_ts.
    Events must be sorted by (user, ts). Vectorised: one searchsorted and one (n, window) gather."""
    span = int(max(ev_ts.max(initial=0), imp_ts.max(initial=0))) + 1
    keys = ev_user.astype(np.int64) * span + ev_ts
    end = np.searchsorted(
        keys, imp_user.astype(np.int64) * span + imp_ts, side="left"
    )  # strictly before
    first = np.searchsorted(keys, imp_user.astype(np.int64) * span, side="left")
    idx = end[:, None] - 1 - np.arange(window)[None, :]
    ok = idx >= first[:, None]
    brands = np.where(ok, ev_brand[idx.clip(0)], -1)
    return (brands == cand_brand[:, None]).any(1).astype(np.int64)


def generate_planted(
    out: str | Path, cfg: PlantedConfig = PlantedConfig(), *, seed: int = 0
) -> Path:
    out = new_dataset_folder(out)
    rng = np.random.default_rng([seed, 7])
    item_brand = np.concatenate(
        [[0], np.repeat(np.arange(1, cfg.n_brands + 1), cfg.items_per_brand)]
    )
    item_cat = np.where(item_brand > 0, (item_brand - 1) // cfg.brands_per_category + 1, 0)
    item_pb = np.concatenate([[0], rng.integers(1, 11, cfg.n_items)])
    item_price = np.exp(rng.normal(3.0, 1.0, cfg.n_items + 1)).astype(np.float32)

    # events: uniform items at uniform times, sorted by (user, ts)
    n_ev = rng.integers(cfg.events_min, cfg.events_max + 1, cfg.n_users)
    ev_user = np.repeat(np.arange(1, cfg.n_users + 1), n_ev)
    ev_ts = T0 + rng.integers(0, cfg.days * DAY, ev_user.size)
    ev_item = rng.integers(1, cfg.n_items + 1, ev_user.size)
    order = np.lexsort((ev_ts, ev_user))
    ev_user, ev_ts, ev_item = ev_user[order], ev_ts[order], ev_item[order]

    # requests in the second half of the timeline; uniform candidates
    R = cfg.n_users * cfg.requests_per_user
    C = cfg.candidates_per_request
    r_user = np.repeat(np.arange(1, cfg.n_users + 1), cfg.requests_per_user)
    r_ts = T0 + cfg.days * DAY // 2 + rng.integers(0, cfg.days * DAY // 2, R)
    order = np.lexsort((r_user, r_ts))
    r_user, r_ts = r_user[order], r_ts[order]
    imp_user, imp_ts = np.repeat(r_user, C), np.repeat(r_ts, C)
    imp_item = rng.integers(1, cfg.n_items + 1, R * C)
    click = planted_labels(
        ev_user, ev_ts, item_brand[ev_item], imp_user, imp_ts, item_brand[imp_item], cfg.window
    )
    conversion = click * (rng.random(R * C) < 0.5)
    if cfg.mismatch_users:  # the control: same labels, histories of other users
        perm = np.concatenate([[0], rng.permutation(cfg.n_users) + 1])
        ev_user = perm[ev_user]
        order = np.lexsort((ev_ts, ev_user))
        ev_user, ev_ts, ev_item = ev_user[order], ev_ts[order], ev_item[order]

    val_ts = T0 + int(cfg.val_frac * cfg.days * DAY)
    test_ts = T0 + int(cfg.test_frac * cfg.days * DAY)
    split = np.where(imp_ts >= test_ts, "test", np.where(imp_ts >= val_ts, "val", "train"))
    pq.write_table(
        pa.table(
            {
                "user_id": ev_user.astype(np.int64),
                "ts": ev_ts.astype(np.int64),
                "behavior": np.ones(ev_user.size, dtype=np.int64),
                "item_id": ev_item.astype(np.int64),
                "category": item_cat[ev_item].astype(np.int64),
                "brand": item_brand[ev_item].astype(np.int64),
                "price_bucket": item_pb[ev_item].astype(np.int64),
            }
        ),
        out / EVENTS,
    )
    pq.write_table(
        pa.table(
            {
                "request_id": np.repeat(np.arange(1, R + 1), C).astype(np.int64),
                "user_id": imp_user.astype(np.int64),
                "ts": imp_ts.astype(np.int64),
                "item_id": imp_item.astype(np.int64),
                "hour": (((imp_ts - T0) // 3600) % 24 + 1).astype(np.int64),
                "click": click,
                "conversion": conversion.astype(np.int64),
                "split": split,
                "p_click": click.astype(np.float32),
                "p_conversion": np.full(R * C, 0.5, np.float32),
            }
        ),
        out / IMPRESSIONS,
    )
    pq.write_table(
        pa.table({"user_id": np.arange(1, cfg.n_users + 1, dtype=np.int64)}), out / USERS
    )
    iid = np.arange(1, cfg.n_items + 1)
    pq.write_table(
        pa.table(
            {
                "item_id": iid.astype(np.int64),
                "category": item_cat[iid].astype(np.int64),
                "brand": item_brand[iid].astype(np.int64),
                "price_bucket": item_pb[iid].astype(np.int64),
                "price": item_price[iid],
            }
        ),
        out / ITEMS,
    )

    cat = categorical
    manifest = Manifest(
        name=f"planted-w{cfg.window}-b{cfg.n_brands}-s{seed}"
        + ("-mismatched" if cfg.mismatch_users else ""),
        source=f"planted history rule seed={seed}",
        item_vocab=cfg.n_items + 1,
        side_fields=("category", "brand", "price_bucket"),
        features=(
            cat("category", "item", "items", int(item_cat.max()) + 1, "brand group"),
            cat("brand", "item", "items", cfg.n_brands + 1, "the rule's field"),
            cat("price_bucket", "item", "items", 11, "random"),
            user_id_feature(cfg.n_users, table="users", description="user id"),
            hour_feature("noise"),
            numeric("price", "item", "items", "noise"),
        ),
        behaviors=(Behavior(name="click", id=1),),
        intent_order=("click",),
        split=SplitRule(val_start_ts=val_ts, test_start_ts=test_ts),
        has_oracle=True,
        notes=f"click = candidate brand among the user's last {cfg.window} events (harness/data/planted.py)",
    )
    manifest = replace(manifest, stats=compute_stats(out, manifest))
    manifest.save(out)
    return out
