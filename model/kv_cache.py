"""KV-cached OneTrans: two-stage scoring, request-level training, cross-request incremental cache.

OneTrans's S-tokens never attend to NS-tokens (causal mask, S first), so every S-row of every
layer depends on the behaviour sequence only. Stage I runs the S-side once per request (with the
pyramid) and keeps, for every layer, the keys/values of the S-rows entering that layer; stage II
runs only the candidates' NS-rows, attending to that cache and causally to earlier NS-rows.
The derivation, the cross-request reuse rule and the tolerances are in docs/kv-cache.md.

This module reads the weights of a built OneTrans model through `OneTransParts` (the small set of
per-token-type operations the two stages need) and never changes the model: the plain
`model(batch)` stays the reference every path here is tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .features import SEQ_KEYS, IMPRESSION_KEYS

# --------------------------------------------------------------------------------------------
# What the two stages need from a OneTrans model
# --------------------------------------------------------------------------------------------


class LayerParts(Protocol):
    """One OneTrans block split by token type. Tensors are (rows, T, d) unless stated."""

    n_heads: int
    keep_s: int          # S-rows this layer keeps as queries (frame positions, padding included)

    def s_qkv(self, x: Tensor, n_query: int) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + shared S projections: q for the last n_query rows, k/v for all. (R, T, H, dh)."""

    def ns_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-norm + token-specific NS projections of (B, L_NS, d): q, k, v each (B, L_NS, H, dh)."""

    def s_finish(self, x_kept: Tensor, attn: Tensor) -> Tensor:
        """Residual + shared out-projection + pre-norm shared FFN for kept S rows. attn: (R, q, H*dh)."""

    def ns_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual + token-specific out-projection + pre-norm token-specific FFN for NS rows."""


class OneTransParts(Protocol):
    """The model seen as: S tokenizer, NS tokenizer, blocks split by token type, heads."""

    layers: Sequence[LayerParts]

    def s_tokens(self, seq: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(R, L_S, d) S-tokens and (R, L_S) bool mask (True = real token) from the seq_* tensors."""

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        """(B, L_NS, d) NS-tokens from the per-impression tensors (req_index points into seq)."""

    def heads(self, ns_final: Tensor, s_final: Tensor | None, s_mask: Tensor | None) -> dict[str, Tensor]:
        """Task logits {"ctr", "cvr"} (B,) from the final NS rows (and surviving S rows, if any)."""


# --------------------------------------------------------------------------------------------
# Attention pieces (plain math; fp32 softmax statistics like the model's reference path)
# --------------------------------------------------------------------------------------------


def _s_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
    """Causal self-attention of the last q rows of an S list over all T rows (bottom-right aligned).

    q (R, q, H, dh), k/v (R, T, H, dh), key_mask (R, T) True = real. A query always sees itself,
    so a padded query row never has an empty key set (its value is never read by a real row).
    """
    R, nq, H, dh = q.shape
    T = k.shape[1]
    qpos = torch.arange(T - nq, T, device=q.device)
    kpos = torch.arange(T, device=q.device)
    causal = kpos.unsqueeze(0) <= qpos.unsqueeze(1)                          # (q, T)
    allowed = causal & (key_mask.unsqueeze(1) | (kpos.unsqueeze(0) == qpos.unsqueeze(1)))  # (R, q, T)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed.unsqueeze(1))
    return out.transpose(1, 2).reshape(R, nq, H * dh)


@dataclass
class _Groups:
    """Impressions laid out per request: (R, C) slots, C = most candidates of any request."""

    req: Tensor     # (B,) request row of each impression
    slot: Tensor    # (B,) position of each impression inside its request
    n_req: int
    width: int

    @staticmethod
    def of(req_index: Tensor, n_req: int) -> "_Groups":
        counts = torch.bincount(req_index, minlength=n_req)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(req_index.numel(), device=req_index.device) - starts[req_index]
        width = int(counts.max().item()) if req_index.numel() else 0        # one sync per batch
        return _Groups(req=req_index, slot=slot, n_req=n_req, width=width)

    def pack(self, x: Tensor) -> Tensor:
        """(B, ...) -> (R, C, ...) zero-padded."""
        out = x.new_zeros((self.n_req, self.width, *x.shape[1:]))
        return out.index_put((self.req, self.slot), x)

    def unpack(self, x: Tensor) -> Tensor:
        """(R, C, ...) -> (B, ...)."""
        return x[self.req, self.slot]


def _ns_attention(q: Tensor, k: Tensor, v: Tensor, ks: Tensor, vs: Tensor, s_mask: Tensor,
                  groups: _Groups) -> Tensor:
    """NS queries over [cached S keys of their request ; causal NS keys of their own candidate].

    q/k/v (B, N, H, dh) NS rows; ks/vs (R, T, H, dh) the request's S keys/values; s_mask (R, T).
    The S part is computed per request with all its candidates' queries stacked (one GEMM per
    request, no (B, T) copy of the cache); the NS part per candidate. Joint softmax in fp32.
    """
    B, N, H, dh = q.shape
    scale = 1.0 / math.sqrt(dh)
    qg = groups.pack(q)                                                     # (R, C, N, H, dh)
    R, C = qg.shape[:2]
    T = ks.shape[1]
    # scores against the S cache: (R, H, C*N, T)
    qs = qg.permute(0, 3, 1, 2, 4).reshape(R, H, C * N, dh)
    s_scores = torch.matmul(qs, ks.permute(0, 2, 3, 1)) * scale
    s_scores = s_scores.float().masked_fill(~s_mask[:, None, None, :], float("-inf"))
    s_scores = groups.unpack(s_scores.reshape(R, H, C, N, T).permute(0, 2, 1, 3, 4))  # (B, H, N, T)
    # scores among the candidate's own NS rows, causal: (B, H, N, N)
    n_scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)).float() * scale
    tri = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    n_scores = n_scores.masked_fill(~tri, float("-inf"))
    probs = torch.softmax(torch.cat([s_scores, n_scores], -1), -1).to(v.dtype)
    p_s, p_n = probs[..., :T], probs[..., T:]
    # values: S part per request again
    pg = groups.pack(p_s.permute(0, 2, 1, 3)).permute(0, 3, 1, 2, 4).reshape(R, H, C * N, T)
    out_s = torch.matmul(pg, vs.transpose(1, 2)).reshape(R, H, C, N, dh).permute(0, 2, 3, 1, 4)
    out_s = groups.unpack(out_s)                                            # (B, N, H, dh)
    out_n = torch.matmul(p_n, v.transpose(1, 2)).transpose(1, 2)           # (B, N, H, dh)
    return (out_s + out_n).reshape(B, N, H * dh)


# --------------------------------------------------------------------------------------------
# Stage I / stage II
# --------------------------------------------------------------------------------------------


@dataclass
class SideCache:
    """What stage I leaves for stage II, for R requests.

    keys[n], values[n]: (R, T_n, H, dh) S keys/values entering layer n (T_1 = L_S, T_n = keep of n-1).
    masks[n]: (R, T_n) True = real event. s_final/s_final_mask: S rows that survive the last layer
    (empty under pyramid reading A).
    """

    keys: list[Tensor]
    values: list[Tensor]
    masks: list[Tensor]
    s_final: Tensor
    s_final_mask: Tensor

    @property
    def n_requests(self) -> int:
        return self.s_final.shape[0]


def stage_one(parts: OneTransParts, seq: dict[str, Tensor]) -> SideCache:
    """Run the S-side of every layer once per request (R rows of seq_*)."""
    x, mask = parts.s_tokens(seq)
    keys, values, masks = [], [], []
    for layer in parts.layers:
        n_query = min(layer.keep_s, x.shape[1])
        q, k, v = layer.s_qkv(x, n_query)
        keys.append(k)
        values.append(v)
        masks.append(mask)
        attn = _s_attention(q, k, v, mask)
        x = layer.s_finish(x[:, x.shape[1] - n_query:], attn)
        mask = mask[:, mask.shape[1] - n_query:]
    return SideCache(keys=keys, values=values, masks=masks, s_final=x, s_final_mask=mask)


def stage_two(parts: OneTransParts, cache: SideCache, imp: dict[str, Tensor],
              seq: dict[str, Tensor]) -> dict[str, Tensor]:
    """Score B impressions (req_index rows of the cache) from their NS-tokens and the S cache."""
    req_index = imp["req_index"]
    groups = _Groups.of(req_index, cache.n_requests)
    y = parts.ns_tokens(imp, seq)
    for n, layer in enumerate(parts.layers):
        q, k, v = layer.ns_qkv(y)
        attn = _ns_attention(q, k, v, cache.keys[n], cache.values[n], cache.masks[n], groups)
        y = layer.ns_finish(y, attn)
    if cache.s_final.shape[1]:
        return parts.heads(y, cache.s_final[req_index], cache.s_final_mask[req_index])
    return parts.heads(y, None, None)


def _split(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    seq = {k: batch[k] for k in SEQ_KEYS}
    imp = {k: v for k, v in batch.items() if k not in SEQ_KEYS}
    return seq, imp


def request_level_forward(model: torch.nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """model(batch) computed with the S-side once per request: same logits, loss and gradients.

    Autograd flows from every impression through req_index into its request's stage-I rows, so
    S-side gradients are summed over the request's candidates exactly as in the plain forward.
    """
    parts = onetrans_parts(model)
    seq, imp = _split(batch)
    return stage_two(parts, stage_one(parts, seq), imp, seq)


def onetrans_parts(model: torch.nn.Module) -> OneTransParts:
    """The OneTransParts view of a built OneTrans model (see model/onetrans.py)."""
    from ._onetrans_parts import parts_of
    return parts_of(model)
