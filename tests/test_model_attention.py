"""Attention dispatch: reference vs SDPA (vs flash on GPU), bottom-right alignment, padding."""

from __future__ import annotations

import math

import pytest
import torch

from model.attention import SharedKeys, attend, attention_mask, choose_backend
from tests.model_support import attend_and_grads, attention_inputs


def _loop_attention(q, k, v, q_valid, k_valid, causal):
    """Independent per-(row, query) loop: query i is at absolute position tk - tq + i."""
    B, H, tq, dh = q.shape
    tk = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for i in range(tq):
            if not q_valid[b, i]:
                continue
            pos = tk - tq + i
            keys = [j for j in range(tk) if k_valid[b, j] and (not causal or j <= pos)]
            s = (q[b, :, i, None] @ k[b, :, keys].transpose(-1, -2)) / math.sqrt(
                dh
            )  # (H, 1, n_keys)
            out[b, :, i] = (torch.softmax(s, -1) @ v[b, :, keys]).squeeze(1)
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_backends_match_an_explicit_loop(backend, causal):
    q, k, v, qv, kv = attention_inputs()
    out = attend(q, k, v, qv, kv, causal=causal, backend=backend)
    torch.testing.assert_close(out, _loop_attention(q, k, v, qv, kv, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tq", [1, 4, 9], ids=lambda t: f"tq{t}")
def test_reference_equals_sdpa_forward_and_backward(tq):
    """Pruned queries (tq < tk) with left padding; fp32 tolerance atol=rtol=1e-5."""
    q, k, v, qv, kv = attention_inputs(tq=tq, seed=tq)
    grads = []
    for backend in ("reference", "sdpa"):
        for t in (q, k, v):
            t.grad = None
        out = attend(q, k, v, qv, kv, causal=True, backend=backend)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads.append((out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mask_is_bottom_right_aligned():
    m = attention_mask(
        torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool), causal=True
    )
    assert m[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_fully_padded_rows_give_zeros_and_padding_never_leaks(backend):
    q, k, v, qv, kv = attention_inputs(pad=(9, 4, 0))  # row 0: nothing but padding
    out = attend(q, k, v, qv, kv, causal=True, backend=backend)
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    out.sum().backward()
    assert torch.isfinite(k.grad).all()
    assert (k.grad[1, :, :4] == 0).all() and (
        v.grad[1, :, :4] == 0
    ).all()  # padded keys get nothing
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2.transpose(1, 2)[~kv] = 1e4
    v2.transpose(1, 2)[~kv] = -1e4
    torch.testing.assert_close(
        attend(q, k2, v2, qv, kv, causal=True, backend=backend), out, atol=0, rtol=0
    )


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_shared_keys_equal_the_concatenated_key_list(backend):
    """attend(shared=...) = attend over [the group's shared keys ; the row's own keys], forward and
    backward: uneven groups in any order (3, 0, 1 and 2 rows), one group with no valid shared key."""
    g = torch.Generator().manual_seed(3)
    R, B, H, T, n, dh = 4, 6, 2, 7, 3, 8
    index = torch.tensor([2, 0, 0, 3, 0, 3])
    ks, vs = (torch.randn(R, H, T, dh, generator=g).requires_grad_() for _ in range(2))
    s_valid = (
        torch.arange(T)[None, :] >= torch.tensor([0, 2, 7, 5])[:, None]
    )  # group 2: all padding
    q, k, v = (torch.randn(B, H, n, dh, generator=g).requires_grad_() for _ in range(3))
    ones = torch.ones(B, n, dtype=torch.bool)
    w = torch.randn(B, H, n, dh, generator=g)
    res = []
    for shared in (True, False):
        for t in (q, k, v, ks, vs):
            t.grad = None
        if shared:
            out = attend(
                q,
                k,
                v,
                ones,
                ones,
                causal=True,
                backend=backend,
                shared=SharedKeys(ks, vs, s_valid, index),
            )
        else:
            out = attend(
                q,
                torch.cat([ks[index], k], 2),
                torch.cat([vs[index], v], 2),
                ones,
                torch.cat([s_valid[index], ones], 1),
                causal=True,
                backend=backend,
            )
        (out * w).sum().backward()
        res.append([out.detach()] + [t.grad.clone() for t in (q, k, v, ks, vs)])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "sdpa_causal"])
def test_shared_keys_with_a_bias_equal_an_explicit_loop(backend):
    """SharedKeys.bias (a logit per shared key and head, the recency bias): every backend (sdpa_causal
    runs SDPA with a float mask) equals a per-(row, query) loop that adds the bias to the shared
    keys' scores only, forward and backward into the bias; a group with no valid shared key."""
    g = torch.Generator().manual_seed(5)
    R, B, H, T, n, dh = 3, 5, 2, 6, 3, 8
    index = torch.tensor([1, 0, 1, 2, 1])
    ks, vs = (torch.randn(R, H, T, dh, generator=g) for _ in range(2))
    s_valid = torch.arange(T)[None, :] >= torch.tensor([0, 3, 6])[:, None]  # group 2: no event
    bias = (2 * torch.randn(R, H, T, generator=g)).requires_grad_()
    q, k, v = (torch.randn(B, H, n, dh, generator=g) for _ in range(3))
    ones = torch.ones(B, n, dtype=torch.bool)
    w = torch.randn(B, H, n, dh, generator=g)
    shared = SharedKeys(ks, vs, s_valid, index, bias=bias)
    out = attend(q, k, v, ones, ones, causal=True, backend=backend, shared=shared)
    (grad,) = torch.autograd.grad((out * w).sum(), bias)
    want = torch.zeros_like(out)
    b2 = bias.detach().clone().requires_grad_()
    for b in range(B):
        r = index[b]
        for i in range(n):
            keys = torch.cat([ks[r][:, s_valid[r]], k[b][:, : i + 1]], 1)  # (H, keys, dh)
            vals = torch.cat([vs[r][:, s_valid[r]], v[b][:, : i + 1]], 1)
            extra = torch.cat([b2[r][:, s_valid[r]], torch.zeros(H, i + 1)], 1)
            s = (keys @ q[b, :, i, :, None]).squeeze(-1) / math.sqrt(dh) + extra
            want[b, :, i] = (torch.softmax(s, -1)[..., None] * vals).sum(1)
    (grad_want,) = torch.autograd.grad((want * w).sum(), b2)
    torch.testing.assert_close(out, want.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, grad_want, atol=1e-5, rtol=1e-5)
    assert grad[:, :, :][~s_valid[:, None, :].expand_as(grad)].abs().max() == 0  # padded keys


def test_choose_backend_reports_reasons_and_refuses_silent_flash():
    backend, reason = choose_backend("auto", torch.device("cpu"), torch.float32, 16)
    assert backend == "sdpa" and "CUDA" in reason
    assert choose_backend("reference", torch.device("cpu"), torch.float32, 16) == (
        "reference",
        "requested",
    )
    with pytest.raises(RuntimeError, match="cannot run"):
        choose_backend("flash", torch.device("cpu"), torch.float32, 16)
    with pytest.raises(ValueError, match="unknown"):
        choose_backend("xformers", torch.device("cpu"), torch.float32, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_flash_matches_reference_in_bf16(causal):
    pytest.importorskip("flash_attn")
    q, k, v, qv, kv = attention_inputs(
        B=4, H=4, tq=48, tk=160, dh=64, pad=(0, 30, 100, 150), dtype=torch.bfloat16, device="cuda"
    )
    res = [
        attend_and_grads(q, k, v, qv, kv, causal=causal, backend=b) for b in ("reference", "flash")
    ]
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
