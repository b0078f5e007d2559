"""Two-stage (KV-cached) scoring and request-level training equal the plain forward."""

from __future__ import annotations

import pytest
import torch

from model.features import random_batch, tiny_spec
from model.kv_cache import (
    OneTransScorer,
    _split,
    onetrans_parts,
    request_level_forward,
    stage_one,
    stage_two,
)
from tests.kv_models import KIND_PARAMS, make_model


def _batch(spec, n_req, per_req, seed):
    return random_batch(
        spec, n_requests=n_req, per_request=per_req, generator=torch.Generator().manual_seed(seed)
    )


def _train_step(model, fwd, batch):
    """One backward of the two tasks' BCE through fwd(batch) -> (outputs, loss, {name: grad} of
    the parameters that got one)."""
    model.zero_grad(set_to_none=True)
    out = fwd(batch)
    loss = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(out[t], batch[lbl])
        for t, lbl in (("ctr", "click"), ("cvr", "conversion"))
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


def _cached(model, batch):
    parts = onetrans_parts(model)
    seq, imp = _split(batch)
    return stage_two(parts, stage_one(parts, seq), imp, seq)


@pytest.mark.parametrize("kind", KIND_PARAMS)
@pytest.mark.parametrize("n_cand", [1, 7, 100])
@pytest.mark.parametrize("pyramid", [False, True])
def test_cached_equals_full_fp32(kind, n_cand, pyramid):
    spec = tiny_spec(seq_len=24)
    model = make_model(kind, spec, pyramid=pyramid, seed=n_cand)
    batch = _batch(spec, 3, n_cand, seed=10 + n_cand)
    assert not batch["seq_mask"].all()  # padding is exercised
    with torch.no_grad():
        ref, got = model(batch), _cached(model, batch)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention": "sdpa"},
        {"pyramid_end": "B"},
        {"prune_first_layer": False},
        {"seq_fusion": "intent"},
        {"gap_embedding": True},
        {"mixed_params": False},
        {"out_proj": "shared"},
        {"qk_norm": True},
        {"recency_bias": True},
    ],
)
def test_cached_equals_full_ablations(overrides):
    spec = tiny_spec(seq_len=24)
    model = make_model("onetrans", spec, pyramid=True, seed=3, **overrides)
    batch = _batch(spec, 4, 5, seed=99)
    with torch.no_grad():
        ref, got = model(batch), _cached(model, batch)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)


def test_uneven_requests_and_empty_history():
    """Requests with 1..6 candidates and one request with no events at all."""
    spec = tiny_spec(seq_len=16)
    model = make_model("onetrans", spec, pyramid=True, seed=4)
    batch = _batch(spec, 4, 6, seed=5)
    keep = torch.tensor(
        [0, 1, 2, 3, 4, 5, 6, 7, 12, 18, 19, 20, 21, 22, 23]
    )  # 6, 2, 1, 6 candidates
    batch = {
        k: (
            v[keep]
            if v.shape[0] == 24 and k not in ("seq_item",) and not k.startswith("seq_")
            else v
        )
        for k, v in batch.items()
    }
    for k in ("seq_item", "seq_side", "seq_type", "seq_gap", "seq_mask"):
        batch[k][2] = 0  # request 2: empty history
    with torch.no_grad():
        ref, got = model(batch), _cached(model, batch)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)


def test_scorer_matches_plain_forward():
    spec = tiny_spec(seq_len=32)
    model = make_model("onetrans", spec, pyramid=True, seed=6)
    batch = _batch(spec, 1, 50, seed=7)
    hist = {k: batch[k] for k in ("seq_item", "seq_side", "seq_type", "seq_gap", "seq_mask")}
    cands = {k: batch[k] for k in ("cand_item", "cand_side", "ns_cat", "ns_num")}
    on = OneTransScorer(model, cache=True, max_batch=16).score(hist, cands)
    off = OneTransScorer(model, cache=False).score(hist, cands)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(on[t], off[t], atol=1e-6, rtol=1e-5)
        assert on[t].shape == (50,) and bool(((on[t] > 0) & (on[t] < 1)).all())


def test_bf16_close_to_fp32_reference():
    """bf16 autocast, tiny size only (CPU bf16 matmuls are slow). Both bf16 paths must stay within
    3e-2 (abs, logits of magnitude ~1) of the fp32 plain forward."""
    spec = tiny_spec(seq_len=16)
    model = make_model("onetrans", spec, pyramid=True, seed=8, attention="sdpa")
    batch = _batch(spec, 2, 7, seed=9)
    with torch.no_grad():
        ref = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_bf16, cached_bf16 = model(batch), _cached(model, batch)
    for t in ("ctr", "cvr"):
        assert ref[t].abs().max() > 0.05  # not a degenerate all-zero comparison
        torch.testing.assert_close(cached_bf16[t].float(), ref[t], atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(full_bf16[t].float(), ref[t], atol=3e-2, rtol=3e-2)


def test_full_attention_refused():
    spec = tiny_spec(seq_len=16)
    model = make_model("onetrans", spec, pyramid=True, seed=1, causal=False)
    with pytest.raises(ValueError, match="causal"):
        onetrans_parts(model)


@pytest.mark.parametrize("pyramid_end", ["A", "B"])
def test_cached_equals_full_with_the_wide_numeric_logit(pyramid_end):
    """wide_numeric: the cache's heads add the same linear logit over ns_num (trained-looking,
    non-zero weights: at initialisation the map is zero and would pass without it)."""
    spec = tiny_spec(seq_len=24)
    model = make_model(
        "onetrans", spec, pyramid=True, seed=6, wide_numeric=True, pyramid_end=pyramid_end
    )
    with torch.no_grad():
        model.wide.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        model.wide.bias.fill_(0.3)
        batch = _batch(spec, 3, 5, seed=41)
        ref, got = model(batch), _cached(model, batch)
        plain = dict(batch, ns_num=torch.zeros_like(batch["ns_num"]))
        assert (model(plain)["ctr"] - ref["ctr"]).abs().max() > 1e-2  # the wide logit matters here
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KIND_PARAMS)
@pytest.mark.parametrize("pyramid", [False, True])
def test_request_level_training_same_loss_and_grads(kind, pyramid):
    spec = tiny_spec(seq_len=24)
    model = make_model(kind, spec, pyramid=pyramid, seed=11).train()
    batch = _batch(spec, 3, 5, seed=12)

    if kind == "onetrans" and pyramid:  # recomputation must not change anything either
        model = make_model(kind, spec, pyramid=pyramid, seed=11, recompute=True).train()
    _, ref_loss, ref_grads = _train_step(model, model, batch)
    _, got_loss, got_grads = _train_step(model, lambda b: request_level_forward(model, b), batch)
    torch.testing.assert_close(got_loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert sum(bool(g.abs().sum() > 0) for g in ref_grads.values()) > 10
    # a parameter outside the graph (the toy's unused last-layer S weights) counts as zero grad
    for n, p in model.named_parameters():
        zero = torch.zeros_like(p)
        torch.testing.assert_close(
            got_grads.get(n, zero), ref_grads.get(n, zero), atol=1e-5, rtol=1e-4, msg=n
        )


@pytest.mark.parametrize(
    "overrides", [{}, {"pyramid_end": "B"}, {"qk_norm": True}, {"recency_bias": True}]
)
def test_cache_runs_the_models_own_request_level_forward(overrides):
    """With one backend (reference) the cache calls exactly the model's request-level computation
    (its block steps, attention and heads), so the two agree bit for bit."""
    spec = tiny_spec(seq_len=24)
    model = make_model("onetrans", spec, pyramid=True, seed=13, request_level=True, **overrides)
    batch = _batch(spec, 3, 4, seed=14)
    with torch.no_grad():
        ref, got = model(batch), _cached(model, batch)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=0, rtol=0)


@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_recency_bias_same_in_every_path_and_it_matters(attention):
    """recency_bias (a learned logit per head by an S key's rank, NS queries only): the per-impression
    forward (S and NS queries apart), the request-level forward and the two-stage cache give the
    same scores and training gradients; zeroing the table changes the scores (so the paths above
    compare a bias that is there)."""
    spec = tiny_spec(seq_len=24)
    kw = dict(pyramid=True, seed=21, attention=attention, recency_bias=True, qk_norm=True)
    model = make_model("onetrans", spec, **kw).train()
    batch = _batch(spec, 3, 4, seed=22)
    assert not batch["seq_mask"].all()

    ref, _, ref_grads = _train_step(model, model, batch)
    got, _, got_grads = _train_step(model, lambda b: request_level_forward(model, b), batch)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)
    assert any(n.endswith("recency_bias") and g.abs().sum() > 0 for n, g in ref_grads.items())
    assert set(got_grads) == set(ref_grads)
    for n in ref_grads:
        torch.testing.assert_close(got_grads[n], ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    model.eval()
    with torch.no_grad():
        ref = model(batch)
        cached = _cached(model, batch)
        for t in ("ctr", "cvr"):
            torch.testing.assert_close(cached[t], ref[t], atol=1e-5, rtol=1e-5)
        for name, p in model.named_parameters():
            if name.endswith("recency_bias"):
                p.zero_()
        assert (model(batch)["ctr"] - ref["ctr"]).abs().max() > 1e-3
