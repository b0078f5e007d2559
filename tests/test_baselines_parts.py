"""Shared baseline pieces against plain reference computations (fresh random inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.baselines.common import Dice, DINAttention, PerTokenFFN, token_mix
from model.baselines.hiformer_din import HiFormerLayer
from model.baselines.wukong_din import WukongLayer

# tiny shapes: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32, same math in another order


def test_token_mix_matches_head_gather_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 12, generator=g)
    B, T, d = x.shape
    dh = d // T
    ref = torch.stack(
        [torch.cat([x[:, t, h * dh : (h + 1) * dh] for t in range(T)], -1) for h in range(T)], 1
    )
    torch.testing.assert_close(token_mix(x), ref, rtol=0, atol=0)


def test_per_token_ffn_matches_per_token_linear_loop() -> None:
    torch.manual_seed(1)
    ffn = PerTokenFFN(T=3, d=8, hidden=16)
    x = torch.randn(5, 3, 8)
    ref = torch.stack(
        [
            F.linear(F.gelu(F.linear(x[:, t], ffn.w1[t].T, ffn.b1[t])), ffn.w2[t].T, ffn.b2[t])
            for t in range(3)
        ],
        1,
    )
    torch.testing.assert_close(ffn(x), ref, **TOL)


def test_dice_masked_statistics_equal_statistics_of_real_rows() -> None:
    torch.manual_seed(2)
    s = torch.randn(4, 6, 5)
    mask = torch.rand(4, 6) < 0.6
    a, b = Dice(5), Dice(5)
    with torch.no_grad():
        a.alpha.uniform_(-1, 1)
        b.alpha.copy_(a.alpha)
    out = a.train()(s, mask)
    ref = b.train()(s[mask])  # only the real rows, no mask
    torch.testing.assert_close(out[mask], ref, **TOL)
    torch.testing.assert_close(a.running_mean, b.running_mean, **TOL)


@pytest.mark.parametrize("normalize", ["softmax", "none"])
def test_din_attention_against_explicit_weighted_sum(normalize: str) -> None:
    torch.manual_seed(3)
    din = DINAttention(item_dim=6, ctx_dim=4, hidden=5, normalize=normalize).eval()
    q, e, ctx = torch.randn(3, 6), torch.randn(3, 7, 6), torch.randn(3, 7, 4)
    mask = torch.rand(3, 7) < 0.7
    mask[2] = False  # empty history -> zero interest
    outs = []
    for i in range(3):
        idx = mask[i].nonzero().squeeze(-1)
        if len(idx) == 0:
            outs.append(torch.zeros(6))
            continue
        ei, ci, v = e[i, idx], ctx[i, idx], q[i].expand(len(idx), -1)
        a = din.fc2(din.dice(din.fc1(torch.cat([ei, v, ei - v, ei * v, ci], -1)))).squeeze(-1)
        a = torch.softmax(a, 0) if normalize == "softmax" else a
        outs.append((a.unsqueeze(-1) * ei).sum(0))
    torch.testing.assert_close(din(q, e, ctx, mask), torch.stack(outs), **TOL)


def test_hiformer_pruned_last_layer_equals_full_layer_task_rows() -> None:
    torch.manual_seed(4)
    T, d, n_task = 6, 8, 2
    full = HiFormerLayer(T, d, n_heads=2, rank=4, ffn_mult=2, n_out=T)
    pruned = HiFormerLayer(T, d, n_heads=2, rank=4, ffn_mult=2, n_out=n_task)
    sd = full.state_dict()
    for k, v in pruned.state_dict().items():  # token-specific weights: keep the task tokens' slices
        v.copy_(sd[k][T - n_task :] if k in ("q_up", "w_o", "ffn1", "ffn2", "b1") else sd[k])
    x = torch.randn(3, T, d)
    torch.testing.assert_close(pruned(x), full(x)[:, T - n_task :], **TOL)
    assert pruned.flops() < full.flops()


def test_wukong_compressed_fm_equals_full_fm_times_y() -> None:
    torch.manual_seed(5)
    layer = WukongLayer(n_in=5, d=4, n_fm=3, n_lc=2, k=3, hidden=(8,))
    x = torch.randn(2, 5, 4)
    full = torch.matmul(torch.matmul(x, x.transpose(1, 2)), layer.Y)  # (X X^T) Y, n x n first
    torch.testing.assert_close(layer.fm(x), full, **TOL)
