"""The validator's impression checks run one batch of rows at a time (issue 24): a violation that
sits exactly on a batch boundary is found, counted and exemplified as in one batch; the whole report
does not depend on the batch size, the row-group layout or the part files; the request check over
request ids in no particular order (grouped in on-disk partitions) agrees with a plain pandas
reference. The batch and partition sizes are the modules' own settings, set small here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data import keyed
from harness.data.contract import IMPRESSIONS
from harness.data.keyed import KeyPartitions, table_batches
from harness.data.validate import validate

# fixtures `clean` (a small synthetic world) and `folder` (a fresh copy to damage): tests/conftest.py


def _write(folder: Path, df: pd.DataFrame, row_group_size: int | None = None) -> None:
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False),
        folder / IMPRESSIONS,
        row_group_size=row_group_size,
    )


def _report(folder: Path) -> list[str]:
    return [str(v) for v in validate(folder)]


def _one(folder: Path, kind: str):
    hits = [v for v in validate(folder) if v.kind == kind and v.file == IMPRESSIONS]
    assert len(hits) == 1, [str(v) for v in validate(folder)]
    return hits[0]


def _boundary(df: pd.DataFrame) -> int:
    """A row k (first row of a batch of k rows) whose request started on the row before."""
    same = np.flatnonzero(df["request_id"].to_numpy()[1:] == df["request_id"].to_numpy()[:-1]) + 1
    k = int(same[len(same) // 2])
    assert k > 1
    return k


def _request_reference(df: pd.DataFrame) -> tuple[int, int | None]:
    """The request check by its definition, in pandas: rows whose (user_id, ts) differs from the
    previous row of the same request_id in row order; (how many, the first such row)."""
    d = df.reset_index(drop=True)
    prev_user = d.groupby("request_id")["user_id"].shift()
    prev_ts = d.groupby("request_id")["ts"].shift()
    bad = prev_user.notna() & ((d["user_id"] != prev_user) | (d["ts"] != prev_ts))
    rows = np.flatnonzero(bad.to_numpy())
    return len(rows), (int(rows[0]) if len(rows) else None)


def test_unsorted_row_exactly_on_a_batch_boundary(folder, monkeypatch):
    df = pd.read_parquet(folder / IMPRESSIONS)
    k = len(df) // 2
    # move the first batch's last request to the start of the second batch: the second batch's
    # first row is then earlier than the first batch's (new) last row, and nothing else is unsorted
    df = df.copy()
    df.loc[k, "ts"] = int(df["ts"].iloc[k - 1]) - 1
    df.loc[k, "split"] = df["split"].iloc[k - 1]
    _write(folder, df)
    monkeypatch.setattr(keyed, "BATCH_ROWS", k)
    v = _one(folder, "unsorted")
    assert v.example["row"] == k and v.example["ts"] == int(df["ts"].iloc[k])
    monkeypatch.setattr(keyed, "BATCH_ROWS", 1 << 20)
    assert str(_one(folder, "unsorted")) == str(v)


def test_request_spanning_users_exactly_on_a_batch_boundary(folder, monkeypatch):
    df = pd.read_parquet(folder / IMPRESSIONS)
    k = _boundary(df)
    other = int(df["user_id"].iloc[k]) % 30 + 1
    df = df.assign(user_id=np.where(np.arange(len(df)) == k, other, df["user_id"]))
    _write(folder, df)
    monkeypatch.setattr(keyed, "BATCH_ROWS", k)
    v = _one(folder, "request")
    assert (v.rows, v.example["row"]) == _request_reference(df)
    assert v.example == {
        "row": k,
        "request_id": int(df["request_id"].iloc[k]),
        "user_id": other,
        "ts": int(df["ts"].iloc[k]),
    }


@pytest.mark.parametrize("partition_rows", [1 << 22, 7])
def test_request_id_reused_later_is_found_in_partitions(folder, monkeypatch, partition_rows):
    """Request ids in no order (here the last request reuses the first one's id at a later ts):
    the one-pass check cannot see it; the partitioned pass (in memory, or on disk in several
    partitions) counts and exemplifies it as the definition does."""
    df = pd.read_parquet(folder / IMPRESSIONS)
    last = df["request_id"] == df["request_id"].iloc[-1]
    df = df.assign(request_id=np.where(last, df["request_id"].iloc[0], df["request_id"]))
    _write(folder, df, row_group_size=11)
    monkeypatch.setattr(keyed, "BATCH_ROWS", 13)
    monkeypatch.setattr(keyed, "PARTITION_ROWS", partition_rows)
    v = _one(folder, "request")
    n, first = _request_reference(df)
    assert n >= 1 and (v.rows, v.example["row"]) == (n, first)
    assert v.example["request_id"] == int(df["request_id"].iloc[0])


def test_report_does_not_depend_on_batches_or_row_groups(folder, monkeypatch):
    """Many violations at once, spread over the table: the same report, violation for violation
    (counts, examples, order), in one batch, in batches of 7 rows, in row groups of 5 rows, and
    as part files."""
    df = pd.read_parquet(folder / IMPRESSIONS)
    n = len(df)
    i = np.arange(n)
    k = _boundary(df)
    df = df.assign(
        click=np.where(i % 17 == 3, 2, df["click"]),  # label
        ts=np.where(i == n - 2, -1, df["ts"]),  # timestamp and unsorted
        user_id=np.where(i == k, int(df["user_id"].iloc[k]) % 30 + 1, df["user_id"]),  # request
        split=np.where(i == 9, "test", df["split"]),  # leakage
        item_id=np.where(i == n - 1, 0, df["item_id"]),  # vocab
    )
    _write(folder, df)
    whole = _report(folder)
    kinds = {line.split(": ")[1] for line in whole}
    assert {"label", "timestamp", "unsorted", "request", "leakage", "vocab"} <= kinds, whole
    monkeypatch.setattr(keyed, "BATCH_ROWS", 7)
    assert _report(folder) == whole
    _write(folder, df, row_group_size=5)
    assert _report(folder) == whole
    (folder / IMPRESSIONS).unlink()
    parts = folder / IMPRESSIONS.removesuffix(".parquet")
    parts.mkdir()
    for j, start in enumerate(range(0, n, 23)):
        pq.write_table(
            pa.Table.from_pandas(df.iloc[start : start + 23], preserve_index=False),
            parts / f"part-{j:05d}.parquet",
        )
    assert _report(folder) == whole


def test_no_history_share_and_empty_split_are_decided_on_the_whole_table(folder, monkeypatch):
    """The no_history warning needs the whole table's share, empty_split every batch's splits:
    batches of 3 rows give the one-batch report."""
    df = pd.read_parquet(folder / IMPRESSIONS)
    df = df.assign(split=df["split"].replace("test", "val"))  # no test split left (and leakage)
    _write(folder, df)
    events = pd.read_parquet(folder / "events.parquet")
    late = int(df["ts"].max()) + 1
    pq.write_table(
        pa.Table.from_pandas(events.assign(ts=events["ts"] + late), preserve_index=False),
        folder / "events.parquet",
    )
    whole = _report(folder)
    assert any("no_history" in line for line in whole)
    assert any("empty_split" in line for line in whole)
    monkeypatch.setattr(keyed, "BATCH_ROWS", 3)
    assert _report(folder) == whole


def test_clean_world_is_valid_in_tiny_batches(clean, monkeypatch):
    monkeypatch.setattr(keyed, "BATCH_ROWS", 4)
    assert validate(clean) == []


@pytest.mark.parametrize("row_group_size", [3, 6, 20])
def test_table_batches_keep_row_order_across_parts_and_row_groups(tmp_path, row_group_size):
    """Row groups smaller than a batch are read together, larger ones in slices: every batch
    holds at most batch_rows rows, and the rows come in order across row groups and parts."""
    parts = tmp_path / "t"
    parts.mkdir()
    for j, start in enumerate(range(0, 50, 20)):
        pq.write_table(
            pa.table({"a": np.arange(start, min(start + 20, 50))}),
            parts / f"part-{j}.parquet",
            row_group_size=row_group_size,
        )
    got = [b.column("a").to_numpy() for b in table_batches(parts, ["a"], batch_rows=8)]
    assert max(len(b) for b in got) <= 8
    if row_group_size == 3:
        assert max(len(b) for b in got) > 3  # row groups of 3 read together
    assert np.array_equal(np.concatenate(got), np.arange(50))


@pytest.mark.parametrize("rows_per_partition", [1000, 5])
def test_key_partitions_hold_each_key_together_in_row_order(rows_per_partition):
    rng = np.random.default_rng(0)
    key = rng.integers(0, 9, 60) * 4  # ids sharing a stride still spread over the partitions
    row = np.arange(60)
    with KeyPartitions(60, ("key", "row"), rows_per_partition) as parts:
        for s in range(0, 60, 7):
            parts.add(key[s : s + 7], row[s : s + 7])
        assert parts.k == (1 if rows_per_partition == 1000 else 12)
        seen = list(parts.partitions())
        folder = parts._dir.name if parts._dir is not None else None
    assert sum(len(p["row"]) for p in seen) == 60
    owner = {}
    for i, p in enumerate(seen):
        assert np.all(np.diff(p["row"]) > 0)  # in row order
        for kv in np.unique(p["key"]):
            assert owner.setdefault(int(kv), i) == i  # a key in one partition only
    if folder is not None:
        assert len({owner[k] for k in owner}) > 1 and not Path(folder).exists()


def test_users_and_items_checked_in_batches_give_the_whole_table_report(folder, monkeypatch):
    """users.parquet / items.parquet by batch: a duplicate id whose first row is in an earlier
    batch, an id outside the vocabulary, a bad categorical and a NaN numeric: counted and
    exemplified as in one batch (the duplicate by its definition: every row whose id appeared on an
    earlier row)."""
    users = pd.read_parquet(folder / "users.parquet")
    items = pd.read_parquet(folder / "items.parquet")
    users = pd.concat([users, users.iloc[[2, 2]]])  # user 3 twice more, at the end
    num = [c for c in users.columns if users[c].dtype.kind == "f"][0]
    users[num] = np.where(np.arange(len(users)) == 5, np.nan, users[num])
    items = items.assign(item_id=np.where(np.arange(len(items)) == 4, 0, items["item_id"]))
    cat = [c for c in items.columns if c != "item_id" and items[c].dtype.kind == "i"][0]
    items[cat] = np.where(np.arange(len(items)) == 8, -1, items[cat])
    for name, df in (("users.parquet", users), ("items.parquet", items)):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / name)
    found = validate(folder)
    dup = [v for v in found if v.kind == "duplicate_id"]
    assert len(dup) == 1 and dup[0].rows == 2
    assert dup[0].example == {"row": len(users) - 2, "user_id": 3}
    whole = [str(v) for v in found]
    assert {"duplicate_id", "non_finite", "vocab"} <= {v.kind for v in found}
    monkeypatch.setattr(keyed, "BATCH_ROWS", 3)
    assert _report(folder) == whole
