"""A tiny OneTrans-shaped model for the KV-cache tests, independent of model/onetrans.py.

Its forward is the plain, ungrouped formulation (every impression builds [S ; NS] and runs full
causal blocks with the pyramid), written separately from model/kv_cache.py, so agreement between
the two checks the cache decomposition itself. The same tests run on the real OneTrans model when
model/onetrans.py is importable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.features import FeatureSpec


def _rms(x: Tensor, w: Tensor) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


class ToyLayer(nn.Module):
    def __init__(self, d: int, heads: int, n_ns: int, keep_s: int, g: torch.Generator) -> None:
        super().__init__()
        self.n_heads, self.keep_s, self.d = heads, keep_s, d

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(shape[-2]))

        self.n1, self.n2 = (
            nn.Parameter(1 + 0.1 * torch.randn(d, generator=g)),
            nn.Parameter(1 + 0.1 * torch.randn(d, generator=g)),
        )
        self.s_w = nn.ParameterDict({k: p(d, d) for k in "qkvo"})
        self.ns_w = nn.ParameterDict({k: p(n_ns, d, d) for k in "qkvo"})
        self.s_f1, self.s_f2 = p(d, 2 * d), p(2 * d, d)
        self.ns_f1, self.ns_f2 = p(n_ns, d, 2 * d), p(n_ns, 2 * d, d)

    def heads_view(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:-1], self.n_heads, self.d // self.n_heads)

    # --- the OneTransParts LayerParts protocol ---
    def s_qkv(self, x: Tensor, n_query: int, n_kv: int | None = None):
        h = _rms(x, self.n1)
        hk = h if n_kv is None else h[:, h.shape[1] - n_kv :]
        return (
            self.heads_view(h[:, h.shape[1] - n_query :] @ self.s_w["q"]),
            self.heads_view(hk @ self.s_w["k"]),
            self.heads_view(hk @ self.s_w["v"]),
        )

    def ns_qkv(self, x: Tensor):
        h = _rms(x, self.n1)
        return tuple(self.heads_view(torch.einsum("bnd,nde->bne", h, self.ns_w[k])) for k in "qkv")

    def s_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        z = x + attn @ self.s_w["o"]
        return z + torch.nn.functional.gelu(_rms(z, self.n2) @ self.s_f1) @ self.s_f2

    def ns_finish(self, x: Tensor, attn: Tensor) -> Tensor:
        z = x + torch.einsum("bnd,nde->bne", attn, self.ns_w["o"])
        f = torch.nn.functional.gelu(torch.einsum("bnd,nde->bne", _rms(z, self.n2), self.ns_f1))
        return z + torch.einsum("bnd,nde->bne", f, self.ns_f2)

    def key_bias(self, valid_s: Tensor) -> None:
        return None  # no recency bias in the toy

    # --- the plain full block over [S ; NS] (the reference) ---
    def full(self, x: Tensor, n_s: int, key_mask: Tensor, n_query_s: int) -> Tensor:
        """x (B, n_s + N, d): all rows; keeps the last n_query_s S rows and every NS row."""
        B, T, d = x.shape
        N = T - n_s
        h = _rms(x, self.n1)

        def mixed(w_s: Tensor, w_ns: Tensor, rows: Tensor, ns_rows: Tensor) -> Tensor:
            return torch.cat([rows @ w_s, torch.einsum("bnd,nde->bne", ns_rows, w_ns)], 1)

        hs_q = h[:, n_s - n_query_s : n_s]
        q = self.heads_view(mixed(self.s_w["q"], self.ns_w["q"], hs_q, h[:, n_s:]))
        k = self.heads_view(mixed(self.s_w["k"], self.ns_w["k"], h[:, :n_s], h[:, n_s:]))
        v = self.heads_view(mixed(self.s_w["v"], self.ns_w["v"], h[:, :n_s], h[:, n_s:]))
        nq = n_query_s + N
        qpos, kpos = torch.arange(T - nq, T), torch.arange(T)
        allowed = (kpos[None] <= qpos[:, None]) & (
            key_mask[:, None, :] | (kpos[None] == qpos[:, None])
        )
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k).float() / math.sqrt(d // self.n_heads)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        a = torch.einsum("bhqk,bkhe->bqhe", torch.softmax(scores, -1).to(v.dtype), v).reshape(
            B, nq, d
        )
        xs, xn = x[:, n_s - n_query_s : n_s], x[:, n_s:]
        return torch.cat(
            [self.s_finish(xs, a[:, :n_query_s]), self.ns_finish(xn, a[:, n_query_s:])], 1
        )


class ToyOneTrans(nn.Module):
    """Embeddings -> S tokens (per event) and NS tokens (auto-split), pyramid blocks, NS heads."""

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        d: int = 32,
        heads: int = 4,
        n_layers: int = 3,
        n_ns: int = 4,
        keep_s: tuple[int, ...] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.spec, self.d, self.n_ns = spec, d, n_ns
        self.time_invariant = True  # S tokens use the event's own fields only (no time gap)
        keep = keep_s or (spec.seq_len,) * n_layers
        self.item = nn.Embedding(spec.item_vocab, d)
        self.btype = nn.Embedding(spec.n_behaviors + 1, d)
        self.side = nn.ModuleList(nn.Embedding(v, d) for v in spec.side_vocab)
        self.cats = nn.ModuleList(nn.Embedding(v, d) for v in spec.cat_vocab)
        n_in = d * (1 + spec.n_cat) + spec.n_num
        self.ns_mlp = nn.Linear(n_in, n_ns * d)
        self.layers = nn.ModuleList(ToyLayer(d, heads, n_ns, k, g) for k in keep)
        self.head = nn.Linear(n_ns * d, 2)
        for m in (self.item, self.btype, *self.side, *self.cats):
            nn.init.normal_(m.weight, generator=g)

    # --- OneTransParts ---
    def s_tokens(self, seq: dict[str, Tensor]):
        x = self.item(seq["seq_item"]) + self.btype(seq["seq_type"])
        for j, emb in enumerate(self.side):
            x = x + emb(seq["seq_side"][..., j])
        return x, seq["seq_mask"]

    def ns_tokens(self, imp: dict[str, Tensor], seq: dict[str, Tensor]) -> Tensor:
        cand = self.item(imp["cand_item"]) + sum(
            e(imp["cand_side"][:, j]) for j, e in enumerate(self.side)
        )
        cats = [e(imp["ns_cat"][:, j]) for j, e in enumerate(self.cats)]
        flat = torch.cat([cand, *cats, imp["ns_num"]], -1)
        return self.ns_mlp(flat).reshape(-1, self.n_ns, self.d)

    def heads(self, ns_final: Tensor, s_final, s_mask, imp) -> dict[str, Tensor]:
        out = self.head(ns_final.flatten(1))
        return {"ctr": out[:, 0], "cvr": out[:, 1]}

    # --- the reference forward ---
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        r = batch["req_index"]
        s, mask = self.s_tokens({k: v for k, v in batch.items() if k.startswith("seq_")})
        s, mask = s[r], mask[r]
        x = torch.cat([s, self.ns_tokens(batch, batch)], 1)
        n_s = s.shape[1]
        for layer in self.layers:
            key_mask = torch.cat([mask, mask.new_ones(mask.shape[0], self.n_ns)], 1)
            keep = min(layer.keep_s, n_s)
            x = layer.full(x, n_s, key_mask, keep)
            mask, n_s = mask[:, mask.shape[1] - keep :], keep
        return self.heads(x[:, n_s:], None, None, batch)
