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


def _tie_pair(tokenizer: str):
    """A match_init model and a match_tie model holding the same weights (the tied model's first
    NS skip lacks the columns it reads through the S skip)."""
    spec = tiny_spec(16)
    base = dataclasses.replace(SIZES["onetrans-tiny"], match_init=True, ns_tokenizer=tokenizer)
    torch.manual_seed(0)
    init = build(spec, base, attention="reference")
    tied = build(spec, dataclasses.replace(base, match_tie=True), attention="reference")
    w = init.s_tok.skip.in_features
    state = init.state_dict()
    state["ns_tok.skips.0.weight"] = state["ns_tok.skips.0.weight"][:, w:]
    state["ns_tok.tied_skip.weight"] = state["s_tok.skip.weight"]
    tied.load_state_dict(state)
    return spec, init, tied


@pytest.mark.parametrize("tokenizer", ["auto_split", "group"])
def test_match_tie_is_match_init_at_initialisation_and_stays_tied(tokenizer):
    spec, init, tied = _tie_pair(tokenizer)
    assert tied.ns_tok.tied_skip is tied.s_tok.skip  # one module, one set of weights
    w = init.s_tok.skip.in_features
    assert tied.ns_tok.skips[0].in_features == init.ns_tok.skips[0].in_features - w
    b = random_batch(spec, 32, 1, generator=torch.Generator().manual_seed(5), min_len=4)
    with torch.no_grad():
        torch.testing.assert_close(tied(b)["ctr"], init(b)["ctr"], rtol=1e-5, atol=1e-6)
    # a few large AdamW steps: the untied copy drifts away from the S map, the tie cannot
    for m in (init, tied):
        opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
        for step in range(3):
            g = torch.Generator().manual_seed(10 + step)
            bb = random_batch(spec, 32, 1, generator=g, min_len=4)
            y = torch.randint(0, 2, (32,), generator=g).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(bb)["ctr"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    d = init.cfg.d_model
    drift = (init.ns_tok.skips[0].weight[:d, :w] - init.s_tok.skip.weight).abs().max().item()
    assert drift > 1e-2, drift
    assert tied.ns_tok.flops() == pytest.approx(
        init.ns_tok.flops()
        - (init.ns_tok.tokens_per_group[0] - 1) * 2 * w * d  # the shared map is computed once
    )


def test_match_tie_needs_match_init():
    cfg = dataclasses.replace(SIZES["onetrans-tiny"], match_tie=True)
    with pytest.raises(ValueError, match="match_tie needs match_init=True"):
        build(tiny_spec(16), cfg)
