"""Cross-request incremental cache: appending events equals a fresh stage I, and reuses what the
rule in docs/kv-cache.md §2 says (and no more)."""

from __future__ import annotations

import pytest
import torch

from model.features import random_batch, tiny_spec
from model.kv_cache import IncrementalCache
from tests.kv_models import KIND_PARAMS, make_model
from tests.kv_toy import ToyOneTrans

FRAME = 24


def _events(spec, n, seed):
    """n real events of one user (unpadded), plus candidates."""
    b = random_batch(
        spec.with_seq_len(n),
        n_requests=1,
        per_request=5,
        min_len=n,
        generator=torch.Generator().manual_seed(seed),
    )
    return b


def _slice(ev, lo, hi):
    return {k: ev[k][:, lo:hi] for k in ("seq_item", "seq_side", "seq_type", "seq_gap", "seq_mask")}


def _padded(ev, n_total, cands):
    """The same user as a left-padded frame batch (the plain model's input), truncated to FRAME."""
    lo = max(0, n_total - FRAME)
    seq = _slice(ev, lo, n_total)
    pad = FRAME - seq["seq_item"].shape[1]
    out = {
        k: torch.nn.functional.pad(v, (0, 0, pad, 0) if v.dim() == 3 else (pad, 0))
        for k, v in seq.items()
    }
    return {**out, **cands}


def _appends_matching_the_full_forward(model, ev, steps):
    """Append ev's events `steps` at a time; after each append assert that the cache scores the
    candidates as the plain model does on the padded frame. Yields (cache, events so far, this
    append's size, its AppendStats)."""
    cands = {k: ev[k] for k in ("req_index", "cand_item", "cand_side", "ns_cat", "ns_num")}
    inc, n = IncrementalCache(model), 0
    for d in steps:
        stats = inc.append(_slice(ev, n, n + d))
        n += d
        with torch.no_grad():
            ref = model(_padded(ev, n, cands))
        got = inc.score(cands)
        for t in ("ctr", "cvr"):
            torch.testing.assert_close(got[t], torch.sigmoid(ref[t]), atol=1e-5, rtol=1e-5)
        yield inc, n, d, stats


@pytest.mark.parametrize("kind", KIND_PARAMS)
@pytest.mark.parametrize("pyramid", [False, True])
@pytest.mark.parametrize("steps", [(5, 3, 1, 4), (10, 9), (6, 12, 11), (1, 1, 1, 30)])
def test_append_matches_full_forward(kind, pyramid, steps):
    """Steps cover: inside every window, crossing pyramid boundaries, crossing the frame (24)."""
    spec = tiny_spec(seq_len=FRAME)
    model = make_model(kind, spec, pyramid=pyramid, seed=sum(steps))
    total = sum(steps)
    ev = _events(spec, total, seed=len(steps) + 7 * total)
    for inc, n, d, stats in _appends_matching_the_full_forward(model, ev, steps):
        # r from the rule: layers whose kept window held the whole new history
        keep = inc.keep
        r = next(
            (j for j in range(len(keep)) if max(0, n - d - keep[j]) != max(0, n - keep[j])),
            len(keep) - 1,
        )
        assert stats.exact_layers == r


def test_no_pyramid_no_truncation_computes_only_new_rows():
    spec = tiny_spec(seq_len=FRAME)
    model = ToyOneTrans(spec, seed=3).eval()
    ev = _events(spec, 20, seed=5)
    inc = IncrementalCache(model, time_invariant=True)
    inc.append(_slice(ev, 0, 17))
    stats = inc.append(_slice(ev, 17, 20))
    assert stats.exact_layers == 3
    assert stats.query_rows == [3, 3, 3] and stats.kv_rows == [3, 3, 3]


def test_onetrans_no_pyramid_computes_only_new_rows():
    """Real model, no pyramid: the last layer keeps only NS rows (no S query rows at all), so every
    layer computes K/V for the ΔL new rows only and queries for them in layers 1-2."""
    spec = tiny_spec(seq_len=FRAME)
    model = make_model("onetrans", spec, pyramid=False, seed=3)
    ev = _events(spec, 20, seed=5)
    inc = IncrementalCache(model)
    inc.append(_slice(ev, 0, 17))
    stats = inc.append(_slice(ev, 17, 20))
    assert stats.exact_layers == 3
    assert stats.query_rows == [3, 3, 0] and stats.kv_rows == [3, 3, 3]


def test_gap_embedding_or_intent_order_refused():
    spec = tiny_spec(seq_len=FRAME)
    for over in ({"gap_embedding": True}, {"seq_fusion": "intent"}):
        with pytest.raises(ValueError, match="time-gap"):
            IncrementalCache(make_model("onetrans", spec, pyramid=True, seed=0, **over))


def test_truncation_recomputes_states():
    spec = tiny_spec(seq_len=FRAME)
    model = ToyOneTrans(spec, seed=3).eval()
    ev = _events(spec, 30, seed=6)
    inc = IncrementalCache(model, time_invariant=True)
    inc.append(_slice(ev, 0, 22))
    stats = inc.append(_slice(ev, 22, 30))  # 30 > FRAME: oldest 6 events dropped
    assert stats.exact_layers == 0
    assert (
        stats.query_rows == [FRAME] * 3 and stats.kv_rows[0] == 8
    )  # layer-1 K/V of old events reused


def test_time_dependent_tokens_refused():
    spec = tiny_spec(seq_len=FRAME)
    with pytest.raises(ValueError, match="time-gap"):
        IncrementalCache(ToyOneTrans(spec), time_invariant=False)


@pytest.mark.parametrize("overrides", [{"pyramid_end": "B"}, {"prune_first_layer": False}])
def test_append_pyramid_variants(overrides):
    """Pyramid reading B (S rows reach the heads: the cache re-pads them) and an unpruned layer 1."""
    spec = tiny_spec(seq_len=FRAME)
    model = make_model("onetrans", spec, pyramid=True, seed=21, **overrides)
    ev = _events(spec, 27, seed=22)
    cands = {k: ev[k] for k in ("req_index", "cand_item", "cand_side", "ns_cat", "ns_num")}
    inc, n = IncrementalCache(model), 0
    for d in (5, 10, 12):
        inc.append(_slice(ev, n, n + d))
        n += d
        with torch.no_grad():
            ref = model(_padded(ev, n, cands))
        for t in ("ctr", "cvr"):
            torch.testing.assert_close(
                inc.score(cands)[t], torch.sigmoid(ref[t]), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("steps", [(5, 3, 1, 4), (6, 12, 11)])
def test_append_with_the_recency_bias_matches_full_forward(steps):
    """recency_bias reads each S key's rank at scoring time (NS queries only), so appending events
    (every old event moves back one rank) keeps the cache exact, inside and across the frame."""
    spec = tiny_spec(seq_len=FRAME)
    model = make_model("onetrans", spec, pyramid=True, seed=5, recency_bias=True)
    total = sum(steps)
    ev = _events(spec, total, seed=3 * total)
    assert len(list(_appends_matching_the_full_forward(model, ev, steps))) == len(steps)
