"""OneTrans properties on fresh random inputs (model.features.random_batch / tiny_spec)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from model.features import random_batch, tiny_spec
from model.layers import MixedLinear
from model.onetrans import (
    HISTORY_RECIPE,
    SIZES,
    OneTransBlock,
    build,
    rank_from_end,
    recency_bucket,
)
from model.registry import build_model
from tests.model_support import assert_bf16_model_parity, bf16_model_step, empty_history_batch

TINY = SIZES["onetrans-tiny"]
FP32 = dict(atol=1e-5, rtol=1e-5)


# tiny shapes: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seq_len=16, seed=0, execution=None, **overrides):
    """overrides: Config fields; execution: build()'s execution switches (attention, recompute,
    compile_blocks, request_level)."""
    torch.manual_seed(seed)
    return build(
        tiny_spec(seq_len), dataclasses.replace(TINY, **overrides), **(execution or {})
    ).eval()


def _batch(seq_len=16, seed=0, **kw):
    return random_batch(tiny_spec(seq_len), generator=torch.Generator().manual_seed(seed), **kw)


def _s_outputs(model, batch):
    """S-token outputs of every layer (the pruned tails), per impression."""
    x_s, valid, x_ns = model.tokenize(batch)
    idx = batch["req_index"]
    x_s, valid = x_s[idx], valid[idx]
    model._decide_attention(x_ns.device)
    outs = []
    for block in model.blocks:
        x_s, valid, x_ns = block(x_s, valid, x_ns)
        outs.append(x_s)
    return outs


def test_registry_builds_and_outputs_logits():
    spec = tiny_spec(16)
    m = build_model("onetrans", spec, "onetrans-mini", {"n_layers": 3})
    out = m(random_batch(spec))
    assert (
        set(out) == {"ctr", "cvr"}
        and out["ctr"].shape == (12,)
        and out["ctr"].dtype == torch.float32
    )
    pc = m.param_counts()
    assert pc["total"] == sum(p.numel() for p in m.parameters()) == pc["dense"] + pc["embedding"]


@pytest.mark.parametrize(
    "variant",
    [{}, {"pyramid": False}, {"causal": True, "pyramid_end": "B"}],
    ids=["pyramid", "no-pyramid", "reading-B"],
)
def test_s_outputs_ignore_ns_inputs(variant):
    m = _model(seq_len=24, **variant)
    b1 = _batch(24, seed=1)
    b2 = dict(
        b1,
        cand_item=torch.randint(1, 200, b1["cand_item"].shape),
        ns_num=torch.randn_like(b1["ns_num"]),
        ns_cat=(b1["ns_cat"] % 3) + 1,
    )
    with torch.no_grad():
        for a, b in zip(_s_outputs(m, b1), _s_outputs(m, b2)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert not torch.allclose(m(b1)["ctr"], m(b2)["ctr"])  # ...while NS inputs do matter


def test_full_attention_switch_lets_s_read_ns():
    """The causal=False ablation really is bidirectional: S outputs now depend on NS inputs."""
    m = _model(seq_len=24, causal=False, pyramid=False)
    b1 = _batch(24, seed=2, min_len=24)
    b2 = dict(b1, ns_num=b1["ns_num"] + 3.0)
    with torch.no_grad():
        assert not torch.allclose(_s_outputs(m, b1)[0], _s_outputs(m, b2)[0])


def test_s_outputs_ignore_later_s_tokens():
    m = _model(seq_len=24, pyramid=False, n_layers=3)
    b1 = _batch(24, seed=3, min_len=24)
    p = 15
    b2 = dict(b1)
    for key, vocab in (("seq_item", 200), ("seq_type", 4)):
        later = torch.randint(1, vocab, b1[key][:, p:].shape)
        b2[key] = torch.cat([b1[key][:, :p], later], 1)
    with torch.no_grad():
        o1, o2 = _s_outputs(m, b1)[:-1], _s_outputs(m, b2)[:-1]  # the last layer keeps NS only
        for a, b in zip(o1, o2):
            torch.testing.assert_close(a[:, :p], b[:, :p], atol=0, rtol=0)
            assert not torch.allclose(a[:, p:], b[:, p:])


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("keep_s", [0, 3, 9])
def test_pruning_before_equals_pruning_after(backend, keep_s):
    cfg = dataclasses.replace(TINY, d_model=32, n_ns_tokens=4)
    torch.manual_seed(keep_s)
    full = OneTransBlock(cfg, keep_s=20)
    pruned = OneTransBlock(cfg, keep_s=keep_s)
    missing = pruned.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys
    full.backend = pruned.backend = backend
    g = torch.Generator().manual_seed(keep_s)
    x_s, x_ns = torch.randn(5, 20, 32, generator=g), torch.randn(5, 4, 32, generator=g)
    valid = torch.arange(20)[None] >= torch.tensor([0, 5, 12, 19, 20])[:, None]
    x_s = x_s * valid[..., None]
    ys_full, _, yns_full = full(x_s, valid, x_ns)
    ys, v, yns = pruned(x_s, valid, x_ns)
    torch.testing.assert_close(ys, ys_full[:, 20 - keep_s :], **FP32)
    torch.testing.assert_close(yns, yns_full, **FP32)
    assert v.shape == (5, keep_s)


def test_padding_content_never_matters():
    m = _model(seq_len=16)
    b1 = _batch(16, seed=4)
    pad = ~b1["seq_mask"]
    assert pad.any()
    b2 = dict(b1)
    for key, vocab in (("seq_item", 200), ("seq_type", 4), ("seq_gap", 16)):
        b2[key] = torch.where(pad, torch.randint(1, vocab, pad.shape), b1[key])
    b2["seq_side"] = torch.where(
        pad[..., None], torch.randint(1, 11, b1["seq_side"].shape), b1["seq_side"]
    )
    with torch.no_grad():
        for t in ("ctr", "cvr"):
            torch.testing.assert_close(m(b1)[t], m(b2)[t], atol=0, rtol=0)
        # and straight into the blocks: arbitrary vectors at padded positions change nothing
        x_s, valid, x_ns = m.tokenize(b1)
        noisy = torch.where(valid[..., None], x_s, 100 * torch.randn_like(x_s))
        idx = b1["req_index"]
        torch.testing.assert_close(
            m.encode(noisy[idx], valid[idx], x_ns), m.encode(x_s[idx], valid[idx], x_ns), **FP32
        )


@pytest.mark.parametrize(
    "variant",
    [{}, {"seq_fusion": "intent_nosep"}, {"pyramid_end": "B"}, {"causal": False}],
    ids=["default", "intent-nosep", "reading-B", "full-attention"],
)
def test_empty_history_gives_finite_logits_and_grads(variant):
    m = _model(seq_len=16, **variant).train()
    b = _batch(16, seed=5)
    for k in ("seq_item", "seq_side", "seq_type", "seq_gap"):
        b[k][0] = 0
    b["seq_mask"][0] = False
    out = m(b)
    assert all(torch.isfinite(v).all() for v in out.values())
    (out["ctr"].sum() + out["cvr"].sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_reference_equals_sdpa_in_the_model():
    """Whole model, pruned queries and padding: logits and every gradient within fp32 tolerance."""
    b = _batch(24, seed=6)
    res = []
    for backend in ("reference", "sdpa"):
        m = _model(seq_len=24, seed=7, execution={"attention": backend}).train()
        out = m(b)
        (out["ctr"] - 2 * out["cvr"]).pow(2).sum().backward()
        assert m.attention_decision == (backend, "requested")
        res.append(
            (
                out["ctr"].detach(),
                {n: p.grad for n, p in m.named_parameters() if p.grad is not None},
            )
        )
    torch.testing.assert_close(res[0][0], res[1][0], **FP32)
    assert res[0][1].keys() == res[1][1].keys()
    for n in res[0][1]:
        torch.testing.assert_close(res[0][1][n], res[1][1][n], atol=1e-5, rtol=1e-4, msg=n)


def test_recompute_is_exact():
    b = _batch(16, seed=8)
    grads = []
    for recompute in (False, True):
        m = _model(seed=9, execution={"recompute": recompute}).train()
        m(b)["ctr"].sum().backward()
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, **FP32)


def test_bf16_autocast_is_clean():
    m = _model(seq_len=16, seed=10).train()
    b = _batch(16, seed=11)
    ref = m(b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b)
    assert out["ctr"].dtype == torch.float32 and torch.isfinite(out["ctr"]).all()
    torch.testing.assert_close(out["ctr"], ref["ctr"], atol=0.1, rtol=0.05)
    out["ctr"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_intent_order_groups_by_intent_keeps_time_order_and_left_padding():
    m = _model(seq_len=8, seq_fusion="intent")
    tok = m.s_tok
    # types: 0 pad, 1 click, 2 cart, 3 purchase; intent order purchase > cart > click
    seq_type = torch.tensor([[0, 0, 1, 3, 2, 1, 3, 2], [1, 1, 1, 1, 1, 1, 1, 1]])
    valid = seq_type > 0
    x = torch.arange(1, 9, dtype=torch.float32).expand(2, 8).unsqueeze(-1) * valid[..., None]
    with torch.no_grad():
        tok.sep.copy_(
            torch.tensor([[-1.0], [-2.0]])
            .expand(-1, tok.sep.shape[1])[:, :1]
            .expand(2, tok.sep.shape[1])
        )
    tok_x, tok_valid = tok._intent_order(
        x.expand(-1, -1, tok.sep.shape[1]).contiguous(), valid, seq_type
    )
    got = tok_x[..., 0].tolist()
    assert got[0] == [0, 0, 4, 7, -1, 5, 8, -2, 3, 6]  # pad | purchase | SEP | cart | SEP | click
    assert got[1] == [-1, -2, 1, 2, 3, 4, 5, 6, 7, 8]  # empty groups: adjacent SEPs, no padding
    assert tok_valid[0].tolist() == [False, False] + [True] * 8
    m2 = _model(seq_len=8, seq_fusion="intent_nosep")
    x2, v2 = m2.s_tok._intent_order(x.expand(-1, -1, 32).contiguous(), valid, seq_type)
    assert x2[0, :, 0].tolist() == [0, 0, 4, 7, 5, 8, 3, 6] and v2.shape == (2, 8)


@pytest.mark.parametrize(
    "variant",
    [
        {"seq_fusion": "intent"},
        {"seq_fusion": "intent_nosep"},
        {"ns_tokenizer": "group"},
        {"out_proj": "shared"},
        {"mixed_params": False},
        {"gap_embedding": True},
        {"wide_numeric": True},
        {"prune_first_layer": False},
        {"pyramid": False},
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()),
)
def test_every_switch_builds_runs_and_trains_every_weight(variant):
    """Each switch runs forward+backward, and every parameter it creates receives a gradient
    (no dead weights: DDP needs that, and the parameter counts rely on it)."""
    m = _model(seq_len=16, **variant).train()
    out = m(_batch(16, seed=12))
    (out["ctr"].sum() + out["cvr"].sum()).backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None]
    assert not dead, f"parameters without gradient: {dead}"


def test_group_tokenizer_uses_the_semantic_groups():
    m = _model(ns_tokenizer="group")
    assert [g for g, _ in m.ns_tok.groups] == ["item", "user", "context"]
    assert sum(m.ns_tok.tokens_per_group) == TINY.n_ns_tokens == 4


def test_shared_output_projection_has_no_token_specific_wo():
    shared, mixed = _model(out_proj="shared"), _model()
    assert all(b.o.weight_ns is None for b in shared.blocks)
    d, n = TINY.d_model, TINY.n_ns_tokens
    assert (
        mixed.param_counts()["dense"] - shared.param_counts()["dense"]
        == TINY.n_layers * n * d * d - d * d
    )


def test_mixed_einsum_equals_per_token_loop():
    lin = MixedLinear(16, 24, 5)
    x = torch.randn(7, 5, 16)
    torch.testing.assert_close(lin.forward_ns(x), lin.forward_ns_loop(x), **FP32)


def test_trains_on_a_tiny_synthetic_batch():
    """Memorise 48 impressions: the loss falls well below the label prior's log-loss."""
    torch.manual_seed(0)
    spec = tiny_spec(16)
    m = build(spec, SIZES["onetrans-tiny"]).train()
    b = random_batch(spec, n_requests=8, per_request=6, generator=torch.Generator().manual_seed(13))
    labels = {"ctr": b["click"], "cvr": b["conversion"]}

    def prior(y):
        p = y.mean().clamp(1e-3, 1 - 1e-3)
        return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())

    prior_loss = prior(labels["ctr"]) + prior(labels["cvr"])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(80):
        out = m(b)
        loss = sum(F.binary_cross_entropy_with_logits(out[t], labels[t]) for t in labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item()) and loss.item() < 0.3 * prior_loss, (loss.item(), prior_loss)


@pytest.mark.slow
def test_compiled_blocks_match_eager():
    b = _batch(16, seed=14)
    eager = _model(seed=15).train()
    compiled = _model(seed=15, execution={"compile_blocks": True}).train()
    compiled.load_state_dict(eager.state_dict())
    o1, o2 = eager(b), compiled(b)
    torch.testing.assert_close(o1["ctr"], o2["ctr"], atol=1e-4, rtol=1e-4)
    o2["ctr"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in compiled.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "variant,execution",
    [
        ({}, {"attention": "reference"}),
        ({"pyramid_end": "B"}, {"attention": "sdpa"}),
        ({"pyramid": False}, {"recompute": True}),
    ],
    ids=["reference", "sdpa-reading-B", "no-pyramid-recompute"],
)
def test_request_level_s_side_equals_per_impression(variant, execution):
    """S side once per request (request_level=True) = the per-impression forward, fwd and bwd."""
    b = _batch(24, seed=16, n_requests=3, per_request=4)
    res = []
    for request_level in (False, True):
        m = _model(
            seq_len=24,
            seed=17,
            execution={**execution, "request_level": request_level},
            **variant,
        ).train()
        out = m(b)
        (out["ctr"] * torch.linspace(-1, 1, 12) + out["cvr"]).sum().backward()
        res.append(
            (out["ctr"].detach(), out["cvr"].detach(), {n: p.grad for n, p in m.named_parameters()})
        )
    torch.testing.assert_close(res[0][0], res[1][0], **FP32)
    torch.testing.assert_close(res[0][1], res[1][1], **FP32)
    for n, g in res[0][2].items():
        torch.testing.assert_close(g, res[1][2][n], atol=1e-5, rtol=1e-4, msg=n)


def test_request_level_refuses_full_attention():
    with pytest.raises(ValueError, match="request_level=True needs Config.causal=True"):
        _model(execution={"request_level": True}, causal=False)


@pytest.mark.gpu
@pytest.mark.parametrize("request_level", [False, True], ids=["per-impression", "request-level"])
def test_flash_model_matches_reference_in_bf16(request_level):
    """Whole model on CUDA under bf16 autocast, pruned queries, padding and one empty history."""
    pytest.importorskip("flash_attn")
    spec = tiny_spec(64)
    b = empty_history_batch(spec, seed=18)
    ref, flash = (
        bf16_model_step(spec, b, backend=x, seed=19, request_level=request_level)
        for x in ("reference", "flash")
    )
    assert_bf16_model_parity(ref, flash)


def test_recipe_sizes_are_the_paper_sizes_plus_the_history_recipe_only():
    # the paper-scale sweeps run onetrans-{s,l}-recipe; `--preset paper-faithful` runs the plain
    # size: the two must differ in the recipe's switches and in nothing else (widths, depths, tokens)
    for size in ("onetrans-s", "onetrans-l"):
        paper, recipe = SIZES[size], SIZES[f"{size}-recipe"]
        assert recipe == dataclasses.replace(paper, **HISTORY_RECIPE)
        differ = {
            f.name
            for f in dataclasses.fields(paper)
            if getattr(paper, f.name) != getattr(recipe, f.name)
        }
        assert differ == set(HISTORY_RECIPE), differ


def test_recency_bias_starts_as_the_model_and_reads_ranks_from_the_end():
    """recency_bias: zero at init, so the scores are the model's without it (same weights: the table
    takes no random draw); ranks count real events after a position whatever the padding; buckets
    exact below 16, then four per doubling, capped; a causal mask is required."""
    batch = _batch(seed=4)
    with torch.no_grad():
        a, b = _model(seed=6)(batch), _model(seed=6, recency_bias=True)(batch)
    for t in a:
        torch.testing.assert_close(a[t], b[t], rtol=1e-6, atol=1e-6)
    valid = torch.tensor([[False, False, True, True, True], [True, False, True, False, True]])
    assert rank_from_end(valid)[0, 2:].tolist() == [2, 1, 0]
    assert rank_from_end(valid)[1][valid[1]].tolist() == [2, 1, 0]
    ranks = torch.tensor([0, 7, 15, 16, 19, 20, 31, 32, 2047, 10**6])
    assert recency_bucket(ranks).tolist() == [0, 7, 15, 16, 16, 17, 19, 20, 43, 47]
    with pytest.raises(ValueError, match="recency_bias needs causal"):
        _model(recency_bias=True, causal=False)


def test_wide_numeric_starts_as_the_towers_and_adds_a_linear_logit():
    """wide_numeric: zero-initialised, so at initialisation the logits are the model's without it
    (the same weights elsewhere: the wide map is built after every other module); once trained it
    adds exactly W ns_num + b per task, linear in a numeric however far past its train range."""
    batch = _batch(seed=3)
    plain, wide = _model(seed=5), _model(seed=5, wide_numeric=True)
    with torch.no_grad():
        a, b = plain(batch), wide(batch)
        for t in a:
            torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)
        g = torch.Generator().manual_seed(7)
        wide.wide.weight.copy_(torch.randn(wide.wide.weight.shape, generator=g))
        wide.wide.bias.copy_(torch.randn(wide.wide.bias.shape, generator=g))
        got = wide(batch)
        lin = batch["ns_num"] @ wide.wide.weight.T + wide.wide.bias
        for i, t in enumerate(("ctr", "cvr")):
            torch.testing.assert_close(got[t], a[t] + lin[:, i], rtol=1e-5, atol=1e-5)
        # the same impression with one numeric 10x further out: the logit moves by exactly its
        # weight times the shift, plus whatever the towers make of it
        far = dict(batch, ns_num=batch["ns_num"].clone())
        far["ns_num"][:, 0] += 10.0
        shift = wide(far)["ctr"] - plain(far)["ctr"] - (got["ctr"] - a["ctr"])
        torch.testing.assert_close(
            shift,
            torch.full_like(shift, 10.0 * float(wide.wide.weight[0, 0])),
            rtol=1e-4,
            atol=1e-4,
        )
