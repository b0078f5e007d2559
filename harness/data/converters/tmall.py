"""Tmall 2014 brand log (t_alibaba_data.csv: user_id,brand_id,type,visit_datetime "M-D") -> the contract.

The item is a brand. Dates have no year (2014) and no time of day: ts is 00:00 UTC of the day, so
all events of a day tie; the as-of join (strictly before) then shows a request only earlier days,
never anything from its own day. Within a day, events are ordered by (brand id, behaviour id), a
stable documented tie-break. Each distinct (user, day, brand) click is a positive impression in the
request (user, day); `neg_ratio` brands per positive are sampled (popularity-weighted by default)
from brands the user never touched; conversion = the user buys the brand on that day or later
(click-then-buy). See docs/converters.md.

Two engines, as taobao.py: `engine="pandas"` (the default, in memory) and `engine="duckdb"`
(converters/stream.py, bounded memory; same rows, negatives from the same distributions).
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

TYPE_TO_BEHAVIOR = {0: 1, 2: 2, 3: 3, 1: 4}  # source type -> behaviour id, in rising intent
NAMES = ("click", "collect", "cart", "buy")
YEAR = 2014
CONTEXT = TimeContext(hour=False)  # day resolution: no hour of day


COLUMNS = ("user_id", "brand_id", "type", "visit_datetime")


def header_message(path: Path, header: list[str]) -> str:
    return f"{path}: header {header}; expected {list(COLUMNS)} (Tmall 2014 t_alibaba_data.csv)."


def date_message(path: Path, i: int, value) -> str:
    """The error of data row `i` (0-based; row i + 2 of the file, after the header)."""
    return f"{path}: row {i + 2} visit_datetime = {value!r}; expected 'M-D'."


def type_message(path: Path, i: int, value) -> str:
    return f"{path}: row {i + 2} type = {value}; expected one of {sorted(TYPE_TO_BEHAVIOR)}."


def read_log(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        dtype={"user_id": np.int64, "brand_id": np.int64, "type": np.int64, "visit_datetime": str},
    )
    if list(df.columns[:4]) != list(COLUMNS):
        raise ValueError(header_message(path, list(df.columns)))
    md = df.visit_datetime.str.extract(r"^\s*(\d{1,2})-(\d{1,2})\s*$")
    if md.isna().any(axis=None):
        i = int(np.flatnonzero(md.isna().any(axis=1).to_numpy())[0])
        raise ValueError(date_message(path, i, df.visit_datetime.iloc[i]))
    dates = pd.to_datetime({"year": YEAR, "month": md[0].astype(int), "day": md[1].astype(int)})
    df["ts"] = (dates - pd.Timestamp("1970-01-01")).dt.total_seconds().astype(np.int64)
    bad = ~df.type.isin(list(TYPE_TO_BEHAVIOR))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(type_message(path, i, df.type.iloc[i]))
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
    engine: str = "pandas",
    memory_limit: str = "4GB",
    threads: int | None = None,
    temp_dir: str | None = None,
) -> Path:
    """`engine`: "pandas" (in memory, the default) or "duckdb" (bounded memory, as taobao.convert:
    `memory_limit`, `threads` and `temp_dir` are DuckDB's; docs/converters.md, "Large logs")."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    check_engine("tmall", engine)
    csv = need_file(Path(raw), "t_alibaba_data.csv")
    log = description(raw, neg_ratio, negatives, seed, item_pop)
    if engine == "duckdb":
        # pyarrow and DuckDB only when asked for
        from harness.data.converters import stream, stream_logs

        return stream.convert_stream(
            out,
            lambda con: stream_logs.load_tmall(
                con,
                csv,
                log,
                columns=COLUMNS,
                type_to_behavior=TYPE_TO_BEHAVIOR,
                year=YEAR,
                messages=(header_message, date_message, type_message),
            ),
            context=CONTEXT,
            neg_ratio=neg_ratio,
            negatives=negatives,
            val_frac=val_frac,
            test_frac=test_frac,
            seed=seed,
            item_pop=item_pop,
            overwrite=overwrite,
            settings=stream.settings_for("tmall", memory_limit, threads, temp_dir),
        )
    df = read_log(csv)
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
        context=CONTEXT,
        item_pop=item_pop,
        val_frac=val_frac,
        test_frac=test_frac,
        overwrite=overwrite,
    )


def description(
    raw: Path, neg_ratio: int, negatives: str, seed: int, item_pop: bool
) -> LogDescription:
    """What the converter says of the log (both engines)."""
    return LogDescription(
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
