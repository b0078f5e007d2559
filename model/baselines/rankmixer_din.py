"""RankMixer + DIN (Table 2: 107M dense params, 1.31 TFLOPs; deployed in production).

DIN target attention pools the behaviour sequence into a user-interest vector; with the NS
features and the candidate it forms the semantic-group-ordered input of RankMixer (tokenise,
token mixing, per-token FFN or Sparse-MoE), mean-pooled into per-task towers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import RankingModel
from ..features import FeatureSpec
from .common import (
    DINAttention,
    FeatureEmbedding,
    MixerConfig,
    TaskTowers,
    build_rankmixer,
    train_flops,
)


@dataclass(frozen=True, kw_only=True)
class Config(MixerConfig):  # + n_tokens, d_model, n_layers, ffn_mult, n_experts, active_budget
    emb_dim: int = 64
    din_hidden: int = 36
    din_normalize: str = "softmax"  # "softmax" | "none"
    tower_hidden: int = 256


SIZES: dict[str, Config] = {
    "paper": Config(ffn_mult=4, d_model=640),
    "mini": Config(emb_dim=16, n_tokens=8, d_model=128, n_layers=2, ffn_mult=2, tower_hidden=64),
    "tiny": Config(
        emb_dim=8, din_hidden=8, n_tokens=4, d_model=16, n_layers=2, ffn_mult=2, tower_hidden=8
    ),
}


class RankMixerDIN(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        self.din = DINAttention(
            self.emb.item_dim, self.emb.ctx_dim, cfg.din_hidden, cfg.din_normalize
        )
        self.mixer = build_rankmixer(2 * self.emb.item_dim + self.emb.ns_dim, cfg)
        self.towers = TaskTowers(cfg.d_model, cfg.tower_hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        cand = self.emb.candidate(batch)
        interest = self.din(cand, e[g], ctx[g], mask[g])
        return self.towers(self.mixer(self.emb.grouped(batch, cand, interest)))

    def aux_loss(self) -> torch.Tensor | None:
        """Sparse-MoE L1 routing penalty of the last training forward (None without MoE)."""
        return self.mixer.aux_loss()

    def flops_per_example(self) -> dict[str, float]:
        return train_flops(
            self.din.flops(self.spec.seq_len) + self.mixer.flops() + self.towers.flops()
        )


def build(spec: FeatureSpec, config: Config) -> RankMixerDIN:
    return RankMixerDIN(spec, config)
