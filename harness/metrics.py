"""Exact ranking metrics: AUC, UAUC and logloss, per task and split (numpy only, no torch). The one
metrics module of the repository: the training run's evaluation (harness/system.py), the synthetic
world's oracle (harness/data/stats.py) and the count-feature floor (harness/data/floor.py) all score
with it, so a model's score and its ceiling are computed by the same code. Torch callers convert at
the boundary (`tensor.cpu().numpy()`).

    auc(labels, scores)                          rank-based ROC-AUC, ties get average ranks
    uauc(labels, scores, users)                  impression-weighted per-user AUC
    per_user_auc(labels, scores, users)          UAUC's parts (per-user AUC and weights)
    logloss(labels, logits=... | probs=...)      mean binary cross-entropy
    task_metrics(...)                            the three above under one prefix ("ctr_auc", ...)
    split_metrics(preds, cvr_mode=...)           every key of result.json's "metrics"/"oracle"
    daily_macro(preds, ...)                      the paper's next-batch figures: per day, then mean
    window_aucs(labels, scores, in_window)       AUC split by whether the candidate is in the window

Definitions:
  AUC      exact Mann-Whitney statistic; tied scores count 1/2 (average ranks), no binning. NaN when
           only one class is present.
  UAUC     mean over users of the per-user AUC, weighted by the user's impression count; users whose
           impressions are all one class have no AUC and are left out (weights renormalised; spec §3).
  logloss  mean binary cross-entropy: exact from logits, or of probabilities clipped to [eps, 1-eps].

All of them are exact and vectorised: one lexsort plus bincounts, whatever the number of users.
Scores are compared as given: pass logits, not float32 sigmoids, so that saturation does not create
false ties. Non-finite scores are an error, not a silent NaN metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

EPS = 1e-7  # probability clip of logloss(probs=...)
DAY_SECONDS = 86_400


def _as_1d(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name}: contains NaN or infinite values ({int((~np.isfinite(a)).sum())} of {a.size})."
        )
    return a


def _labels_and(name: str, labels, values) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0/1, float64) and finite scores or probabilities of the same length."""
    y = np.asarray(labels).astype(np.float64).ravel()
    s = _as_1d(name, values)
    if y.shape != s.shape:
        raise ValueError(f"labels and {name} differ in length: {y.shape[0]} vs {s.shape[0]}")
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


def auc(labels, scores) -> float:
    """Exact ROC-AUC (ties averaged). NaN when only one class is present."""
    y, s = _labels_and("scores", labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order, ranks = _tied_ranks(s)
    return float((ranks[y[order] == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_user_auc(labels, scores, users) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user index of each impression, AUC per user (NaN where one class), impressions per user);
    users are indexed 0..U-1 in sorted id order. UAUC's parts, kept for resampling users."""
    y, s = _labels_and("scores", labels, scores)
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


def uauc(labels, scores, users) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes. NaN if none."""
    _, per_user, n = per_user_auc(labels, scores, users)
    ok = ~np.isnan(per_user)
    if not ok.any():
        return float("nan")
    return float(np.average(per_user[ok], weights=n[ok]))


def logloss(labels, *, logits=None, probs=None, eps: float = EPS) -> float:
    """Mean binary cross-entropy, from logits (exact, stable) or probabilities (clipped to
    [eps, 1-eps]: the oracle's true probabilities can be 0 or 1)."""
    y = np.asarray(labels, np.float64).reshape(-1)
    if y.size == 0:
        return math.nan
    if (logits is None) == (probs is None):
        raise ValueError("logloss: pass exactly one of logits= or probs=.")
    if logits is not None:
        z = _as_1d("logits", logits)
        # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
        return float(np.mean(np.logaddexp(0.0, z) - y * z))
    y, p = _labels_and("probs", y, probs)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def task_metrics(prefix: str, labels, users, *, logits=None, probs=None) -> dict[str, float]:
    """{prefix_auc, prefix_uauc, prefix_logloss} for one task, ranked by logits or probabilities."""
    score = logits if logits is not None else probs
    return {
        f"{prefix}_auc": auc(labels, score),
        f"{prefix}_uauc": uauc(labels, score, users),
        f"{prefix}_logloss": logloss(labels, logits=logits, probs=probs),
    }


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


CvrMode = Literal["clicked", "ctcvr"]


def split_metrics(
    p: Mapping[str, np.ndarray], cvr_mode: CvrMode = "clicked", oracle: bool = False
) -> dict[str, float]:
    """The result.json metric keys for one split.

    `p` holds 1-D arrays: click, conversion, user_id and either ctr_logit/cvr_logit (a model) or,
    with oracle=True, p_click/p_conversion (true probabilities; p_conversion is P(conversion | click)).
    CVR: "clicked" = the conversion label among clicked impressions, scored by the CVR head;
    "ctcvr" = the conversion label over all impressions, scored by P(click) * P(conversion | click).
    """
    click, conv, user = (np.asarray(p[k]) for k in ("click", "conversion", "user_id"))
    out: dict[str, float] = {}
    if oracle:
        out |= task_metrics("ctr", click, user, probs=p["p_click"])
        if cvr_mode == "clicked":
            m = click > 0.5
            out |= task_metrics("cvr", conv[m], user[m], probs=np.asarray(p["p_conversion"])[m])
        else:
            out |= task_metrics(
                "cvr", conv, user, probs=np.asarray(p["p_click"]) * np.asarray(p["p_conversion"])
            )
        return out
    out |= task_metrics("ctr", click, user, logits=p["ctr_logit"])
    if cvr_mode == "clicked":
        m = click > 0.5
        out |= task_metrics("cvr", conv[m], user[m], logits=np.asarray(p["cvr_logit"])[m])
    else:
        # log P(click and conversion) = log s(a) + log s(b): monotone in the product, no saturation
        log_p = _log_sigmoid(np.asarray(p["ctr_logit"], np.float64)) + _log_sigmoid(
            np.asarray(p["cvr_logit"], np.float64)
        )
        log_q = np.log(-np.expm1(np.minimum(log_p, -1e-300)))  # log(1 - p)
        ll = float(-np.mean(conv * log_p + (1 - conv) * log_q)) if conv.size else math.nan
        out |= {"cvr_auc": auc(conv, log_p), "cvr_uauc": uauc(conv, log_p, user), "cvr_logloss": ll}
    return out


def window_aucs(labels, scores, in_window) -> dict[str, float]:
    """CTR AUC split by whether each impression's candidate item is among its history window
    (experiment rows, docs/learning-history.md sections 12 and 19): `auc` over all; `auc_in` the
    positives whose candidate is in the window against every negative (how well an exact match is
    read); `auc_out` over the impressions whose candidate is not in it (what everything else gives);
    `share_in` the positives' share in the window. A part with only one class is left out."""
    y, s = _labels_and("scores", labels, scores)
    hit = np.asarray(in_window, bool)
    pos, neg = y == 1, y == 0
    out = {"auc": auc(y, s)}
    if (pos & hit).any() and neg.any():
        keep = (pos & hit) | neg
        out["auc_in"] = auc(y[keep], s[keep])
    if (~hit & pos).any() and (~hit & neg).any():
        out["auc_out"] = auc(y[~hit], s[~hit])
    out["share_in"] = float(hit[pos].mean()) if pos.any() else 0.0
    return out


def probs_task_metrics(prefix: str, labels, probs, users) -> dict[str, float]:
    """task_metrics scored by probabilities, positional (the count-feature floor's fitted P(click))."""
    return task_metrics(prefix, labels, users, probs=probs)


def daily_macro(
    p: Mapping[str, np.ndarray],
    cvr_mode: CvrMode = "clicked",
    oracle: bool = False,
    warmup_days: int = 0,
) -> dict[str, float]:
    """Next-batch protocol figures: split_metrics per calendar day (ts // 86400), then the mean over
    days (each day weighted equally), leaving out the first `warmup_days` days. A day whose metric
    is undefined (single class) is left out of that metric's mean."""
    day = np.asarray(p["ts"]) // DAY_SECONDS
    days = np.unique(day)[warmup_days:]
    per_day = []
    for d in days:  # one iteration per day (tens), each fully vectorised
        m = day == d
        per_day.append(split_metrics({k: np.asarray(v)[m] for k, v in p.items()}, cvr_mode, oracle))
    if not per_day:
        return {}
    out = {}
    for key in per_day[0]:
        vals = np.array([r[key] for r in per_day])
        vals = vals[~np.isnan(vals)]
        out[key] = float(vals.mean()) if vals.size else math.nan
    out["n_days"] = float(len(per_day))
    return out
