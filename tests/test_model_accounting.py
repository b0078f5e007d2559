"""Parameter and FLOP accounting: analytic counts pinned to FlopCounterMode; paper-shape counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.features import random_batch, tiny_spec
from model.flops import measure_flops
from model.onetrans import PAPER_SEQ_LEN, SIZES, build, paper_feature_spec

# tiny shapes: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SHAPES = {
    "tiny-default": (16, SIZES["onetrans-tiny"]),
    "mini-intent-group-B": (
        40,
        dataclasses.replace(
            SIZES["onetrans-mini"],
            seq_fusion="intent",
            ns_tokenizer="group",
            pyramid_end="B",
            out_proj="shared",
            prune_first_layer=False,
        ),
    ),
    "tiny-no-pyramid-shared": (
        24,
        dataclasses.replace(
            SIZES["onetrans-tiny"], pyramid=False, mixed_params=False, gap_embedding=True
        ),
    ),
}


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_flops_match_flop_counter(shape, backend):
    seq_len, cfg = SHAPES[shape]
    spec = tiny_spec(seq_len)
    m = build(spec, cfg, attention=backend)
    B = 6
    # one impression per request: the analytic count is per impression without request sharing
    batch = random_batch(spec, n_requests=B, per_request=1)
    with torch.no_grad():
        measured, _ = measure_flops(lambda: m(batch))
    analytic = m.flops_per_example()["forward"] * B
    assert measured == pytest.approx(analytic, rel=0.02), (measured, analytic)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_flops_match_flop_counter(shape):
    """forward + backward = 3 x forward (reference attention: FlopCounterMode counts the SDPA
    backward with a score recompute, 2.5 x, which the model-FLOPs convention leaves out)."""
    seq_len, cfg = SHAPES[shape]
    spec = tiny_spec(seq_len)
    m = build(spec, cfg, attention="reference").train()
    B = 4
    batch = random_batch(spec, n_requests=B, per_request=1)

    def step():
        out = m(batch)
        (out["ctr"].sum() + out["cvr"].sum()).backward()

    measured, _ = measure_flops(step)
    assert measured == pytest.approx(m.flops_per_example()["train"] * B, rel=0.02)


def _paper(size, **overrides):
    with torch.device("meta"):
        return build(
            paper_feature_spec(PAPER_SEQ_LEN[size]), dataclasses.replace(SIZES[size], **overrides)
        )


@pytest.mark.parametrize("size,paper_params", [("onetrans-s", 91e6), ("onetrans-l", 330e6)])
def test_paper_size_params_within_15_percent(size, paper_params):
    dense = _paper(size).param_counts()["dense"]
    assert abs(dense / paper_params - 1) < 0.15, dense


def test_shared_parameters_ablation_far_fewer_params_same_flops():
    base, shared = _paper("onetrans-s"), _paper("onetrans-s", mixed_params=False)
    assert shared.param_counts()["dense"] < 0.4 * base.param_counts()["dense"]  # paper: 24M vs 91M
    assert shared.flops_per_example() == base.flops_per_example()


def test_no_pyramid_multiplies_block_flops_at_onetrans_s_shape():
    """Our count: 2.1x for the blocks, 2.0x in total (paper Table 3: 3.06x; see docs/conventions.md
    for why no per-component ratio of this architecture reaches 3 under the linear schedule)."""
    base, flat = (
        _paper("onetrans-s").flops_per_example(),
        _paper("onetrans-s", pyramid=False).flops_per_example(),
    )
    assert 2.05 < flat["forward_blocks"] / base["forward_blocks"] < 2.2
    assert 1.95 < flat["train"] / base["train"] < 2.1
    assert _paper("onetrans-s", pyramid=False).param_counts() == _paper("onetrans-s").param_counts()


def test_ablation_accounting_directions():
    base = _paper("onetrans-s")
    group = _paper("onetrans-s", ns_tokenizer="group")
    assert group.param_counts()["dense"] < base.param_counts()["dense"]  # paper: 78M < 91M
    nosep, sep = (
        _paper("onetrans-s", seq_fusion="intent_nosep"),
        _paper("onetrans-s", seq_fusion="intent"),
    )
    assert (
        nosep.flops_per_example()["train"] < sep.flops_per_example()["train"]
    )  # paper: 2.62 < 2.64
    assert sep.n_s_tokens == nosep.n_s_tokens + 2


def test_meta_device_counts_equal_real_counts():
    spec = tiny_spec(16)
    real = build(spec, SIZES["onetrans-mini"])
    with torch.device("meta"):
        meta = build(spec, SIZES["onetrans-mini"])
    assert real.param_counts() == meta.param_counts()
    assert real.flops_per_example() == meta.flops_per_example()
