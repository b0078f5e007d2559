"""Evaluating a seeded subsample of users, and the sampling CI of its AUC / UAUC (no torch).

`eval.sample_users` (harness/config.py EvalConfig) trades evaluation minutes for a stated
precision: the val / test passes score only the requests of a seeded sample of each split's users,
and result.json gives each AUC / UAUC with a percentile bootstrap interval over users (the sampled
users drawn with replacement, every impression of a drawn user kept together, as the metrics'
unit of dependence is the user: one user's impressions share a history and a taste).

The interval describes the spread of the figure over user samples of that size; it ignores the
finite-population correction, so when the sample is a large share of the split's users it is wider
than the truth (conservative). With sample_users = 0 nothing here runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.metrics import per_user_auc

SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}  # one seeded stream per split
CI_METHOD = "percentile bootstrap over users"


def n_sampled(sample_users: float, n_users: int) -> int:
    """Users drawn from n_users: a fraction in (0, 1) of them (at least one), or a count."""
    if sample_users <= 0:
        return n_users
    if sample_users < 1:
        return min(n_users, max(1, int(round(sample_users * n_users))))
    return min(n_users, int(sample_users))


def sample_requests(
    requests: np.ndarray, request_user: np.ndarray, sample_users: float, seed: int, split: str
) -> tuple[np.ndarray, dict[str, int]]:
    """The requests (rows of a split, chronological) of a seeded sample of their users, kept in
    their order, and the counts {users, of_users, requests, of_requests}. Every rank draws the
    same sample (the seed and the split decide it)."""
    users = np.unique(request_user[requests])
    k = n_sampled(sample_users, len(users))
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    chosen = rng.choice(users, size=k, replace=False) if k < len(users) else users
    kept = requests[np.isin(request_user[requests], chosen)]
    counts = {
        "users": int(k),
        "of_users": int(len(users)),
        "requests": int(len(kept)),
        "of_requests": int(len(requests)),
    }
    return kept, counts


def _weighted_auc(y: np.ndarray, tie: np.ndarray, n_ties: int, w: np.ndarray) -> float:
    """AUC when impression i counts w[i] times (a user drawn twice counts twice): the weighted
    Mann-Whitney statistic over tie groups `tie` (0..n_ties-1 in increasing score), ties 1/2."""
    wp = np.bincount(tie, weights=w * y, minlength=n_ties)
    wn = np.bincount(tie, weights=w * (1.0 - y), minlength=n_ties)
    den = wp.sum() * wn.sum()
    if den == 0:
        return float("nan")
    below = np.cumsum(wn) - wn
    return float((wp * (below + 0.5 * wn)).sum() / den)


def _task_replicates(
    y: np.ndarray, s: np.ndarray, users: np.ndarray, draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(AUC, UAUC) of each bootstrap replicate; draws[b] = how often each user (0..U-1 in sorted
    id order) is drawn in replicate b. One sort of the scores serves every replicate."""
    g, auc_u, n_u = per_user_auc(y, s, users)
    y = np.asarray(y, np.float64).ravel()
    _, tie = np.unique(np.asarray(s, np.float64).ravel(), return_inverse=True)
    tie = tie.ravel()
    n_ties = int(tie.max()) + 1 if tie.size else 0
    ok = ~np.isnan(auc_u)
    aucs, uaucs = np.full(len(draws), np.nan), np.full(len(draws), np.nan)
    for b, c in enumerate(draws):
        if y.size:
            aucs[b] = _weighted_auc(y, tie, n_ties, c[g].astype(np.float64))
        wu = (c * n_u)[ok]
        if wu.sum() > 0:
            uaucs[b] = float((wu * auc_u[ok]).sum() / wu.sum())
    return aucs, uaucs


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def bootstrap_ci(
    p: Mapping[str, np.ndarray],
    cvr_mode: str,
    *,
    n_boot: int,
    seed: int,
    level: float,
    split: str,
) -> dict[str, list[float]]:
    """{ctr_auc, ctr_uauc, cvr_auc, cvr_uauc: [low, high]} for one split's predictions `p` (the
    arrays harness.metrics.split_metrics reads), scored as split_metrics scores them. The same
    user draws serve CTR and CVR, so their intervals are those of one resampled population."""
    if cvr_mode not in ("clicked", "ctcvr"):  # a loss name (clicked_per_impression) is not a metric
        raise ValueError(
            f"cvr_mode must be 'clicked' or 'ctcvr' (system.cvr_metric_mode), got {cvr_mode!r}"
        )
    user = np.asarray(p["user_id"]).ravel()
    ids = np.unique(user)
    rng = np.random.default_rng([seed, SPLIT_STREAM[split], 1])
    draws = (
        np.stack(
            [
                np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
                for _ in range(n_boot)
            ]
        )
        if len(ids)
        else np.zeros((n_boot, 0), np.int64)
    )
    click, conv = np.asarray(p["click"]).ravel(), np.asarray(p["conversion"]).ravel()
    tasks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
        "ctr": (click, np.asarray(p["ctr_logit"]).ravel(), user)
    }
    if cvr_mode == "clicked":
        m = click > 0.5
        tasks["cvr"] = (conv[m], np.asarray(p["cvr_logit"]).ravel()[m], user[m])
    else:
        log_p = _log_sigmoid(np.asarray(p["ctr_logit"], np.float64)) + _log_sigmoid(
            np.asarray(p["cvr_logit"], np.float64)
        )
        tasks["cvr"] = (conv, log_p, user)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, list[float]] = {}
    for task, (y, s, u) in tasks.items():
        # draws are per user of the whole split; a task over a subset (clicked impressions) keeps
        # the counts of its own users, so CTR and CVR see the same replicate populations
        col = np.searchsorted(ids, np.unique(u))
        aucs, uaucs = _task_replicates(y, s, u, draws[:, col])
        for name, reps in (("auc", aucs), ("uauc", uaucs)):
            reps = reps[~np.isnan(reps)]
            out[f"{task}_{name}"] = (
                [float(np.percentile(reps, lo)), float(np.percentile(reps, hi))]
                if reps.size
                else [float("nan"), float("nan")]
            )
    return out


def sample_record(
    cfg: Any, counts: Mapping[str, Mapping[str, int]], results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """result.json's `eval_sample`: how the users were drawn, and per split the counts and CIs."""
    return {
        "sample_users": cfg.sample_users,
        "seed": cfg.sample_seed,
        "method": CI_METHOD,
        "bootstrap": cfg.bootstrap,
        "level": cfg.ci_level,
        "splits": {s: {**counts.get(s, {}), "ci": r.get("ci", {})} for s, r in results.items()},
    }
