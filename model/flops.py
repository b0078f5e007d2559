"""FLOP conventions and helpers (see docs/conventions.md).

Analytic counts follow the usual model-FLOPs convention: 2 FLOPs per multiply-accumulate of every
matrix product (linear layers, einsums, the two attention products), nothing for element-wise ops,
norms, softmax or embedding lookups; attention counts the full rectangle it computes
(Tq x Tk, causal sparsity NOT discounted, since dense kernels compute it); training = 3 x forward
(backward = 2 x forward: input and weight gradients; no activation-recompute FLOPs).

measure_flops() runs a callable under torch.utils.flop_counter.FlopCounterMode, the independent
check the analytic counts are pinned to. It also counts PyTorch's CPU SDPA kernel, which the
stock counter ignores (it registers only the CUDA kernels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import flop_counter as fc

TRAIN_MULTIPLIER = 3.0


def linear_flops(n_rows: int | float, d_in: int, d_out: int) -> float:
    """FLOPs of n_rows x (d_in -> d_out) matrix products."""
    return 2.0 * n_rows * d_in * d_out


def attention_flops(q_len: int, k_len: int, d_model: int) -> float:
    """Q K^T plus P V over all heads: 2 products of (q_len x k_len x d_model) MACs each."""
    return 4.0 * q_len * k_len * d_model


def attention_flops_causal(q_len: int, k_len: int, d_model: int) -> float:
    """Q K^T plus P V over the (query, key) pairs a bottom-right causal mask lets through: query i of
    the last q_len sits at k_len - q_len + i and sees that many keys + 1. What a causal kernel that
    skips masked blocks must compute (the "sdpa_causal" / flash backends), padding not discounted."""
    pairs = q_len * (k_len - q_len) + q_len * (q_len + 1) / 2
    return 4.0 * pairs * d_model


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def _custom_mapping() -> dict:
    mapping = {}
    aten = torch.ops.aten
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            _cpu_sdpa_backward_flops
        )
    return mapping


def measure_flops(fn: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """(total FLOPs, per-op FLOPs) of running fn() once, as FlopCounterMode counts them.

    Note: FlopCounterMode counts an SDPA backward as 2.5 x its forward (the score matrix is
    recomputed); a plain matmul-softmax backward counts 2 x. Pin training FLOPs with the
    "reference" attention backend, whose counts follow the analytic convention exactly.
    """
    with fc.FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn()
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), per_op


def mfu(flops_per_s: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilisation, or None without a stated device peak (e.g. on CPU)."""
    if not peak_flops_per_s:
        return None
    return flops_per_s / peak_flops_per_s
