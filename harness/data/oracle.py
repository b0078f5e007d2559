"""Reference predictors of the synthetic world: the yardsticks its designed properties are tested by.

* `history_match_counts`: for every impression, how many of the user's last W events (strictly
  before the impression) fall in the candidate's topic, either in any style ("unrestricted") or in
  the style equal to the impression's context mode ("mode-matched"). A simple history statistic:
  its AUC shows how much a window of W events reveals (designed property (b)) and whether the
  context decides which part of the history matters (property (c)).
* `no_history_table`: the best predictor that sees no history we can estimate honestly: the
  empirical click rate on train of each combination of the candidate's (topic, style) cell, the
  context mode, surface, device, price bucket and the user's age bucket (shrunk to the cell's rate
  when a combination is rare). It sees every non-sequential feature the click model uses except
  the user's latent interests; property (a) compares it with the oracle.

Both use the generator's id layout (brand = topic * n_modes + style + 1; mode from hour and surface
through the world's mode table), so they only apply to synthetic folders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from harness.data.contract import EVENTS, IMPRESSIONS, ITEMS, USERS, Manifest
from harness.data.stats import prior_counts
from harness.data.synth import GENERATOR_VERSION, HOUR_BLOCKS, N_HOURS, SynthConfig, build_world


def synth_config(manifest: Manifest) -> SynthConfig:
    """The generator config stored in a synthetic manifest's notes."""
    text = manifest.notes.split("Generator config: ", 1)
    if len(text) != 2:
        raise ValueError(f"{manifest.name}: not a synthetic dataset (no generator config in notes)")
    d = json.loads(text[1])
    d["candidate_mix"] = tuple(d["candidate_mix"])
    return SynthConfig(**d)


def context_mode(folder: str | Path, hour: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """The active mode of impressions (hour is the stored 1-based hour id)."""
    m = Manifest.load(folder)
    cfg = synth_config(m)
    seed = int(m.source.rsplit("seed=", 1)[1])
    # the mode table is the world's first draws; rebuilding the (cheap) world recovers it exactly
    world_ss = np.random.SeedSequence([seed, GENERATOR_VERSION]).spawn(
        1 + -(-cfg.n_users // cfg.user_chunk)
    )[0]
    table = build_world(cfg, np.random.default_rng(world_ss)).mode_table
    return table[(np.asarray(hour) - 1) // (N_HOURS // HOUR_BLOCKS), np.asarray(surface) - 1]


def load_for_predictors(folder: str | Path) -> dict[str, np.ndarray]:
    folder = Path(folder)
    m = Manifest.load(folder)
    cfg = synth_config(m)
    imp = pq.read_table(folder / IMPRESSIONS).to_pandas()
    items = pq.read_table(folder / ITEMS).to_pandas().set_index("item_id")
    users = pq.read_table(folder / USERS).to_pandas().set_index("user_id")
    ev = pq.read_table(folder / EVENTS, columns=["user_id", "ts", "brand"])
    d = {k: imp[k].to_numpy() for k in imp.columns if k != "split"}
    d["split"] = imp["split"].to_numpy().astype(str)
    d["brand"] = items.loc[d["item_id"], "brand"].to_numpy()
    d["price_bucket"] = items.loc[d["item_id"], "price_bucket"].to_numpy()
    d["age_bucket"] = users.loc[d["user_id"], "age_bucket"].to_numpy()
    d["mode"] = context_mode(folder, d["hour"], d["surface"])
    d["ev_user"], d["ev_ts"] = ev.column("user_id").to_numpy(), ev.column("ts").to_numpy()
    d["ev_brand"] = ev.column("brand").to_numpy()
    d["n_modes"] = np.int64(cfg.n_modes)
    return d


def history_match_counts(
    d: dict[str, np.ndarray],
    windows: Sequence[int],
    *,
    mode_matched: bool,
    style: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Per window W and impression: events among the user's last W prior events in the candidate's
    topic (mode_matched: and in the style of the impression's context mode, or in `style` when
    given, to ask what another mode's part of the history would predict). Vectorised: events are
    sorted once by (key, position); a count is a difference of two searchsorted ranks."""
    M = np.int64(d["n_modes"])
    ev_user, imp_user = d["ev_user"].astype(np.int64), d["user_id"].astype(np.int64)
    # absolute event positions of each impression's prior events: [first, end)
    end = np.searchsorted(ev_user, imp_user, side="left") + prior_counts(
        ev_user, d["ev_ts"], imp_user, d["ts"]
    )
    first = np.searchsorted(ev_user, imp_user, side="left")
    ev_cell = d["ev_brand"].astype(np.int64) - 1
    cand_topic = (d["brand"].astype(np.int64) - 1) // M
    if mode_matched:
        ev_key, key = ev_cell, cand_topic * M + (d["mode"] if style is None else style)
    else:
        ev_key, key = ev_cell // M, cand_topic
    n = np.int64(ev_key.size + 1)
    packed = np.sort(
        ev_key * n + np.arange(ev_key.size)
    )  # positions never cross users: [start, end) is one user's
    hi = np.searchsorted(packed, key * n + end, side="left")
    out = {}
    for w in windows:
        start = np.maximum(first, end - w)
        out[int(w)] = hi - np.searchsorted(packed, key * n + start, side="left")
    return out


def no_history_table(
    d: dict[str, np.ndarray], train: np.ndarray, prior_strength: float = 20.0
) -> np.ndarray:
    """Click-rate lookup on train by (cell, mode, surface, device, price bucket, age bucket),
    shrunk towards the cell x mode rate, which is shrunk towards the global rate; scores every row."""
    click = d["click"].astype(np.float64)
    fine = np.stack(
        [d["brand"], d["mode"], d["surface"], d["device"], d["price_bucket"], d["age_bucket"]], 1
    )
    coarse = np.stack([d["brand"], d["mode"]], 1)
    base = click[train].mean()

    def rate(keys: np.ndarray, prior: np.ndarray) -> np.ndarray:
        _, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.ravel()
        n = np.bincount(inv[train], minlength=inv.max() + 1)
        s = np.bincount(inv[train], weights=click[train], minlength=inv.max() + 1)
        return (s[inv] + prior_strength * prior) / (n[inv] + prior_strength)

    return rate(fine, rate(coarse, np.full(click.size, base)))
