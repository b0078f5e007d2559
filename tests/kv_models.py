"""Models the KV-cache tests run on: the real OneTrans (model/onetrans.py) and the independent toy."""

from __future__ import annotations

import pytest
import torch

from model.features import FeatureSpec
from tests.kv_toy import ToyOneTrans

KINDS = ("onetrans", "toy")
# the real model in the default run; the independent toy behind `slow` (CI runs both)
KIND_PARAMS = [pytest.param("onetrans"), pytest.param("toy", marks=pytest.mark.slow)]


def make_model(
    kind: str,
    spec: FeatureSpec,
    *,
    pyramid: bool,
    seed: int,
    attention: str = "reference",
    recompute: bool = False,
    request_level: bool = False,
    **overrides,
) -> torch.nn.Module:
    """overrides: Config fields of onetrans-tiny; attention / recompute / request_level: its
    execution switches."""
    torch.manual_seed(seed)
    if kind == "toy":
        L = spec.seq_len
        return ToyOneTrans(spec, keep_s=(L - 4, L // 2, 5) if pyramid else None, seed=seed).eval()
    from model.registry import build_model

    cfg = {"n_layers": 3, "pyramid": pyramid, **overrides}
    model = build_model(
        "onetrans",
        spec,
        "onetrans-tiny",
        cfg,
        {"attention": attention, "recompute": recompute, "request_level": request_level},
    ).eval()
    with torch.no_grad():  # non-trivial RMSNorm gains, so a wrong norm placement cannot hide
        for name, p in model.named_parameters():
            if (
                name.endswith("norm1.weight")
                or name.endswith("norm2.weight")
                or name.endswith("final_norm.weight")
            ):
                p.add_(0.2 * torch.randn_like(p))
            if name.endswith("recency_bias"):  # zero at init: give it a rank profile to carry
                p.normal_(0.0, 0.3)
    return model
