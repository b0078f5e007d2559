"""Planted history rules on top of ANY dataset folder: keep its events, relabel its impressions.

A rule is a known function of the user's last `window` events strictly before the impression (the
as-of join's own window) and the candidate. The source folder's events, users, items, request
structure, context features and split stay as they are; only the labels (and, for a share of the
impressions, the candidate item) change. A model then scores above AUC 0.5 only through the
history, and the rule says exactly what it has to read there.

Rules (`Rule.kind`, spelled `KIND[:FIELD]` on the command line):

    item           the candidate item is among the last W events
    side:F         the candidate's side field F (brand, category, ...) is among the last W events
    count:F        at least `k` of the last W events share the candidate's F
    behavior:F     the candidate's F is among the last W events of behaviour type `behavior` only
    context:F      which events matter depends on the request: where the context field `context`
                   (an impressions column, e.g. hour) is even, the candidate's F among the last W
                   events; where odd, among the last W // 4 (the most recent quarter)

A window W shorter than the model's seq_len is the recency rule: events before the window carry
nothing. Sampled candidates rarely satisfy a rule on real logs (a third of Tmall's positives at
best), so `positive_share` of the impressions get their candidate replaced by the item of a random
event the rule reads (a positive by construction, except for `count`, whose label still needs k
matches); the rest keep their candidate. `control=True` hands every user's events to another
user after labelling (same impressions, same labels): the history no longer explains the label,
so every model must stay near AUC 0.5 (a history path that leaks the label through anything else
fails there). `p_click` holds the rule itself, so the oracle is exact.

    python -m harness.data planted --from DIR --rule side:brand --window 32 --out OUT [--control]

Everything is vectorised: one searchsorted per impression batch and an (n, W) gather.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.contract import EVENTS, IMPRESSIONS, ITEMS, USERS, Manifest, new_dataset_folder
from harness.data.stats import compute_stats

KINDS = ("item", "side", "count", "behavior", "context")


@dataclass(frozen=True, kw_only=True)
class Rule:
    kind: str  # one of KINDS
    field: str = ""  # side field read by every kind but "item"
    window: int = 32  # W: the rule reads the last W events before the impression
    k: int = 2  # count: matches needed
    behavior: int = 1  # behavior: the one behaviour type id the rule reads
    context: str = "hour"  # context: the impressions column that picks the window
    positive_share: float = 0.5  # impressions whose candidate is drawn from the rule's events
    control: bool = False  # events handed to other users after labelling

    @staticmethod
    def parse(text: str, **kw) -> Rule:
        """'side:brand' -> Rule(kind='side', field='brand', ...); clear errors for bad spellings."""
        kind, _, field = text.partition(":")
        rule = Rule(kind=kind, field=field, **kw)
        rule.check()
        return rule

    def check(self, manifest: Manifest | None = None) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"planted rule {self.kind!r} unknown; choose one of {KINDS}")
        if self.kind != "item" and not self.field:
            raise ValueError(
                f"planted rule {self.kind!r} needs a side field: write {self.kind}:FIELD (e.g. "
                f"{self.kind}:brand)"
            )
        if self.window < 1 or self.k < 1 or not 0 <= self.positive_share <= 1:
            raise ValueError(
                f"planted rule: window ({self.window}) and k ({self.k}) must be >= 1 and "
                f"positive_share ({self.positive_share}) in [0, 1]"
            )
        if self.kind == "context" and self.window < 4:
            raise ValueError("planted rule 'context' needs window >= 4 (it also reads W // 4)")
        if manifest is None:
            return
        if self.field and self.field not in manifest.side_fields:
            raise ValueError(
                f"planted rule {self.kind}:{self.field}: the dataset has no side field "
                f"{self.field!r}; its side fields are {list(manifest.side_fields)}"
            )
        ids = [b.id for b in manifest.behaviors]
        if self.kind == "behavior" and self.behavior not in ids:
            raise ValueError(
                f"planted rule behavior: behaviour id {self.behavior} is not in the dataset's {ids}"
            )

    @property
    def name(self) -> str:
        extra = {"count": f"-k{self.k}", "behavior": f"-b{self.behavior}"}.get(self.kind, "")
        extra += f"-{self.context}" if self.kind == "context" else ""
        field = f"-{self.field}" if self.field else ""
        return f"{self.kind}{field}{extra}-w{self.window}" + ("-control" if self.control else "")


def window_index(
    ev_user: np.ndarray, ev_ts: np.ndarray, imp_user: np.ndarray, imp_ts: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, W) event rows of each impression's last W events strictly before it (most recent first)
    and their validity. Events sorted by (user, ts)."""
    span = int(max(ev_ts.max(initial=0), imp_ts.max(initial=0))) + 1
    keys = ev_user.astype(np.int64) * span + ev_ts
    base = imp_user.astype(np.int64) * span
    end = np.searchsorted(keys, base + imp_ts, side="left")  # strictly before
    first = np.searchsorted(keys, base, side="left")
    idx = end[:, None] - 1 - np.arange(window)[None, :]
    ok = idx >= first[:, None]
    return idx.clip(0), ok


def rule_reads(rule: Rule, ok: np.ndarray, ev_beh_w: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """(n, W) bool: which of the window's events the rule reads for each impression."""
    reads = ok.copy()
    if rule.kind == "behavior":
        reads &= ev_beh_w == rule.behavior
    if rule.kind == "context":  # odd context value: only the most recent quarter of the window
        recent = np.arange(ok.shape[1]) < rule.window // 4
        reads &= np.where((ctx % 2 == 1)[:, None], recent[None, :], True)
    return reads


def rule_labels(rule: Rule, cand: np.ndarray, hist_w: np.ndarray, reads: np.ndarray) -> np.ndarray:
    """0/1 labels from the candidate's value (n,) and the window's values (n, W)."""
    matches = ((hist_w == cand[:, None]) & reads).sum(1)
    return (matches >= (rule.k if rule.kind == "count" else 1)).astype(np.int64)


def relabel(src: str | Path, out: str | Path, rule: Rule, *, seed: int = 0) -> Path:
    """Write `out`: `src` with its impressions relabelled by `rule` (module docstring)."""
    src = Path(src)
    manifest = Manifest.load(src)
    rule.check(manifest)
    out = new_dataset_folder(out)
    rng = np.random.default_rng([seed, 11])
    side = list(manifest.side_fields)
    ev = pq.read_table(src / EVENTS).to_pandas()
    im = pq.read_table(src / IMPRESSIONS).to_pandas()
    if rule.kind == "context" and rule.context not in im.columns:
        raise ValueError(
            f"planted rule context: {src / IMPRESSIONS} has no column {rule.context!r}; name an "
            f"impressions column with --context (it has {sorted(im.columns)})"
        )
    ev_user, ev_ts = ev["user_id"].to_numpy(np.int64), ev["ts"].to_numpy(np.int64)
    ev_item, ev_beh = ev["item_id"].to_numpy(np.int64), ev["behavior"].to_numpy(np.int64)
    imp_user, imp_ts = im["user_id"].to_numpy(np.int64), im["ts"].to_numpy(np.int64)
    ctx = im[rule.context].to_numpy(np.int64) if rule.kind == "context" else np.zeros(len(im), int)
    idx, ok = window_index(ev_user, ev_ts, imp_user, imp_ts, rule.window)
    reads = rule_reads(rule, ok, ev_beh[idx], ctx)

    # a share of the candidates: the item of a random event the rule reads (where there is one)
    n = len(im)
    weights = reads * rng.random(reads.shape)
    pick = weights.argmax(1)
    swap = (rng.random(n) < rule.positive_share) & reads.any(1)
    new_item = np.where(swap, ev_item[idx[np.arange(n), pick]], im["item_id"].to_numpy(np.int64))
    im["item_id"] = new_item
    # side fields stored on the impressions follow the item (those joined from items.parquet do so
    # by themselves); an event row carries the item's side fields, so take them from there
    for f in side:
        if f in im.columns:
            ev_f = ev[f].to_numpy(np.int64)
            im[f] = np.where(swap, ev_f[idx[np.arange(n), pick]], im[f].to_numpy(np.int64))

    hist = ev_item if rule.kind == "item" else ev[rule.field].to_numpy(np.int64)
    cand = new_item if rule.kind == "item" else _candidate_field(src, im, rule.field)
    click = rule_labels(rule, cand, hist[idx], reads)
    im["click"] = click
    im["conversion"] = click * (rng.random(n) < 0.5)
    im["p_click"] = click.astype(np.float32)
    im["p_conversion"] = np.full(n, 0.5, np.float32)

    if rule.control:  # same labels, histories of other users
        users = np.unique(ev_user)
        perm = np.zeros(int(users.max(initial=0)) + 1, np.int64)
        perm[users] = rng.permutation(users)
        ev["user_id"] = perm[ev_user]
        ev = ev.sort_values(["user_id", "ts"], kind="stable")
    pq.write_table(pa.Table.from_pandas(ev, preserve_index=False), out / EVENTS)
    pq.write_table(pa.Table.from_pandas(im, preserve_index=False), out / IMPRESSIONS)
    for f in (USERS, ITEMS):
        if (src / f).exists():
            shutil.copyfile(src / f, out / f)
    rate = float(click.mean()) if n else 0.0
    new = replace(
        manifest,
        name=f"{manifest.name}-planted-{rule.name}",
        source=f"{manifest.source} relabelled by planted rule {rule.name} seed={seed}",
        has_oracle=True,
        notes=f"click = planted rule {rule.name} (harness/data/rules.py); click rate {rate:.3f}",
    )
    new = replace(new, stats=compute_stats(out, new))
    new.save(out)
    return out


def _candidate_field(src: Path, im, field: str) -> np.ndarray:
    """The candidate's side field: from the impressions if stored there, else items.parquet."""
    if field in im.columns:
        return im[field].to_numpy(np.int64)
    items = pq.read_table(src / ITEMS, columns=["item_id", field]).to_pandas()
    table = np.zeros(int(items["item_id"].max()) + 1, np.int64)
    table[items["item_id"].to_numpy(np.int64)] = items[field].to_numpy(np.int64)
    item = im["item_id"].to_numpy(np.int64)
    if item.max(initial=0) >= len(table):
        raise ValueError(f"{src / ITEMS}: item ids of the impressions are missing there")
    return table[item]
