"""Two-stage (KV-cached) scoring and request-level training equal the plain forward."""
from __future__ import annotations

import pytest
import torch

from model.features import random_batch, tiny_spec
from model.kv_cache import request_level_forward, stage_one, stage_two, _split
from tests.kv_toy import ToyOneTrans


def _batch(spec, n_req, per_req, seed):
    return random_batch(spec, n_requests=n_req, per_request=per_req,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_cand", [1, 7, 100])
@pytest.mark.parametrize("pyramid", [False, True])
def test_toy_cached_equals_full(n_cand, pyramid):
    spec = tiny_spec(seq_len=24)
    keep = (20, 12, 5) if pyramid else None
    model = ToyOneTrans(spec, keep_s=keep, seed=n_cand).eval()
    batch = _batch(spec, 3, n_cand, seed=10 + n_cand)
    assert not batch["seq_mask"].all()                       # padding is exercised
    with torch.no_grad():
        ref = model(batch)
        seq, imp = _split(batch)
        got = stage_two(model, stage_one(model, seq), imp, seq)
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(got[t], ref[t], atol=1e-5, rtol=1e-5)
