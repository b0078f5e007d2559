"""HiFormer + DIN (Table 2: 108M dense params, 1.35 TFLOPs).

Field tokens (as for Wukong) get token-specific projections to width D, plus one learnable task
token per task (ctr, cvr). Each HiFormer layer (Gui et al. 2023), pre-LN with residuals:
  * queries and keys from the concatenation of all tokens through one low-rank projection
    (T*D -> rank -> T*D), so every q_i / k_j sees every feature;
  * values, output projection and FFN token-specific (batched einsum);
  * multi-head softmax attention across tokens.
The last layer is pruned: it computes queries, attention output and FFN for the task tokens only.
Task token t feeds tower t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attend, choose_explicit_mask_backend
from ..base import RankingModel
from ..features import TASKS, FeatureSpec
from .common import (
    DINAttention,
    FeatureEmbedding,
    TaskTowers,
    field_tokens,
    mm_flops,
    n_field_tokens,
    train_flops,
)


@dataclass(frozen=True, kw_only=True)
class Config:
    emb_dim: int = 64
    din_hidden: int = 36
    din_normalize: str = "softmax"
    d_model: int = 512
    n_layers: int = 3
    n_heads: int = 4
    qk_rank: int = 128  # rank of the all-token Q/K projections
    ffn_mult: int = 4
    prune_last: bool = True  # last layer computes the task tokens only
    tower_hidden: int = 256


SIZES: dict[str, Config] = {
    "paper": Config(),
    "mini": Config(
        emb_dim=16, d_model=64, n_layers=2, n_heads=2, qk_rank=32, ffn_mult=2, tower_hidden=64
    ),
    "tiny": Config(
        emb_dim=8,
        din_hidden=8,
        d_model=16,
        n_layers=2,
        n_heads=2,
        qk_rank=8,
        ffn_mult=2,
        tower_hidden=8,
    ),
}


def _tok(T: int, a: int, b: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(T, a, b) / math.sqrt(a))


class HiFormerLayer(nn.Module):
    def __init__(
        self,
        T: int,
        d: int,
        n_heads: int,
        rank: int,
        ffn_mult: int,
        n_out: int,
        backend: str = "reference",
    ) -> None:
        """n_out: how many of the last tokens this layer computes outputs for (T, or the task tokens)."""
        super().__init__()
        if d % n_heads:
            raise ValueError(f"hiformer_din: d_model={d} not divisible by n_heads={n_heads}")
        self.T, self.d, self.h, self.rank, self.n_out, self.f = (
            T,
            d,
            n_heads,
            rank,
            n_out,
            ffn_mult * d,
        )
        self.backend = backend  # the model's attention decision (reference or sdpa)
        self.ln, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_down, self.k_down = (
            nn.Linear(T * d, rank, bias=False),
            nn.Linear(T * d, rank, bias=False),
        )
        self.q_up, self.k_up = _tok(n_out, rank, d), _tok(T, rank, d)
        self.w_v, self.w_o = _tok(T, d, d), _tok(n_out, d, d)
        self.ffn1, self.ffn2 = _tok(n_out, d, self.f), _tok(n_out, self.f, d)
        self.b1 = nn.Parameter(torch.zeros(n_out, self.f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d, h = x.shape[0], self.T, self.d, self.h
        z = self.ln(x)
        flat = z.flatten(1)
        q = torch.einsum("br,trd->btd", self.q_down(flat), self.q_up)
        k = torch.einsum("br,trd->btd", self.k_down(flat), self.k_up)
        v = torch.einsum("btd,tde->bte", z, self.w_v)
        split = lambda t: t.reshape(B, t.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
        allowed = torch.ones(1, 1, 1, T, dtype=torch.bool, device=x.device)
        o = (
            attend(split(q), split(k), split(v), backend=self.backend, allowed=allowed)
            .transpose(1, 2)
            .reshape(B, self.n_out, d)
        )
        y = x[:, T - self.n_out :] + torch.einsum("btd,tde->bte", o, self.w_o)
        hdn = F.gelu(torch.einsum("btd,tdf->btf", self.ln_ffn(y), self.ffn1) + self.b1)
        return y + torch.einsum("btf,tfd->btd", hdn, self.ffn2)

    def flops(self) -> float:
        T, d, r, n = self.T, self.d, self.rank, self.n_out
        qk = 2 * mm_flops(1, T * d, r) + mm_flops(1, r, n * d) + mm_flops(1, r, T * d)
        return (
            qk
            + mm_flops(T, d, d)
            + 2 * mm_flops(n, d, T)
            + mm_flops(n, d, d)
            + 2 * mm_flops(n, d, self.f)
        )


class HiFormerDIN(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config, attention: str = "auto") -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        # (backend, reason), recorded in the run's provenance.json like OneTrans's decision
        self.attention_decision = choose_explicit_mask_backend(attention)
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        self.din = DINAttention(
            self.emb.item_dim, self.emb.ctx_dim, cfg.din_hidden, cfg.din_normalize
        )
        self.num_proj = nn.Linear(spec.n_num, cfg.emb_dim) if spec.n_num else None
        self.n_fields = n_field_tokens(spec)
        T, D = self.n_fields + len(TASKS), cfg.d_model
        self.in_w = _tok(self.n_fields, cfg.emb_dim, D)
        self.in_b = nn.Parameter(torch.zeros(self.n_fields, D))
        self.task_tokens = nn.Parameter(torch.randn(len(TASKS), D) * 0.02)
        self.layers = nn.ModuleList(
            HiFormerLayer(
                T,
                D,
                cfg.n_heads,
                cfg.qk_rank,
                cfg.ffn_mult,
                len(TASKS) if (cfg.prune_last and i == cfg.n_layers - 1) else T,
                self.attention_decision[0],
            )
            for i in range(cfg.n_layers)
        )
        self.out_ln = nn.LayerNorm(D)
        self.towers = TaskTowers(D, cfg.tower_hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        cand = self.emb.candidate(batch)
        fields = field_tokens(
            self.emb, self.num_proj, batch, cand, self.din(cand, e[g], ctx[g], mask[g])
        )
        x = torch.einsum("bnc,ncd->bnd", fields, self.in_w) + self.in_b
        x = torch.cat(
            [x, self.task_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)], 1
        )  # task tokens last
        for layer in self.layers:
            x = (
                layer(x)
                if layer.n_out == layer.T
                else torch.cat([x[:, : -layer.n_out], layer(x)], 1)
            )
        x = self.out_ln(x[:, -len(TASKS) :])
        return self.towers({t: x[:, i] for i, t in enumerate(TASKS)})

    def flops_per_example(self) -> dict[str, float]:
        s, c = self.spec, self.cfg
        f = self.din.flops(s.seq_len) + (mm_flops(1, s.n_num, c.emb_dim) if s.n_num else 0)
        f += mm_flops(self.n_fields, c.emb_dim, c.d_model) + sum(
            layer.flops() for layer in self.layers
        )
        return train_flops(f + self.towers.flops())


# the execution switch (harness: train.attention): the attention backend, "auto" = "reference"
# (model/attention.py choose_explicit_mask_backend); the same function under each backend
EXECUTION = ("attention",)


def build(spec: FeatureSpec, config: Config, *, attention: str = "auto") -> HiFormerDIN:
    return HiFormerDIN(spec, config, attention)
