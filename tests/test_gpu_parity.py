"""SDPA against the reference attention in bf16 on CUDA (issue #16): pruned (tail) queries, left
padding, a fully padded row, and the whole model per impression and request-level. Runs without
flash-attn (the flash parity tests in test_model_attention.py / test_model_onetrans.py need it),
so `pytest -m gpu` checks the backend `attention="auto"` falls back to on a GPU without flash-attn."""

from __future__ import annotations

import pytest
import torch

from model.features import tiny_spec
from tests.model_support import (
    assert_bf16_model_parity,
    attend_and_grads,
    attention_inputs,
    bf16_model_step,
    empty_history_batch,
)

pytestmark = pytest.mark.gpu
BF16 = dict(atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_sdpa_matches_reference_in_bf16(causal):
    q, k, v, qv, kv = attention_inputs(
        B=4, H=4, tq=48, tk=160, dh=64, pad=(0, 30, 100, 160), dtype=torch.bfloat16, device="cuda"
    )  # row 3 is nothing but padding
    res = [
        attend_and_grads(q, k, v, qv, kv, causal=causal, backend=b) for b in ("reference", "sdpa")
    ]
    for a, b in zip(*res):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, **BF16)
    assert (res[1][0][3] == 0).all()  # the padded row's outputs are exactly zero


@pytest.mark.parametrize("request_level", [False, True], ids=["per-impression", "request-level"])
def test_sdpa_model_matches_reference_in_bf16(request_level):
    spec = tiny_spec(64)
    b = empty_history_batch(spec, seed=18)  # request 0: empty history
    ref, sdpa = (
        bf16_model_step(spec, b, backend=x, seed=19, request_level=request_level)
        for x in ("reference", "sdpa")
    )
    assert_bf16_model_parity(ref, sdpa)
