"""Features many datasets share, declared one way: the user id, the request's hour of day and
weekday, and the candidate item's popularity so far (`item_pop`).

The converters (harness/data/converters), the synthetic and planted worlds, the benchmark's random
folder (benchmarks/data_throughput.py) and the test fixtures (tests/data_support.py) all build these
declarations here, so a vocabulary (25 hours: 1..24 and 0 for missing) is written once. The columns
themselves are computed by whoever writes the data (converters/common.py for the converters).
Layer: schema (docs/contracts.md, "harness/data in layers").
"""

from __future__ import annotations

from harness.data.contract import Feature, FeatureGroup, FeatureTable

HOUR_VOCAB = 25  # hour of day 1..24; 0 = missing
WEEKDAY_VOCAB = 8  # 1 = Monday .. 7 = Sunday; 0 = missing


def categorical(
    name: str, group: FeatureGroup, table: FeatureTable, vocab_size: int, description: str = ""
) -> Feature:
    """A categorical feature (ids in [0, vocab_size), 0 = missing)."""
    return Feature(
        name=name,
        kind="categorical",
        group=group,
        table=table,
        vocab_size=vocab_size,
        description=description,
    )


def numeric(name: str, group: FeatureGroup, table: FeatureTable, description: str = "") -> Feature:
    """A numeric feature (finite floats; the data module standardises it)."""
    return Feature(name=name, kind="numeric", group=group, table=table, description=description)


def user_id_feature(
    n_users: int, *, table: FeatureTable = "impressions", description: str = ""
) -> Feature:
    """The user id as a feature: ids 1..n_users (0 = missing), in the impressions (as converters
    write it) or in users.parquet (as the synthetic worlds do)."""
    return categorical("user_id", "user", table, n_users + 1, description)


def hour_feature(description: str = "") -> Feature:
    """The request's hour of day (1..24) as a context feature of the impressions."""
    return categorical("hour", "context", "impressions", HOUR_VOCAB, description)


def weekday_feature(description: str = "") -> Feature:
    """The request's weekday (1 = Monday .. 7 = Sunday) as a context feature of the impressions."""
    return categorical("weekday", "context", "impressions", WEEKDAY_VOCAB, description)


def time_context_features(*, hour: bool = True, hour_description: str = "") -> tuple[Feature, ...]:
    """hour (unless the log has day resolution only) and weekday, in that order."""
    return ((hour_feature(hour_description),) if hour else ()) + (weekday_feature(),)


ITEM_POP = numeric(
    "item_pop",
    "item",
    "impressions",
    "log1p(events of the candidate item, all users and behaviours, strictly before the request)",
)
