"""RankMixer + LONGER (Table 2: 109M dense params, 1.87 TFLOPs).

LONGER (Chai et al. 2025) as the sequence module:
  1. events (item-space + type + gap embeddings) -> d_inner tokens, per request;
  2. token merge: groups of K adjacent events (the sequence is left-padded to a multiple of K),
     InnerTrans (one small Transformer layer inside each group), then the K tokens concatenated
     (K * d_inner) and projected to d_seq: L -> ceil(L/K) merged tokens;
  3. global tokens: the target item, one user/context token from all NS features, n_cls learnable
     tokens (m = 2 + n_cls);
  4. hybrid causal attention: layer 1 is cross-causal, queries = [global ; the k most recent merged
     tokens], keys/values = [global ; every merged token]; layers 2.. are self-causal over those
     m + k tokens. Global tokens see everything real; a sequence token sees the global tokens and
     real merged tokens no newer than itself.
The outputs of the global tokens and the mean of the real query tokens form RankMixer's
sequence group. Steps 1-2 depend only on the request and run once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import choose_explicit_mask_backend
from ..base import RankingModel
from ..features import FeatureSpec
from .common import (
    FeatureEmbedding,
    MixerConfig,
    TaskTowers,
    TransformerLayer,
    build_rankmixer,
    mm_flops,
    train_flops,
)


@dataclass(frozen=True, kw_only=True)
class Config(MixerConfig):  # + n_tokens, d_model, n_layers, ffn_mult, n_experts, active_budget
    emb_dim: int = 64
    d_inner: int = 32  # event-token width inside a merge group
    merge_k: int = 8  # K events per merged token (1 = no merge)
    inner_heads: int = 2
    d_seq: int = 256
    seq_heads: int = 4
    seq_layers: int = 2  # 1 cross-causal + (seq_layers - 1) self-causal
    n_queries: int = 64  # k most recent merged tokens kept as queries
    n_cls: int = 2  # learnable global tokens
    tower_hidden: int = 256


SIZES: dict[str, Config] = {
    "paper": Config(d_model=640),
    "mini": Config(
        emb_dim=16,
        d_inner=16,
        merge_k=4,
        d_seq=64,
        seq_heads=2,
        n_queries=16,
        n_tokens=8,
        d_model=128,
        ffn_mult=2,
        tower_hidden=64,
    ),
    "tiny": Config(
        emb_dim=8,
        d_inner=8,
        merge_k=2,
        inner_heads=1,
        d_seq=16,
        seq_heads=2,
        n_queries=4,
        n_cls=1,
        n_tokens=4,
        d_model=16,
        ffn_mult=2,
        tower_hidden=8,
    ),
}


class RankMixerLonger(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config, attention: str = "auto") -> None:
        super().__init__()
        # (backend, reason), recorded in the run's provenance.json like OneTrans's decision
        self.attention_decision = choose_explicit_mask_backend(attention)
        backend = self.attention_decision[0]
        if cfg.seq_layers < 1 or cfg.merge_k < 1 or cfg.n_queries < 1:
            raise ValueError(
                "rankmixer_longer: seq_layers, merge_k and n_queries must be >= 1, got "
                f"{cfg.seq_layers}, {cfg.merge_k}, {cfg.n_queries}"
            )
        self.spec, self.cfg = spec, cfg
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        di, ds, K = self.emb.item_dim, cfg.d_seq, cfg.merge_k
        self.G = -(-spec.seq_len // K)  # merged tokens
        self.k = min(cfg.n_queries, self.G)
        self.m = 2 + cfg.n_cls
        self.event_proj = nn.Linear(di + self.emb.ctx_dim, cfg.d_inner)
        self.inner = (
            TransformerLayer(cfg.d_inner, cfg.inner_heads, backend=backend) if K > 1 else None
        )
        self.merge = nn.Linear(K * cfg.d_inner, ds)
        self.target_proj = nn.Linear(di, ds)
        self.user_proj = nn.Linear(self.emb.ns_dim, ds)
        self.cls = nn.Parameter(torch.randn(cfg.n_cls, ds) * 0.02)
        self.layers = nn.ModuleList(
            TransformerLayer(ds, cfg.seq_heads, backend=backend) for _ in range(cfg.seq_layers)
        )
        self.out_ln = nn.LayerNorm(ds)
        self.mixer = build_rankmixer(di + (self.m + 1) * ds + self.emb.ns_dim, cfg)
        self.towers = TaskTowers(cfg.d_model, cfg.tower_hidden)

    def merged_sequence(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per request: merged tokens (R, G, d_seq) and which of them hold a real event (R, G)."""
        e, ctx, mask = self.emb.events(batch)
        K, G = self.cfg.merge_k, self.G
        R, L = mask.shape
        x = self.event_proj(torch.cat([e, ctx], -1)) * mask.unsqueeze(
            -1
        )  # padded tokens: exactly 0
        pad = G * K - L  # extra left padding
        x, mask = F.pad(x, (0, 0, pad, 0)), F.pad(mask, (pad, 0))
        x, gm = x.reshape(R * G, K, -1), mask.reshape(R * G, K)
        if self.inner is not None:
            # a token always sees itself, so an all-padding group has no empty attention row
            own = torch.eye(K, dtype=torch.bool, device=gm.device)
            x = self.inner(x, gm.unsqueeze(1) | own) * gm.unsqueeze(-1)
        return self.merge(x.reshape(R, G, -1)), gm.reshape(R, G, K).any(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        g = batch["req_index"]
        merged, gmask = self.merged_sequence(batch)
        merged, gmask = merged[g], gmask[g]
        B, G, k, m = merged.shape[0], self.G, self.k, self.m
        cand = self.emb.candidate(batch)
        ns = self.emb.ns_flat(batch)
        glob = torch.cat(
            [
                self.target_proj(cand).unsqueeze(1),
                self.user_proj(ns).unsqueeze(1),
                self.cls.unsqueeze(0).expand(B, -1, -1),
            ],
            1,
        )  # (B, m, ds)
        qmask = gmask[:, G - k :]
        ones = torch.ones(B, m, dtype=torch.bool, device=gmask.device)
        # layer 1, cross-causal: query i (global, or merged position G-k+j) over [global ; merged]
        qpos = torch.cat(
            [torch.full((m,), G, device=gmask.device), torch.arange(G - k, G, device=gmask.device)]
        )
        causal = torch.arange(G, device=gmask.device).unsqueeze(0) <= qpos.unsqueeze(1)  # (m+k, G)
        allowed1 = torch.cat(
            [ones.unsqueeze(1).expand(B, m + k, m), gmask.unsqueeze(1) & causal], -1
        )
        x = torch.cat([glob, merged[:, G - k :]], 1)
        x = self.layers[0](x, allowed1, kv=torch.cat([glob, merged], 1))
        # layers 2.., self-causal over the m + k tokens
        qcausal = causal[:, G - k :]  # (m+k, k)
        allowed = torch.cat(
            [ones.unsqueeze(1).expand(B, m + k, m), qmask.unsqueeze(1) & qcausal], -1
        )
        for layer in self.layers[1:]:
            x = layer(x, allowed)
        x = self.out_ln(x)
        w = qmask.unsqueeze(-1).to(x.dtype)
        seq_mean = (x[:, m:] * w).sum(1) / w.sum(1).clamp_min(1.0)
        seq = torch.cat([x[:, :m].flatten(1), seq_mean], -1)
        return self.towers(self.mixer(self.emb.grouped(batch, cand, seq)))

    def aux_loss(self) -> torch.Tensor | None:
        return self.mixer.aux_loss()

    def flops_per_example(self) -> dict[str, float]:
        c, L, K, G, k, m = self.cfg, self.spec.seq_len, self.cfg.merge_k, self.G, self.k, self.m
        di = self.emb.item_dim
        f = mm_flops(L, di + self.emb.ctx_dim, c.d_inner)
        if self.inner is not None:
            f += G * self.inner.flops(K, K)
        f += (
            mm_flops(G, K * c.d_inner, c.d_seq)
            + mm_flops(1, di, c.d_seq)
            + mm_flops(1, self.emb.ns_dim, c.d_seq)
        )
        f += self.layers[0].flops(m + k, m + G) + sum(
            layer.flops(m + k, m + k) for layer in self.layers[1:]
        )
        return train_flops(f + self.mixer.flops() + self.towers.flops())


# the execution switch (harness: train.attention): the attention backend, "auto" = "reference"
# (model/attention.py choose_explicit_mask_backend); the same function under each backend
EXECUTION = ("attention",)


def build(spec: FeatureSpec, config: Config, *, attention: str = "auto") -> RankMixerLonger:
    return RankMixerLonger(spec, config, attention)
