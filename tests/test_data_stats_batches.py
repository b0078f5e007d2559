"""Dataset statistics read the impressions one batch at a time (issue 24): the result equals a
whole-table computation (prior counts over all events, numpy percentiles, pandas group sums) for
any batch size, with request ids in any order (counted in on-disk partitions), and the histogram
percentile is numpy's percentile step for step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data import __main__ as data_cli
from harness.data import keyed, stats
from harness.data.contract import EVENTS, IMPRESSIONS, SPLITS, read_table, table_source
from harness.data.stats import PERCENTILES, compute_stats, histogram_percentile, prior_counts
from tests.data_support import write_tiny_folder

# fixtures `clean` (a small synthetic world, with the oracle's p_click) and `folder`: tests/conftest.py


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_histogram_percentile_is_numpys(n):
    rng = np.random.default_rng(n)
    for x in (rng.integers(0, 50, n), rng.geometric(0.01, n), np.full(n, 7)):
        hist = np.bincount(x)
        for q in (*PERCENTILES, 0, 1, 25, 33.3, 75, 99.9, 100):
            assert histogram_percentile(hist, q) == int(np.percentile(x, q)), (n, q)
    assert histogram_percentile(np.zeros(3, np.int64), 50) == 0


def _whole_table(folder: Path) -> dict:
    """The batch-independent statistics computed the plain way: every impression and event at
    once."""
    imp = pd.read_parquet(folder / IMPRESSIONS)
    ev = pd.read_parquet(folder / EVENTS)
    prior = prior_counts(
        ev["user_id"].to_numpy(),
        ev["ts"].to_numpy(),
        imp["user_id"].to_numpy(),
        imp["ts"].to_numpy(),
    )
    pct = {f"p{q}": int(np.percentile(prior, q)) for q in PERCENTILES}
    splits = {}
    for s in SPLITS:
        part = imp[imp["split"] == s]
        clicked = part[part["click"] == 1]
        splits[s] = {
            "impressions": len(part),
            "ts_min": int(part["ts"].min()),
            "ts_max": int(part["ts"].max()),
            "click_rate": round(float(part["click"].mean()), 6),
            "conversion_rate": round(float(part["conversion"].mean()), 6),
            "cvr_given_click": round(float(clicked["conversion"].mean()), 6),
        }
    return {
        "impressions": len(imp),
        "requests": int(imp["request_id"].nunique()),
        "prior_events_percentiles": pct | {"mean": round(float(prior.mean()), 6)},
        "prior_events_max": int(prior.max()),
        "impressions_with_prior_ge_2048": int((prior >= 2048).sum()),
        "splits": splits,
    }


def _check(folder: Path, monkeypatch, batch_rows: int) -> dict:
    monkeypatch.setattr(stats, "BATCH_ROWS", batch_rows)
    got = compute_stats(folder)
    ref = _whole_table(folder)
    assert {k: got[k] for k in ref} == ref
    return got


def test_stats_equal_the_whole_table_for_any_batch_size(clean, monkeypatch):
    whole = _check(clean, monkeypatch, 1 << 22)
    assert "oracle" in whole
    for rows in (1, 7, 500):
        # as text: an undefined UAUC is NaN in both, and NaN != NaN
        assert json.dumps(_check(clean, monkeypatch, rows)) == json.dumps(whole)


def test_requests_in_no_order_are_counted_in_partitions(folder, monkeypatch):
    """Request ids renumbered in a random order (no longer ascending): counted again from the
    partitions, in memory and on disk."""
    imp = pd.read_parquet(folder / IMPRESSIONS)
    rid = imp["request_id"].to_numpy()
    uniq = np.unique(rid)
    perm = np.random.default_rng(0).permutation(uniq.size) * 3 + 5
    imp = imp.assign(request_id=perm[np.searchsorted(uniq, rid)])
    pq.write_table(pa.Table.from_pandas(imp, preserve_index=False), folder / IMPRESSIONS)
    for partition_rows in (1 << 22, 50):
        monkeypatch.setattr(keyed, "PARTITION_ROWS", partition_rows)
        assert _check(folder, monkeypatch, 64)["requests"] == uniq.size


# ---- prior counts in buckets of users (the events read twice, whatever the impression batches) --
def _random_folder(out: Path, seed: int, layout: str) -> Path:
    """A fresh random dataset (tests/data_support.py: user 1 without events, ties of impression
    and event times, users with no events past the last one), its val split emptied, written
    with row groups of a few rows ("row groups") or as part files cut at random rows, a user
    straddling two parts ("parts")."""
    write_tiny_folder(
        out, seed=seed, n_users=40, n_events=1500, n_requests=300, oracle=seed % 2 == 0
    )
    rng = np.random.default_rng(seed)
    imp = pd.read_parquet(out / IMPRESSIONS)
    imp["split"] = imp["split"].replace("val", "train")  # an empty split
    ev = pd.read_parquet(out / EVENTS)
    ev = ev[(ev["user_id"] % 7) != 3].reset_index(drop=True)  # more users without events
    for name, df in ((EVENTS, ev), (IMPRESSIONS, imp)):
        t = pa.Table.from_pandas(df, preserve_index=False)
        if layout == "row groups":
            pq.write_table(t, out / name, row_group_size=int(rng.integers(3, 40)))
            continue
        (out / name).unlink()
        parts = out / name.removesuffix(".parquet")
        parts.mkdir()
        cuts = np.r_[0, np.sort(rng.choice(np.arange(1, t.num_rows), 4, replace=False)), t.num_rows]
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            pq.write_table(t.slice(a, b - a), parts / f"part-{i:05d}.parquet", row_group_size=50)
    # the cases the counts must get right are present
    assert not ((imp["split"] == "val").any())
    assert set(imp["user_id"]) - set(ev["user_id"])
    assert len(imp.merge(ev[["user_id", "ts"]], on=["user_id", "ts"])) > 0
    return out


def _reference(folder: Path) -> dict:
    """What compute_stats gives, computed the plain way (prior_counts over all events at once)
    for every key but the oracle's (checked against the unbucketed result instead)."""
    imp, ev = (read_table(table_source(folder, n)).to_pandas() for n in (IMPRESSIONS, EVENTS))
    prior = prior_counts(
        ev["user_id"].to_numpy(),
        ev["ts"].to_numpy(),
        imp["user_id"].to_numpy(),
        imp["ts"].to_numpy(),
    )
    per_user = ev.groupby("user_id").size().to_numpy()
    splits = {}
    for s in SPLITS:
        part = imp[imp["split"] == s]
        n, c = len(part), int(part["click"].sum())
        splits[s] = {
            "impressions": n,
            "ts_min": int(part["ts"].min()) if n else None,
            "ts_max": int(part["ts"].max()) if n else None,
            "click_rate": round(c / n, 6) if n else None,
            "conversion_rate": round(int(part["conversion"].sum()) / n, 6) if n else None,
            "cvr_given_click": round(int(part["conversion"][part["click"] == 1].sum()) / c, 6)
            if c
            else None,
        }
    return {
        "users": len(pd.read_parquet(folder / "users.parquet")),
        "events": len(ev),
        "impressions": len(imp),
        "requests": int(imp["request_id"].nunique()),
        "events_per_user_percentiles": {
            f"p{q}": int(np.percentile(per_user, q)) for q in PERCENTILES
        },
        "prior_events_percentiles": {f"p{q}": int(np.percentile(prior, q)) for q in PERCENTILES}
        | {"mean": round(float(prior.mean()), 6)},
        "prior_events_max": int(prior.max()),
        "impressions_with_prior_ge_2048": int((prior >= 2048).sum()),
        "splits": splits,
    }


def _spy_buckets(monkeypatch) -> list[int]:
    """The number of buckets of each spill made (none: one bucket, held in memory)."""
    made: list[int] = []

    class Spy(stats._Spill):
        def __init__(self, n_buckets: int) -> None:
            made.append(n_buckets)
            super().__init__(n_buckets)

    monkeypatch.setattr(stats, "_Spill", Spy)
    return made


@pytest.mark.parametrize("layout", ["row groups", "parts"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bucketed_prior_counts_equal_the_reference(tmp_path, monkeypatch, layout, seed):
    folder = _random_folder(tmp_path / "ds", seed, layout)
    monkeypatch.setattr(stats.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    made = _spy_buckets(monkeypatch)
    monkeypatch.setattr(stats, "BATCH_ROWS", 1 << 21)
    whole = compute_stats(folder)  # one bucket held in memory, one batch
    ref = _reference(folder)
    assert {k: whole[k] for k in ref} == ref
    assert made == []
    for bucket_events, batch_rows in ((1, 1), (1, 37), (20, 5), (64, 200), (300, 1 << 21)):
        monkeypatch.setattr(stats, "BUCKET_EVENTS", bucket_events)
        monkeypatch.setattr(stats, "BATCH_ROWS", batch_rows)
        made.clear()
        got = compute_stats(folder)
        assert json.dumps(got) == json.dumps(whole), (bucket_events, batch_rows)
        assert len(made) == 1 and made[0] > 1  # spilled, in several buckets
        assert list((tmp_path / "tmp").iterdir()) == []  # and removed
    monkeypatch.setattr(stats, "BUCKET_EVENTS", 1)
    monkeypatch.setattr(stats, "MAX_BUCKETS", 3)  # the cap: larger buckets, never more files
    made.clear()
    assert json.dumps(compute_stats(folder)) == json.dumps(whole)
    assert made and made[0] <= 3


def test_each_events_row_group_is_read_once_for_the_prior_counts(tmp_path, monkeypatch):
    """The events' (user_id, ts) are read once in all, whatever the number of impression
    batches and buckets (a row group two buckets share is kept, not read again)."""
    folder = _random_folder(tmp_path / "ds", 3, "row groups")
    monkeypatch.setattr(stats, "BUCKET_EVENTS", 30)
    monkeypatch.setattr(stats, "BATCH_ROWS", 10)
    reads: list[tuple] = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kw):
        if columns == ["user_id", "ts"]:
            reads.append((self.metadata.num_rows, i))
        return real(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    compute_stats(folder)
    n_groups = pq.ParquetFile(folder / EVENTS).num_row_groups
    assert sorted(reads) == sorted(set(reads)) and len(reads) == n_groups


def test_a_full_disk_while_spilling_is_a_clear_error_and_keeps_nothing(
    tmp_path, monkeypatch, capsys
):
    import errno

    from harness.runstore import RunStoreError

    folder = _random_folder(tmp_path / "ds", 4, "row groups")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(stats.tempfile, "tempdir", str(spill))
    monkeypatch.setattr(stats, "BUCKET_EVENTS", 50)
    monkeypatch.setattr(stats, "BATCH_ROWS", 64)

    class Full:
        def __init__(self, f) -> None:
            self.f, self.written = f, 0

        def write(self, b):
            self.written += 1
            if self.written > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def close(self) -> None:
            self.f.close()

    real_open = open
    monkeypatch.setattr(stats, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    with pytest.raises(RunStoreError) as e:
        compute_stats(folder)
    msg = str(e.value)
    assert "No space left on device" in msg and "TMPDIR" in msg and str(spill) in msg
    assert list(spill.iterdir()) == []
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # the command line says so in one line, no traceback
    assert data_cli.main(["stats", str(folder)]) == 2
    assert "error: cannot write" in capsys.readouterr().err
    assert list(spill.iterdir()) == []


def test_an_interrupt_removes_the_spilled_keys(tmp_path, monkeypatch):
    folder = _random_folder(tmp_path / "ds", 5, "parts")
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(stats.tempfile, "tempdir", str(spill))
    monkeypatch.setattr(stats, "BUCKET_EVENTS", 50)
    monkeypatch.setattr(stats, "BATCH_ROWS", 64)

    def interrupted(self, ev_key, key):
        assert any(spill.iterdir())  # the spill is there while the buckets are counted
        raise KeyboardInterrupt

    monkeypatch.setattr(stats._PriorHistogram, "_count", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compute_stats(folder)
    assert list(spill.iterdir()) == []
