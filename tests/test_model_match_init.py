"""match_init (model/onetrans.py Config): at initialisation a candidate's query scores the history
events that share its [item ; side fields] above the others, through the model's own maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.features import random_batch, tiny_spec
from model.onetrans import SIZES, build


@pytest.mark.parametrize("tokenizer", ["auto_split", "group"])
def test_match_init_ties_the_maps(tokenizer):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SIZES["onetrans-tiny"], match_init=True, ns_tokenizer=tokenizer)
    m = build(tiny_spec(16), cfg, attention="reference")
    d, w = cfg.d_model, m.s_tok.skip.in_features
    skip = m.ns_tok.skips[0].weight
    for t in range(m.ns_tok.tokens_per_group[0]):
        assert torch.equal(skip[t * d : (t + 1) * d, :w], m.s_tok.skip.weight)
    for b in m.blocks:
        wk = b.kv.weight_s[:d]
        assert torch.equal(b.q.weight_ns, wk.T.expand_as(b.q.weight_ns))
        if b.q.weight_s is not None:
            assert torch.equal(b.q.weight_s, wk)


def test_a_matching_event_scores_highest_at_initialisation():
    """First block, NS query vs S keys on fresh random data: the event whose [item ; sides] equals
    the candidate's gets the top score far more often with match_init than without."""
    spec = tiny_spec(16)

    def top_is_match(match_init: bool, seed: int) -> float:
        torch.manual_seed(seed)
        cfg = dataclasses.replace(SIZES["onetrans-tiny"], match_init=match_init)
        m = build(spec, cfg, attention="reference").eval()
        g = torch.Generator().manual_seed(seed + 100)
        b = random_batch(spec, 64, 1, generator=g, min_len=16)
        pos = torch.randint(0, 16, (64,), generator=g)  # copy one event into the candidate
        b["cand_item"] = b["seq_item"][torch.arange(64), pos]
        b["cand_side"] = b["seq_side"][torch.arange(64), pos]
        with torch.no_grad():
            x_s, valid, x_ns = m.tokenize(b)
            blk = m.blocks[0]
            _, k_s, _ = blk.s_qkv(x_s)
            q_ns, _, _ = blk.ns_qkv(x_ns)
            scores = torch.einsum("bnhd,bthd->bnht", q_ns, k_s)  # (B, N, H, T)
        return (scores.argmax(-1) == pos[:, None, None]).float().mean().item()

    plain = sum(top_is_match(False, s) for s in range(3)) / 3
    tied = sum(top_is_match(True, s) for s in range(3)) / 3
    assert tied > 0.5 and tied > plain + 0.3, (plain, tied)  # measured: 0.06 plain vs 0.77 tied


def test_match_init_needs_the_learnability_switches():
    cfg = dataclasses.replace(SIZES["onetrans-s"], match_init=True)
    with pytest.raises(ValueError, match="needs tokenizer_skip=True and shared_side_tables=True"):
        build(tiny_spec(16), cfg)
