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

from harness.data import keyed, stats
from harness.data.contract import EVENTS, IMPRESSIONS, SPLITS
from harness.data.stats import PERCENTILES, compute_stats, histogram_percentile, prior_counts

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
