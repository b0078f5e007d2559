"""The validator: a clean folder passes; each kind of bad input is reported with file, column, an
example row and a fix; several problems are all reported; nothing is modified."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from harness.data.contract import EVENTS, IMPRESSIONS, ITEMS, MANIFEST, USERS
from harness.data.validate import validate
from tests.data_support import edit

# fixtures `clean` (a small synthetic world) and `folder` (a fresh copy to damage): tests/conftest.py


def only(found, kind: str, column: str | None = None, file: str | None = None):
    hits = [
        v
        for v in found
        if v.kind == kind
        and (column is None or v.column == column)
        and (file is None or v.file == file)
    ]
    assert hits, f"no {kind} violation in {[str(v) for v in found]}"
    v = hits[0]
    assert v.fix and v.message
    return v


def test_clean_folder_is_valid(clean):
    assert validate(clean) == []


def test_missing_file(folder):
    (folder / EVENTS).unlink()
    v = only(validate(folder), "missing_file", file=EVENTS)
    assert "events.parquet" in v.fix


def test_missing_declared_table(folder):
    (folder / USERS).unlink()
    v = only(validate(folder), "missing_file", file=USERS)
    assert "age_bucket" in v.message


def test_missing_column(folder):
    edit(folder, IMPRESSIONS, lambda d: d.drop(columns=["surface"]))
    only(validate(folder), "missing_column", "surface", IMPRESSIONS)


def test_wrong_dtype(folder):
    edit(folder, EVENTS, lambda d: d.assign(item_id=d["item_id"].astype(float)))
    v = only(validate(folder), "dtype", "item_id", EVENTS)
    assert "int64" in v.fix and "double" in v.message


def test_unsorted_events(folder):
    edit(folder, EVENTS, lambda d: d.iloc[::-1])
    v = only(validate(folder), "unsorted", "ts", EVENTS)
    assert v.example["row"] == 1 and "sort_values" in v.fix


def test_unsorted_impressions(folder):
    edit(folder, IMPRESSIONS, lambda d: d.sample(frac=1.0, random_state=0))
    only(validate(folder), "unsorted", "ts", IMPRESSIONS)


def test_ids_outside_vocabulary(folder):
    edit(
        folder,
        EVENTS,
        lambda d: d.assign(brand=np.where(np.arange(len(d)) == 5, 10_000, d["brand"])),
    )
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(item_id=np.where(np.arange(len(d)) == 2, 0, d["item_id"])),
    )
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(hour=np.where(np.arange(len(d)) == 3, 99, d["hour"])),
    )
    found = validate(folder)
    v = only(found, "vocab", "brand", EVENTS)
    assert v.rows == 1 and v.example["row"] == 5 and v.example["brand"] == 10_000
    assert only(found, "vocab", "item_id", IMPRESSIONS).example["row"] == 2
    assert only(found, "vocab", "hour", IMPRESSIONS).example["hour"] == 99


def test_non_finite_numerics(folder):
    edit(
        folder,
        ITEMS,
        lambda d: d.assign(price=np.where(np.arange(len(d)) == 4, np.nan, d["price"])),
    )
    edit(
        folder,
        USERS,
        lambda d: d.assign(
            user_activity=np.where(np.arange(len(d)) == 1, np.inf, d["user_activity"])
        ),
    )
    found = validate(folder)
    assert only(found, "non_finite", "price", ITEMS).example["row"] == 4
    assert only(found, "non_finite", "user_activity", USERS).rows == 1


def test_labels_not_binary(folder):
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(click=np.where(np.arange(len(d)) == 7, 2, d["click"])),
    )
    v = only(validate(folder), "label", "click")
    assert v.example["row"] == 7 and v.example["click"] == 2


def test_conversion_without_click(folder):
    def corrupt(d):
        i = int(np.flatnonzero(d["click"].to_numpy() == 0)[0])
        d.loc[i, "conversion"] = 1
        return d

    edit(folder, IMPRESSIONS, corrupt)
    v = only(validate(folder), "conversion_without_click", "conversion")
    assert v.example["click"] == 0 and v.example["conversion"] == 1
    # allowed when the manifest says the funnel does not require a click
    m = yaml.safe_load((folder / MANIFEST).read_text())
    m["labels"]["conversion_requires_click"] = False
    (folder / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    assert not [x for x in validate(folder) if x.kind == "conversion_without_click"]


def test_impression_user_without_users_row(folder):
    uid = int(pd.read_parquet(folder / IMPRESSIONS)["user_id"].iloc[0])
    edit(folder, USERS, lambda d: d[d["user_id"] != uid])
    v = only(validate(folder), "unknown_user", "user_id")
    assert v.example["user_id"] == uid and "without events is allowed" in v.fix


def test_unknown_behaviour(folder):
    edit(
        folder,
        EVENTS,
        lambda d: d.assign(behavior=np.where(np.arange(len(d)) == 9, 4, d["behavior"])),
    )
    v = only(validate(folder), "behavior", "behavior")
    assert v.example["row"] == 9 and "purchase" in v.message


def test_split_leakage(folder):
    # a test-period impression labelled train: the split is not chronological
    def corrupt(d):
        i = int(np.flatnonzero(d["split"].to_numpy() == "test")[0])
        d.loc[i, "split"] = "train"
        return d

    edit(folder, IMPRESSIONS, corrupt)
    v = only(validate(folder), "leakage", "split")
    assert v.example["split"] == "train" and "val_start_ts" in v.fix


def test_bad_split_value_and_probability(folder):
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(
            split=np.where(np.arange(len(d)) == 0, "dev", d["split"]),
            p_click=np.where(np.arange(len(d)) == 1, 3.5, d["p_click"]),
        ),
    )
    found = validate(folder)
    only(found, "split", "split")
    only(found, "probability", "p_click")


def test_request_spanning_users(folder):
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(
            user_id=np.where(np.arange(len(d)) == 1, d["user_id"].iloc[0] % 30 + 1, d["user_id"])
        ),
    )
    only(validate(folder), "request", "request_id")


def test_broken_manifest(folder):
    (folder / MANIFEST).write_text("name: x\nfeatures: []\n")
    v = only(validate(folder), "manifest")
    assert "missing field" in v.message


def test_every_violation_is_reported_and_nothing_is_modified(folder):
    edit(
        folder,
        EVENTS,
        lambda d: d.assign(behavior=np.where(np.arange(len(d)) < 3, 0, d["behavior"])).iloc[::-1],
    )
    edit(
        folder,
        IMPRESSIONS,
        lambda d: d.assign(click=np.where(np.arange(len(d)) == 0, -1, d["click"])),
    )
    digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    found = validate(folder)
    assert {v.kind for v in found} >= {"behavior", "unsorted", "label"}
    assert only(found, "behavior").rows == 3
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()} == digest
    text = str(only(found, "label"))
    assert "impressions.parquet [click]" in text and "example" in text and "fix:" in text


def test_sort_check_spans_row_groups(folder):
    # swap two whole row groups: each is sorted, the file is not
    df = pd.read_parquet(folder / EVENTS)
    half = len(df) // 2
    swapped = pd.concat([df.iloc[half:], df.iloc[:half]])
    pq.write_table(
        pa.Table.from_pandas(swapped, preserve_index=False),
        folder / EVENTS,
        row_group_size=len(df) - half,
    )
    v = only(validate(folder), "unsorted", "ts", EVENTS)
    assert v.rows == 1 and v.example["row"] == len(df) - half


def test_event_side_fields_disagree_with_items(folder):
    edit(
        folder,
        EVENTS,
        lambda d: d.assign(
            category=np.where(np.arange(len(d)) == 6, d["category"] % 2 + 1, d["category"])
        ),
    )
    v = only(validate(folder), "side_mismatch", "category", EVENTS)
    assert v.rows == 1 and v.example["row"] == 6 and "item_id" in v.example


def test_impressions_without_prior_events_warn_with_the_share(folder, capsys):
    """Issue #21: a dataset whose events all come after its impressions validated as `valid` and
    trained on empty histories. Every share at or above NO_HISTORY_WARN (50%) is a warning that
    says the share; the clean world (little cold start) gets none; the exit code stays 0."""
    from harness.data.__main__ import main
    from harness.data.validate import NO_HISTORY_WARN

    imps = pd.read_parquet(folder / IMPRESSIONS)
    late = int(imps["ts"].max()) + 1
    edit(
        folder, EVENTS, lambda d: d.assign(ts=d["ts"] + late)
    )  # every event after every impression
    v = only(validate(folder), "no_history", "ts", IMPRESSIONS)
    assert not v.is_error and v.rows == len(imps)
    assert "no impression has any prior event" in v.message and "fix:" in str(v)
    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "warning: impressions.parquet [ts]: no_history" in out

    # a large share, not all: move the events of the users of ~60% of the impressions late
    users = imps["user_id"].drop_duplicates().sample(frac=1.0, random_state=0)
    share, chosen = 0.0, []
    for u in users:
        chosen.append(u)
        share = imps["user_id"].isin(chosen).mean()
        if share >= 0.6:
            break
    edit(folder, EVENTS, lambda d: d.assign(ts=d["ts"] - late))  # back as they were
    edit(
        folder,
        EVENTS,
        lambda d: d.assign(ts=np.where(d["user_id"].isin(chosen), d["ts"] + late, d["ts"])),
    )
    v = only(validate(folder), "no_history")
    empty = v.rows / len(imps)
    assert NO_HISTORY_WARN <= empty < 1.0 and f"{empty:.0%} of the impressions" in v.message


def test_clean_world_has_histories(clean):
    assert not [v for v in validate(clean) if v.kind == "no_history"]
