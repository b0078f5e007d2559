"""RankMixer + StackDIN (Table 2: 108M dense params, 1.43 TFLOPs).

StackDIN is not defined in the paper. Reading used here: n_din_layers DIN target-attention layers
stacked, each querying the sequence with a query refined by the previous layer's interest
(q_{l+1} = LN(q_l + W_l u_l)); every layer's interest vector enters RankMixer's sequence group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base import RankingModel
from ..features import FeatureSpec
from .common import (
    DINAttention,
    FeatureEmbedding,
    MixerConfig,
    TaskTowers,
    build_rankmixer,
    mm_flops,
    train_flops,
)


@dataclass(frozen=True, kw_only=True)
class Config(MixerConfig):  # + n_tokens, d_model, n_layers, ffn_mult, n_experts, active_budget
    emb_dim: int = 64
    din_hidden: int = 36
    din_normalize: str = "softmax"
    n_din_layers: int = 3
    tower_hidden: int = 256


SIZES: dict[str, Config] = {
    "paper": Config(d_model=640),
    "mini": Config(
        emb_dim=16, n_din_layers=2, n_tokens=8, d_model=128, ffn_mult=2, tower_hidden=64
    ),
    "tiny": Config(
        emb_dim=8, din_hidden=8, n_din_layers=2, n_tokens=4, d_model=16, ffn_mult=2, tower_hidden=8
    ),
}


class RankMixerStackDIN(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config) -> None:
        super().__init__()
        if cfg.n_din_layers < 1:
            raise ValueError(
                f"rankmixer_stackdin n_din_layers must be >= 1, got {cfg.n_din_layers}"
            )
        self.spec, self.cfg = spec, cfg
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        di = self.emb.item_dim
        self.dins = nn.ModuleList(
            DINAttention(di, self.emb.ctx_dim, cfg.din_hidden, cfg.din_normalize)
            for _ in range(cfg.n_din_layers)
        )
        # query refinement between consecutive DIN layers
        self.refine = nn.ModuleList(nn.Linear(di, di) for _ in range(cfg.n_din_layers - 1))
        self.refine_ln = nn.ModuleList(nn.LayerNorm(di) for _ in range(cfg.n_din_layers - 1))
        self.mixer = build_rankmixer(di * (1 + cfg.n_din_layers) + self.emb.ns_dim, cfg)
        self.towers = TaskTowers(cfg.d_model, cfg.tower_hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        e, ctx, mask = e[g], ctx[g], mask[g]
        cand = self.emb.candidate(batch)
        q, interests = cand, []
        for i, din in enumerate(self.dins):
            u = din(q, e, ctx, mask)
            interests.append(u)
            if i < len(self.refine):
                q = self.refine_ln[i](q + self.refine[i](u))
        return self.towers(self.mixer(self.emb.grouped(batch, cand, torch.cat(interests, -1))))

    def aux_loss(self) -> torch.Tensor | None:
        return self.mixer.aux_loss()

    def flops_per_example(self) -> dict[str, float]:
        di = self.emb.item_dim
        f = sum(d.flops(self.spec.seq_len) for d in self.dins) + len(self.refine) * mm_flops(
            1, di, di
        )
        return train_flops(f + self.mixer.flops() + self.towers.flops())


def build(spec: FeatureSpec, config: Config) -> RankMixerStackDIN:
    return RankMixerStackDIN(spec, config)
