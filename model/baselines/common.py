"""Pieces shared by the Table 2 baselines (paper §4): feature embedding of the batch, DIN target
attention with Dice, Transformer layers (over model/attention.py's `attend`), the RankMixer backbone and task towers.

Every module here also knows its own analytic forward FLOPs (2 per multiply-accumulate, matmuls
only, per impression, biases and element-wise work ignored), which is exactly what
torch.utils.flop_counter.FlopCounterMode counts for the code paths below.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import EXPLICIT_MASK_BACKENDS, attend
from ..features import FeatureSpec

GROUPS = ("user", "item", "context")  # semantic-group order of the RankMixer input vector


def paper_layout_spec(seq_len: int = 1178) -> FeatureSpec:
    """The feature layout the paper-scale sizes are checked at: tiny_spec's field names with
    production-like vocabularies (Table 1: 10.2M items, 27.9M users) and L_S = 1178 events."""
    return FeatureSpec(
        item_vocab=10_200_000,
        side_names=("category", "brand", "price_bucket"),
        side_vocab=(5_000, 200_000, 50),
        cat_names=("user_id", "age_bucket", "hour", "device", "surface"),
        cat_vocab=(27_900_000, 10, 25, 8, 16),
        cat_groups=("user", "user", "context", "context", "context"),
        num_names=("price", "user_activity"),
        num_groups=("item", "user"),
        behavior_names=("click", "cart", "purchase"),
        intent_order=("purchase", "cart", "click"),
        n_gap_buckets=32,
        seq_len=seq_len,
    )


def mm_flops(m: float, k: float, n: float) -> float:
    """FLOPs of an (m x k) @ (k x n) product."""
    return 2.0 * m * k * n


# ----------------------------------------------------------------------------------------------
# Feature embedding
# ----------------------------------------------------------------------------------------------


class FeatureEmbedding(nn.Module):
    """Embeds a batch. Items and their side fields share tables between the sequence and the
    candidate (DIN compares them in one space). Side fields and NS categoricals each live in one
    offset table (one lookup per tensor instead of one per field). Padded events are zeroed, so
    padding content never reaches a model."""

    def __init__(self, spec: FeatureSpec, emb_dim: int) -> None:
        super().__init__()
        self.spec, self.d = spec, emb_dim
        self.item = nn.Embedding(spec.item_vocab, emb_dim)
        self.side = nn.Embedding(max(sum(spec.side_vocab), 1), emb_dim)
        self.cat = nn.Embedding(max(sum(spec.cat_vocab), 1), emb_dim)
        self.behavior = nn.Embedding(spec.n_behaviors + 1, emb_dim)
        self.gap = nn.Embedding(spec.n_gap_buckets, emb_dim)
        unknown = set(spec.cat_groups + spec.num_groups) - set(GROUPS)
        if unknown:  # RankMixer orders its input by these groups
            raise ValueError(
                f"FeatureSpec cat_groups/num_groups: unknown group(s) {sorted(unknown)}; "
                f"use one of {GROUPS} (the dataset's manifest.yaml sets them per field)"
            )
        self.register_buffer("side_off", _offsets(spec.side_vocab), persistent=False)
        self.register_buffer("cat_off", _offsets(spec.cat_vocab), persistent=False)

    @property
    def item_dim(self) -> int:
        """Width of an item-space vector: item id + side fields."""
        return (1 + self.spec.n_side) * self.d

    @property
    def ctx_dim(self) -> int:
        """Width of an event's context: behaviour type + time-gap bucket."""
        return 2 * self.d

    @property
    def ns_dim(self) -> int:
        return self.spec.n_cat * self.d + self.spec.n_num

    def item_space(self, item: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        parts = [self.item(item)]
        if self.spec.n_side:
            parts.append(self.side(side + self.side_off).flatten(-2))
        return torch.cat(parts, -1)

    def events(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per request: item-space e (R, L, item_dim), context (R, L, ctx_dim), mask (R, L)."""
        mask = batch["seq_mask"]
        keep = mask.unsqueeze(-1).to(self.item.weight.dtype)
        e = self.item_space(batch["seq_item"], batch["seq_side"]) * keep
        ctx = torch.cat([self.behavior(batch["seq_type"]), self.gap(batch["seq_gap"])], -1) * keep
        return e, ctx, mask

    def candidate(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_space(batch["cand_item"], batch["cand_side"])

    def ns_cat(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, Fc, d) embeddings of the NS categoricals."""
        return self.cat(batch["ns_cat"] + self.cat_off)

    def ns_flat(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, ns_dim): NS categorical embeddings, flattened, then the numeric features."""
        return torch.cat(
            [self.ns_cat(batch).flatten(1), batch["ns_num"].to(self.item.weight.dtype)], -1
        )

    def grouped(
        self, batch: dict[str, torch.Tensor], cand: torch.Tensor, seq: torch.Tensor
    ) -> torch.Tensor:
        """One vector ordered by semantic group (user | item | context | sequence), the input
        RankMixer slices into tokens: nearby columns then share a token."""
        spec = self.spec
        cat, num = self.ns_cat(batch), batch["ns_num"].to(cand.dtype)
        cat_g = spec.cat_groups or ("context",) * spec.n_cat
        num_g = spec.num_groups or ("context",) * spec.n_num
        parts: list[torch.Tensor] = []
        for g in GROUPS:
            ci = [i for i, x in enumerate(cat_g) if x == g]
            ni = [i for i, x in enumerate(num_g) if x == g]
            if g == "item":
                parts.append(cand)
            if ci:
                parts.append(cat[:, ci].flatten(1))
            if ni:
                parts.append(num[:, ni])
        parts.append(seq)
        return torch.cat(parts, -1)


def _offsets(vocab: tuple[int, ...]) -> torch.Tensor:
    """Start row of each field in its shared table."""
    return torch.tensor([0, *itertools.accumulate(vocab)][: len(vocab)], dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# DIN: Dice and target attention
# ----------------------------------------------------------------------------------------------


class Dice(nn.Module):
    """Dice (DIN paper): f(s) = p(s)*s + (1-p(s))*alpha*s, p = sigmoid of the batch-standardised s.
    Training uses batch statistics over the *real* positions only (a mask), so padded events do
    not shift them; eval uses moving averages."""

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.01) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            flat = s.reshape(-1, s.shape[-1]).float()
            w = mask.reshape(-1, 1).float() if mask is not None else torch.ones_like(flat[:, :1])
            n = w.sum().clamp_min(1.0)
            mean = (flat * w).sum(0) / n
            var = ((flat - mean).square() * w).sum(0) / n
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s.float() - mean) * torch.rsqrt(var + self.eps)).to(s.dtype)
        return p * s + (1 - p) * self.alpha * s


class DINAttention(nn.Module):
    """DIN target attention: weight_j = a([e_j, v, e_j - v, e_j * v, ctx_j]) with a small MLP
    (hidden -> Dice -> 1); the user interest is sum_j weight_j * e_j over the real events.

    normalize="softmax" (default) takes a masked softmax over the events, as DIN's public code
    does; "none" keeps the paper's raw weights (interest intensity), whose sum grows with the
    history length - at L ~ 1k events that makes the output scale depend on how long a user's
    history is, which is why softmax is the default here."""

    def __init__(
        self, item_dim: int, ctx_dim: int, hidden: int, normalize: str = "softmax"
    ) -> None:
        super().__init__()
        if normalize not in ("softmax", "none"):
            raise ValueError(
                f"DINAttention normalize must be 'softmax' or 'none', got {normalize!r}"
            )
        self.item_dim, self.ctx_dim, self.hidden, self.normalize = (
            item_dim,
            ctx_dim,
            hidden,
            normalize,
        )
        self.fc1 = nn.Linear(4 * item_dim + ctx_dim, hidden)
        self.dice = Dice(hidden)
        # a softmax ignores a shared shift, so the output bias would be a dead parameter there
        self.fc2 = nn.Linear(hidden, 1, bias=normalize == "none")

    def forward(
        self, q: torch.Tensor, e: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        v = q.unsqueeze(1).expand_as(e)
        a = self.fc2(self.dice(self.fc1(torch.cat([e, v, e - v, e * v, ctx], -1)), mask)).squeeze(
            -1
        )
        if self.normalize == "softmax":
            a = torch.softmax(a.masked_fill(~mask, torch.finfo(a.dtype).min), -1)
        a = a * mask  # also zeroes the uniform weights of a history with no real event
        return torch.einsum("bl,bld->bd", a, e)

    def flops(self, L: int) -> float:
        return L * (
            mm_flops(1, 4 * self.item_dim + self.ctx_dim, self.hidden) + mm_flops(1, self.hidden, 1)
        ) + mm_flops(1, L, self.item_dim)


# ----------------------------------------------------------------------------------------------
# Transformer layers (attention itself is model/attention.py's `attend`, explicit-mask form)
# ----------------------------------------------------------------------------------------------


class TransformerLayer(nn.Module):
    """Pre-LN Transformer layer; cross-attention when given separate key/value tokens. `backend`
    is the attention backend the model decided (choose_explicit_mask_backend: reference or sdpa)."""

    def __init__(self, d: int, n_heads: int, ffn_mult: int = 4, backend: str = "reference") -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"TransformerLayer: width {d} is not divisible by n_heads={n_heads}")
        if backend not in EXPLICIT_MASK_BACKENDS:
            raise ValueError(
                f"TransformerLayer backend must be one of {EXPLICIT_MASK_BACKENDS}, got {backend!r}"
            )
        self.d, self.h, self.ffn_mult, self.backend = d, n_heads, ffn_mult, backend
        self.ln_q, self.ln_kv, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.wq, self.wkv, self.wo = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Linear(ffn_mult * d, d))

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (N, Lq, d); kv (N, Lk, d) or None (self-attention); allowed (N|1, Lq, Lk) bool."""
        N, Lq, d = x.shape
        q = self.wq(self.ln_q(x))
        k, v = self.wkv(self.ln_kv(x if kv is None else kv)).chunk(2, -1)
        split = lambda t: t.reshape(N, t.shape[1], self.h, d // self.h).transpose(1, 2)  # noqa: E731
        o = attend(split(q), split(k), split(v), backend=self.backend, allowed=allowed.unsqueeze(1))
        o = o.transpose(1, 2).reshape(N, Lq, d)
        x = x + self.wo(o)
        return x + self.ffn(self.ln_ffn(x))

    def flops(self, n_q: int, n_kv: int) -> float:
        d = self.d
        return (
            mm_flops(n_q, d, d)
            + mm_flops(n_kv, d, 2 * d)
            + 2 * mm_flops(n_q, d, n_kv)
            + mm_flops(n_q, d, d)
            + 2 * mm_flops(n_q, d, self.ffn_mult * d)
        )


# ----------------------------------------------------------------------------------------------
# RankMixer (Zhu et al. 2025): tokenisation, token mixing, per-token FFN / Sparse-MoE
# ----------------------------------------------------------------------------------------------


class PerTokenFFN(nn.Module):
    """Token t has its own 2-layer GELU FFN; all tokens in one batched einsum."""

    def __init__(self, T: int, d: int, hidden: int) -> None:
        super().__init__()
        self.T, self.d, self.hidden = T, d, hidden
        self.w1 = nn.Parameter(torch.randn(T, d, hidden) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(T, hidden))
        self.w2 = nn.Parameter(torch.randn(T, hidden, d) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(T, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(torch.einsum("btd,tdh->bth", x, self.w1) + self.b1)
        return torch.einsum("bth,thd->btd", h, self.w2) + self.b2

    def flops(self) -> float:
        return self.T * 2 * mm_flops(1, self.d, self.hidden)


class SparseMoEFFN(nn.Module):
    """RankMixer Sparse-MoE per-token FFN with ReLU routing and DTSI (dense-training,
    sparse-inference). Per token: n_experts GELU FFN experts and two routers (h_train, h_infer).
    Training output uses the mean of both routers' ReLU gates (so the task loss updates both);
    inference uses h_infer only. The L1 penalty lambda * sum(G_infer) is kept in `aux_loss`, and
    lambda adapts (multiplicatively) to pull the share of active gates towards `active_budget`.
    Experts are evaluated densely (the output is identical; a zero gate only skips work on
    hardware with sparse kernels)."""

    def __init__(
        self,
        T: int,
        d: int,
        hidden: int,
        n_experts: int,
        active_budget: float,
        l1_init: float = 1e-4,
        l1_rate: float = 0.01,
    ) -> None:
        super().__init__()
        self.T, self.d, self.hidden, self.E = T, d, hidden, n_experts
        self.budget, self.l1_rate = active_budget, l1_rate
        self.w1 = nn.Parameter(torch.randn(T, n_experts, d, hidden) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(T, n_experts, hidden))
        self.w2 = nn.Parameter(torch.randn(T, n_experts, hidden, d) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(T, n_experts, d))
        self.router_train = nn.Parameter(torch.randn(T, d, n_experts) / math.sqrt(d))
        self.router_infer = nn.Parameter(torch.randn(T, d, n_experts) / math.sqrt(d))
        self.register_buffer("l1_coef", torch.tensor(float(l1_init)))
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g_inf = F.relu(torch.einsum("btd,tde->bte", x, self.router_infer))
        if self.training:
            g_tr = F.relu(torch.einsum("btd,tde->bte", x, self.router_train))
            gates = 0.5 * (g_tr + g_inf)
            self.aux_loss = (
                self.l1_coef.clone() * g_inf.sum(-1).mean()
            )  # clone: the coef adapts in place below
            with torch.no_grad():  # adaptive L1: stronger when too many experts are active
                active = (g_inf > 0).float().mean()
                self.l1_coef.mul_(torch.exp(self.l1_rate * (active - self.budget) / self.budget))
        else:
            gates, self.aux_loss = g_inf, None
        h = F.gelu(torch.einsum("btd,tedh->bteh", x, self.w1) + self.b1)
        y = torch.einsum("bteh,tehd->bted", h, self.w2) + self.b2
        return torch.einsum("bte,bted->btd", gates, y)

    def flops(self) -> float:
        # two routers in training, one in eval: count the training forward (both)
        return self.T * (
            2 * mm_flops(1, self.d, self.E)
            + self.E * 2 * mm_flops(1, self.d, self.hidden)
            + mm_flops(1, self.E, self.d)
        )


def token_mix(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free multi-head token mixing with H = T heads: output token h is the concat over
    tokens t of head h of token t - a reshape and a transpose."""
    B, T, d = x.shape
    return x.reshape(B, T, T, d // T).transpose(1, 2).reshape(B, T, d)


class RankMixerBlock(nn.Module):
    """Post-LN: S = LN(TokenMixing(X) + X); X' = LN(PFFN(S) + S). Token mixing is parameter-free:
    each token splits into T heads and output token h gathers head h of every token."""

    def __init__(
        self, T: int, d: int, ffn_mult: int, n_experts: int = 0, active_budget: float = 0.5
    ) -> None:
        super().__init__()
        self.T = T
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = (
            SparseMoEFFN(T, d, ffn_mult * d, n_experts, active_budget)
            if n_experts
            else PerTokenFFN(T, d, ffn_mult * d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.ln1(token_mix(x) + x)
        return self.ln2(self.ffn(s) + s)


class RankMixer(nn.Module):
    """Input vector (semantic-group order) -> T tokens -> n_layers blocks -> mean-pooled (B, d).
    Tokenisation: the vector (zero-padded to T equal chunks) is sliced, chunk t projected to d by
    its own matrix."""

    def __init__(
        self,
        in_dim: int,
        *,
        n_tokens: int,
        d_model: int,
        n_layers: int,
        ffn_mult: int,
        n_experts: int = 0,
        active_budget: float = 0.5,
    ) -> None:
        super().__init__()
        if d_model % n_tokens:
            raise ValueError(
                f"RankMixer: d_model={d_model} must be divisible by n_tokens={n_tokens} "
                "(token mixing uses T heads of width d_model/T)"
            )
        self.in_dim, self.T, self.d = in_dim, n_tokens, d_model
        self.chunk = -(-in_dim // n_tokens)
        self.tok_w = nn.Parameter(
            torch.randn(n_tokens, self.chunk, d_model) / math.sqrt(self.chunk)
        )
        self.tok_b = nn.Parameter(torch.zeros(n_tokens, d_model))
        self.blocks = nn.ModuleList(
            RankMixerBlock(n_tokens, d_model, ffn_mult, n_experts, active_budget)
            for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.T * self.chunk - self.in_dim)).reshape(x.shape[0], self.T, self.chunk)
        h = torch.einsum("btc,tcd->btd", x, self.tok_w) + self.tok_b
        for blk in self.blocks:
            h = blk(h)
        return h.mean(1)

    def aux_loss(self) -> torch.Tensor | None:
        losses = [
            b.ffn.aux_loss
            for b in self.blocks
            if isinstance(b.ffn, SparseMoEFFN) and b.ffn.aux_loss is not None
        ]
        return torch.stack(losses).sum() if losses else None

    def flops(self) -> float:
        return self.T * mm_flops(1, self.chunk, self.d) + sum(b.ffn.flops() for b in self.blocks)


@dataclass(frozen=True, kw_only=True)
class MixerConfig:
    """The RankMixer backbone's settings, shared by the four RankMixer baselines: each one's Config
    inherits these fields (so `model.overrides` keep their flat names: d_model, n_tokens, ...) and
    builds its backbone with `build_rankmixer`."""

    n_tokens: int = 16  # T (RankMixer 100M: D=768, T=16, L=2)
    d_model: int = 768
    n_layers: int = 2
    ffn_mult: int = 4
    n_experts: int = 0  # > 0: Sparse-MoE per-token FFN (ReLU routing, DTSI)
    active_budget: float = 0.5  # target share of active experts (MoE only)


def build_rankmixer(in_dim: int, cfg: MixerConfig) -> RankMixer:
    """The one RankMixer construction of the baselines: the input vector's width and the mixer
    fields of the model's Config."""
    return RankMixer(
        in_dim,
        n_tokens=cfg.n_tokens,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        ffn_mult=cfg.ffn_mult,
        n_experts=cfg.n_experts,
        active_budget=cfg.active_budget,
    )


# ----------------------------------------------------------------------------------------------
# MLPs and task towers
# ----------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear layers with ReLU between (and after, unless last_act=False)."""

    def __init__(self, dims: tuple[int, ...], last_act: bool = True) -> None:
        super().__init__()
        self.dims = dims
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if last_act or i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def flops(self) -> float:
        return sum(mm_flops(1, a, b) for a, b in zip(self.dims[:-1], self.dims[1:]))


class TaskTowers(nn.Module):
    """One small MLP per task (ctr, cvr) -> logit."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.towers = nn.ModuleDict(
            {t: MLP((in_dim, hidden, 1), last_act=False) for t in ("ctr", "cvr")}
        )

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            t: m(x[t] if isinstance(x, dict) else x).squeeze(-1) for t, m in self.towers.items()
        }

    def flops(self) -> float:
        return sum(m.flops() for m in self.towers.values())


def train_flops(forward: float) -> dict[str, float]:
    """Matmul-dominated: backward = 2x forward."""
    return {"forward": float(forward), "train": 3.0 * float(forward)}


def field_tokens(
    emb: FeatureEmbedding,
    num_proj: nn.Module | None,
    batch: dict[str, torch.Tensor],
    cand: torch.Tensor,
    interest: torch.Tensor,
) -> torch.Tensor:
    """One emb_dim token per field: candidate item + side fields, the DIN interest split the same
    way, each NS categorical, and one token projected from the numerics (Wukong / HiFormer input)."""
    B, d = cand.shape[0], emb.d
    parts = [cand.reshape(B, -1, d), interest.reshape(B, -1, d), emb.ns_cat(batch)]
    if num_proj is not None:
        parts.append(num_proj(batch["ns_num"].to(cand.dtype)).unsqueeze(1))
    return torch.cat(parts, 1)


def n_field_tokens(spec: FeatureSpec) -> int:
    return 2 * (1 + spec.n_side) + spec.n_cat + (1 if spec.n_num else 0)
