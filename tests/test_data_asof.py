"""As-of join: equality with a slow reference, and no event at or after the impression time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.sequences import (
    EventStore,
    asof_offsets,
    gap_bucket,
    gather_sequences,
    reference_sequences,
)


def random_log(rng: np.random.Generator, n_users: int, n_events: int, n_req: int, ts_range: int):
    """Events sorted by (user, ts) with many ties; requests may hit event times exactly."""
    user = rng.integers(0, n_users, n_events)
    ts = rng.integers(0, ts_range, n_events) * 7
    order = np.lexsort((ts, user))
    user, ts = user[order], ts[order]
    item = rng.integers(1, 50, n_events)
    side = rng.integers(1, 9, (n_events, 2))
    beh = rng.integers(1, 4, n_events)
    req_user = rng.integers(0, n_users + 2, n_req)  # users beyond n_users have no history
    req_ts = rng.integers(0, ts_range + 2, n_req) * 7 + rng.integers(0, 2, n_req) * 3
    return user, ts, item, side, beh, req_user, req_ts


def fast(user, ts, item, side, beh, req_user, req_ts, L, n_gap, method="auto"):
    start, end = asof_offsets(user, ts, req_user, req_ts, method=method)
    store = EventStore.from_numpy(item, side, beh, ts)
    out = gather_sequences(
        store, torch.from_numpy(start), torch.from_numpy(end), torch.from_numpy(req_ts), L, n_gap
    )
    return {k: v.numpy() for k, v in out.items()}, start, end


@pytest.mark.parametrize("method", ["packed", "rank"])
@pytest.mark.parametrize("seed,L", [(0, 1), (1, 4), (2, 16), (3, 64)])
def test_matches_reference_seeded(seed, L, method):
    rng = np.random.default_rng(seed)
    log = random_log(rng, n_users=7, n_events=300, n_req=80, ts_range=40)
    got, _, _ = fast(*log, L, 16, method=method)
    want = reference_sequences(*log[:3], log[3], log[4], log[5], log[6], L, 16)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the case list the join must cover actually occurs in this data
    assert (got["seq_mask"].sum(1) == 0).any(), "no request without history"
    if L >= 16:
        assert ((got["seq_mask"].sum(1) > 0) & (got["seq_mask"].sum(1) < L)).any(), (
            "no short (padded) history"
        )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(1, 5),
    n_events=st.integers(0, 60),
    n_req=st.integers(1, 20),
    L=st.integers(1, 12),
    ts_range=st.integers(1, 8),
    method=st.sampled_from(["packed", "rank"]),
)
def test_matches_reference_hypothesis(seed, n_users, n_events, n_req, L, ts_range, method):
    log = random_log(np.random.default_rng(seed), n_users, n_events, n_req, ts_range)
    got, _, _ = fast(*log, L, 8, method=method)
    want = reference_sequences(*log, L, 8)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_no_leakage_and_order():
    """Every gathered event has ts strictly before the request ts, belongs to the request's user,
    ascends in time, and is the most recent one available."""
    rng = np.random.default_rng(11)
    user, ts, item, side, beh, req_user, req_ts = random_log(rng, 20, 5000, 2000, 30)
    start, end = asof_offsets(user, ts, req_user, req_ts)
    L = 32
    pos = end[:, None] - L + np.arange(L)
    valid = pos >= start[:, None]
    p = np.where(valid, pos, 0)
    assert (ts[p][valid] < np.broadcast_to(req_ts[:, None], p.shape)[valid]).all()
    assert (user[p][valid] == np.broadcast_to(req_user[:, None], p.shape)[valid]).all()
    # the next event after the slice (if the user's) is at or after the request time: slice is maximal
    nxt = end < len(ts)
    e = end[nxt]
    assert ((user[e] != req_user[nxt]) | (ts[e] >= req_ts[nxt])).all()
    assert (np.diff(np.where(valid, ts[p], -1), axis=1) >= 0).all()


def test_packed_and_rank_agree_on_extreme_times():
    """Huge ts ranges and request times outside the event range: "auto" falls back, results agree."""
    rng = np.random.default_rng(4)
    user = np.sort(rng.integers(0, 30, 2000))
    ts = np.concatenate(
        [np.sort(rng.integers(-(2**50), 2**50, (user == u).sum())) for u in range(30)]
    )
    req_user, req_ts = rng.integers(-1, 32, 500), rng.integers(-(2**51), 2**51, 500)
    a = asof_offsets(user, ts, req_user, req_ts, method="auto")
    b = asof_offsets(user, ts, req_user, req_ts, method="rank")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    small = ts // 2**20
    c = asof_offsets(user, small, req_user, req_ts // 2**20, method="packed")
    d = asof_offsets(user, small, req_user, req_ts // 2**20, method="rank")
    np.testing.assert_array_equal(c[0], d[0])
    np.testing.assert_array_equal(c[1], d[1])


def test_gap_buckets():
    g = torch.tensor([1, 2, 3, 4, 1023, 1024, 10**12])
    assert gap_bucket(g, 16).tolist() == [1, 2, 2, 3, 10, 11, 15]


def test_empty_event_log():
    store = EventStore.from_numpy(
        np.zeros(0, np.int64),
        np.zeros((0, 2), np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    out = gather_sequences(
        store,
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
        5,
        8,
    )
    assert out["seq_side"].shape == (3, 5, 2) and not out["seq_mask"].any()
