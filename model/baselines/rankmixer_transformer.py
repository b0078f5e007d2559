"""RankMixer + Transformer (Table 2: 109M dense params, 2.51 TFLOPs; the previous production model).

BST-style sequence module: every event (item-space embedding + behaviour-type and time-gap
embeddings, projected to d_seq) plus the target item as one more token go through a bidirectional
pre-LN Transformer encoder (padding masked). Because the target token sits inside the encoder the
sequence is encoded per impression, as in BST. Pooled output = [target token, masked mean of the
event tokens]; it forms RankMixer's sequence group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
    d_seq: int = 128
    seq_layers: int = 2
    seq_heads: int = 4
    tower_hidden: int = 256


SIZES: dict[str, Config] = {
    "paper": Config(d_model=640),
    "mini": Config(
        emb_dim=16,
        d_seq=64,
        seq_layers=2,
        seq_heads=2,
        n_tokens=8,
        d_model=128,
        ffn_mult=2,
        tower_hidden=64,
    ),
    "tiny": Config(
        emb_dim=8,
        d_seq=16,
        seq_layers=1,
        seq_heads=2,
        n_tokens=4,
        d_model=16,
        ffn_mult=2,
        tower_hidden=8,
    ),
}


class RankMixerTransformer(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config, attention: str = "auto") -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        # (backend, reason), recorded in the run's provenance.json like OneTrans's decision
        self.attention_decision = choose_explicit_mask_backend(attention)
        self.emb = FeatureEmbedding(spec, cfg.emb_dim)
        di, ds = self.emb.item_dim, cfg.d_seq
        self.event_proj = nn.Linear(di + self.emb.ctx_dim, ds)
        self.target_proj = nn.Linear(di, ds)
        self.encoder = nn.ModuleList(
            TransformerLayer(ds, cfg.seq_heads, backend=self.attention_decision[0])
            for _ in range(cfg.seq_layers)
        )
        self.out_ln = nn.LayerNorm(ds)
        self.mixer = build_rankmixer(di + 2 * ds + self.emb.ns_dim, cfg)
        self.towers = TaskTowers(cfg.d_model, cfg.tower_hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        e, ctx, mask = self.emb.events(batch)
        g = batch["req_index"]
        events = self.event_proj(torch.cat([e, ctx], -1))[
            g
        ]  # (B, L, ds), per request then gathered
        mask = mask[g]
        cand = self.emb.candidate(batch)
        x = torch.cat([events, self.target_proj(cand).unsqueeze(1)], 1)  # target is the last token
        keys = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)  # padded events are never keys
        allowed = keys.unsqueeze(1)  # (B, 1, L+1)
        for layer in self.encoder:
            x = layer(x, allowed)
        x = self.out_ln(x)
        w = mask.unsqueeze(-1).to(x.dtype)
        seq_mean = (x[:, :-1] * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.towers(
            self.mixer(self.emb.grouped(batch, cand, torch.cat([x[:, -1], seq_mean], -1)))
        )

    def aux_loss(self) -> torch.Tensor | None:
        return self.mixer.aux_loss()

    def flops_per_example(self) -> dict[str, float]:
        L, ds, di = self.spec.seq_len, self.cfg.d_seq, self.emb.item_dim
        f = mm_flops(L, di + self.emb.ctx_dim, ds) + mm_flops(1, di, ds)
        f += sum(layer.flops(L + 1, L + 1) for layer in self.encoder)
        return train_flops(f + self.mixer.flops() + self.towers.flops())


# the execution switch (harness: train.attention): the attention backend, "auto" = "reference"
# (model/attention.py choose_explicit_mask_backend); the same function under each backend
EXECUTION = ("attention",)


def build(spec: FeatureSpec, config: Config, *, attention: str = "auto") -> RankMixerTransformer:
    return RankMixerTransformer(spec, config, attention)
