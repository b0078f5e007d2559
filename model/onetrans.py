"""OneTrans: one causal Transformer over [S-tokens ; NS-tokens] (Zhang et al., WWW 2026, arXiv 2510.26104).

Reading order: Config -> pyramid schedule -> tokenizers (S side, NS side) -> block -> model
(forward, accounting) -> SIZES and build(). The spec is ../shared/paper/onetrans-spec.md; the
choices it leaves open are taken from its §5 and written down in docs/model.md.

Shapes: R requests, B impressions (batch["req_index"] maps impression -> request), L events per
sequence (left padded), L_S S-tokens (L, plus n_behaviors-1 [SEP] tokens in intent mode),
N = n_ns_tokens NS-tokens, d = d_model, H heads.

The S side and the NS side stay separate tensors through every block (x_s, x_ns) and only meet
inside attention, where NS queries read S keys. S-tokens never read NS-tokens (the causal mask
puts NS last), so everything computed for x_s depends on the request's sequence alone; that is
what KV-cached two-stage scoring and request-level training build on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import REQUESTS as ATTENTION_REQUESTS
from .attention import SharedKeys, attend, choose_backend
from .base import RankingModel
from .features import TASKS, FeatureSpec
from .flops import TRAIN_MULTIPLIER, attention_flops, attention_flops_causal, linear_flops
from .layers import MixedLinear, RMSNorm


@dataclass(frozen=True, kw_only=True)
class Config:
    """OneTrans hyper-parameters. Defaults are the paper's OneTrans-S and its default choices;
    every Table 3 ablation is one field (noted "ablation")."""

    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 4
    n_ns_tokens: int = 12  # L_NS (= the pyramid end point, spec §5.1)
    ffn_mult: int = 4  # FFN hidden = ffn_mult * d_model, GELU (spec §5.9)
    emb_dim: int = 16  # width of every sparse embedding (item, side, categorical)
    s_hidden: int = 0  # hidden width of each behaviour's S MLP; 0 = d_model
    ns_hidden: int = 0  # hidden width of the NS tokenizer MLP; 0 = n_ns_tokens * d_model
    head_hidden: int = 512  # hidden width of each task tower
    # --- input (Table 3 "input" rows)
    seq_fusion: Literal["timestamp", "intent", "intent_nosep"] = (
        "timestamp"  # ablation: intent order with/without [SEP]
    )
    ns_tokenizer: Literal["auto_split", "group"] = "auto_split"  # ablation: group-wise
    type_embedding: bool = True  # behaviour-type indicator added to S-tokens (timestamp mode only)
    gap_embedding: bool = False  # time-gap bucket embedding on S-tokens (not in the paper)
    # a learned logit per head and layer by an S key's rank from the most recent event, added when
    # the NS queries (the readout) attend to the history; zero at init (the paper's model), not in
    # the paper. The readout's softmax over the kept S keys cannot cut "the last W events" out of
    # them on its own (qk_norm bounds its logits; a rank in the token did not do it); an unbounded
    # bias per rank can. S queries get none, so S tokens stay independent of later events and the
    # KV cache exact (docs/learning-history.md section 22)
    recency_bias: bool = False
    # --- learnability switches (not in the paper; docs/learning-history.md has the measurements)
    shared_side_tables: bool = (
        False  # candidate side fields read the S side's tables (paper: silent;
    )
    # only the item id table is shared when False)
    tokenizer_skip: bool = False  # a bias-free linear path beside every tokenizer MLP
    # candidate and history tokens start matched (OneTrans._match_init; needs the two switches above)
    match_init: bool = False
    # keep them matched while training: the NS linear path reads the candidate's [item ; side
    # fields] through the S skip itself (one shared map) instead of a copy that drifts away from it
    # at a high learning rate (docs/learning-history.md section 14; needs match_init)
    match_tie: bool = False
    # per-head RMSNorm of queries and keys before the dot product (not in the paper): logits become
    # scaled cosines, bounded by sqrt(head_dim), so a candidate/event match is a large logit from the
    # start and a high learning rate cannot blow the logits up (docs/learning-history.md, section 11)
    qk_norm: bool = False
    # a zero-initialised linear logit per task over the NS numeric features, added to the task
    # towers' logits (a "wide" path; not in the paper). The towers read the final RMSNorm's output,
    # which is scale-invariant per token, so a numeric that drifts past its train range (an item's
    # popularity so far grows through a log) reaches them only as a direction; a linear logit
    # extrapolates it as a logistic regression does (docs/learning-history.md section 19)
    wide_numeric: bool = False
    type_emb_init_std: float = 0.02  # init std of the type / gap embeddings (1.0 = nn.Embedding's)
    # --- block (Table 3 "block" rows)
    mixed_params: bool = True  # ablation False: one parameter set for all tokens
    out_proj: Literal["mixed", "shared"] = "mixed"  # W_O mixed like Q/K/V (spec §5.8) or shared
    causal: bool = True  # ablation False: full attention (still tail queries)
    pyramid: bool = True  # ablation False: keep every token in every layer
    pyramid_end: Literal["A", "B"] = (
        "A"  # A: list ends at L_NS tokens; B: L_NS S-tokens survive too
    )
    prune_first_layer: bool = True  # False: layer 1 keeps all tokens, pruning starts at layer 2
    pyramid_multiple: int = 32  # intermediate lengths rounded to this multiple
    norm_eps: float = 1e-6
    # execution (never changes the function, only speed/memory): the attention backend,
    # recomputation, compilation and the request-level S side are build() keywords, not fields
    # (EXECUTION, below the sizes; the harness sets them from train.*)

    def __post_init__(self) -> None:
        def check(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"onetrans Config.{field}: {msg}")

        for f in (
            "n_layers",
            "d_model",
            "n_heads",
            "n_ns_tokens",
            "ffn_mult",
            "emb_dim",
            "head_hidden",
            "pyramid_multiple",
        ):
            check(getattr(self, f) >= 1, f, f"must be >= 1, got {getattr(self, f)}")
        check(
            self.s_hidden >= 0 and self.ns_hidden >= 0,
            "s_hidden/ns_hidden",
            "must be >= 0 (0 = default)",
        )
        check(
            self.d_model % self.n_heads == 0,
            "d_model",
            f"{self.d_model} is not divisible by n_heads={self.n_heads}; pick d_model = n_heads * head_dim",
        )
        choices = {
            "seq_fusion": ("timestamp", "intent", "intent_nosep"),
            "ns_tokenizer": ("auto_split", "group"),
            "out_proj": ("mixed", "shared"),
            "pyramid_end": ("A", "B"),
        }
        for f, options in choices.items():
            check(getattr(self, f) in options, f, f"{getattr(self, f)!r} is not one of {options}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# ----------------------------------------------------------------------------------------------
# Pyramid schedule
# ----------------------------------------------------------------------------------------------


def pyramid_schedule(
    n_tokens: int, end: int, n_layers: int, *, prune_first_layer: bool = True, multiple: int = 32
) -> list[int]:
    """Total tokens kept after each layer: linear from n_tokens down to `end`, the intermediate
    values rounded to the nearest multiple (spec §1.3 tables), clamped into [end, previous]."""
    if not 1 <= end <= n_tokens:
        raise ValueError(f"pyramid end {end} must lie in [1, n_tokens={n_tokens}]")
    if n_layers == 1:
        return [end]  # a single layer must end where the heads read, whether or not it "prunes"
    steps = n_layers if prune_first_layer else n_layers - 1
    kept = [] if prune_first_layer else [n_tokens]
    prev = n_tokens
    for i in range(1, steps + 1):
        if i == steps:
            k = end
        else:
            exact = n_tokens + (end - n_tokens) * i / steps
            k = int(math.floor(exact / multiple + 0.5)) * multiple
            k = min(max(k, end), prev)
        kept.append(k)
        prev = k
    return kept[:n_layers]


# ----------------------------------------------------------------------------------------------
# Recency bias (Config.recency_bias)
# ----------------------------------------------------------------------------------------------

# Ranks 0..15 from the most recent event get a bucket each (short windows are cut exactly); beyond,
# four buckets per doubling (16-19, 20-22, 23-26, 27-31, 32-38, ...); the last of 48 holds every
# rank from about 3,400 on, past the longest sequence of the paper (2048).
RECENCY_EXACT, RECENCY_BUCKETS = 16, 48
# The stored table is multiplied by this: an AdamW step moves a parameter by about lr, and cutting a
# window needs logits of order -10 within a few thousand steps (docs/learning-history.md section 22:
# at x1 the count rule reached 0.86 / 0.85, at x10 0.93 / 0.90, DCNv2+DIN 0.87 / 0.84)
RECENCY_BIAS_SCALE = 10.0


def rank_from_end(valid: torch.Tensor) -> torch.Tensor:
    """(rows, T) bool, chronological -> (rows, T) long: real events after each position (0 = the most
    recent event). Any padding layout; the value at a padded position is not used."""
    v = valid.to(torch.long)
    return v.flip(-1).cumsum(-1).flip(-1) - v


def recency_bucket(rank: torch.Tensor) -> torch.Tensor:
    """Rank from the end -> bucket id in [0, RECENCY_BUCKETS): exact below RECENCY_EXACT, then four
    per doubling."""
    far = RECENCY_EXACT + torch.floor(
        4 * torch.log2(rank.clamp(min=RECENCY_EXACT).to(torch.float32) / RECENCY_EXACT)
    ).to(torch.long)
    return torch.where(rank < RECENCY_EXACT, rank, far).clamp(0, RECENCY_BUCKETS - 1)


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


class FieldEmbedding(nn.Module):
    """Several categorical fields in one table (row offsets per field): one lookup for all."""

    def __init__(self, vocabs: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.n_fields, self.dim = len(vocabs), dim
        # no table at all without fields: an unused parameter would break DDP and the counts
        self.table = nn.Embedding(sum(vocabs), dim) if vocabs else None
        self.register_buffer(
            "offsets",
            torch.tensor([0, *vocabs[:-1]], dtype=torch.long).cumsum(0)[: len(vocabs)],
            persistent=False,
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., F) ids -> (..., F * dim)."""
        if self.table is None:
            return torch.zeros(*ids.shape[:-1], 0, device=ids.device)
        return self.table(ids + self.offsets).flatten(-2)


class SequenceTokenizer(nn.Module):
    """Events -> S-tokens. One MLP per behaviour type (shared over that type's events), then
    timestamp-aware interleave + type embedding (default) or intent-ordered groups with [SEP].

    The per-type MLPs are stored as two plain Linear layers over a scattered input: the input sits in
    the event type's slot of a (K * width) vector, followed by a one-hot for the per-type bias, so
    W[type] applies without a loop or a weight gather; the cost is K x one MLP, counted as such in
    the FLOPs. Two ways to run them, same parameters, same function (tested):
      gather (fused=True, default): one GEMM of the (aligned) input against all K types' weights,
        (..., width) -> (..., K, out), then each event's own type row is gathered and its bias
        added: no scattered (..., K*width) copy, no concatenation, and GEMM widths that are
        multiples of 8 (the scattered widths K*(width+1) = 243 / 1155 at OneTrans-L ran as slow
        align1 kernels and needed fp32 scatter + cat passes of (N, 1155) under autocast).
      scatter (fused=False): the plain scattered GEMM, the reference.
    """

    def __init__(self, spec: FeatureSpec, cfg: Config, item_emb: nn.Embedding) -> None:
        super().__init__()
        self.cfg, self.k = cfg, spec.n_behaviors
        self.item_emb = item_emb  # shared with the candidate item (same id space and table)
        self.side_emb = FieldEmbedding(spec.side_vocab, cfg.emb_dim)
        self.d_in = cfg.emb_dim * (1 + spec.n_side)
        self.hidden = cfg.s_hidden or cfg.d_model
        self.fc1 = nn.Linear(self.k * (self.d_in + 1), self.hidden, bias=False)
        self.fc2 = nn.Linear(self.k * (self.hidden + 1), cfg.d_model, bias=False)
        # Optional linear path (tokenizer_skip): without it an event's field embeddings reach the block
        # only through a random GELU MLP, which makes matching them against the candidate very slow to
        # learn. One map for every behaviour type, so an event's content lands where the candidate's does.
        self.skip = nn.Linear(self.d_in, cfg.d_model, bias=False) if cfg.tokenizer_skip else None
        self.type_emb = (
            nn.Embedding(self.k + 1, cfg.d_model)
            if cfg.type_embedding and cfg.seq_fusion == "timestamp"
            else None
        )
        self.gap_emb = nn.Embedding(spec.n_gap_buckets, cfg.d_model) if cfg.gap_embedding else None
        # Type / gap embeddings are added to the event's content token. nn.Embedding's N(0, 1) init
        # gives them norm ~sqrt(d_model), far above the content (~1 per unit after the MLP), so after
        # the block's RMSNorm every key is mostly "which behaviour type", and matching the candidate
        # against the history's content is not learned (docs/learning-history.md, row E5).
        for emb in (self.type_emb, self.gap_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=cfg.type_emb_init_std)
        self.fused = True  # execution switch: gather path (True) or the scatter reference (False)
        self.n_sep = self.k - 1 if cfg.seq_fusion == "intent" else 0
        self.sep = nn.Parameter(torch.randn(self.n_sep, cfg.d_model) * 0.02) if self.n_sep else None
        # intent rank per type id (index 0 = padding); lower rank = higher intent = earlier
        self.register_buffer(
            "rank", torch.tensor([0, *spec.intent_rank()], dtype=torch.long), persistent=False
        )

    def n_tokens(self, seq_len: int) -> int:
        return seq_len + self.n_sep

    def _per_type(self, fc: nn.Linear, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Scatter reference: (..., width) -> (..., out) with W[type] (zero for type 0 = padding)."""
        scattered = (onehot.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (..., K * width)
        return fc(torch.cat([scattered, onehot], -1))

    def _per_type_gather(
        self, fc: nn.Linear, x: torch.Tensor, seq_type: torch.Tensor
    ) -> torch.Tensor:
        """The same map as _per_type from the same fc.weight (out, K*width + K), without the scatter:
        y = x @ [W_1; ..; W_K]^T -> (..., K, out), row type-1 gathered, + bias[type]; type 0 -> 0."""
        k, width = self.k, x.shape[-1]
        w = fc.weight
        out = w.shape[0]
        w_all = w[:, : k * width].unflatten(1, (k, width)).transpose(0, 1).reshape(k * out, width)
        y = F.linear(x, w_all).unflatten(-1, (k, out))  # (..., K, out)
        idx = (seq_type - 1).clamp(min=0)[..., None, None].expand(*seq_type.shape, 1, out)
        picked = y.gather(-2, idx).squeeze(-2)
        bias = F.pad(w[:, k * width :].t(), (0, 0, 1, 0)).to(picked.dtype)  # (K+1, out), row 0 = 0
        keep = (seq_type > 0).unsqueeze(-1).to(picked.dtype)
        return (picked + F.embedding(seq_type, bias)) * keep

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> tokens (R, L_S, d), valid (R, L_S) bool; padded tokens are exactly zero."""
        seq_type, valid = batch["seq_type"], batch["seq_mask"]
        e = torch.cat([self.item_emb(batch["seq_item"]), self.side_emb(batch["seq_side"])], -1)
        if self.fused:
            h = F.gelu(self._per_type_gather(self.fc1, e, seq_type))
            x = self._per_type_gather(self.fc2, h, seq_type)
        else:
            onehot = F.one_hot(seq_type, self.k + 1)[..., 1:].to(e.dtype)  # padding -> all zeros
            h = F.gelu(self._per_type(self.fc1, e, onehot))
            x = self._per_type(self.fc2, h, onehot)
        if self.skip is not None:
            x = x + self.skip(e)
        if self.type_emb is not None:
            x = x + self.type_emb(seq_type)
        if self.gap_emb is not None:
            x = x + self.gap_emb(batch["seq_gap"])
        x = x * valid.unsqueeze(-1).to(x.dtype)
        if self.cfg.seq_fusion == "timestamp":
            return x, valid
        return self._intent_order(x, valid, seq_type)

    def _intent_order(self, x: torch.Tensor, valid: torch.Tensor, seq_type: torch.Tensor):
        """Stable sort by key: padding (-1) first, then type groups by intent rank r (key 2r), the
        [SEP] between groups r and r+1 at key 2r+1. A stable sort keeps time order inside a group;
        empty groups simply leave adjacent [SEP]s (the token count stays static)."""
        R = x.shape[0]
        key = torch.where(valid, 2 * self.rank[seq_type], torch.full_like(seq_type, -1))
        if self.n_sep:
            sep_key = (2 * torch.arange(self.n_sep, device=x.device) + 1).expand(R, -1)
            key = torch.cat([key, sep_key], 1)
            x = torch.cat([x, self.sep.to(x.dtype).expand(R, -1, -1)], 1)
            valid = torch.cat([valid, torch.ones_like(sep_key, dtype=torch.bool)], 1)
        order = torch.sort(key, dim=1, stable=True).indices
        return x.gather(1, order.unsqueeze(-1).expand_as(x)), valid.gather(1, order)


def ns_groups(spec: FeatureSpec) -> list[tuple[str, list[int]]]:
    """Semantic groups for the group-wise tokenizer: (name, column indices into the concatenated NS
    vector [cand_item, cand_side, ns_cat, ns_num] in units of 'features'). The candidate item and
    its side fields form "item"; ns_cat / ns_num go to their declared group ("other" if none)."""
    names = ["item"] * (1 + spec.n_side)
    names += list(spec.cat_groups) if spec.cat_groups else ["other"] * spec.n_cat
    names += list(spec.num_groups) if spec.num_groups else ["other"] * spec.n_num
    order = [g for g in ("item", "user", "context") if g in names] + sorted(
        set(names) - {"item", "user", "context"}
    )
    return [(g, [i for i, n in enumerate(names) if n == g]) for g in order]


class NonSequenceTokenizer(nn.Module):
    """NS features -> N tokens. Auto-Split (default): concat everything -> one MLP -> N*d -> split.
    Group-wise (ablation): one MLP per semantic group, the N tokens split evenly over groups."""

    def __init__(
        self,
        spec: FeatureSpec,
        cfg: Config,
        item_emb: nn.Embedding,
        side_emb: FieldEmbedding | None = None,
        tied_skip: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        # match_tie: the S tokenizer's skip, read by the first group for its leading
        # [item ; side fields] columns (a shared module, so one set of weights)
        self.tied_skip = tied_skip
        self.n_tied = tied_skip.in_features if tied_skip is not None else 0
        self.item_emb = item_emb
        # shared_side_tables: the S tokenizer's table, so a candidate's brand is the same vector as
        # the same brand in the history (as for the item id, which is always shared)
        self.side_emb = (
            side_emb if side_emb is not None else FieldEmbedding(spec.side_vocab, cfg.emb_dim)
        )
        self.cat_emb = FieldEmbedding(spec.cat_vocab, cfg.emb_dim)
        widths = [cfg.emb_dim] * (1 + spec.n_side + spec.n_cat) + [1] * spec.n_num
        self.d_in = sum(widths)
        n, d = cfg.n_ns_tokens, cfg.d_model
        hidden = cfg.ns_hidden or n * d
        if cfg.ns_tokenizer == "auto_split":
            self.groups = [("all", list(range(len(widths))))]
            self.tokens_per_group = [n]
        else:
            self.groups = ns_groups(spec)
            G = len(self.groups)
            if G > n:
                raise ValueError(
                    f"onetrans Config.n_ns_tokens={n} is smaller than the {G} NS groups "
                    f"{[g for g, _ in self.groups]} of the group-wise tokenizer; raise n_ns_tokens"
                )
            self.tokens_per_group = [n // G + (i < n % G) for i in range(G)]
        starts = [0]
        for w in widths:
            starts.append(starts[-1] + w)
        self.mlps = nn.ModuleList()
        self.skips = nn.ModuleList() if cfg.tokenizer_skip else None
        for (_, cols), n_g in zip(self.groups, self.tokens_per_group):
            idx = torch.cat([torch.arange(starts[c], starts[c + 1]) for c in cols])
            self.register_buffer(f"cols_{len(self.mlps)}", idx, persistent=False)
            h_g = max(1, round(hidden * n_g / n))
            self.mlps.append(
                nn.Sequential(nn.Linear(len(idx), h_g), nn.GELU(), nn.Linear(h_g, n_g * d))
            )
            if self.skips is not None:
                tied = self.n_tied if len(self.skips) == 0 else 0
                self.skips.append(nn.Linear(len(idx) - tied, n_g * d, bias=False))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, N, d)."""
        parts = [
            self.item_emb(batch["cand_item"]),
            self.side_emb(batch["cand_side"]),
            self.cat_emb(batch["ns_cat"]),
        ]
        v = torch.cat(parts + [batch["ns_num"].to(parts[0].dtype)], -1)
        B, d = v.shape[0], self.cfg.d_model

        def group(i: int, x: torch.Tensor) -> torch.Tensor:
            y = self.mlps[i](x)
            if self.skips is None:
                return y.view(B, -1, d)
            if i == 0 and self.tied_skip is not None:
                t = self.n_tied  # one token's worth of the shared map, the same for every token
                shared = self.tied_skip(x[:, :t]).repeat(1, self.tokens_per_group[0])
                return (y + shared + self.skips[0](x[:, t:])).view(B, -1, d)
            return (y + self.skips[i](x)).view(B, -1, d)

        if len(self.mlps) == 1:  # auto-split reads every column in order: no gather needed
            return group(0, v)
        # group-wise: a loop over the few semantic groups (not over tokens)
        return torch.cat(
            [group(i, v[:, getattr(self, f"cols_{i}")]) for i in range(len(self.mlps))], 1
        )

    def flops(self) -> float:
        skips = (
            []
            if self.skips is None
            else [linear_flops(1, s.in_features, s.out_features) for s in self.skips]
        )
        if self.tied_skip is not None:  # computed once, copied to the group's tokens
            skips.append(linear_flops(1, self.n_tied, self.tied_skip.out_features))
        return sum(
            linear_flops(1, m[0].in_features, m[0].out_features)
            + linear_flops(1, m[2].in_features, m[2].out_features)
            for m in self.mlps
        ) + sum(skips)


# ----------------------------------------------------------------------------------------------
# Block
# ----------------------------------------------------------------------------------------------


class OneTransBlock(nn.Module):
    """Pre-RMSNorm causal block with mixed parameters and pyramid queries.

        in : x_s (B, T_s, d), valid_s (B, T_s), x_ns (B, N, d)
        out: the last keep_s S rows, their validity, and the N NS rows

    S rows use the shared weights, NS row t its own (MixedLinear). Keys/values cover all current
    tokens; queries only the kept tail (the last keep_s S rows and every NS row).

    forward() is built from per-side steps that model/kv_cache.py calls as well (S side once per
    request, NS side per candidate): s_qkv / ns_qkv (pre-norm and projections, per head) and
    s_finish / ns_finish (out-projection, residual, FFN); attention itself is model/attention.py's.
    """

    def __init__(self, cfg: Config, keep_s: int) -> None:
        super().__init__()
        d, n, mixed = cfg.d_model, cfg.n_ns_tokens, cfg.mixed_params
        self.cfg, self.keep_s, self.n_heads = cfg, keep_s, cfg.n_heads
        self.backend = "reference"  # set by the model from its attention decision
        # set by the model per forward for "sdpa_causal": True when no S key is padded (no pad columns)
        self.pad_free = False
        has_s_queries = keep_s > 0
        self.norm1, self.norm2 = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.kv = MixedLinear(d, 2 * d, n, mixed=mixed)  # all rows: K and V
        self.q = MixedLinear(d, d, n, mixed=mixed, with_s=has_s_queries)  # kept rows only
        self.o = MixedLinear(d, d, n, mixed=mixed and cfg.out_proj == "mixed", with_s=has_s_queries)
        self.ffn1 = MixedLinear(d, cfg.ffn_mult * d, n, mixed=mixed, with_s=has_s_queries)
        self.ffn2 = MixedLinear(cfg.ffn_mult * d, d, n, mixed=mixed, with_s=has_s_queries)
        # qk_norm: one gain per head dimension for queries, one for keys, shared by every token
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        if cfg.recency_bias and not cfg.causal:
            raise ValueError(
                "onetrans Config.recency_bias needs causal attention (causal=True): the bias is on "
                "the NS queries, which run apart from the S queries only under the causal mask"
            )
        self.recency_bias = (
            nn.Parameter(torch.zeros(cfg.n_heads, RECENCY_BUCKETS)) if cfg.recency_bias else None
        )

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, H, dh)
        return x.unflatten(-1, (self.n_heads, self.cfg.head_dim))

    def _qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries and keys, normalised when qk_norm is on (one place for every path)."""
        q, k = self._heads(q), self._heads(k)
        if self.q_norm is None:
            return q, k
        return self.q_norm(q), self.k_norm(k)

    # --- the two sides, each on its own rows ----------------------------------------------------

    def s_qkv(self, x_s: torch.Tensor, n_query: int | None = None, n_kv: int | None = None):
        """S side, independent of NS: keys/values of the last n_kv S rows (all when None), queries of
        the last n_query rows (the kept tail keep_s when None). Each (B, rows, H, dh). The KV cache's
        incremental append asks for fewer rows; the forward always for the defaults."""
        h = self.norm1(x_s)
        n_query = self.keep_s if n_query is None else n_query
        hk = h if n_kv is None else h[:, h.shape[1] - n_kv :]
        k, v = self.kv.forward_s(hk).chunk(2, -1)
        q = self.q.forward_s(h[:, h.shape[1] - n_query :]) if n_query else h[:, :0]
        return *self._qk(q, k), self._heads(v)

    def ns_qkv(self, x_ns: torch.Tensor):
        """NS side: queries, keys and values of every NS row (token-specific weights), each (B, N, H, dh)."""
        h = self.norm1(x_ns)
        k, v = self.kv.forward_ns(h).chunk(2, -1)
        return *self._qk(self.q.forward_ns(h), k), self._heads(v)

    def s_finish(self, x_tail: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Kept S rows x_tail (B, rows, d) and their attention output a (B, rows, d) -> the rows leaving
        the block (padded rows not re-masked here). No rows: nothing to do (a block keeping no S row
        has no S weights)."""
        if x_tail.shape[1] == 0:
            return x_tail
        z = x_tail + self.o.forward_s(a)
        return z + self.ffn2.forward_s(F.gelu(self.ffn1.forward_s(self.norm2(z))))

    def ns_finish(self, x_ns: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """NS rows (B, N, d) and their attention output -> the NS rows leaving the block."""
        z = x_ns + self.o.forward_ns(a)
        return z + self.ffn2.forward_ns(F.gelu(self.ffn1.forward_ns(self.norm2(z))))

    def forward(
        self,
        x_s: torch.Tensor,
        valid_s: torch.Tensor,
        x_ns: torch.Tensor,
        req_index: torch.Tensor | None = None,
    ):
        """req_index None: x_s is per impression (one attention call over [S ; NS]).
        req_index given: x_s is per REQUEST (R rows) and impression b reads request req_index[b];
        the S side runs once per request (exact: S queries never see NS keys)."""
        T_s, n, ks = x_s.shape[1], x_ns.shape[1], self.keep_s
        q_s, k_s, v_s = self.s_qkv(x_s)
        q_ns, k_ns, v_ns = self.ns_qkv(x_ns)
        ns_valid = valid_s.new_ones(x_ns.shape[0], n)
        valid_tail = valid_s[:, T_s - ks :]

        def H(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, dh) -> (B, H, T, dh)
            return x.transpose(1, 2)

        if req_index is None and self.recency_bias is None:
            # One attention call over [S ; NS] with one bottom-right causal mask: S queries can
            # only reach S keys because NS keys come after every S position.
            a = attend(
                H(torch.cat([q_s, q_ns], 1)),
                H(torch.cat([k_s, k_ns], 1)),
                H(torch.cat([v_s, v_ns], 1)),
                torch.cat([valid_tail, ns_valid], 1),
                torch.cat([valid_s, ns_valid], 1),
                causal=self.cfg.causal,
                backend=self.backend,
                pad_free=self.pad_free,
            )
            a = a.transpose(1, 2).flatten(2)  # (B, ks + n, d)
            a_s, a_ns = a[:, :ks], a[:, ks:]
        else:
            # S and NS queries apart: per request (req_index), or per impression with the recency
            # bias, which only the NS queries get (its own index: row b reads its own S keys)
            if not self.cfg.causal:
                raise ValueError(
                    "request-level S side needs causal attention (with causal=False S reads NS)"
                )
            if req_index is None:
                req_index = torch.arange(x_ns.shape[0], device=x_ns.device)
            a_s = (
                attend(
                    H(q_s),
                    H(k_s),
                    H(v_s),
                    valid_tail,
                    valid_s,
                    causal=True,
                    backend=self.backend,
                    pad_free=self.pad_free,
                )
                .transpose(1, 2)
                .flatten(2)
                if ks
                else x_s[:, :0]
            )
            # NS queries read [their request's S keys ; their own NS keys], the S keys shared per request
            a_ns = (
                attend(
                    H(q_ns),
                    H(k_ns),
                    H(v_ns),
                    ns_valid,
                    ns_valid,
                    causal=True,
                    backend=self.backend,
                    shared=SharedKeys(
                        H(k_s), H(v_s), valid_s, req_index, bias=self.key_bias(valid_s)
                    ),
                    pad_free=self.pad_free,
                )
                .transpose(1, 2)
                .flatten(2)
            )
        y_ns = self.ns_finish(x_ns, a_ns)
        if ks == 0:
            return x_s[:, :0], valid_tail, y_ns
        y_s = self.s_finish(x_s[:, T_s - ks :], a_s) * valid_tail.unsqueeze(-1).to(a_s.dtype)
        return y_s, valid_tail, y_ns

    def key_bias(self, valid_s: torch.Tensor) -> torch.Tensor | None:
        """recency_bias: (rows, H, T) logit for each S key (valid_s (rows, T), chronological), by its
        rank from the most recent real event; None when the switch is off."""
        if self.recency_bias is None:
            return None
        table = RECENCY_BIAS_SCALE * self.recency_bias  # (H, buckets)
        return table[:, recency_bucket(rank_from_end(valid_s))].permute(1, 0, 2)

    def flops(self, t_s: int, causal_pairs: bool = False) -> float:
        """Forward FLOPs of one example through this block with t_s S rows in. causal_pairs: count the
        attention products over the causally visible (query, key) pairs only (see attention_flops_causal);
        default: the full rectangle (docs/conventions.md)."""
        d, n, ks, f = (
            self.cfg.d_model,
            self.cfg.n_ns_tokens,
            self.keep_s,
            self.cfg.ffn_mult * self.cfg.d_model,
        )
        q_rows = ks + n
        return (
            linear_flops(t_s + n, d, 2 * d)
            + linear_flops(q_rows, d, d)  # K,V all; Q kept
            + (
                attention_flops_causal(q_rows, t_s + n, d)
                if causal_pairs and self.cfg.causal
                else attention_flops(q_rows, t_s + n, d)
            )
            + linear_flops(q_rows, d, d)  # attention; W_O
            + linear_flops(q_rows, d, f)
            + linear_flops(q_rows, f, d)
        )  # FFN


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class OneTrans(RankingModel):
    """attention, recompute, compile_blocks, request_level and fused_ops are the execution switches
    (see EXECUTION): how the model runs, never what it computes.

    request_level=True runs the S side once per request, shared by the request's impressions
    (exact: the same logits and gradients as the per-impression forward); it needs cfg.causal."""

    def __init__(
        self,
        spec: FeatureSpec,
        cfg: Config,
        *,
        attention: str = "auto",
        recompute: bool = False,
        compile_blocks: bool = False,
        request_level: bool = False,
        fused_ops: bool = True,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_REQUESTS:
            raise ValueError(
                f"onetrans attention: {attention!r} is not one of {ATTENTION_REQUESTS}"
            )
        if request_level and not cfg.causal:
            raise ValueError(
                "onetrans request_level=True needs Config.causal=True (with full attention "
                "S-tokens read NS-tokens, so the S side cannot be shared by a request's impressions)"
            )
        self.request_level = request_level  # S side once per request (forward)
        self.spec, self.cfg = spec, cfg
        self.attention = attention  # requested backend; the one used is attention_decision
        self.recompute = recompute  # torch.utils.checkpoint around every block (training)
        self.item_emb = nn.Embedding(spec.item_vocab, cfg.emb_dim)
        self.s_tok = SequenceTokenizer(spec, cfg, self.item_emb)
        if cfg.match_tie and not (cfg.match_init and self.s_tok.skip is not None):
            raise ValueError(
                "onetrans Config.match_tie needs match_init=True (and with it tokenizer_skip=True "
                "and shared_side_tables=True)"
            )
        self.ns_tok = NonSequenceTokenizer(
            spec,
            cfg,
            self.item_emb,
            self.s_tok.side_emb if cfg.shared_side_tables else None,
            self.s_tok.skip if cfg.match_tie else None,
        )
        n = cfg.n_ns_tokens
        self.n_s_tokens = self.s_tok.n_tokens(spec.seq_len)
        self.schedule = self.kept_tokens(self.n_s_tokens + n)
        self.blocks = nn.ModuleList(OneTransBlock(cfg, keep - n) for keep in self.schedule)
        self.n_final = self.schedule[-1]
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.heads = nn.ModuleDict(
            {
                t: nn.Sequential(
                    nn.Linear(self.n_final * cfg.d_model, cfg.head_hidden),
                    nn.GELU(),
                    nn.Linear(cfg.head_hidden, 1),
                )
                for t in TASKS
            }
        )
        self.wide = None
        if cfg.wide_numeric and spec.n_num:
            self.wide = nn.Linear(spec.n_num, len(TASKS))
            nn.init.zeros_(self.wide.weight)  # starts as the towers alone
            nn.init.zeros_(self.wide.bias)
        self.attention_decision: tuple[str, str] | None = None
        self.fused_ops = fused_ops
        for (
            m
        ) in self.modules():  # the tokenizer's gather path and the fused RMSNorm (same function)
            if isinstance(m, (RMSNorm, SequenceTokenizer)):
                m.fused = fused_ops
        if cfg.match_init:
            self._match_init()
        if compile_blocks:  # torch.compile every block (static shapes per run)
            for b in self.blocks:
                b.compile()

    @torch.no_grad()
    def _match_init(self) -> None:
        """Start with a candidate scoring the history events that share its content highest: every
        NS token's linear path reads the candidate's [item ; side fields] through the same map as
        an S token reads an event's (the S skip), and every query map equals the key map, so at
        initialisation q.k holds |W_k S e|^2 when the candidate and the event agree."""
        s_skip, ns_skips = self.s_tok.skip, self.ns_tok.skips
        if s_skip is None or ns_skips is None or not self.cfg.shared_side_tables:
            raise ValueError(
                "onetrans Config.match_init needs tokenizer_skip=True and shared_side_tables=True"
            )
        d, w = self.cfg.d_model, s_skip.in_features
        # the first NS group reads [cand item ; cand side fields ; ...] in that order (auto-split: the
        # only group; group-wise: the "item" group comes first), the S skip reads [item ; side fields]
        if self.ns_tok.tied_skip is None:  # match_tie: the first group reads s_skip itself
            skip = ns_skips[0].weight  # (tokens of the group * d, inputs of the group)
            for t in range(self.ns_tok.tokens_per_group[0]):
                skip[t * d : (t + 1) * d, :w] = s_skip.weight
        for b in self.blocks:
            wk = b.kv.weight_s[:d]  # the shared key map (K rows of the K|V projection)
            if b.q.weight_s is not None:
                b.q.weight_s.copy_(wk)
            if b.q.weight_ns is not None:
                b.q.weight_ns.copy_(wk.T.expand_as(b.q.weight_ns))

    def kept_tokens(self, n_tokens: int) -> list[int]:
        """Tokens kept after each layer. Without the pyramid every layer keeps everything except the
        last, which keeps the N NS-tokens the heads read (identical outputs, no unused weights)."""
        cfg, n = self.cfg, self.cfg.n_ns_tokens
        if not cfg.pyramid:
            return [n_tokens] * (cfg.n_layers - 1) + [n]
        end = n if cfg.pyramid_end == "A" else n + min(n, n_tokens - n)
        return pyramid_schedule(
            n_tokens,
            end,
            cfg.n_layers,
            prune_first_layer=cfg.prune_first_layer,
            multiple=cfg.pyramid_multiple,
        )

    # --- forward ------------------------------------------------------------------------------

    def _decide_attention(self, device: torch.device) -> None:
        dtype = (
            torch.get_autocast_dtype(device.type)
            if torch.is_autocast_enabled(device.type)
            else self.final_norm.weight.dtype  # bf16 weights (no autocast): bf16
        )
        decision = choose_backend(self.attention, device, dtype, self.cfg.head_dim)
        if decision != self.attention_decision:
            self.attention_decision = decision
            for b in self.blocks:
                b.backend = decision[0]

    def tokenize(self, batch: dict[str, torch.Tensor]):
        """-> x_s (R, L_S, d) and valid_s (R, L_S) per REQUEST, x_ns (B, N, d) per impression."""
        self._check(batch)
        x_s, valid_s = self.s_tok(batch)
        return x_s, valid_s, self.ns_tok(batch)

    def encode(
        self,
        x_s: torch.Tensor,
        valid_s: torch.Tensor,
        x_ns: torch.Tensor,
        req_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the block stack; -> the final tokens (B, n_final, d), final-normed. With req_index,
        x_s / valid_s are per request and the S side runs once per request."""
        self._decide_attention(x_ns.device)
        if self.attention_decision[0] == "sdpa_causal":
            # one host sync per forward: with no padded S key anywhere the pad columns are left out
            pad_free = bool(valid_s.all())
            for b in self.blocks:
                b.pad_free = pad_free
        for block in self.blocks:
            if self.recompute and torch.is_grad_enabled():
                x_s, valid_s, x_ns = checkpoint(
                    block, x_s, valid_s, x_ns, req_index, use_reentrant=False
                )
            else:
                x_s, valid_s, x_ns = block(x_s, valid_s, x_ns, req_index)
        if req_index is not None:
            x_s = x_s[req_index]
        return self.final_tokens(x_s, x_ns)

    def final_tokens(
        self, x_s: torch.Tensor, x_ns: torch.Tensor, valid_s: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final-normed [S ; NS] rows the heads read, (B, n_final, d), from the rows leaving the
        last block: x_s the surviving S rows (none under pyramid reading A), x_ns the N NS rows.
        valid_s given (the KV cache's S side, which is not re-masked per block and is unpadded when
        served): padded S rows are zeroed and a shorter S list is left-padded with zero rows, which
        is what the blocks hand the heads in forward()."""
        if valid_s is not None:
            x_s = x_s * valid_s.unsqueeze(-1).to(x_s.dtype)
            x_s = F.pad(x_s, (0, 0, self.n_final - x_ns.shape[1] - x_s.shape[1], 0))
        return self.final_norm(torch.cat([x_s, x_ns], 1))

    def head_logits(
        self, h: torch.Tensor, ns_num: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """{task: logits (B,)} from the final tokens (B, n_final, d): each task tower reads them all;
        with wide_numeric, plus the linear logit over the impressions' numerics ns_num (B, n_num)."""
        h = h.flatten(1)
        out = {t: head(h).squeeze(-1).float() for t, head in self.heads.items()}
        if self.wide is None:
            return out
        if ns_num is None:
            raise ValueError("onetrans Config.wide_numeric: head_logits needs the batch's ns_num")
        wide = self.wide(ns_num.to(self.wide.weight.dtype)).float()
        return {t: out[t] + wide[:, i] for i, t in enumerate(TASKS)}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_s, valid_s, x_ns = self.tokenize(batch)
        idx = batch["req_index"]
        if self.request_level:
            h = self.encode(x_s, valid_s, x_ns, idx)
        else:
            # The S side per impression (the paper's un-optimised behaviour); the tokenizer above
            # ran once per request, which is exact because S-tokens depend on the sequence only.
            h = self.encode(x_s[idx], valid_s[idx], x_ns)
        return self.head_logits(h, batch["ns_num"])

    def _check(self, batch: dict[str, torch.Tensor]) -> None:
        """Shape checks only (no host-device sync): a wrong batch fails here, naming the field."""
        spec = self.spec
        for key, width, name in (
            ("seq_side", spec.n_side, "side_names"),
            ("cand_side", spec.n_side, "side_names"),
            ("ns_cat", spec.n_cat, "cat_names"),
            ("ns_num", spec.n_num, "num_names"),
        ):
            if key not in batch:
                raise KeyError(f"batch has no {key!r}; see model/features.py for the batch layout")
            if batch[key].shape[-1] != width:
                raise ValueError(
                    f"batch[{key!r}] has {batch[key].shape[-1]} columns but spec.{name} has {width}; "
                    f"build the model from the same FeatureSpec as the data"
                )
        L = batch["seq_item"].shape[-1]
        if L != self.spec.seq_len:
            raise ValueError(
                f"batch['seq_item'] has sequence length {L} but the model was built for "
                f"spec.seq_len={self.spec.seq_len}; rebuild the model with spec.with_seq_len({L})"
            )

    # --- accounting ---------------------------------------------------------------------------

    def flops_per_example(self) -> dict[str, float]:
        """Analytic FLOPs per impression (S side counted per impression, no request sharing)."""
        cfg, spec = self.cfg, self.spec
        s, ns = self.s_tok, self.ns_tok
        # S tokenizer: K-way scattered GEMMs over every event ([SEP] tokens cost nothing)
        tok = spec.seq_len * (
            linear_flops(1, s.fc1.in_features, s.fc1.out_features)
            + linear_flops(1, s.fc2.in_features, s.fc2.out_features)
            + (
                linear_flops(1, s.skip.in_features, s.skip.out_features)
                if s.skip is not None
                else 0
            )
        )
        tok += ns.flops()
        blocks, blocks_causal, attn, attn_causal, t_s = 0.0, 0.0, 0.0, 0.0, self.n_s_tokens
        for b in self.blocks:
            blocks += b.flops(t_s)
            blocks_causal += b.flops(t_s, causal_pairs=True)
            q_rows, k_rows = b.keep_s + cfg.n_ns_tokens, t_s + cfg.n_ns_tokens
            attn += attention_flops(q_rows, k_rows, cfg.d_model)
            attn_causal += (
                attention_flops_causal(q_rows, k_rows, cfg.d_model)
                if cfg.causal
                else attention_flops(q_rows, k_rows, cfg.d_model)
            )
            t_s = b.keep_s
        heads = len(TASKS) * (
            linear_flops(1, self.n_final * cfg.d_model, cfg.head_hidden)
            + linear_flops(1, cfg.head_hidden, 1)
        )
        if self.wide is not None:
            heads += linear_flops(1, self.wide.in_features, self.wide.out_features)
        fwd = tok + blocks + heads
        return {
            "forward": fwd,
            "train": TRAIN_MULTIPLIER * fwd,
            "forward_tokenizers": tok,
            "forward_blocks": blocks,
            "forward_heads": heads,
            "forward_attention": attn,  # the two attention products (included in forward_blocks)
            # the same with attention over the causally visible pairs only: what a causal kernel
            # must compute, and the honest basis of MFU for the backends that skip masked blocks
            "forward_attention_causal": attn_causal,
            "forward_causal": tok + blocks_causal + heads,
            "train_causal": TRAIN_MULTIPLIER * (tok + blocks_causal + heads),
        }


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------

# The history recipe's model switches (docs/learning-history.md): what the laptop presets and the
# *-recipe paper sizes turn on beside the paper's architecture.
HISTORY_RECIPE = dict(
    shared_side_tables=True,
    tokenizer_skip=True,
    match_init=True,
    match_tie=True,
    qk_norm=True,
    gap_embedding=True,
)

SIZES: dict[str, Config] = {
    # Paper sizes (spec §1.7). Data seq_len: 1178 (S) / 1484 (L) events -> 1190 / 1500 tokens.
    "onetrans-s": Config(n_layers=6, d_model=256, n_heads=4, n_ns_tokens=12, head_hidden=1024),
    "onetrans-l": Config(n_layers=8, d_model=384, n_heads=4, n_ns_tokens=16, head_hidden=1024),
    # CPU sizes for tests and laptop runs (shorter sequences: round lengths to 8, not 32). They turn
    # on the two learnability switches: without them a tiny OneTrans does not learn even a planted
    # "candidate's brand is in the history" rule from CPU-sized data (docs/learning-history.md).
    "onetrans-tiny": Config(
        n_layers=2,
        d_model=32,
        n_heads=2,
        n_ns_tokens=4,
        emb_dim=8,
        head_hidden=32,
        pyramid_multiple=8,
        shared_side_tables=True,
        tokenizer_skip=True,
    ),
    "onetrans-mini": Config(
        n_layers=4,
        d_model=64,
        n_heads=4,
        n_ns_tokens=8,
        emb_dim=16,
        head_hidden=128,
        pyramid_multiple=8,
        shared_side_tables=True,
        tokenizer_skip=True,
    ),
}
# The paper sizes with the history recipe (not in the paper; issue #20 item 4): the two
# learnability switches, candidate and history tokens matched at init and kept tied, per-head QK
# norm and the time-gap embedding. On the planted history rules at S width the recipe learns what
# the paper form does not (docs/learning-history.md section 17), so the paper-scale sweeps run these
# by default; `--preset paper-faithful` (or model.size=onetrans-s) runs the paper's form. Derived,
# so widths, depths and token counts stay those of the paper size they extend.
for _paper in ("onetrans-s", "onetrans-l"):
    SIZES[f"{_paper}-recipe"] = replace(SIZES[_paper], **HISTORY_RECIPE)
del _paper
# Data sequence length (events) each paper size was defined with; the scaling grids set seq_len
# through the data (FeatureSpec.seq_len) and n_layers / d_model through Config overrides.
PAPER_SEQ_LEN = {"onetrans-s": 1178, "onetrans-l": 1484}


def paper_feature_spec(seq_len: int) -> FeatureSpec:
    """The ASSUMED production feature layout used to compare our counts with the paper's
    (docs/conventions.md): 3 behaviour types, 4 item side fields, 150 categorical and 60 numeric
    NS features. The paper states none of this; only the dense counts depend on it."""
    return FeatureSpec(
        item_vocab=1000,
        side_names=tuple(f"side{i}" for i in range(4)),
        side_vocab=(100,) * 4,
        cat_names=tuple(f"cat{i}" for i in range(150)),
        cat_vocab=(100,) * 150,
        cat_groups=tuple(("user", "item", "context")[i % 3] for i in range(150)),
        num_names=tuple(f"num{i}" for i in range(60)),
        num_groups=tuple(("user", "item", "context")[i % 3] for i in range(60)),
        behavior_names=("click", "cart", "purchase"),
        intent_order=("purchase", "cart", "click"),
        seq_len=seq_len,
    )


# The execution switches build() takes beside the Config. They change how the model runs (speed,
# memory), never what it computes, so they are not hyper-parameters: a run sets them in its run
# config (train.attention, train.recompute, train.compile, train.request_level; harness/resolved.py
# decides them), a script passes them to build() / model.registry.build_model(..., execution={...}).
# fused_ops (issue #25): the S tokenizer's gather path and the fused RMSNorm (True, default) or their
# plain reference forms (False); the same function either way (tests/test_model_fast_paths.py).
EXECUTION = ("attention", "recompute", "compile_blocks", "request_level", "fused_ops")


def build(
    spec: FeatureSpec,
    config: Config,
    *,
    attention: str = "auto",
    recompute: bool = False,
    compile_blocks: bool = False,
    request_level: bool = False,
    fused_ops: bool = True,
) -> OneTrans:
    return OneTrans(
        spec,
        config,
        attention=attention,
        recompute=recompute,
        compile_blocks=compile_blocks,
        request_level=request_level,
        fused_ops=fused_ops,
    )
