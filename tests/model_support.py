"""Helpers of the model tests (not part of the package): attention inputs and the backend-against-
reference runs that the CPU tests and the GPU parity tests share. Imported as
`from tests.model_support import ...`."""

from __future__ import annotations

import torch

from model.attention import attend
from model.features import random_batch
from model.onetrans import SIZES, build


def attention_inputs(
    B=3, H=2, tq=5, tk=9, dh=8, pad=(0, 3, 9), dtype=torch.float32, device="cpu", seed=0
):
    """q, k, v (B, H, t, dh), requiring grad, and the masks q_valid (B, tq) / k_valid (B, tk) of tail-query
    attention: the queries are the last tq of tk tokens, row b left-padded by pad[b] tokens."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(B, H, t, dh, generator=g).to(device, dtype).requires_grad_()
        for t in (tq, tk, tk)
    )
    k_valid = (torch.arange(tk)[None, :] >= torch.tensor(pad)[:, None]).to(device)  # left padding
    return q, k, v, k_valid[:, tk - tq :], k_valid


def attend_and_grads(
    q, k, v, q_valid, k_valid, *, causal: bool, backend: str
) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv) in fp32 for the loss sum(out^2) with one backend; the inputs' grads are reset first."""
    for t in (q, k, v):
        t.grad = None
    out = attend(q, k, v, q_valid, k_valid, causal=causal, backend=backend)
    out.float().pow(2).sum().backward()
    return out.float(), q.grad.float(), k.grad.float(), v.grad.float()


def empty_history_batch(spec, *, seed: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    """4 requests x 3 candidates with random full histories, except request 0, whose history is empty."""
    b = random_batch(
        spec, n_requests=4, per_request=3, generator=torch.Generator().manual_seed(seed)
    )
    for key in ("seq_item", "seq_side", "seq_type", "seq_gap"):
        b[key][0] = 0
    b["seq_mask"][0] = False
    return {k: v.to(device) for k, v in b.items()}


def bf16_model_step(
    spec, batch, *, backend: str, seed: int, request_level: bool, device: str = "cuda"
) -> tuple[torch.Tensor, torch.Tensor]:
    """onetrans-tiny (weights seeded by `seed`) under bf16 autocast with one attention backend: forward
    and backward of sum(ctr), checking that backend ran; -> (ctr logits, every gradient, flattened)."""
    torch.manual_seed(seed)
    m = build(spec, SIZES["onetrans-tiny"], attention=backend, request_level=request_level)
    m = m.to(device).train()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = m(batch)
    assert m.attention_decision[0] == backend
    out["ctr"].sum().backward()
    return out["ctr"].detach(), torch.cat(
        [p.grad.flatten() for p in m.parameters() if p.grad is not None]
    )


def assert_bf16_model_parity(
    ref: tuple[torch.Tensor, ...], other: tuple[torch.Tensor, ...]
) -> None:
    """bf16_model_step results: `other` finite, its logits within bf16 tolerance of the reference's and
    its gradient pointing the same way (cosine > 0.99)."""
    assert torch.isfinite(other[0]).all() and torch.isfinite(other[1]).all()
    torch.testing.assert_close(ref[0], other[0], atol=5e-2, rtol=5e-2)
    cos = torch.nn.functional.cosine_similarity(ref[1].float(), other[1].float(), dim=0)
    assert cos > 0.99, cos
