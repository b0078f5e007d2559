"""The torch-free metrics (exact AUC, UAUC, logloss) against slow, obviously correct references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import auc, logloss, split_metrics, uauc


def slow_auc(y, s) -> float:
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def slow_uauc(y, s, users) -> float:
    num = den = 0.0
    for u in set(users.tolist()):
        idx = users == u
        a = slow_auc(y[idx], s[idx])
        if not math.isnan(a):
            num += a * idx.sum()
            den += idx.sum()
    return num / den if den else float("nan")


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_uauc_match_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.integers(0, 6, n).astype(float) + 0.5 * y * rng.integers(
        0, 2, n
    )  # many ties, some signal
    users = rng.integers(0, 25, n)
    assert auc(y, s) == pytest.approx(slow_auc(y, s), abs=1e-12)
    assert uauc(y, s, users) == pytest.approx(slow_uauc(y, s, users), abs=1e-12)


def test_auc_edge_cases():
    assert auc([0, 1], [0.2, 0.8]) == 1.0
    assert auc([1, 0], [0.2, 0.8]) == 0.0
    assert auc([0, 1, 0, 1], [0.5] * 4) == 0.5  # all tied
    assert math.isnan(auc([1, 1], [0.1, 0.2]))  # one class only
    # users with one class are excluded: only user 7 counts
    assert uauc([1, 1, 0, 1], [0.1, 0.2, 0.3, 0.9], [3, 3, 7, 7]) == 1.0
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])


def test_logloss_matches_direct_formula_and_clips():
    rng = np.random.default_rng(0)
    p = rng.random(100)
    y = (rng.random(100) < p).astype(int)
    ref = -np.mean([math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p)])
    assert logloss(y, probs=p) == pytest.approx(ref, rel=1e-12)
    assert np.isfinite(logloss([1, 0], probs=[0.0, 1.0]))  # clipped, not inf


def test_oracle_metrics_cvr_uses_clicked_rows_only():
    click = np.array([1, 1, 0, 0, 1, 1])
    conv = np.array([1, 0, 0, 0, 0, 1])
    p_conv = np.array([0.9, 0.1, 0.99, 0.0, 0.2, 0.8])  # unclicked rows would spoil the AUC
    p = {"click": click, "conversion": conv, "user_id": np.zeros(6)}
    m = split_metrics(p | {"p_click": np.full(6, 0.5), "p_conversion": p_conv}, oracle=True)
    assert m["cvr_auc"] == 1.0 and m["ctr_auc"] == 0.5
    assert set(m) == {f"{t}_{k}" for t in ("ctr", "cvr") for k in ("auc", "uauc", "logloss")}
