"""DCNv2 + DIN: the paper's production base (Table 2: 10M dense params, 0.06 TFLOPs).

DIN target attention turns the behaviour sequence into a user-interest vector for the candidate;
x0 = [candidate, interest, NS embeddings, numerics] feeds a DCNv2 cross network (full-rank or
low-rank cross layers) combined with a deep MLP, stacked (cross -> MLP) or parallel (both on x0,
concatenated), then per-task towers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base import RankingModel
from ..features import FeatureSpec
from .common import MLP, DINAttention, FeatureEmbedding, TaskTowers, mm_flops, train_flops


@dataclass(frozen=True, kw_only=True)
class Config:
    emb_dim: int = 64
    din_hidden: int = 36  # DIN paper's activation-unit width
    din_normalize: str = "softmax"  # "softmax" | "none" (paper's raw weights)
    n_cross: int = 3
    cross_rank: int = 0  # 0 = full-rank W; r > 0 = low-rank U V^T
    structure: str = "stacked"  # "stacked" (cross -> MLP) | "parallel" (cross || MLP)
    mlp_dims: tuple[int, ...] = (1024, 1024, 512)
    tower_hidden: int = 128


SIZES: dict[str, Config] = {
    "paper": Config(n_cross=3, mlp_dims=(2048, 2048, 1024, 512)),
    "mini": Config(emb_dim=16, din_hidden=36, n_cross=2, mlp_dims=(256, 128), tower_hidden=64),
    "tiny": Config(emb_dim=8, din_hidden=8, n_cross=2, mlp_dims=(32, 16), tower_hidden=8),
}


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l, with W full-rank or U V^T."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.dim, self.rank = dim, rank
        self.proj = (
            nn.Linear(dim, dim)
            if rank == 0
            else nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
        )

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.proj(x) + x

    def flops(self) -> float:
        return (
            mm_flops(1, self.dim, self.dim)
            if self.rank == 0
            else 2 * mm_flops(1, self.dim, self.rank)
        )


class DCNv2DIN(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config) -> None:
        super().__init__()
        if cfg.structure not in ("stacked", "parallel"):
            raise ValueError(
                f"dcnv2_din structure must be 'stacked' or 'parallel', got {cfg.structure!r}"
            )
        self.spec, self.cfg = spec, cfg
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        self.din = DINAttention(
            self.emb.item_dim, self.emb.ctx_dim, cfg.din_hidden, cfg.din_normalize
        )
        d0 = 2 * self.emb.item_dim + self.emb.ns_dim
        self.cross = nn.ModuleList(CrossLayer(d0, cfg.cross_rank) for _ in range(cfg.n_cross))
        self.deep = MLP((d0, *cfg.mlp_dims))
        out = cfg.mlp_dims[-1] if cfg.structure == "stacked" else d0 + cfg.mlp_dims[-1]
        self.towers = TaskTowers(out, cfg.tower_hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        cand = self.emb.candidate(batch)
        interest = self.din(cand, e[g], ctx[g], mask[g])
        x0 = torch.cat([cand, interest, self.emb.ns_flat(batch)], -1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        h = self.deep(x) if self.cfg.structure == "stacked" else torch.cat([x, self.deep(x0)], -1)
        return self.towers(h)

    def flops_per_example(self) -> dict[str, float]:
        f = (
            self.din.flops(self.spec.seq_len)
            + sum(c.flops() for c in self.cross)
            + self.deep.flops()
            + self.towers.flops()
        )
        return train_flops(f)


def build(spec: FeatureSpec, config: Config) -> DCNv2DIN:
    return DCNv2DIN(spec, config)
