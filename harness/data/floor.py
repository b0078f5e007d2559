"""The count-feature floor: what a transparent logistic regression on history counts scores.

For a dataset folder and a window L, every impression gets a handful of count features of its
history (the user's events strictly before the impression's ts, the as-of join of
`harness.data.sequences.asof_offsets`) and of the item's past:

    item_pop          log1p(events of the candidate item, all users, ts strictly before the impression)
    history_len       log1p(the user's prior events, all of them, not only the last L)
    item_in_window    log1p(events of the candidate item among the user's last L prior events)
    <side>_in_window  per item side field (category, brand, ...): log1p(last-L events whose side
                      value equals the candidate's; a candidate with value 0 (missing) counts 0)
    item_<b>_in_window  per behaviour type b, only when the log has several types: log1p(last-L
                      events of the candidate item with behaviour b)

A logistic regression (L2 penalty `l2` on the weights, not the intercept) is fitted by L-BFGS on the
train split's click labels over features standardised with the train mean and sd, and scored on
val and test with the project's metrics (`harness.metrics`: AUC, UAUC, logloss).

Why a floor: every feature is a count a sequence model of window L can form from what it is given
(the candidate id, its window of L events with their items, side fields and behaviour types; the
user's activity through the user embedding and the window's fill), except item popularity: a model
sees one user's history, so an item's count across all users reaches it only through the `item_pop`
impression feature the converters write (harness.data.converters.common.add_item_popularity, the
same as-of count as here) or, for items frequent in train, through a learned item embedding. On a
folder without `item_pop` the floor's popularity term is information the model does not have (on
the converted Taobao and Tmall logs it is worth about 0.06 to 0.08 AUC: docs/learning-history.md,
section 11). A model that scores below it at the same L leaves signal in its input unused. It is not a ceiling: interactions, recency, context and anything nonlinear are
left out on purpose. The oracle (true probabilities) stays the ceiling of synthetic worlds; the
floor is the yardstick real data has.

Everything is vectorised: per feature, events are sorted once by (key, event position); the count
of a key in an impression's window [start, end) is a difference of two searchsorted ranks. Memory is
O(events + impressions x features), never impressions x L.

Results are cached in `<folder>/.floor.json`, keyed by a content fingerprint of the dataset files
and the floor's version and settings; a changed dataset recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from harness.data.contract import EVENTS, IMPRESSIONS, ITEMS, MANIFEST, SPLITS, Manifest, n_rows
from harness.data.counts import events_before, sorted_rank
from harness.metrics import probs_task_metrics as task_metrics


class FloorTooLarge(ValueError):
    """compute_floor(max_events=...) refused a log that is not cached and larger than asked."""


FLOOR_VERSION = 1
CACHE_NAME = ".floor.json"
DEFAULT_L2 = 1e-4


# ------------------------------------------------------------------------------------ features


def _col(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy()).astype(np.int64, copy=False)


def _read(path: Path, name: str) -> np.ndarray:
    """One int64 column of a parquet file (one column decoded at a time keeps the peak low)."""
    return _col(pq.read_table(path, columns=[name]), name)


class FloorFeatures:
    """The floor's count features of every impression of a folder at each of `windows`.

    Built feature by feature: one event-sized sorted key array lives at a time, and the counts of all
    windows are kept as int32, so memory is O(events + impressions x features x windows)."""

    def __init__(
        self, folder: str | Path, windows: Iterable[int], manifest: Manifest | None = None
    ):
        # imported here: sequences.py imports torch, which the rest of the floor (numpy, pyarrow,
        # scipy) never needs
        from harness.data.sequences import asof_offsets

        folder = Path(folder)
        m = manifest or Manifest.load(folder)
        self.manifest = m
        self.windows = sorted({int(w) for w in windows})
        if not self.windows or self.windows[0] < 1:
            raise ValueError(f"floor: windows must be >= 1, got {self.windows}")
        side = list(m.side_fields)
        imp = pq.read_table(
            folder / IMPRESSIONS, columns=["user_id", "ts", "item_id", "click", "split"]
        )
        self.user, ts, item = _col(imp, "user_id"), _col(imp, "ts"), _col(imp, "item_id")
        self.click = _col(imp, "click")
        self.split = np.asarray(imp.column("split").to_numpy(zero_copy_only=False)).astype(str)
        del imp
        ev_path = folder / EVENTS
        ev_user, ev_ts = _read(ev_path, "user_id"), _read(ev_path, "ts")
        # the as-of join: the user's events [first, end) strictly before the impression
        first, end = asof_offsets(ev_user, ev_ts, self.user, ts)
        del ev_user
        starts = {w: np.maximum(first, end - w) for w in self.windows}
        ev_item = _read(ev_path, "item_id")
        # item popularity so far: the item's events (all users) with ts strictly before the impression
        item_pop = events_before(ev_item, ev_ts, item, ts)
        del ev_ts
        cols: list[tuple[str, Any]] = [("item_pop", item_pop), ("history_len", end - first)]

        def window(name, ev_key, cand_key, valid=None):
            n = np.int64(ev_key.size + 1)
            top = int(max(ev_key.max(initial=0), cand_key.max(initial=0))) + 1
            if top * int(n) >= 2**63:
                raise ValueError(f"floor: {name}: {top} keys x {int(n)} events overflow int64")
            # events sorted by (key, position); positions never cross users ([first, end) is one user's)
            packed = np.sort(ev_key * n + np.arange(ev_key.size, dtype=np.int64))
            hi = sorted_rank(packed, cand_key * n + end)
            per_w = {}
            for w, s in starts.items():
                c = hi - sorted_rank(packed, cand_key * n + s)
                per_w[w] = c if valid is None else np.where(valid, c, 0)
            cols.append((name, per_w))

        window("item_in_window", ev_item, item)
        cand_side = self._candidate_side(folder, m, ev_item, ev_path, item)
        for j, name in enumerate(side):
            ck = cand_side[:, j]
            window(f"{name}_in_window", _read(ev_path, name), ck, ck > 0)
        behaviors = sorted(m.behaviors, key=lambda b: b.id)
        if len(behaviors) > 1:
            nb = np.int64(len(behaviors))
            ek = ev_item * nb + (_read(ev_path, "behavior") - 1)
            for b in behaviors:
                window(f"item_{b.name}_in_window", ek, item * nb + (b.id - 1))
            del ek
        del ev_item
        self.names = [c[0] for c in cols]
        self._counts = {}
        for w in self.windows:
            self._counts[w] = np.stack(
                [c if isinstance(c, np.ndarray) else c[w] for _, c in cols], 1
            ).astype(np.int32)

    @staticmethod
    def _candidate_side(folder, m: Manifest, ev_item, ev_path, item) -> np.ndarray:
        """(N, S) side values of the candidates: items.parquet where it holds them, else the value
        the item's events carry (0 for an item never seen in the log)."""
        side = list(m.side_fields)
        out = np.zeros((item.size, len(side)), np.int64)
        if not side:
            return out
        have = set(pq.read_schema(folder / ITEMS).names) if (folder / ITEMS).exists() else set()
        table = (
            pq.read_table(folder / ITEMS, columns=["item_id", *[s for s in side if s in have]])
            if have
            else None
        )
        vocab = max(m.item_vocab, int(item.max(initial=0)) + 1, int(ev_item.max(initial=0)) + 1)
        for j, name in enumerate(side):
            lut = np.zeros(vocab, np.int64)
            if table is not None and name in have:
                lut[_col(table, "item_id")] = _col(table, name)
            else:
                lut[ev_item] = _read(ev_path, name)
            out[:, j] = lut[item]
        return out

    def counts(self, L: int) -> np.ndarray:
        """(N, F) int32 raw counts at window L (one of self.windows; names in self.names)."""
        return self._counts[int(L)]

    def matrix(self, L: int) -> np.ndarray:
        """(N, F) float64 features at window L: log1p of the counts."""
        return np.log1p(self.counts(L).astype(np.float64))


# ------------------------------------------------------------------------------------------ fit


def fit_logistic(
    X: np.ndarray, y: np.ndarray, l2: float = DEFAULT_L2
) -> tuple[np.ndarray, float, dict]:
    """L2-regularised logistic regression by L-BFGS: minimises mean logloss + l2/2 |w|^2 (the
    intercept is not penalised). X should be standardised. Returns (w, b, optimiser info)."""
    from scipy.optimize import minimize  # here: scipy is heavy and only the fit needs it

    y = y.astype(np.float64)
    n, f = X.shape
    p0 = np.clip(y.mean(), 1e-6, 1 - 1e-6) if n else 0.5

    def loss(theta):
        w, b = theta[:f], theta[f]
        z = X @ w + b
        val = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * (w @ w)
        r = (1.0 / (1.0 + np.exp(-z)) - y) / n
        return val, np.append(X.T @ r + l2 * w, r.sum())

    theta0 = np.append(np.zeros(f), np.log(p0 / (1 - p0)))
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:f], float(res.x[f]), {"converged": bool(res.success), "iterations": int(res.nit)}


def _metrics(y, score, users) -> dict[str, float]:
    p = 1.0 / (1.0 + np.exp(-score))
    return {k: round(float(v), 6) for k, v in task_metrics("ctr", y, p, users).items()}


def floor_scores(
    feats: FloorFeatures, L: int, l2: float = DEFAULT_L2, drop: Iterable[str] = ()
) -> tuple[np.ndarray, dict[str, Any]]:
    """The floor's fit at window L on the train split and its logit for every impression of the
    folder (feats' order), with the fit's record: coefficients, intercept, the standardisation's
    mean and sd, the optimiser's info. `drop` leaves features out (an ablation:
    scripts/floor_ablation.py)."""
    unknown = sorted(set(drop) - set(feats.names))
    if unknown:
        raise ValueError(f"floor: unknown feature(s) {unknown} to drop; features: {feats.names}")
    keep = [i for i, n in enumerate(feats.names) if n not in set(drop)]
    names = [feats.names[i] for i in keep]
    X = feats.matrix(L)[:, keep]
    tr = feats.split == "train"
    if not tr.any() or feats.click[tr].min() == feats.click[tr].max():
        raise ValueError("floor: the train split needs impressions of both classes")
    mu, sd = X[tr].mean(0), X[tr].std(0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature stays 0 and gets weight 0
    Z = (X - mu) / sd
    w, b, info = fit_logistic(Z[tr], feats.click[tr], l2)
    fit = {
        "coef": {n: round(float(v), 6) for n, v in zip(names, w)},
        "intercept": round(b, 6),
        "mean": {n: round(float(v), 6) for n, v in zip(names, mu)},
        "sd": {n: round(float(v), 6) for n, v in zip(names, sd)},
        "fit": info,
    }
    return Z @ w + b, fit


def floor_at(
    feats: FloorFeatures, L: int, l2: float = DEFAULT_L2, drop: Iterable[str] = ()
) -> dict[str, Any]:
    """One window: fit on train, score every split. A record of plain JSON values. `drop` leaves
    features out (an ablation: what the floor owes to each; scripts/floor_ablation.py)."""
    t0 = time.time()
    score, fit = floor_scores(feats, L, l2, drop)
    rec: dict[str, Any] = {"seq_len": int(L)}
    for split in SPLITS:
        s = feats.split == split
        rec[split] = _metrics(feats.click[s], score[s], feats.user[s]) if s.any() else {}
        rec.setdefault("n", {})[split] = int(s.sum())
    rec.update(fit)
    rec["seconds"] = round(time.time() - t0, 3)
    return rec


# ---------------------------------------------------------------------------------------- cache


def fingerprint(folder: str | Path) -> str:
    """Content hash of manifest.yaml and every parquet file the floor reads (all their bytes)."""
    folder = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    for name in (MANIFEST, EVENTS, IMPRESSIONS, ITEMS):
        path = folder / name
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for f in files:
            if not f.exists():
                continue
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _read_cache(path: Path, key: dict) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("key") != key:
        return {}
    return {str(k): v for k, v in (doc.get("records") or {}).items()}


def _write_cache(path: Path, key: dict, records: dict[str, Any]) -> bool:
    """Atomic write; False (and no file) where the folder is not writable."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".floor.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, "records": records}, fh, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False


def feature_descriptions(manifest: Manifest) -> dict[str, str]:
    d = {
        "item_pop": "log1p(events of the candidate item, all users, strictly before the impression)",
        "history_len": "log1p(the user's prior events, all of them)",
        "item_in_window": "log1p(candidate item among the last L prior events)",
    }
    for s in manifest.side_fields:
        d[f"{s}_in_window"] = f"log1p(last-L events with the candidate's {s}; 0 when it is missing)"
    if len(manifest.behaviors) > 1:
        for b in sorted(manifest.behaviors, key=lambda b: b.id):
            d[f"item_{b.name}_in_window"] = (
                f"log1p(last-L events of the candidate item with behaviour {b.name})"
            )
    return d


def compute_floor(
    folder: str | Path,
    windows: Iterable[int],
    *,
    manifest: Manifest | None = None,
    l2: float = DEFAULT_L2,
    cache: bool = True,
    max_events: int | None = None,
) -> dict[str, Any]:
    """The floor of a dataset folder at every window L: {"dataset", "folder", "fingerprint",
    "features" (name -> definition), "l2", "records": [per-L record, ascending L], "cached": [L
    read from the cache]}. A record: seq_len, train/val/test metrics (ctr_auc, ctr_uauc,
    ctr_logloss), n per split, coef per feature (standardised units), intercept, mean, sd, fit.
    max_events: refuse (FloorTooLarge) to fit a log with more events than that when its windows
    are not all cached (the sweep driver's guard)."""
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    windows = sorted({int(w) for w in windows})
    fp = fingerprint(folder)
    key = {"version": FLOOR_VERSION, "fingerprint": fp, "l2": l2}
    path = folder / CACHE_NAME
    records = _read_cache(path, key) if cache else {}
    cached = [w for w in windows if str(w) in records]
    todo = [w for w in windows if str(w) not in records]
    if todo and max_events is not None:
        n = n_rows(folder / EVENTS)
        if n > max_events:
            raise FloorTooLarge(
                f"{n:,} events > {max_events:,} (about {n * 150 / 1e9:.0f} GB to fit); compute it "
                f"where memory allows: python -m harness.data stats {folder} --floor "
                + " ".join(map(str, todo))
                + " (cached in the dataset folder, then read here)"
            )
    if todo:
        feats = FloorFeatures(folder, todo, manifest)
        for w in todo:
            records[str(w)] = floor_at(feats, w, l2)
        if cache:
            _write_cache(path, key, records)
    return {
        "dataset": manifest.name,
        "folder": str(folder),
        "fingerprint": fp,
        "version": FLOOR_VERSION,
        "l2": l2,
        "features": feature_descriptions(manifest),
        "records": [records[str(w)] for w in windows],
        "cached": cached,
    }


# ------------------------------------------------------------------------------------- printing


def format_floor(floor: dict[str, Any]) -> str:
    recs = floor["records"]
    lines = [
        "  count-feature floor: logistic regression on train over log1p history counts "
        "(harness/data/floor.py; docs/data-contract.md)",
        f"  {'L':>6s} {'val AUC':>8s} {'val UAUC':>9s} {'test AUC':>9s} {'test UAUC':>10s} "
        f"{'n train':>9s} {'s':>6s}",
    ]
    for r in recs:
        v, t = r.get("val") or {}, r.get("test") or {}

        def f(d, k, w):
            x = d.get(k)
            return (
                f"{x:{w}.4f}" if isinstance(x, (int, float)) and np.isfinite(x) else f"{'-':>{w}s}"
            )

        lines.append(
            f"  {r['seq_len']:6d} {f(v, 'ctr_auc', 8)} {f(v, 'ctr_uauc', 9)} "
            f"{f(t, 'ctr_auc', 9)} {f(t, 'ctr_uauc', 10)} {r['n']['train']:9,d} "
            f"{'cached' if r['seq_len'] in floor.get('cached', ()) else format(r['seconds'], '6.1f')}"
        )
    if recs:
        names = list(recs[0]["coef"])
        lines.append("  coefficients (per train sd of each feature; + raises the click score):")
        lines.append(
            f"  {'feature':24s} " + " ".join(f"{'L ' + str(r['seq_len']):>8s}" for r in recs)
        )
        for n in ["intercept", *names]:
            vals = [r["intercept"] if n == "intercept" else r["coef"][n] for r in recs]
            lines.append(f"  {n:24s} " + " ".join(f"{v:+8.3f}" for v in vals))
    return "\n".join(lines)


def reference_features(
    folder: str | Path, L: int, manifest: Manifest | None = None
) -> tuple[list[str], np.ndarray]:
    """Slow, obviously correct features (a Python loop per impression), for tests only."""
    import pandas as pd  # here: only this test reference reads whole tables as frames

    folder = Path(folder)
    m = manifest or Manifest.load(folder)
    ev = pd.read_parquet(folder / EVENTS)
    imp = pd.read_parquet(folder / IMPRESSIONS)
    items = (
        pd.read_parquet(folder / ITEMS).set_index("item_id") if (folder / ITEMS).exists() else None
    )
    behaviors = sorted(m.behaviors, key=lambda b: b.id)
    rows = []
    for _, r in imp.iterrows():
        mine = ev[(ev.user_id == r.user_id) & (ev.ts < r.ts)]
        win = mine.iloc[max(0, len(mine) - L) :]
        pop = int(((ev.item_id == r.item_id) & (ev.ts < r.ts)).sum())
        row = [pop, len(mine), int((win.item_id == r.item_id).sum())]
        for s in m.side_fields:
            if items is not None and r.item_id in items.index:
                v = int(items.loc[r.item_id, s])
            else:
                hit = ev.loc[ev.item_id == r.item_id, s]
                v = int(hit.iloc[0]) if len(hit) else 0
            row.append(int((win[s] == v).sum()) if v > 0 else 0)
        if len(behaviors) > 1:
            for b in behaviors:
                row.append(int(((win.item_id == r.item_id) & (win.behavior == b.id)).sum()))
        rows.append(row)
    names = ["item_pop", "history_len", "item_in_window"] + [
        f"{s}_in_window" for s in m.side_fields
    ]
    if len(behaviors) > 1:
        names += [f"item_{b.name}_in_window" for b in behaviors]
    return names, np.log1p(np.asarray(rows, np.float64).reshape(len(imp), len(names)))
