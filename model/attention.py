"""Attention dispatch for pyramid (tail-query) attention with left padding.

Every backend computes, per head, softmax(Q K^T / sqrt(d_h) + mask) V for
    q (B, H, Tq, dh)  the LAST Tq of the Tk current tokens (pyramid queries)
    k, v (B, H, Tk, dh)
    q_valid (B, Tq), k_valid (B, Tk)  False at left padding
with the causal part aligned BOTTOM-RIGHT: query i sits at absolute position Tk - Tq + i and sees
keys 0..Tk-Tq+i. (SDPA's is_causal=True aligns top-left when Tq < Tk, which is wrong here.)

Backends:
  "reference"  plain matmul + masked softmax; the ground truth of the parity tests.
  "sdpa"       F.scaled_dot_product_attention with an explicit boolean bottom-right + padding
               mask (a padding mask cannot be combined with causal_lower_right / is_causal).
  "flash"      flash_attn.flash_attn_varlen_func on CUDA in fp16/bf16 (its causal=True is
               bottom-right per sequence); padding is removed (unpadded varlen layout).
  "auto"       flash when usable, else sdpa; choose_backend() returns the choice AND the reason.

Padding rules shared by all backends: a padded query's output is exactly zero, and a query that
can see no key (only padded queries can) attends to all keys instead of producing NaN before being
zeroed, so padded content never reaches any valid output or gradient.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

BACKENDS = ("reference", "sdpa", "flash")
REQUESTS = ("auto", *BACKENDS)


def flash_unsupported_reasons(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Why flash-attn cannot run these inputs (empty list = it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"flash-attn needs a CUDA device, inputs are on {device.type}")
    if importlib.util.find_spec("flash_attn") is None:
        reasons.append("flash_attn is not installed (pip install 'onetrans-harness[gpu]' on a GPU node)")
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"flash-attn needs fp16/bf16 inputs, got {dtype} (run with precision bf16-mixed)")
    if head_dim % 8 != 0 or head_dim > 256:
        reasons.append(f"flash-attn needs head_dim a multiple of 8 and <= 256, got {head_dim}")
    return reasons


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> tuple[str, str]:
    """(backend, reason). An explicit request that cannot run raises instead of falling back silently."""
    if requested not in REQUESTS:
        raise ValueError(f"attention backend {requested!r} unknown; choose one of {REQUESTS}")
    flash_no = flash_unsupported_reasons(device, dtype, head_dim)
    if requested == "flash":
        if flash_no:
            raise RuntimeError("attention='flash' cannot run: " + "; ".join(flash_no)
                               + ". Use attention='auto' to fall back to SDPA.")
        return "flash", "requested"
    if requested in ("reference", "sdpa"):
        return requested, "requested"
    if not flash_no:
        return "flash", f"auto: flash-attn usable on {device.type} with {dtype}"
    return "sdpa", "auto: " + "; ".join(flash_no)


def attention_mask(q_valid: torch.Tensor, k_valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool, True = may attend; bottom-right causal, padded keys masked."""
    tq, tk = q_valid.shape[1], k_valid.shape[1]
    allowed = k_valid[:, None, None, :]
    if causal:
        qpos = torch.arange(tk - tq, tk, device=k_valid.device)
        kpos = torch.arange(tk, device=k_valid.device)
        allowed = allowed & (kpos[None, :] <= qpos[:, None])
    else:
        allowed = allowed.expand(-1, -1, tq, -1)
    # Rows that see nothing (padded queries only) attend everywhere: finite, then zeroed by the caller.
    return allowed | ~allowed.any(-1, keepdim=True)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return probs @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_valid: torch.Tensor,
                    k_valid: torch.Tensor, causal: bool) -> torch.Tensor:
    """Varlen flash-attn on the unpadded tokens. Left padding keeps every row's valid tokens a
    contiguous tail, so flash's per-sequence bottom-right alignment equals our mask."""
    from flash_attn import flash_attn_varlen_func  # optional GPU extra

    B, H, tq, dh = q.shape
    tk = k.shape[2]

    def unpad(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)[valid]                       # (n_valid, H, dh)

    def cu(valid: torch.Tensor) -> torch.Tensor:
        return F.pad(valid.sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))

    out = flash_attn_varlen_func(unpad(q, q_valid), unpad(k, k_valid), unpad(v, k_valid),
                                 cu(q_valid), cu(k_valid), tq, tk, causal=causal)
    full = q.new_zeros(B, tq, H, dh)
    full[q_valid] = out.to(q.dtype)
    return full.transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_valid: torch.Tensor, k_valid: torch.Tensor,
           *, causal: bool, backend: str) -> torch.Tensor:
    """Dispatch to one backend; returns (B, H, Tq, dh) with padded query rows set to zero."""
    if backend == "flash":
        return flash_attention(q, k, v, q_valid, k_valid, causal)
    mask = attention_mask(q_valid, k_valid, causal)
    if backend == "reference":
        out = reference_attention(q, k, v, mask)
    elif backend == "sdpa":
        out = sdpa_attention(q, k, v, mask)
    else:
        raise ValueError(f"attention backend {backend!r} unknown; choose one of {BACKENDS}")
    return out * q_valid[:, None, :, None].to(out.dtype)
