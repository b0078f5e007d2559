"""Taobao UserBehavior (UserBehavior.csv: user,item,category,behavior,ts; no header) -> the contract.

Impressions are not logged, so each page view (pv) is a positive impression of the viewed item in the
request (user, second); `neg_ratio` items per positive are sampled (popularity-weighted by default)
from items the user never touched. conversion = the user buys that item at or after the view
(click-then-buy). All four behaviours feed the sequence. Rows with a missing field (the copy's
truncated last line) are dropped together with every row of their user, whose history is then
incomplete. See docs/converters.md.

Two engines give the same contract: `engine="pandas"` (the default) holds the log in memory;
`engine="duckdb"` (converters/stream.py) streams it in bounded memory for logs larger than memory,
writing events/ and impressions/ as part files (same rows; negatives from the same distributions,
other draws).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.contract import Behavior
from harness.data.converters.common import (
    NEGATIVES,
    LogDescription,
    TimeContext,
    check_engine,
    finish_conversion,
    need_file,
    popularity_weights,
    remap,
)
from harness.data.features import categorical

BEHAVIORS = {"pv": 1, "fav": 2, "cart": 3, "buy": 4}
NAMES = ("click", "fav", "cart", "buy")  # pv is the publisher's "click"
BEIJING = 8  # UTC offset of the source, for the hour-of-day context
CONTEXT = TimeContext(utc_offset_h=BEIJING, hour_description="hour of day, Beijing time")


def read_log(path: Path) -> tuple[pd.DataFrame, dict]:
    """The raw log with incomplete rows (and their users) removed; returns what was dropped."""
    df = pd.read_csv(
        path,
        header=None,
        names=["user", "item", "category", "behavior", "ts"],
        dtype={"behavior": str},
        on_bad_lines="error",
    )
    broken = df.isna().any(axis=1).to_numpy()
    bad_users = np.unique(df.user.to_numpy()[broken])
    unknown = ~df.behavior.isin(list(BEHAVIORS)) & ~broken
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(
            f"{path}: row {i + 1} has behavior {df.behavior.iloc[i]!r}; expected one of {list(BEHAVIORS)}."
        )
    drop = df.user.isin(bad_users).to_numpy()
    info = {
        "raw_rows_complete": int((~broken).sum()),
        "raw_users": int(df.user[~broken].nunique()),
        "dropped_incomplete_rows": int(broken.sum()),
        "dropped_users": [int(u) for u in bad_users],
        "dropped_user_rows": int((drop & ~broken).sum()),
    }
    df = df[~drop].astype(
        {"user": np.int64, "item": np.int64, "category": np.int64, "ts": np.int64}
    )
    return df.reset_index(drop=True), info


def convert(
    raw: Path,
    out: Path,
    *,
    neg_ratio: int = 4,
    negatives: str = "popularity",
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
    """`engine`: "pandas" (in memory, the default) or "duckdb" (bounded memory: about
    `memory_limit` for DuckDB, which spills to `temp_dir` (default: beside `out`), plus a few
    chunks of 1M rows in Python; `threads`: DuckDB's, default every core)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    check_engine("taobao", engine)
    csv = need_file(Path(raw), "UserBehavior.csv")

    def describe(n_categories: int) -> LogDescription:
        return description(raw, n_categories, neg_ratio, negatives, seed, item_pop)

    if engine == "duckdb":
        # pyarrow and DuckDB only when asked for
        from harness.data.converters import stream, stream_logs

        return stream.convert_stream(
            out,
            lambda con: stream_logs.load_taobao(con, csv, BEHAVIORS, describe),
            context=CONTEXT,
            neg_ratio=neg_ratio,
            negatives=negatives,
            val_frac=val_frac,
            test_frac=test_frac,
            seed=seed,
            item_pop=item_pop,
            overwrite=overwrite,
            settings=stream.settings_for("taobao", memory_limit, threads, temp_dir),
        )
    df, info = read_log(csv)
    df["user_id"], user_uniq = remap(df.user.to_numpy())
    df["item_id"], item_uniq = remap(df.item.to_numpy())
    df["category_id"], cat_uniq = remap(df.category.to_numpy())
    df["behavior_id"] = df.behavior.map(BEHAVIORS).astype(np.int64)
    n_items = len(item_uniq)

    # one category per item (the most frequent one in the log; ties -> smallest id)
    ic = df.groupby(["item_id", "category_id"]).size().rename("n").reset_index()
    ic = ic.sort_values(
        ["item_id", "n", "category_id"], ascending=[True, False, True], kind="stable"
    )
    items = ic.drop_duplicates("item_id")[["item_id", "category_id"]].rename(
        columns={"category_id": "category"}
    )
    items = items.reset_index(drop=True)

    # events sorted by (user, ts); ties broken by item id, then behaviour id (stable, documented)
    events = pd.DataFrame(
        {"user_id": df.user_id, "ts": df.ts, "behavior": df.behavior_id, "item_id": df.item_id}
    )
    events = events.sort_values(
        ["user_id", "ts", "item_id", "behavior"], kind="stable", ignore_index=True
    )
    events["category"] = items.category.to_numpy()[events.item_id.to_numpy() - 1]

    # positives: distinct (user, ts, item) page views; conversion = a buy of the pair at or after the view
    pv = events[events.behavior == 1].drop_duplicates(["user_id", "ts", "item_id"])
    buys = events[events.behavior == 4].groupby(["user_id", "item_id"]).ts.max().rename("last_buy")
    pv = pv.join(buys, on=["user_id", "item_id"])
    conv = (pv.last_buy.notna() & (pv.ts <= pv.last_buy.fillna(-1))).astype(np.int64)
    pos = pd.DataFrame(
        {"user_id": pv.user_id, "ts": pv.ts, "item_id": pv.item_id, "click": 1, "conversion": conv}
    )
    weights = popularity_weights(events, n_items, negatives)
    log = describe(len(cat_uniq))
    return finish_conversion(
        out,
        log,
        events=events,
        positives=pos.reset_index(drop=True),
        n_users=len(user_uniq),
        n_items=n_items,
        neg_ratio=neg_ratio,
        weights=weights,
        seed=seed,
        context=CONTEXT,
        item_pop=item_pop,
        val_frac=val_frac,
        test_frac=test_frac,
        items=items,
        overwrite=overwrite,
        extra_stats={"source_rows": info},
    )


def description(
    raw: Path, n_categories: int, neg_ratio: int, negatives: str, seed: int, item_pop: bool
) -> LogDescription:
    """What the converter says of the log (both engines)."""
    return LogDescription(
        name="taobao-userbehavior",
        source=f"Taobao UserBehavior ({raw})",
        side_fields=("category",),
        features=(categorical("category", "item", "items", n_categories + 1),),
        behaviors=tuple(Behavior(name=n, id=i + 1) for i, n in enumerate(NAMES)),
        intent_order=("buy", "cart", "fav", "click"),
        labels={
            "click": "page view (pv) of the item = 1; sampled negatives = 0",
            "conversion": "the user buys the viewed item at or after the view",
            "conversion_requires_click": True,
            "neg_ratio": neg_ratio,
            "negatives": negatives,
            "seed": seed,
            "item_pop": item_pop,
        },
        notes="Impressions are page views plus sampled negatives. See docs/converters.md.",
    )
