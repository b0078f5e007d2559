"""Pyramid schedule (spec §1.3 tables) and Config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.features import tiny_spec
from model.onetrans import PAPER_SEQ_LEN, SIZES, build, paper_feature_spec, pyramid_schedule


@pytest.mark.parametrize(
    "n_in,end,layers,prune_first,expected",
    [
        (1190, 12, 6, True, [992, 800, 608, 416, 224, 12]),
        (1190, 12, 6, False, [1190, 960, 704, 480, 256, 12]),
        (1500, 16, 8, True, [1312, 1120, 928, 768, 576, 384, 192, 16]),
        (1500, 16, 8, False, [1500, 1280, 1088, 864, 640, 448, 224, 16]),
    ],
    ids=["S", "S-layer1-unpruned", "L", "L-layer1-unpruned"],
)
def test_schedule_reproduces_spec_tables(n_in, end, layers, prune_first, expected):
    assert pyramid_schedule(n_in, end, layers, prune_first_layer=prune_first) == expected


def test_single_layer_ends_at_the_end_point():
    assert pyramid_schedule(40, 4, 1) == pyramid_schedule(40, 4, 1, prune_first_layer=False) == [4]


def test_spec_without_side_or_categorical_fields_has_no_dead_weights():
    from model.features import FeatureSpec, random_batch

    spec = FeatureSpec(item_vocab=50, num_names=("x",), seq_len=12)
    m = build(spec, SIZES["onetrans-tiny"])
    out = m(random_batch(spec))
    (out["ctr"].sum() + out["cvr"].sum()).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_schedule_is_monotone_and_bounded_for_small_inputs():
    for n_in in range(5, 80, 7):
        for layers in (1, 2, 3, 5):
            s = pyramid_schedule(n_in, 4, layers, multiple=8)
            assert len(s) == layers and s[-1] == 4
            assert all(4 <= b <= a <= n_in for a, b in zip([n_in, *s], s))


@pytest.mark.parametrize("size", ["onetrans-s", "onetrans-l"])
def test_paper_sizes_token_counts(size):
    """1178 / 1484 events + 12 / 16 NS-tokens = the paper's 1190 / 1500 input tokens."""
    cfg = SIZES[size]
    with torch.device("meta"):
        m = build(paper_feature_spec(PAPER_SEQ_LEN[size]), cfg)
    assert m.n_s_tokens + cfg.n_ns_tokens == {"onetrans-s": 1190, "onetrans-l": 1500}[size]
    assert m.schedule[-1] == cfg.n_ns_tokens  # reading A: only NS-tokens remain
    b = dataclasses.replace(cfg, pyramid_end="B")
    with torch.device("meta"):
        mb = build(paper_feature_spec(PAPER_SEQ_LEN[size]), b)
    assert mb.schedule[-1] == 2 * cfg.n_ns_tokens  # reading B: N S-tokens survive too
    assert mb.blocks[-1].keep_s == cfg.n_ns_tokens


def test_no_pyramid_keeps_everything_until_the_heads_tokens():
    cfg = dataclasses.replace(SIZES["onetrans-tiny"], pyramid=False, n_layers=3)
    m = build(tiny_spec(16), cfg)
    assert m.schedule == [20, 20, 4]


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("d_model", 31, "not divisible by n_heads"),
        ("seq_fusion", "time", "seq_fusion"),
        ("n_layers", 0, "n_layers"),
    ],
)
def test_bad_config_is_rejected_with_the_field_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SIZES["onetrans-tiny"], **{field: value})


def test_bad_execution_switch_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="attention"):
        build(tiny_spec(16), SIZES["onetrans-tiny"], attention="xformers")


def test_wrong_sequence_length_names_the_fix():
    from model.features import random_batch

    m = build(tiny_spec(16), SIZES["onetrans-tiny"])
    with pytest.raises(ValueError, match="with_seq_len"):
        m(random_batch(tiny_spec(12)))


def test_group_tokenizer_needs_enough_tokens():
    with pytest.raises(ValueError, match="n_ns_tokens"):
        build(
            tiny_spec(16),
            dataclasses.replace(SIZES["onetrans-tiny"], ns_tokenizer="group", n_ns_tokens=2),
        )


def test_batch_with_wrong_feature_columns_names_the_field():
    from model.features import random_batch

    m = build(tiny_spec(16), SIZES["onetrans-tiny"])
    b = random_batch(tiny_spec(16))
    b["ns_num"] = b["ns_num"][:, :1]
    with pytest.raises(ValueError, match="ns_num.*num_names"):
        m(b)
