"""Wukong + DIN (Table 2: 28M dense params, 0.54 TFLOPs).

Field tokens (candidate fields, DIN-interest fields, NS categoricals, one numeric token; width
emb_dim) go through Wukong's interaction stack (Zhang et al. 2024):
    X_{i+1} = LN(concat(FMB(X_i), LCB(X_i)) + res(X_i))
FMB = MLP(LN(flatten(X (X^T Y)))) reshaped to n_fm tokens (compressed FM with learnable Y, n x k);
LCB = W_L X (n_lc tokens); res is a learned linear map over the token axis where the count changes.
The flattened output goes through a final MLP into per-task towers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base import RankingModel
from ..features import FeatureSpec
from .common import (
    MLP,
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
    n_layers: int = 3
    n_fm: int = 16  # tokens out of the FMB
    n_lc: int = 16  # tokens out of the LCB
    fm_rank: int = 32  # k: columns of the compressed-FM projection Y
    fmb_hidden: tuple[int, ...] = (2048, 2048)
    head_dims: tuple[int, ...] = (1024, 512)
    tower_hidden: int = 128


SIZES: dict[str, Config] = {
    "paper": Config(),
    "mini": Config(
        emb_dim=16,
        n_layers=2,
        n_fm=8,
        n_lc=8,
        fm_rank=8,
        fmb_hidden=(256,),
        head_dims=(128,),
        tower_hidden=64,
    ),
    "tiny": Config(
        emb_dim=8,
        din_hidden=8,
        n_layers=2,
        n_fm=4,
        n_lc=4,
        fm_rank=4,
        fmb_hidden=(16,),
        head_dims=(16,),
        tower_hidden=8,
    ),
}


class WukongLayer(nn.Module):
    def __init__(
        self, n_in: int, d: int, n_fm: int, n_lc: int, k: int, hidden: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.n_in, self.d, self.n_fm, self.n_lc, self.k = n_in, d, n_fm, n_lc, k
        self.Y = nn.Parameter(torch.randn(n_in, k) / n_in**0.5)
        self.fm_ln = nn.LayerNorm(n_in * k)
        self.fm_mlp = MLP((n_in * k, *hidden, n_fm * d), last_act=False)
        self.W_lc = nn.Parameter(torch.randn(n_lc, n_in) / n_in**0.5)
        n_out = n_fm + n_lc
        self.W_res = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5) if n_out != n_in else None
        self.ln = nn.LayerNorm(d)

    def fm(self, x: torch.Tensor) -> torch.Tensor:
        """Compressed FM, X (X^T Y): the n x k dot products of (X X^T) Y without the n x n matrix."""
        return torch.matmul(x, torch.einsum("bnd,nk->bdk", x, self.Y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        fm = self.fm(x)  # (B, n, k)
        fmb = self.fm_mlp(self.fm_ln(fm.flatten(1))).reshape(B, self.n_fm, self.d)
        lcb = torch.einsum("on,bnd->bod", self.W_lc, x)
        res = x if self.W_res is None else torch.einsum("on,bnd->bod", self.W_res, x)
        return self.ln(torch.cat([fmb, lcb], 1) + res)

    def flops(self) -> float:
        n, d, k = self.n_in, self.d, self.k
        f = 2 * mm_flops(n, d, k) + self.fm_mlp.flops() + mm_flops(self.n_lc, n, d)
        return f + (mm_flops(self.n_fm + self.n_lc, n, d) if self.W_res is not None else 0.0)


class WukongDIN(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        self.din = DINAttention(
            self.emb.item_dim, self.emb.ctx_dim, cfg.din_hidden, cfg.din_normalize
        )
        self.num_proj = nn.Linear(spec.n_num, cfg.emb_dim) if spec.n_num else None
        n = n_field_tokens(spec)
        layers = []
        for _ in range(cfg.n_layers):
            layers.append(
                WukongLayer(n, cfg.emb_dim, cfg.n_fm, cfg.n_lc, cfg.fm_rank, cfg.fmb_hidden)
            )
            n = cfg.n_fm + cfg.n_lc
        self.layers = nn.ModuleList(layers)
        self.head = MLP((n * cfg.emb_dim, *cfg.head_dims))
        self.towers = TaskTowers(
            cfg.head_dims[-1] if cfg.head_dims else n * cfg.emb_dim, cfg.tower_hidden
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        cand = self.emb.candidate(batch)
        x = field_tokens(
            self.emb, self.num_proj, batch, cand, self.din(cand, e[g], ctx[g], mask[g])
        )
        for layer in self.layers:
            x = layer(x)
        return self.towers(self.head(x.flatten(1)))

    def flops_per_example(self) -> dict[str, float]:
        f = self.din.flops(self.spec.seq_len)
        f += mm_flops(1, self.spec.n_num, self.cfg.emb_dim) if self.spec.n_num else 0.0
        f += sum(layer.flops() for layer in self.layers) + self.head.flops() + self.towers.flops()
        return train_flops(f)


def build(spec: FeatureSpec, config: Config) -> WukongDIN:
    return WukongDIN(spec, config)
