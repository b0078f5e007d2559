"""Tmall 2014 brand log (t_alibaba_data.csv: user_id,brand_id,type,visit_datetime "M-D") -> the contract.

The item is a brand. Dates have no year (2014) and no time of day: ts is 00:00 UTC of the day, so
all events of a day tie; the as-of join (strictly before) then shows a request only earlier days,
never anything from its own day. Within a day, events are ordered by (brand id, behaviour id), a
stable documented tie-break. Each distinct (user, day, brand) click is a positive impression in the
request (user, day); `neg_ratio` brands per positive are sampled (popularity-weighted by default)
from brands the user never touched; conversion = the user buys the brand on that day or later
(click-then-buy). See docs/converters.md.
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
    finish_conversion,
    need_file,
    popularity_weights,
    remap,
)

TYPE_TO_BEHAVIOR = {0: 1, 2: 2, 3: 3, 1: 4}  # source type -> behaviour id, in rising intent
NAMES = ("click", "collect", "cart", "buy")
YEAR = 2014


def read_log(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        dtype={"user_id": np.int64, "brand_id": np.int64, "type": np.int64, "visit_datetime": str},
    )
    need = ["user_id", "brand_id", "type", "visit_datetime"]
    if list(df.columns[:4]) != need:
        raise ValueError(
            f"{path}: header {list(df.columns)}; expected {need} (Tmall 2014 t_alibaba_data.csv)."
        )
    md = df.visit_datetime.str.extract(r"^\s*(\d{1,2})-(\d{1,2})\s*$")
    if md.isna().any(axis=None):
        i = int(np.flatnonzero(md.isna().any(axis=1).to_numpy())[0])
        raise ValueError(
            f"{path}: row {i + 2} visit_datetime = {df.visit_datetime.iloc[i]!r}; expected 'M-D'."
        )
    dates = pd.to_datetime({"year": YEAR, "month": md[0].astype(int), "day": md[1].astype(int)})
    df["ts"] = (dates - pd.Timestamp("1970-01-01")).dt.total_seconds().astype(np.int64)
    bad = ~df.type.isin(list(TYPE_TO_BEHAVIOR))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: row {i + 2} type = {df.type.iloc[i]}; expected one of {sorted(TYPE_TO_BEHAVIOR)}."
        )
    return df


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
) -> Path:
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    df = read_log(need_file(Path(raw), "t_alibaba_data.csv"))
    df["uid"], user_uniq = remap(df.user_id.to_numpy())
    df["item_id"], item_uniq = remap(df.brand_id.to_numpy())
    n_items = len(item_uniq)
    events = pd.DataFrame(
        {
            "user_id": df.uid,
            "ts": df.ts,
            "behavior": df.type.map(TYPE_TO_BEHAVIOR).astype(np.int64),
            "item_id": df.item_id,
        }
    )
    events = events.sort_values(
        ["user_id", "ts", "item_id", "behavior"], kind="stable", ignore_index=True
    )

    clicks = events[events.behavior == 1].drop_duplicates(["user_id", "ts", "item_id"])
    buys = events[events.behavior == 4].groupby(["user_id", "item_id"]).ts.max().rename("last_buy")
    clicks = clicks.join(buys, on=["user_id", "item_id"])
    conv = (clicks.last_buy.notna() & (clicks.ts <= clicks.last_buy.fillna(-1))).astype(np.int64)
    pos = pd.DataFrame(
        {
            "user_id": clicks.user_id,
            "ts": clicks.ts,
            "item_id": clicks.item_id,
            "click": 1,
            "conversion": conv,
        }
    ).reset_index(drop=True)
    weights = popularity_weights(events, n_items, negatives)
    log = LogDescription(
        name="tmall-2014",
        source=f"Tmall 2014 brand log ({raw})",
        side_fields=(),
        features=(),
        behaviors=tuple(Behavior(name=n, id=i + 1) for i, n in enumerate(NAMES)),
        intent_order=("buy", "cart", "collect", "click"),
        labels={
            "click": "a click on the brand that day = 1; sampled negatives = 0",
            "conversion": "the user buys the brand on that day or later",
            "conversion_requires_click": True,
            "neg_ratio": neg_ratio,
            "negatives": negatives,
            "seed": seed,
            "item_pop": item_pop,
        },
        notes="Items are brands; ts is the day (00:00 UTC, year 2014). See docs/converters.md.",
    )
    return finish_conversion(
        out,
        log,
        events=events,
        positives=pos,
        n_users=len(user_uniq),
        n_items=n_items,
        neg_ratio=neg_ratio,
        weights=weights,
        seed=seed,
        context=TimeContext(hour=False),  # day resolution: no hour of day
        item_pop=item_pop,
        val_frac=val_frac,
        test_frac=test_frac,
        overwrite=overwrite,
    )
