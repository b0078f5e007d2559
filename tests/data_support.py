"""Helpers of the data tests (not part of the package): tiny valid contract folders written by the
tests themselves, the small synthetic world the validator tests damage (its fixtures `clean` and
`folder` are in tests/conftest.py) and the edit that damages one file. Imported as
`from tests.data_support import ...`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data import synth
from harness.data.contract import Behavior, Manifest, SplitRule
from harness.data.features import categorical, hour_feature, numeric, user_id_feature

# a synthetic world small enough to generate in a second (test_data_validate.py, test_data_broken.py)
SMALL_WORLD = synth.SynthConfig(
    n_users=30,
    n_topics=8,
    n_interest_topics=3,
    days=20,
    events_median=40,
    events_max=200,
    requests_mean=2.0,
    user_chunk=30,
)


def edit(folder: Path, name: str, fn) -> None:
    """Rewrite the parquet file `name` of `folder` as fn(frame) (fn may edit in place and return None)."""
    df = pd.read_parquet(folder / name)
    out = fn(df)
    pq.write_table(
        pa.Table.from_pandas(out if out is not None else df, preserve_index=False), folder / name
    )


def write_tiny_folder(
    out: Path,
    *,
    seed: int = 0,
    n_users: int = 12,
    n_items: int = 40,
    n_events: int = 400,
    n_requests: int = 60,
    max_per_request: int = 4,
    oracle: bool = True,
) -> Path:
    """A small random dataset obeying docs/data-contract.md (ties in ts included on purpose)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n_cat, n_brand = 6, 9
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1),
            "category": rng.integers(1, n_cat, n_items),
            "brand": rng.integers(1, n_brand, n_items),
            "price": rng.lognormal(3, 1, n_items),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "age_bucket": rng.integers(1, 7, n_users),
            "activity": rng.normal(0, 3, n_users),
        }
    )
    # coarse timestamps so ties (same user, same ts) and ties with impression times happen
    ev_user = rng.integers(2, n_users + 1, n_events)  # user 1 never has history
    ev_ts = rng.integers(0, 200, n_events) * 10
    ev_item = rng.integers(1, n_items + 1, n_events)
    ev = pd.DataFrame(
        {
            "user_id": ev_user,
            "ts": ev_ts,
            "behavior": rng.integers(1, 4, n_events),
            "item_id": ev_item,
        }
    )
    ev = ev.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    ev["category"] = items.category.to_numpy()[ev.item_id - 1]
    ev["brand"] = items.brand.to_numpy()[ev.item_id - 1]
    sizes = rng.integers(1, max_per_request + 1, n_requests)
    req_ts = np.sort(rng.integers(0, 220, n_requests) * 10)
    req_user = rng.integers(1, n_users + 1, n_requests)
    rep = np.repeat(np.arange(n_requests), sizes)
    n = len(rep)
    im = pd.DataFrame(
        {
            "request_id": rep + 1,
            "user_id": req_user[rep],
            "ts": req_ts[rep],
            "item_id": rng.integers(1, n_items + 1, n),
            "hour": rng.integers(1, 25, n),
        }
    )
    p_click = rng.uniform(0.05, 0.6, n)
    p_conv = rng.uniform(0.0, 0.5, n)
    im["click"] = (rng.uniform(size=n) < p_click).astype(np.int64)
    im["conversion"] = im.click * (rng.uniform(size=n) < p_conv).astype(np.int64)
    val_ts, test_ts = int(np.quantile(req_ts, 0.6)), int(np.quantile(req_ts, 0.8))
    im["split"] = np.where(im.ts >= test_ts, "test", np.where(im.ts >= val_ts, "val", "train"))
    if oracle:
        im["p_click"], im["p_conversion"] = p_click, p_click * p_conv
    ev.to_parquet(out / "events.parquet", index=False)
    im.to_parquet(out / "impressions.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    Manifest(
        name="tiny",
        source="tests",
        item_vocab=n_items + 1,
        side_fields=("category", "brand"),
        features=(
            user_id_feature(n_users),
            categorical("age_bucket", "user", "users", 7),
            numeric("activity", "user", "users"),
            categorical("category", "item", "items", n_cat),
            categorical("brand", "item", "items", n_brand),
            numeric("price", "item", "items"),
            hour_feature(),
        ),
        behaviors=(
            Behavior(name="click", id=1),
            Behavior(name="cart", id=2),
            Behavior(name="purchase", id=3),
        ),
        intent_order=("purchase", "cart", "click"),
        split=SplitRule(val_start_ts=val_ts, test_start_ts=test_ts),
        has_oracle=oracle,
    ).save(out)
    return out
