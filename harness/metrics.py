"""Exact ranking metrics: AUC, UAUC and logloss, per task and split (numpy only, no torch).

    auc(labels, scores)                          rank-based ROC-AUC, ties get average ranks
    uauc(labels, scores, users)                  impression-weighted per-user AUC
    logloss(labels, logits=... | probs=...)      mean binary cross-entropy
    task_metrics(...)                            the three above under one prefix ("ctr_auc", ...)
    split_metrics(preds, cvr_mode=...)           every key of result.json's "metrics"/"oracle"
    daily_macro(preds, ...)                      the paper's next-batch figures: per day, then mean

All of them are exact (no thresholds or bins) and vectorised: one lexsort plus bincounts, whatever
the number of users. AUC is undefined for a single-class set: it is NaN; UAUC leaves such users
out (the usual convention; spec §3). Scores are compared as given: pass logits, not float32
sigmoids, so that saturation does not create false ties.

AUC and UAUC themselves live in harness/metrics_np.py (shared with the synthetic world's oracle:
one implementation in the repository); this module adds non-finite checks, logloss from logits,
the CVR modes and the per-day macro average. It stays importable without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

from harness import metrics_np as _np  # the one implementation of exact AUC / UAUC in the repo

DAY_SECONDS = 86_400


def _as_1d(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name}: contains NaN or infinite values ({int((~np.isfinite(a)).sum())} of {a.size})."
        )
    return a


def auc(labels, scores) -> float:
    """Exact ROC-AUC (NaN when only one class is present); see harness.metrics_np.auc."""
    return _np.auc(labels, _as_1d("scores", scores))


def uauc(labels, scores, users) -> float:
    """Impression-weighted per-user AUC over users with both classes; see harness.metrics_np.uauc."""
    return _np.uauc(labels, _as_1d("scores", scores), users)


def logloss(labels, *, logits=None, probs=None, eps: float = _np.EPS) -> float:
    """Mean binary cross-entropy, from logits (exact, stable) or probabilities (clipped to
    [eps, 1-eps] as harness.metrics_np does for the oracle)."""
    y = np.asarray(labels, np.float64).reshape(-1)
    if y.size == 0:
        return math.nan
    if (logits is None) == (probs is None):
        raise ValueError("logloss: pass exactly one of logits= or probs=.")
    if logits is not None:
        z = _as_1d("logits", logits)
        # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
        return float(np.mean(np.logaddexp(0.0, z) - y * z))
    return _np.logloss(y, _as_1d("probs", probs), eps=eps)


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
