"""The batch every model consumes, and the feature description it is built from.

The data module (harness/data) produces batches; models only read them. Keeping the description
here (and not in the harness) keeps the dependency direction harness -> model.

Batch layout (a dict of tensors; B impressions drawn from R requests, L = FeatureSpec.seq_len):

  per request (the behaviour sequence is shared by every impression of a request):
    seq_item   int64 (R, L)      item id of each event, 0 = padding
    seq_side   int64 (R, L, Fs)  side fields of each event (category, brand, ...), 0 = padding
    seq_type   int64 (R, L)      behaviour type id in 1..n_behaviors, 0 = padding
    seq_gap    int64 (R, L)      log-bucketed time gap (impression ts - event ts), 0 = padding
    seq_mask   bool  (R, L)      True where a real event sits
  Sequences are LEFT-padded and in ascending time: the most recent event is at index L-1. That is
  the order OneTrans's causal mask and pyramid (which keeps the tail) are built for.

  per impression:
    req_index  int64 (B,)        row of this impression's sequence in the seq_* tensors;
                                  non-decreasing (impressions of one request are contiguous)
    cand_item  int64 (B,)        candidate item id (same id space and table as seq_item)
    cand_side  int64 (B, Fs)     candidate side fields (same vocabularies as seq_side)
    ns_cat     int64 (B, Fc)     other categorical features (user, item, context), 0 = missing
    ns_num     float32 (B, Fn)   numeric features, standardised by the data module (finite)
    click, conversion  float32 (B,)  labels in {0, 1}
    user_id, request_id, ts  int64 (B,)  for UAUC, grouping and day-wise evaluation
    p_click, p_conversion  float32 (B,)  true probabilities (synthetic data only, optional)

Every categorical id lies in [0, vocab); 0 is reserved for padding / missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_KEYS = ("seq_item", "seq_side", "seq_type", "seq_gap", "seq_mask")
IMPRESSION_KEYS = ("req_index", "cand_item", "cand_side", "ns_cat", "ns_num")
LABEL_KEYS = ("click", "conversion")
TASKS = ("ctr", "cvr")


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """What a model needs to know about the features to build its embedding tables."""

    item_vocab: int  # ids of seq_item / cand_item lie in [0, item_vocab)
    side_names: tuple[str, ...] = ()  # item side fields, in seq_side / cand_side column order
    side_vocab: tuple[int, ...] = ()
    cat_names: tuple[str, ...] = ()  # ns_cat columns
    cat_vocab: tuple[int, ...] = ()
    cat_groups: tuple[str, ...] = ()  # "user" | "item" | "context" per ns_cat column
    num_names: tuple[str, ...] = ()  # ns_num columns
    num_groups: tuple[str, ...] = ()
    behavior_names: tuple[str, ...] = ("click",)  # type id k+1 is behavior_names[k]
    intent_order: tuple[
        str, ...
    ] = ()  # highest intent first (timestamp-agnostic fusion); default: reversed names
    n_gap_buckets: int = 32  # seq_gap ids lie in [0, n_gap_buckets)
    seq_len: int = 64  # L: events per sequence (after left padding)

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"FeatureSpec: {msg}")

        check(self.item_vocab >= 2, f"item_vocab must be >= 2, got {self.item_vocab}")
        check(
            len(self.side_names) == len(self.side_vocab),
            "side_names and side_vocab differ in length",
        )
        check(
            len(self.cat_names) == len(self.cat_vocab), "cat_names and cat_vocab differ in length"
        )
        check(len(self.cat_groups) in (0, len(self.cat_names)), "cat_groups must match cat_names")
        check(len(self.num_groups) in (0, len(self.num_names)), "num_groups must match num_names")
        check(
            all(v >= 2 for v in (*self.side_vocab, *self.cat_vocab)),
            "every vocabulary needs size >= 2",
        )
        check(len(self.behavior_names) >= 1, "at least one behaviour type is required")
        check(self.seq_len >= 1, f"seq_len must be >= 1, got {self.seq_len}")
        if self.intent_order:
            check(
                sorted(self.intent_order) == sorted(self.behavior_names),
                f"intent_order {self.intent_order} must be a permutation of {self.behavior_names}",
            )

    @property
    def n_behaviors(self) -> int:
        return len(self.behavior_names)

    @property
    def n_side(self) -> int:
        return len(self.side_names)

    @property
    def n_cat(self) -> int:
        return len(self.cat_names)

    @property
    def n_num(self) -> int:
        return len(self.num_names)

    def intent_rank(self) -> tuple[int, ...]:
        """rank[k] = position of behaviour type id k+1 in the intent order (0 = highest intent)."""
        order = self.intent_order or tuple(reversed(self.behavior_names))
        return tuple(order.index(n) for n in self.behavior_names)

    def with_seq_len(self, seq_len: int) -> FeatureSpec:
        from dataclasses import replace

        return replace(self, seq_len=seq_len)


def tiny_spec(seq_len: int = 16) -> FeatureSpec:
    """A small spec for unit tests (mirrors the synthetic world's feature layout)."""
    return FeatureSpec(
        item_vocab=200,
        side_names=("category", "brand", "price_bucket"),
        side_vocab=(12, 30, 11),
        cat_names=("user_id", "age_bucket", "hour", "device", "surface"),
        cat_vocab=(50, 8, 25, 4, 4),
        cat_groups=("user", "user", "context", "context", "context"),
        num_names=("price", "user_activity"),
        num_groups=("item", "user"),
        behavior_names=("click", "cart", "purchase"),
        intent_order=("purchase", "cart", "click"),
        n_gap_buckets=16,
        seq_len=seq_len,
    )


def random_batch(
    spec: FeatureSpec,
    n_requests: int = 4,
    per_request: int = 3,
    *,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A random, contract-conforming batch (left-padded, variable lengths) for tests and benchmarks."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    R, L, B = n_requests, spec.seq_len, n_requests * per_request

    def ids(vocab: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, vocab, shape, generator=g)

    lengths = torch.randint(min(min_len, L), L + 1, (R,), generator=g)
    mask = torch.arange(L).unsqueeze(0) >= (L - lengths).unsqueeze(1)  # left padding
    side = (
        torch.stack([ids(v, R, L) for v in spec.side_vocab], -1)
        if spec.n_side
        else torch.zeros(R, L, 0, dtype=torch.long)
    )
    cand_side = (
        torch.stack([ids(v, B) for v in spec.side_vocab], -1)
        if spec.n_side
        else torch.zeros(B, 0, dtype=torch.long)
    )
    ns_cat = (
        torch.stack([ids(v, B) for v in spec.cat_vocab], -1)
        if spec.n_cat
        else torch.zeros(B, 0, dtype=torch.long)
    )
    click = (torch.rand(B, generator=g) < 0.3).float()
    batch = {
        "seq_item": ids(spec.item_vocab, R, L) * mask,
        "seq_side": side * mask.unsqueeze(-1),
        "seq_type": ids(spec.n_behaviors + 1, R, L) * mask,
        "seq_gap": ids(spec.n_gap_buckets, R, L) * mask,
        "seq_mask": mask,
        "req_index": torch.arange(R).repeat_interleave(per_request),
        "cand_item": ids(spec.item_vocab, B),
        "cand_side": cand_side,
        "ns_cat": ns_cat,
        "ns_num": torch.randn(B, spec.n_num, generator=g),
        "click": click,
        "conversion": click * (torch.rand(B, generator=g) < 0.3).float(),
        "user_id": torch.arange(R).repeat_interleave(per_request),
        "request_id": torch.arange(R).repeat_interleave(per_request),
        "ts": torch.zeros(B, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in batch.items()}
