"""harness.metrics against slow, obviously-correct references (pairwise Mann-Whitney counting)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import metrics as M


def slow_auc(y, s) -> float:
    pos = [si for yi, si in zip(y, s) if yi == 1]
    neg = [si for yi, si in zip(y, s) if yi == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def slow_uauc(y, s, u) -> float:
    num = den = 0.0
    for user in sorted(set(u)):
        idx = [i for i, x in enumerate(u) if x == user]
        a = slow_auc([y[i] for i in idx], [s[i] for i in idx])
        if not math.isnan(a):
            num += a * len(idx)
            den += len(idx)
    return num / den if den else math.nan


def random_case(rng, n, n_users, n_levels):
    """Scores drawn from few levels (many ties), users of varied size, some single-class."""
    y = (rng.random(n) < 0.3).astype(float)
    s = rng.integers(0, n_levels, n).astype(float) / 7.0
    u = rng.integers(0, n_users, n)
    return y, s, u


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_uauc_match_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y, s, u = random_case(
        rng, n, n_users=int(rng.integers(1, 25)), n_levels=int(rng.integers(2, 12))
    )
    assert M.auc(y, s) == pytest.approx(slow_auc(y, s), abs=1e-12)
    ref = slow_uauc(list(y), list(s), list(u))
    got = M.uauc(y, s, u)
    assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, abs=1e-12)


def test_single_class_users_are_excluded_and_weighting_is_by_impressions():
    # user 1: perfect (AUC 1) on 4 impressions; user 2: reversed (AUC 0) on 2; user 3: only positives
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.9, 0.5, 0.6, 0.7])
    u = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    assert M.uauc(y, s, u) == pytest.approx((1.0 * 4 + 0.0 * 2) / 6)
    assert math.isnan(M.auc(np.ones(5), np.arange(5.0)))
    assert math.isnan(M.uauc(y[6:], s[6:], u[6:]))


def test_all_ties_give_one_half_and_order_invariance():
    rng = np.random.default_rng(0)
    y = (rng.random(100) < 0.5).astype(float)
    assert M.auc(y, np.zeros(100)) == 0.5
    s = rng.normal(size=100)
    perm = rng.permutation(100)
    assert M.auc(y, s) == M.auc(y[perm], s[perm])
    assert M.auc(y, s) == pytest.approx(1 - M.auc(y, -s))


def test_logloss_from_logits_and_probs_agree_with_hand_formula():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3, size=200)
    y = (rng.random(200) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-z))
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert M.logloss(y, logits=z) == pytest.approx(ref, rel=1e-10)
    assert M.logloss(y, probs=p) == pytest.approx(ref, rel=1e-10)
    # extreme logits stay finite and exact where probabilities would saturate
    assert M.logloss(np.array([1.0]), logits=np.array([-800.0])) == pytest.approx(800.0)
    with pytest.raises(ValueError, match="exactly one"):
        M.logloss(y, logits=z, probs=p)


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="NaN"):
        M.auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        M.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        M.uauc([0, 1], [0.1, 0.2], [1])


def _preds(rng, n=400):
    click = (rng.random(n) < 0.4).astype(float)
    return {
        "click": click,
        "conversion": click * (rng.random(n) < 0.3),
        "user_id": rng.integers(0, 20, n),
        "ts": np.sort(rng.integers(0, 3 * M.DAY_SECONDS, n)),
        "ctr_logit": rng.normal(size=n).astype(np.float32),
        "cvr_logit": rng.normal(size=n).astype(np.float32),
        "p_click": rng.random(n),
        "p_conversion": rng.random(n),
    }


def test_split_metrics_cvr_modes():
    rng = np.random.default_rng(2)
    p = _preds(rng)
    m = p["click"] > 0.5
    clicked = M.split_metrics(p, "clicked")
    assert clicked["cvr_auc"] == pytest.approx(slow_auc(p["conversion"][m], p["cvr_logit"][m]))
    assert clicked["ctr_auc"] == pytest.approx(slow_auc(p["click"], p["ctr_logit"]))
    ct = M.split_metrics(p, "ctcvr")
    prob = (
        1
        / (1 + np.exp(-p["ctr_logit"].astype(np.float64)))
        / (1 + np.exp(-p["cvr_logit"].astype(np.float64)))
    )
    assert ct["cvr_auc"] == pytest.approx(slow_auc(p["conversion"], prob))
    ref_ll = -np.mean(p["conversion"] * np.log(prob) + (1 - p["conversion"]) * np.log(1 - prob))
    assert ct["cvr_logloss"] == pytest.approx(ref_ll, rel=1e-9)
    orc = M.split_metrics(p, "clicked", oracle=True)
    assert orc["cvr_auc"] == pytest.approx(slow_auc(p["conversion"][m], p["p_conversion"][m]))
    assert (
        set(orc)
        == set(clicked)
        == {f"{t}_{k}" for t in ("ctr", "cvr") for k in ("auc", "uauc", "logloss")}
    )


def test_daily_macro_is_the_unweighted_mean_over_days_after_warmup():
    rng = np.random.default_rng(3)
    p = _preds(rng)
    day = p["ts"] // M.DAY_SECONDS
    per_day = [slow_auc(p["click"][day == d], p["ctr_logit"][day == d]) for d in (1, 2)]
    got = M.daily_macro(p, warmup_days=1)
    assert got["ctr_auc"] == pytest.approx(np.mean(per_day))
    assert got["n_days"] == 2
