"""SDPA against the reference attention in bf16 on CUDA (issue #16): pruned (tail) queries, left
padding, a fully padded row, and the whole model per impression and request-level. Runs without
flash-attn (the flash parity tests in test_model_attention.py / test_model_onetrans.py need it),
so `pytest -m gpu` checks the backend `attention="auto"` falls back to on a GPU without flash-attn."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.attention import attend
from model.features import random_batch, tiny_spec
from model.onetrans import SIZES, build

pytestmark = pytest.mark.gpu
BF16 = dict(atol=2e-2, rtol=2e-2)


def _qkv(B=4, H=4, tq=48, tk=160, dh=64, pad=(0, 30, 100, 160), seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, t, dh, generator=g).to("cuda", torch.bfloat16).requires_grad_()
               for t in (tq, tk, tk))
    k_valid = (torch.arange(tk)[None, :] >= torch.tensor(pad)[:, None]).cuda()        # left padding
    return q, k, v, k_valid[:, tk - tq:], k_valid


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sdpa_matches_reference_in_bf16(causal):
    q, k, v, qv, kv = _qkv()                                   # row 3 is nothing but padding
    res = []
    for backend in ("reference", "sdpa"):
        for t in (q, k, v):
            t.grad = None
        out = attend(q, k, v, qv, kv, causal=causal, backend=backend)
        out.float().pow(2).sum().backward()
        res.append((out.float(), q.grad.float(), k.grad.float(), v.grad.float()))
    for a, b in zip(*res):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, **BF16)
    assert (res[1][0][3] == 0).all()                           # the padded row's outputs are exactly zero


@pytest.mark.parametrize("request_level", [False, True], ids=["per-impression", "request-level"])
def test_sdpa_model_matches_reference_in_bf16(request_level):
    spec = tiny_spec(64)
    b = random_batch(spec, n_requests=4, per_request=3, generator=torch.Generator().manual_seed(18))
    for key in ("seq_item", "seq_side", "seq_type", "seq_gap"):
        b[key][0] = 0                                           # request 0: empty history
    b["seq_mask"][0] = False
    b = {k: v.cuda() for k, v in b.items()}
    res = []
    for backend in ("reference", "sdpa"):
        torch.manual_seed(19)
        cfg = dataclasses.replace(SIZES["onetrans-tiny"], request_level=request_level)
        m = build(spec, cfg, attention=backend).cuda().train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(b)
        assert m.attention_decision[0] == backend
        out["ctr"].sum().backward()
        res.append((out["ctr"].detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])))
    assert torch.isfinite(res[1][0]).all() and torch.isfinite(res[1][1]).all()
    torch.testing.assert_close(res[0][0], res[1][0], atol=5e-2, rtol=5e-2)
    cos = torch.nn.functional.cosine_similarity(res[0][1].float(), res[1][1].float(), dim=0)
    assert cos > 0.99, cos
