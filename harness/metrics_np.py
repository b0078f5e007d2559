"""Ranking metrics in plain numpy (no torch): exact AUC, UAUC and logloss.

Shared by the data statistics (the Bayes-optimal "oracle" scores of a synthetic world) and the
training run's evaluation, so a model's score and its ceiling are computed by the same code.

Definitions:
  AUC      exact Mann-Whitney statistic; tied scores count 1/2 (average ranks), no binning.
  UAUC     mean over users of the per-user AUC, weighted by the user's impression count; users whose
           impressions are all one class have no AUC and are left out (weights renormalised).
  logloss  mean binary cross-entropy of probabilities clipped to [eps, 1 - eps].
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _as_arrays(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.float64).ravel()
    s = np.asarray(s).astype(np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    return y, s


def _tied_ranks(s: np.ndarray, group: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of s within each group, ties averaged; returns (order, ranks in that order)."""
    order = np.lexsort((s,) if group is None else (s, group))
    ss = s[order]
    gs = np.zeros_like(ss) if group is None else group[order]
    n = ss.size
    # a new tie run starts where the (group, score) pair changes
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (ss[1:] != ss[:-1]) | (gs[1:] != gs[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)  # exclusive
    # position within the group: global position minus the group's first position
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = gs[1:] != gs[:-1]
    group_start = np.flatnonzero(new_group)
    group_of = np.cumsum(new_group) - 1
    base = group_start[group_of]
    avg_rank = (run_start + run_end - 1) / 2.0 + 1.0  # average of 1-based global positions
    ranks = avg_rank[run_id] - base
    return order, ranks


def auc(y, s) -> float:
    """Exact ROC AUC (ties averaged). NaN when only one class is present."""
    y, s = _as_arrays(y, s)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order, ranks = _tied_ranks(s)
    return float((ranks[y[order] == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_user_auc(y, s, users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index of each impression, AUC per user (NaN where one class), impressions per user);
    users are indexed 0..U-1 in sorted id order. UAUC's parts, kept for resampling users."""
    y, s = _as_arrays(y, s)
    users = np.asarray(users).ravel()
    if users.shape != y.shape:
        raise ValueError("users and labels differ in length")
    _, g = np.unique(users, return_inverse=True)
    g = g.astype(np.int64).ravel()
    if y.size == 0:
        return g, np.zeros(0), np.zeros(0)
    order, ranks = _tied_ranks(s, g)
    yo, go = y[order], g[order]
    n_groups = int(g.max()) + 1
    n = np.bincount(go, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(go, weights=yo, minlength=n_groups)
    rank_pos = np.bincount(go, weights=ranks * yo, minlength=n_groups)
    n_neg = n - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    per_user = np.full(n_groups, np.nan)
    per_user[ok] = (rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return g, per_user, n


def uauc(y, s, users) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes. NaN if none."""
    _, per_user, n = per_user_auc(y, s, users)
    ok = ~np.isnan(per_user)
    if not ok.any():
        return float("nan")
    return float(np.average(per_user[ok], weights=n[ok]))


def logloss(y, p, eps: float = EPS) -> float:
    """Mean binary cross-entropy of probabilities p (clipped to [eps, 1-eps])."""
    y, p = _as_arrays(y, p)
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def task_metrics(prefix: str, y, p, users) -> dict[str, float]:
    """{prefix_auc, prefix_uauc, prefix_logloss} (the result.json metric keys) for one task."""
    return {
        f"{prefix}_auc": auc(y, p),
        f"{prefix}_uauc": uauc(y, p, users),
        f"{prefix}_logloss": logloss(y, p),
    }


def ranking_metrics(click, conversion, p_click, p_conversion, users) -> dict[str, float]:
    """CTR metrics on every impression, CVR metrics on clicked impressions (conversion | click)."""
    click = np.asarray(click)
    clicked = click == 1
    out = task_metrics("ctr", click, p_click, users)
    out.update(
        task_metrics(
            "cvr",
            np.asarray(conversion)[clicked],
            np.asarray(p_conversion)[clicked],
            np.asarray(users)[clicked],
        )
    )
    return out
