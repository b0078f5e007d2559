"""Each baseline learns planted signals on tiny synthetic data: click iff the history holds a
trigger category (the sequence module must find it), conversion = XOR of two NS features'
parities (a feature cross). Trained on fresh batches, judged on a held-out batch against the
label prior's entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.baselines import BASELINES
from model.features import FeatureSpec
from model.registry import build_model

SPEC = FeatureSpec(
    item_vocab=100,
    side_names=("category",),
    side_vocab=(9,),
    cat_names=("a", "b"),
    cat_vocab=(5, 5),
    cat_groups=("user", "context"),
    num_names=("x",),
    num_groups=("user",),
    behavior_names=("click",),
    n_gap_buckets=4,
    seq_len=8,
)
TRIGGER = 1  # with 8 categories and 3..8 events, about half the histories contain it


def planted_batch(n_requests: int, per_request: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    R, L, B = n_requests, SPEC.seq_len, n_requests * per_request
    lengths = torch.randint(3, L + 1, (R,), generator=g)
    mask = torch.arange(L) >= (L - lengths).unsqueeze(1)
    cats = torch.randint(1, SPEC.side_vocab[0], (R, L), generator=g) * mask
    ri = torch.arange(R).repeat_interleave(per_request)
    ns = torch.randint(1, 5, (B, 2), generator=g)
    return {
        "seq_item": torch.randint(1, SPEC.item_vocab, (R, L), generator=g) * mask,
        "seq_side": cats.unsqueeze(-1),
        "seq_type": mask.long(),
        "seq_gap": torch.randint(1, SPEC.n_gap_buckets, (R, L), generator=g) * mask,
        "seq_mask": mask,
        "req_index": ri,
        "cand_item": torch.randint(1, SPEC.item_vocab, (B,), generator=g),
        "cand_side": torch.randint(1, SPEC.side_vocab[0], (B, 1), generator=g),
        "ns_cat": ns,
        "ns_num": torch.randn(B, 1, generator=g),
        "click": (cats[ri] == TRIGGER).any(1).float(),
        "conversion": ((ns[:, 0] % 2) ^ (ns[:, 1] % 2)).float(),
    }


def prior_entropy(y: torch.Tensor) -> float:
    p = float(y.mean())
    return -(p * torch.log(torch.tensor(p)) + (1 - p) * torch.log(torch.tensor(1 - p))).item()


# tiny shapes: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_learns_planted_signals(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, SPEC, "tiny")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        b = planted_batch(32, 2, g)
        out = model.train()(b)
        loss = F.binary_cross_entropy_with_logits(
            out["ctr"], b["click"]
        ) + F.binary_cross_entropy_with_logits(out["cvr"], b["conversion"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = planted_batch(256, 2, torch.Generator().manual_seed(99))
    with torch.no_grad():
        out = model.eval()(test)
    for task, label in (("ctr", "click"), ("cvr", "conversion")):
        prior = prior_entropy(test[label])
        assert prior > 0.6, "the planted labels should be roughly balanced"
        got = F.binary_cross_entropy_with_logits(out[task], test[label]).item()
        assert got < 0.25 * prior, (
            f"{name} {task}: held-out log-loss {got:.3f} vs prior {prior:.3f}"
        )
