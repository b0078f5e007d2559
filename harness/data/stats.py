"""Dataset statistics and the Bayes-optimal ("oracle") scores of a contract folder.

`compute_stats` is what `python -m harness.data stats DIR` prints and what the synthetic world stores
in manifest.stats at generation time: sizes, prior-history length percentiles per impression
(events of the user strictly before the impression), label rates per split and, when the
impressions carry p_click / p_conversion, the oracle AUC / UAUC / logloss per split and task
(CTR on every impression, CVR on clicked impressions; p_conversion is P(conversion | click)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    SPLITS,
    USERS,
    ContractError,
    Manifest,
    n_rows,
    read_table,
    table_files,
    table_schema,
    table_source,
)
from harness.metrics import split_metrics

PERCENTILES = (10, 50, 90, 99)


TS_BITS = 34  # ts in [0, 2^34) seconds (until year 2514) packs with the user id into int64


def _pack(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    user, ts = np.asarray(user, np.int64), np.asarray(ts, np.int64)
    if ts.size and (ts.min() < 0 or ts.max() >= 1 << TS_BITS):
        raise ValueError(
            "ts must be int64 seconds in [0, 2^34); convert timestamps to epoch seconds"
        )
    return (user << TS_BITS) | ts


def prior_counts(
    ev_user: np.ndarray, ev_ts: np.ndarray, imp_user: np.ndarray, imp_ts: np.ndarray
) -> np.ndarray:
    """Number of the user's events with ts strictly before each impression's ts.
    Events must be sorted by (user_id, ts): one searchsorted over a packed (user, ts) key."""
    ev_key = _pack(ev_user, ev_ts)
    return (
        np.searchsorted(ev_key, _pack(imp_user, imp_ts), side="left")
        - np.searchsorted(ev_key, _pack(imp_user, np.zeros_like(imp_ts)), side="left")
    ).astype(np.int64)


def streamed_event_stats(
    events_path: Path, imp_user: np.ndarray, imp_ts: np.ndarray, user_vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """(prior count per impression, events per user id) reading events one row group at a time.
    Every row group of a (user, ts)-sorted file is a sorted slice, so a global rank is the sum of
    the ranks within each row group; memory stays at one row group plus the impressions."""
    hi_key = _pack(imp_user, imp_ts)
    lo_key = _pack(imp_user, np.zeros_like(imp_ts))
    prior = np.zeros(hi_key.size, np.int64)
    per_user = np.zeros(user_vocab, np.int64)
    for f in table_files(events_path):
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["user_id", "ts"])
            u = t.column("user_id").to_numpy()
            key = _pack(u, t.column("ts").to_numpy())
            prior += np.searchsorted(key, hi_key, side="left") - np.searchsorted(
                key, lo_key, side="left"
            )
            per_user += np.bincount(u, minlength=user_vocab)[:user_vocab]
    return prior, per_user


def _pct(x: np.ndarray, q: float) -> int:
    """Percentile of a possibly empty array (0 when empty: an empty log has no history lengths)."""
    return int(np.percentile(x, q)) if x.size else 0


def _round(x: float) -> float:
    return float(round(x, 6)) if np.isfinite(x) else float("nan")


def compute_stats(folder: str | Path, manifest: Manifest | None = None) -> dict[str, Any]:
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    cols = ["user_id", "ts", "click", "conversion", "split"]
    if manifest.has_oracle:
        cols += ["p_click", "p_conversion"]
    src = {name: table_source(folder, name) for name in (EVENTS, IMPRESSIONS, USERS, ITEMS)}
    for name in (EVENTS, IMPRESSIONS):
        if src[name] is None:
            raise ContractError(
                f"{folder / name}: missing (or its parts {name.removesuffix('.parquet')}/"
                f"part-*.parquet); `python -m harness.data validate {folder}` lists what to fix."
            )
        table_schema(src[name])  # parts that disagree: named here, not deep in a reader
    imp = read_table(src[IMPRESSIONS], columns=cols).to_pandas()
    imp_user = imp["user_id"].to_numpy()
    user_vocab = (
        manifest.feature("user_id").vocab_size
        if "user_id" in {f.name for f in manifest.features}
        else int(imp_user.max()) + 1
    )
    user_vocab = max(user_vocab, int(imp_user.max()) + 1 if imp_user.size else 1)
    prior, events_per_user = streamed_event_stats(
        src[EVENTS], imp_user, imp["ts"].to_numpy(), user_vocab
    )
    n_users = (
        n_rows(src[USERS])
        if src[USERS] is not None
        else int(
            np.count_nonzero(
                events_per_user | np.bincount(imp_user, minlength=user_vocab)[:user_vocab]
            )
        )
    )
    n_items = n_rows(src[ITEMS]) if src[ITEMS] is not None else manifest.item_vocab - 1
    per_user = events_per_user[events_per_user > 0]
    stats: dict[str, Any] = {
        "users": int(n_users),
        "items": int(n_items),
        "events": n_rows(src[EVENTS]),
        "impressions": int(len(imp)),
        "requests": None,
        "events_per_user_percentiles": {},
        "prior_events_percentiles": {f"p{q}": _pct(prior, q) for q in PERCENTILES},
        "prior_events_max": int(prior.max()) if prior.size else 0,
        "impressions_with_prior_ge_2048": int((prior >= 2048).sum()),
        "splits": {},
    }
    stats["prior_events_percentiles"]["mean"] = _round(float(prior.mean())) if prior.size else 0.0
    stats["events_per_user_percentiles"] = {f"p{q}": _pct(per_user, q) for q in PERCENTILES}
    rid = read_table(src[IMPRESSIONS], columns=["request_id"]).column("request_id").to_numpy()
    stats["requests"] = int(np.unique(rid).size)
    oracle: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        part = imp[imp["split"] == split]
        click, conv = part["click"].to_numpy(), part["conversion"].to_numpy()
        n_click = int(click.sum())
        stats["splits"][split] = {
            "impressions": int(len(part)),
            "ts_min": int(part["ts"].min()) if len(part) else None,
            "ts_max": int(part["ts"].max()) if len(part) else None,
            "click_rate": _round(click.mean()) if len(part) else None,
            "conversion_rate": _round(conv.mean()) if len(part) else None,
            "cvr_given_click": _round(conv[click == 1].mean()) if n_click else None,
        }
        if manifest.has_oracle and len(part):
            # the oracle's keys as a run's result.json has them: CTR on every impression, CVR on
            # the clicked ones, scored by the true probabilities
            columns = ("p_click", "p_conversion", "user_id")
            m = split_metrics(
                {"click": click, "conversion": conv} | {k: part[k].to_numpy() for k in columns},
                "clicked",
                oracle=True,
            )
            oracle[split] = {k: _round(v) for k, v in m.items()}
    if oracle:
        stats["oracle"] = oracle
    return stats


def format_stats(manifest: Manifest, stats: dict[str, Any]) -> str:
    lines = [
        f"dataset {manifest.name} ({manifest.source})",
        f"  users {stats['users']:,}  items {stats['items']:,}  events {stats['events']:,}  "
        f"requests {stats['requests']:,}  impressions {stats['impressions']:,}",
        "  events per user   "
        + "  ".join(f"{k} {v}" for k, v in stats["events_per_user_percentiles"].items()),
        "  prior events/imp  "
        + "  ".join(f"{k} {v}" for k, v in stats["prior_events_percentiles"].items())
        + f"  max {stats['prior_events_max']}  (>=2048: {stats['impressions_with_prior_ge_2048']:,} imps)",
        f"  {'split':6s} {'imps':>10s} {'ctr':>8s} {'conv':>8s} {'cvr|clk':>8s}",
    ]
    for split, s in stats["splits"].items():

        def f(v):
            return f"{v:8.4f}" if v is not None else f"{'-':>8s}"

        lines.append(
            f"  {split:6s} {s['impressions']:10,d} {f(s['click_rate'])} {f(s['conversion_rate'])} "
            f"{f(s['cvr_given_click'])}"
        )
    if stats.get("oracle"):
        lines.append("  Bayes-optimal (oracle) scores from p_click / p_conversion:")
        keys = list(next(iter(stats["oracle"].values())))
        lines.append(f"  {'split':6s} " + " ".join(f"{k:>12s}" for k in keys))
        for split, o in stats["oracle"].items():
            lines.append(f"  {split:6s} " + " ".join(f"{o[k]:12.4f}" for k in keys))
    return "\n".join(lines)
