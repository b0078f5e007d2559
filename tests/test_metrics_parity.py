"""The one metrics module (harness/metrics.py) gives the numbers its two predecessors gave.

Until the merge, harness/metrics_np.py (the oracle's stats, the count-feature floor) and
harness/metrics.py (the training run's evaluation) were two modules. RECORDED holds what they
returned, computed with the last commit that had both (main at ec12134) on the seeded inputs of
`fresh_inputs`; each key names the old call it stands for. Tolerance 1e-12 absolute: the code path
is the same float64 arithmetic, only the module changed. A second check compares the merged
functions with hand computations (pairwise counting) on fresh random inputs of other seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness import metrics

TOL = 1e-12


def fresh_inputs(seed: int, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z_ctr = np.round(rng.normal(size=n), 1)  # rounded: many ties
    z_cvr = rng.normal(size=n)
    click = (rng.random(n) < 1 / (1 + np.exp(-z_ctr))).astype(np.int64)
    conv = (click * (rng.random(n) < 0.5)).astype(np.int64)
    return {
        "click": click,
        "conversion": conv,
        "user_id": rng.integers(0, 25, n),
        "ctr_logit": z_ctr,
        "cvr_logit": z_cvr,
        "p_click": 1 / (1 + np.exp(-z_ctr)),
        "p_conversion": rng.random(n),
        "ts": np.sort(rng.integers(0, 3 * 86_400, n)),
    }


# old call -> key prefix: metrics_np.auc/uauc/logloss(y, p) -> auc, uauc, logloss_probs;
# metrics.logloss(y, logits=) -> logloss_logits; metrics_np.ranking_metrics (the oracle in
# harness/data/stats.py) -> stats_; metrics_np.task_metrics("ctr", y, p, users) (the floor) ->
# floor_; metrics.split_metrics(p, mode) -> clicked_ / ctcvr_; metrics.daily_macro(p, warmup_days=1)
# -> daily_
RECORDED = {
    11: {
        "auc": 0.7365409655448718,
        "uauc": 0.7688370969308468,
        "logloss_probs": 0.6046685658658199,
        "logloss_logits": 0.6046685658658199,
        "stats_ctr_auc": 0.7365409655448718,
        "stats_ctr_uauc": 0.7688370969308468,
        "stats_ctr_logloss": 0.6046685658658199,
        "stats_cvr_auc": 0.5196961475854585,
        "stats_cvr_uauc": 0.5453394582470669,
        "stats_cvr_logloss": 0.9569329503242496,
        "floor_ctr_auc": 0.7365409655448718,
        "floor_ctr_uauc": 0.7688370969308468,
        "floor_ctr_logloss": 0.6046685658658199,
        "clicked_ctr_auc": 0.7365409655448718,
        "clicked_ctr_uauc": 0.7688370969308468,
        "clicked_ctr_logloss": 0.6046685658658199,
        "clicked_cvr_auc": 0.4825827455236028,
        "clicked_cvr_uauc": 0.47856280193236717,
        "clicked_cvr_logloss": 0.8344955162982363,
        "ctcvr_ctr_auc": 0.7365409655448718,
        "ctcvr_ctr_uauc": 0.7688370969308468,
        "ctcvr_ctr_logloss": 0.6046685658658199,
        "ctcvr_cvr_auc": 0.5761287468953081,
        "ctcvr_cvr_uauc": 0.5957951610396224,
        "ctcvr_cvr_logloss": 0.5859562200127286,
        "daily_ctr_auc": 0.7293048573545133,
        "daily_ctr_uauc": 0.7662877396893717,
        "daily_ctr_logloss": 0.6104295146745649,
        "daily_cvr_auc": 0.4793294940353764,
        "daily_cvr_uauc": 0.40010879912960695,
        "daily_cvr_logloss": 0.8396124889866219,
        "daily_n_days": 2.0,
    },
    12: {
        "auc": 0.7789463141025641,
        "uauc": 0.7848302218614718,
        "logloss_probs": 0.5653657731050027,
        "logloss_logits": 0.5653657731050028,
        "stats_ctr_auc": 0.7789463141025641,
        "stats_ctr_uauc": 0.7848302218614718,
        "stats_ctr_logloss": 0.5653657731050027,
        "stats_cvr_auc": 0.5762931433330248,
        "stats_cvr_uauc": 0.5988782051282051,
        "stats_cvr_logloss": 0.855170537678419,
        "floor_ctr_auc": 0.7789463141025641,
        "floor_ctr_uauc": 0.7848302218614718,
        "floor_ctr_logloss": 0.5653657731050027,
        "clicked_ctr_auc": 0.7789463141025641,
        "clicked_ctr_uauc": 0.7848302218614718,
        "clicked_ctr_logloss": 0.5653657731050028,
        "clicked_cvr_auc": 0.4777459054316647,
        "clicked_cvr_uauc": 0.45883699633699637,
        "clicked_cvr_logloss": 0.81718771255366,
        "ctcvr_ctr_auc": 0.7789463141025641,
        "ctcvr_ctr_uauc": 0.7848302218614718,
        "ctcvr_ctr_logloss": 0.5653657731050028,
        "ctcvr_cvr_auc": 0.6234250901087685,
        "ctcvr_cvr_uauc": 0.6261940441094852,
        "ctcvr_cvr_logloss": 0.5824093783284401,
        "daily_ctr_auc": 0.8129897081213677,
        "daily_ctr_uauc": 0.8359888747165534,
        "daily_ctr_logloss": 0.5372095129216277,
        "daily_cvr_auc": 0.48859711638616304,
        "daily_cvr_uauc": 0.4716666666666666,
        "daily_cvr_logloss": 0.8158171952675004,
        "daily_n_days": 2.0,
    },
}


def merged_results(p: dict[str, np.ndarray]) -> dict[str, float]:
    """The same figures from the one module, called the way each old caller now calls it."""
    out = {
        "auc": metrics.auc(p["click"], p["ctr_logit"]),
        "uauc": metrics.uauc(p["click"], p["ctr_logit"], p["user_id"]),
        "logloss_probs": metrics.logloss(p["click"], probs=p["p_click"]),
        "logloss_logits": metrics.logloss(p["click"], logits=p["ctr_logit"]),
    }
    out |= {"stats_" + k: v for k, v in metrics.split_metrics(p, oracle=True).items()}
    floor = metrics.probs_task_metrics("ctr", p["click"], p["p_click"], p["user_id"])
    out |= {"floor_" + k: v for k, v in floor.items()}
    for mode in ("clicked", "ctcvr"):
        out |= {f"{mode}_{k}": v for k, v in metrics.split_metrics(p, mode).items()}
    out |= {"daily_" + k: v for k, v in metrics.daily_macro(p, warmup_days=1).items()}
    return out


@pytest.mark.parametrize("seed", sorted(RECORDED))
def test_merged_module_gives_the_old_modules_numbers(seed):
    got = merged_results(fresh_inputs(seed))
    assert list(got) == list(RECORDED[seed])  # same keys, same order (result.json, stats)
    for key, want in RECORDED[seed].items():
        assert got[key] == pytest.approx(want, abs=TOL), key


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_merged_module_against_hand_computation_on_fresh_inputs(seed):
    p = fresh_inputs(seed, n=300)
    y, z, u = p["click"], p["ctr_logit"], p["user_id"]
    assert metrics.auc(y, z) == pytest.approx(_pairwise_auc(y, z), abs=TOL)
    per_user = [(_pairwise_auc(y[u == k], z[u == k]), (u == k).sum()) for k in np.unique(u)]
    kept = [(a, n) for a, n in per_user if not math.isnan(a)]
    want = sum(a * n for a, n in kept) / sum(n for _, n in kept)
    assert metrics.uauc(y, z, u) == pytest.approx(want, abs=TOL)
    q = 1 / (1 + np.exp(-z))
    hand = -np.mean([math.log(qi) if yi else math.log(1 - qi) for yi, qi in zip(y, q)])
    assert metrics.logloss(y, logits=z) == pytest.approx(hand, abs=1e-10)
    assert metrics.logloss(y, probs=q) == pytest.approx(hand, abs=1e-10)
