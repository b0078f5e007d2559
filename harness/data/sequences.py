"""The as-of sequence join: each request sees its user's events strictly before the request time.

Two steps, so memory grows with the number of events and not with impressions x seq_len:

1. `asof_offsets` (once, at set-up): for every request, the slice [start, end) of the event arrays
   holding that user's events with ts < request ts. Events are sorted by (user_id, ts), so one
   searchsorted over a combined (user, ts-rank) int64 key finds both ends for all requests at once.
2. `gather_sequences` (per batch): the most recent `seq_len` events of each slice, left-padded, in
   ascending time, as one fancy-index per field. Index arithmetic only; no Python loop per sample.

`reference_sequences` is the slow, obviously correct version the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def asof_offsets(
    ev_user: np.ndarray,
    ev_ts: np.ndarray,
    req_user: np.ndarray,
    req_ts: np.ndarray,
    method: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) int64 offsets per request: events [start, end) belong to the request's user and
    have ts strictly before the request's ts. Events must be sorted by (user, ts) (checked by caller).

    Both ends come from one searchsorted over an int64 key packing (user rank, ts). "packed" puts the
    user rank in the high bits and ts - min(ts) in the low 40 bits (no sort, O(E) memory); it needs
    < 2**23 users and a ts range < 2**40 s. "rank" rank-transforms ts over both tables (any range, but
    sorts E + R values). "auto" picks "packed" when it fits."""
    ev_user = np.asarray(ev_user, dtype=np.int64)
    ev_ts = np.asarray(ev_ts, dtype=np.int64)
    req_user = np.asarray(req_user, dtype=np.int64)
    req_ts = np.asarray(req_ts, dtype=np.int64)
    if len(ev_user) == 0:
        z = np.zeros(len(req_user), np.int64)
        return z, z.copy()
    # users are sorted in the event log: their ranks need no sort
    change = np.ones(len(ev_user), bool)
    change[1:] = ev_user[1:] != ev_user[:-1]
    users = ev_user[change]
    ev_rank = np.cumsum(change) - 1
    pos = np.searchsorted(users, req_user).clip(0, len(users) - 1)
    known = users[pos] == req_user  # requests of users without any event: empty slice
    tmin, tmax = int(ev_ts.min()), int(ev_ts.max())
    if method == "auto":
        method = "packed" if len(users) < 2**23 and tmax + 1 - tmin < 2**40 else "rank"
    if method == "packed":
        ev_key = (ev_rank << 40) | (ev_ts - tmin)
        req_t = np.clip(req_ts, tmin, tmax + 1) - tmin
    elif method == "rank":
        ts_all, ts_inv = np.unique(np.concatenate([ev_ts, req_ts]), return_inverse=True)
        n_ts = np.int64(len(ts_all) + 1)
        ev_key = ev_rank * n_ts + ts_inv[: len(ev_ts)]
        req_t = ts_inv[len(ev_ts) :]
    else:
        raise ValueError(f"method must be 'auto', 'packed' or 'rank', got {method!r}")
    base = (pos << 40) if method == "packed" else pos * n_ts
    start = np.searchsorted(ev_key, base, side="left")  # the user's first event
    end = np.searchsorted(ev_key, base + req_t, side="left")  # first event with ts >= t
    start, end = np.where(known, start, 0), np.where(known, end, 0)
    return start.astype(np.int64), end.astype(np.int64)


def gap_bucket(gap: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Log2-bucketed positive time gap in seconds: 1 + floor(log2(gap)), clipped to [1, n_buckets-1].
    Bucket 0 is reserved for padding; gap < 1 s (never produced by a strict as-of join) maps to 1.
    frexp gives the binary exponent exactly (gap = m * 2**e, m in [0.5, 1): floor(log2 gap) = e - 1)."""
    _, e = torch.frexp(gap.clamp_min(1).to(torch.float64))
    return e.to(torch.int64).clamp_(1, n_buckets - 1)


@dataclass(frozen=True, kw_only=True)
class EventStore:
    """The event log as ONE row-major table, so a batch is one row gather (16-24 bytes per event).

    Columns: item, behaviour, ts - ts_base, side fields...; int32 when every value fits (ids and a
    ts range under 68 years), else int64. A final all-zero row is the padding target, so padded
    positions gather zeros without a mask multiply."""

    table: torch.Tensor  # (E + 1, 3 + Fs)
    ts_base: int
    n_events: int

    @classmethod
    def from_numpy(
        cls, item: np.ndarray, side: np.ndarray, behavior: np.ndarray, ts: np.ndarray
    ) -> EventStore:
        side = np.asarray(side)
        side = side if side.ndim == 2 else side.reshape(len(item), -1)  # (E,) -> (E, 1)
        ts = np.asarray(ts, dtype=np.int64)
        base = int(ts.min()) if len(ts) else 0
        cols = [np.asarray(item), np.asarray(behavior), ts - base, *side.T]
        fits = all(c.size == 0 or bool(c.min() >= 0 and c.max() < 2**31 - 1) for c in cols)
        table = np.zeros((len(ts) + 1, len(cols)), np.int32 if fits else np.int64)
        for j, c in enumerate(cols):
            table[:-1, j] = c
        return cls(table=torch.from_numpy(table), ts_base=base, n_events=len(ts))

    def __len__(self) -> int:
        return self.n_events

    @property
    def n_side(self) -> int:
        return self.table.shape[1] - 3


def gather_sequences(
    store: EventStore,
    start: torch.Tensor,
    end: torch.Tensor,
    req_ts: torch.Tensor,
    seq_len: int,
    n_gap_buckets: int,
) -> dict[str, torch.Tensor]:
    """The seq_* tensors (model/features.py) for R requests given their as-of slices.

    Position j of row r holds event end[r] - L + j; positions before start[r] are padding. So the
    newest event sits at L-1, time ascends left to right, and short histories are left-padded."""
    L, R = seq_len, start.shape[0]
    pos = end.unsqueeze(1) - L + torch.arange(L, dtype=end.dtype)  # (R, L)
    mask = pos >= start.unsqueeze(1)
    flat = torch.where(mask, pos, store.n_events).reshape(-1)  # padding -> the zero row
    rows = store.table.index_select(0, flat)  # the one gather per batch
    item = rows[:, 0].reshape(R, L).to(torch.int64)
    btype = rows[:, 1].reshape(R, L).to(torch.int64)
    side = rows[:, 3:].reshape(R, L, store.n_side).to(torch.int64)
    gap_s = (req_ts - store.ts_base).unsqueeze(1) - rows[:, 2].reshape(R, L).to(torch.int64)
    gap = torch.where(mask, gap_bucket(gap_s, n_gap_buckets), 0)
    return {"seq_item": item, "seq_side": side, "seq_type": btype, "seq_gap": gap, "seq_mask": mask}


def reference_sequences(
    ev_user,
    ev_ts,
    ev_item,
    ev_side,
    ev_behavior,
    req_user,
    req_ts,
    seq_len: int,
    n_gap_buckets: int,
) -> dict[str, np.ndarray]:
    """Slow, obviously correct as-of join (a Python loop per request) for tests only."""
    ev_side = np.asarray(ev_side)
    ev_side = ev_side if ev_side.ndim == 2 else ev_side.reshape(len(ev_user), -1)
    R, L, Fs = len(req_user), seq_len, ev_side.shape[1]
    out = {
        "seq_item": np.zeros((R, L), np.int64),
        "seq_side": np.zeros((R, L, Fs), np.int64),
        "seq_type": np.zeros((R, L), np.int64),
        "seq_gap": np.zeros((R, L), np.int64),
        "seq_mask": np.zeros((R, L), bool),
    }
    for r in range(R):
        # events of this user strictly before the request, in stored (time-ascending) order
        rows = [
            i for i in range(len(ev_user)) if ev_user[i] == req_user[r] and ev_ts[i] < req_ts[r]
        ]
        rows = rows[-L:]
        for k, i in enumerate(rows):
            j = L - len(rows) + k
            gap = int(req_ts[r] - ev_ts[i])
            out["seq_item"][r, j] = ev_item[i]
            out["seq_side"][r, j] = ev_side[i]
            out["seq_type"][r, j] = ev_behavior[i]
            out["seq_gap"][r, j] = min(
                max(int(np.floor(np.log2(max(gap, 1)))) + 1, 1), n_gap_buckets - 1
            )
            out["seq_mask"][r, j] = True
    return out
