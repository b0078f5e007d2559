"""The synthetic world: a seeded latent process that writes a data-contract folder with a known ceiling.

Generative process (docs/synthetic-world.md has the full story and every parameter):

* Items live in cells (topic, style). Topics group into categories and carry a price level; the
  style is one of `n_modes` "modes". brand = the cell (so side fields expose topic and style),
  price = the topic's level + item noise, price_bucket = decile of log price.
* Context (hour block x surface) selects the active mode through a fixed table.
* A user holds `n_interest_topics` topics, each in 2 of the modes: K interest cells. Cell k has an
  affinity (independent of how often it shows up), a buy propensity, and a Zipf-distributed event
  frequency, so the rare interests surface only in long histories (up to ~2000 events).
* Events: pick an interest cell by its frequency; the event happens at an hour of that cell's mode,
  on an item of that topic in that style (mostly); behaviour click/cart/purchase depends on the
  user's buyer propensity, the cell's buy propensity and price against the user's tolerance.
* Requests happen in the second part of the timeline (so active users have long prior histories),
  each with a context and `candidates_per_request` candidates: items from the user's interest
  topics (any style, seen or not), popular items and random items.
* p_click is logistic in the user's affinity for (candidate topic, CONTEXT mode) (another mode of
  the same topic counts only `mode_leak`), style x context match, category x surface, price x
  price sensitivity x device, item popularity. p_conversion = P(conversion | click) in the buyer
  propensity, the cell's buy propensity (visible through past purchases), affinity and price.
  Labels are Bernoulli draws; the stored p_click / p_conversion give the Bayes-optimal scores.

Everything is vectorised per chunk of users; the events of a chunk are appended to events.parquet
as row groups (bounded memory); impressions are sorted globally at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    USERS,
    Behavior,
    Manifest,
    SplitRule,
    new_dataset_folder,
)
from harness.data.features import categorical, hour_feature, numeric, user_id_feature
from harness.data.stats import compute_stats

GENERATOR_VERSION = 1
T0 = 1_600_000_000  # first second of the synthetic timeline (2020-09-13)
DAY = 86_400
N_HOURS, N_DEVICES, N_SURFACES, N_AGE, N_PRICE_BUCKETS = 24, 3, 3, 7, 10
HOUR_BLOCKS = 4  # 6-hour blocks; (block, surface) -> mode
BEHAVIORS = ("click", "cart", "purchase")


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    # world size
    n_users: int
    n_topics: int
    topics_per_category: int = 4
    n_modes: int = 4
    items_per_cell: int = 8
    days: int = 60
    # users' interests
    n_interest_topics: int = 24  # each in 2 modes -> 2x interest cells
    zipf_alpha: float = 1.6  # event frequency of the k-th interest ~ k^-alpha
    noise_event_rate: float = 0.02  # events on a uniformly random item (exploration)
    style_fidelity: float = 0.9  # an event's item has the event mode's style with this prob
    # activity
    events_median: float = 400.0  # events per user: lognormal(median, sigma), clipped
    events_sigma: float = 0.9
    events_min: int = 20
    events_max: int = 8000
    requests_mean: float = 4.0  # requests per user ~ 1 + Poisson(mean * (n/median)^power)
    requests_activity_power: float = 0.5
    candidates_per_request: int = 8
    candidate_mix: tuple[float, float, float] = (
        0.5,
        0.25,
        0.25,
    )  # interest topics, popular, random
    request_start_frac: float = 0.5  # requests happen in [start_frac, 1) of the timeline
    val_frac: float = 0.8  # timeline fraction where val starts
    test_frac: float = 0.9
    # click / conversion model (logits)
    click_bias: float = -3.2
    beta_affinity: float = 1.6
    mode_leak: float = 0.2  # affinity of an interest topic outside its modes, relative
    beta_style: float = 0.5  # candidate style == context mode
    cat_surface_scale: float = 0.5  # std of the category x surface bias
    beta_price: float = 1.0  # x price sensitivity x relu(log price - tolerance)
    beta_pop: float = 0.3
    conv_bias: float = -1.5
    beta_buy: float = 1.0
    purchase_bias: float = -2.0  # event behaviours
    cart_rate: float = 0.25
    user_chunk: int = 2000  # users per generation chunk (memory bound)
    # observability: a `topic` item field (a sub-category, as real catalogues have). Without it a
    # model must discover from co-occurrence alone which brands share a topic (docs/learning-history.md)
    expose_topic: bool = False

    @property
    def side_fields(self) -> tuple[str, ...]:
        return (
            ("category", "topic", "brand", "price_bucket")
            if self.expose_topic
            else ("category", "brand", "price_bucket")
        )

    @property
    def n_categories(self) -> int:
        return -(-self.n_topics // self.topics_per_category)

    @property
    def n_cells(self) -> int:
        return self.n_topics * self.n_modes

    @property
    def n_items(self) -> int:
        return self.n_cells * self.items_per_cell


PRESETS: dict[str, SynthConfig] = {
    # CI: seconds; still long enough histories (hundreds of events) to show the designed effects.
    "ci": SynthConfig(
        n_users=800,
        n_topics=64,
        n_interest_topics=12,
        days=40,
        events_median=300,
        events_max=3000,
        requests_mean=6.0,
        user_chunk=600,
    ),
    # laptop: what a tiny model can learn on 2 cores in minutes (docs/learning-history.md): the
    # topic is an item field, 32 topics, 8 interest topics, affinity at topic level (mode_leak 1),
    # a stronger affinity. The history statistic rises from 0.62 (8 events) to 0.76 (128).
    "laptop": SynthConfig(
        n_users=4000,
        n_topics=32,
        n_interest_topics=8,
        days=60,
        events_median=900,
        events_sigma=0.9,
        events_max=8000,
        requests_mean=6.0,
        expose_topic=True,
        beta_affinity=2.0,
        click_bias=-2.8,
        mode_leak=1.0,
    ),
    # paper-like: >= 1M impressions, long histories, sharded generation.
    "paper": SynthConfig(
        n_users=30000,
        n_topics=512,
        n_interest_topics=32,
        items_per_cell=16,
        days=90,
        events_median=1000,
        events_sigma=0.9,
        events_max=10000,
        requests_mean=5.0,
        user_chunk=1500,
    ),
}


def preset_config(preset: str) -> SynthConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


# ---------------------------------------------------------------------------------------------
# manifest (no data needed)
# ---------------------------------------------------------------------------------------------
def split_times(cfg: SynthConfig) -> tuple[int, int]:
    return T0 + int(cfg.val_frac * cfg.days * DAY), T0 + int(cfg.test_frac * cfg.days * DAY)


def _manifest(cfg: SynthConfig, name: str, seed: int) -> Manifest:
    val_ts, test_ts = split_times(cfg)

    cat = categorical
    features = (
        cat("category", "item", "items", cfg.n_categories + 1, "item category (topic group)"),
        *(
            [cat("topic", "item", "items", cfg.n_topics + 1, "topic (sub-category)")]
            if cfg.expose_topic
            else []
        ),
        cat("brand", "item", "items", cfg.n_cells + 1, "brand: the item's (topic, style) cell"),
        cat("price_bucket", "item", "items", N_PRICE_BUCKETS + 1, "decile of log price"),
        user_id_feature(cfg.n_users, table="users", description="user id"),
        cat("age_bucket", "user", "users", N_AGE + 1, "age bucket; shifts price tolerance"),
        hour_feature("hour of day + 1"),  # N_HOURS hours: ids 1..24
        cat("device", "context", "impressions", N_DEVICES + 1, "device; scales price sensitivity"),
        cat(
            "surface",
            "context",
            "impressions",
            N_SURFACES + 1,
            "surface; with hour selects the mode",
        ),
        numeric("price", "item", "items", "item price"),
        numeric("user_activity", "user", "users", "log1p(number of events of the user)"),
    )
    return Manifest(
        name=name,
        source=f"synthetic v{GENERATOR_VERSION} seed={seed}",
        item_vocab=cfg.n_items + 1,
        side_fields=cfg.side_fields,
        features=features,
        behaviors=tuple(Behavior(name=b, id=i + 1) for i, b in enumerate(BEHAVIORS)),
        intent_order=("purchase", "cart", "click"),
        split=SplitRule(val_start_ts=val_ts, test_start_ts=test_ts),
        has_oracle=True,
        notes="p_conversion is P(conversion | click). Generator config: " + json.dumps(asdict(cfg)),
    )


def manifest_for(preset: str, seed: int) -> Manifest:
    """The manifest of (preset, seed) without generating data (vocab sizes for planning)."""
    return _manifest(preset_config(preset), f"synth-{preset}-s{seed}", seed)


# ---------------------------------------------------------------------------------------------
# the world's static structure
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class World:
    """Latent and observable tables, indexed by id (row 0 unused: ids are 1-based)."""

    item_topic: np.ndarray  # (n_items+1,)
    item_style: np.ndarray
    item_logprice: np.ndarray
    item_price_bucket: np.ndarray
    item_pop: np.ndarray  # popularity weight, sums to 1 over real items
    cell_items: np.ndarray  # (n_cells, items_per_cell) item ids, most popular first
    within_cell_cdf: np.ndarray  # (items_per_cell,)
    mode_table: np.ndarray  # (HOUR_BLOCKS, N_SURFACES) -> mode
    cat_surface: np.ndarray  # (n_categories, N_SURFACES) click bias
    # users (row u-1 for user id u)
    age: np.ndarray
    tolerance: np.ndarray  # log-price tolerance
    sensitivity: np.ndarray
    buyer: np.ndarray  # buyer propensity (conversion / purchase logit shift)
    device_pref: np.ndarray
    int_cell: np.ndarray  # (U, K) interest cells, in the user's frequency-rank order
    int_aff: np.ndarray  # (U, K) affinity of each interest cell
    int_buy: np.ndarray  # (U, K) buy propensity of each interest cell
    n_events: np.ndarray


def _zipf_cdf(n: int, alpha: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return np.cumsum(w / w.sum())


def _draw(cdf: np.ndarray, rng: np.random.Generator, size) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def build_world(cfg: SynthConfig, rng: np.random.Generator) -> World:
    M, T, ipc = cfg.n_modes, cfg.n_topics, cfg.items_per_cell
    n_items = cfg.n_items
    # items: a random permutation of ids over (topic, style, rank within cell)
    ids = rng.permutation(n_items) + 1
    cell_items = ids.reshape(cfg.n_cells, ipc)  # cell = topic * M + style
    cell = np.repeat(np.arange(cfg.n_cells), ipc)
    item_topic = np.zeros(n_items + 1, np.int64)
    item_style = np.zeros(n_items + 1, np.int64)
    item_topic[cell_items.ravel()] = cell // M
    item_style[cell_items.ravel()] = cell % M
    topic_price = rng.normal(3.0, 1.0, T)
    item_logprice = np.zeros(n_items + 1)
    item_logprice[1:] = topic_price[item_topic[1:]] + rng.normal(0.0, 0.3, n_items)
    edges = np.quantile(item_logprice[1:], np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1])
    item_price_bucket = np.zeros(n_items + 1, np.int64)
    item_price_bucket[1:] = np.searchsorted(edges, item_logprice[1:], side="right") + 1
    # popularity: Zipf over topics (random order) x Zipf within the cell
    topic_w = np.arange(1, T + 1, dtype=np.float64)[rng.permutation(T)] ** -0.8
    within_w = np.arange(1, ipc + 1, dtype=np.float64) ** -0.8
    item_pop = np.zeros(n_items + 1)
    item_pop[cell_items.ravel()] = topic_w[cell // M] * np.tile(within_w, cfg.n_cells)
    item_pop /= item_pop.sum()
    # context: each surface shifts the hour blocks by its own offset, so every mode is reachable
    mode_table = (np.arange(HOUR_BLOCKS)[:, None] + rng.permutation(N_SURFACES)[None, :]) % M
    cat_surface = rng.normal(0.0, cfg.cat_surface_scale, (cfg.n_categories, N_SURFACES))
    # users
    U, Kt = cfg.n_users, cfg.n_interest_topics
    age = rng.integers(1, N_AGE + 1, U)
    tolerance = rng.normal(3.0 + 0.25 * (age - 4), 0.7)
    sensitivity = rng.lognormal(0.0, 0.5, U)
    buyer = rng.normal(0.0, 0.8, U)
    device_pref = rng.integers(1, N_DEVICES + 1, U)
    # interest topics: without replacement, biased to popular topics (Gumbel top-k)
    g = np.log(topic_w / topic_w.sum())[None, :] * 0.5 - np.log(-np.log(rng.random((U, T))))
    topics = np.argpartition(-g, Kt - 1, axis=1)[:, :Kt]
    modes2 = np.argsort(rng.random((U, Kt, M)), axis=2)[:, :, :2]  # two distinct modes per topic
    int_cell = (topics[:, :, None] * M + modes2).reshape(U, 2 * Kt)
    perm = np.argsort(rng.random(int_cell.shape), axis=1)  # random frequency rank order
    int_cell = np.take_along_axis(int_cell, perm, axis=1)
    int_aff = rng.uniform(1.0, 2.5, int_cell.shape)
    int_buy = rng.normal(0.0, 1.0, int_cell.shape)
    n_events = np.clip(
        np.round(rng.lognormal(np.log(cfg.events_median), cfg.events_sigma, U)),
        cfg.events_min,
        cfg.events_max,
    ).astype(np.int64)
    return World(
        item_topic=item_topic,
        item_style=item_style,
        item_logprice=item_logprice,
        item_price_bucket=item_price_bucket,
        item_pop=item_pop,
        cell_items=cell_items,
        within_cell_cdf=_zipf_cdf(ipc, 0.8),
        mode_table=mode_table,
        cat_surface=cat_surface,
        age=age,
        tolerance=tolerance,
        sensitivity=sensitivity,
        buyer=buyer,
        device_pref=device_pref,
        int_cell=int_cell,
        int_aff=int_aff,
        int_buy=int_buy,
        n_events=n_events,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick_item(
    cfg: SynthConfig, w: World, topic: np.ndarray, style: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    return w.cell_items[topic * cfg.n_modes + style, _draw(w.within_cell_cdf, rng, topic.shape)]


def _interest_match(
    cfg: SynthConfig, w: World, u: np.ndarray, topic: np.ndarray, mode: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Affinity and buy propensity of users u for (topic, mode): the cell's own values, else
    mode_leak x the same topic's values in another mode, else 0."""
    cells = w.int_cell[u]  # (n, K)
    exact = cells == (topic * cfg.n_modes + mode)[:, None]
    same_topic = (cells // cfg.n_modes) == topic[:, None]
    aff, buy = w.int_aff[u], w.int_buy[u]
    a_exact = np.where(exact, aff, 0.0).max(1)
    a_other = np.where(same_topic & ~exact, aff, 0.0).max(1)
    b_exact = np.where(exact, buy, 0.0).sum(1)
    b_other = np.where(same_topic & ~exact, buy, 0.0).max(1, initial=-np.inf)
    has_exact = exact.any(1)
    affinity = np.where(has_exact, a_exact, cfg.mode_leak * a_other)
    buy_p = np.where(has_exact, b_exact, np.where(same_topic.any(1), cfg.mode_leak * b_other, 0.0))
    return affinity, buy_p


def _price_term(
    cfg: SynthConfig, w: World, u: np.ndarray, item: np.ndarray, device: np.ndarray | None
):
    over = np.maximum(w.item_logprice[item] - w.tolerance[u], 0.0)
    dev = 1.0 if device is None else np.array([0.0, 1.3, 1.0, 0.7])[device]  # mobile most sensitive
    return cfg.beta_price * w.sensitivity[u] * dev * over


# ---------------------------------------------------------------------------------------------
# per chunk of users: events and requests
# ---------------------------------------------------------------------------------------------
def _events(
    cfg: SynthConfig, w: World, users: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = w.n_events[users]
    u = np.repeat(users, n)
    E, K = u.size, w.int_cell.shape[1]
    rank = _draw(_zipf_cdf(K, cfg.zipf_alpha), rng, E)
    cell = w.int_cell[u, rank]
    topic, mode = cell // cfg.n_modes, cell % cfg.n_modes
    style = np.where(rng.random(E) < cfg.style_fidelity, mode, rng.integers(0, cfg.n_modes, E))
    item = _pick_item(cfg, w, topic, style, rng)
    noise = rng.random(E) < cfg.noise_event_rate
    item = np.where(noise, rng.integers(1, cfg.n_items + 1, E), item)
    # an hour in a (block, surface) cell of the event's mode
    mode_blocks = (w.mode_table[None] == np.arange(cfg.n_modes)[:, None, None]).any(
        2
    )  # (modes, blocks)
    block_ok = mode_blocks[mode].astype(np.float64)  # (E, blocks)
    block = (
        np.cumsum(block_ok, 1) > rng.random(E)[:, None] * block_ok.sum(1, keepdims=True)
    ).argmax(1)
    hour = block * (N_HOURS // HOUR_BLOCKS) + rng.integers(0, N_HOURS // HOUR_BLOCKS, E)
    day = rng.integers(0, cfg.days, E)
    ts = T0 + day * DAY + hour * 3600 + rng.integers(0, 3600, E)
    # behaviour: purchase / cart / click
    buy = np.where(noise, -1.0, w.int_buy[u, rank])
    p_buy = _sigmoid(cfg.purchase_bias + w.buyer[u] + buy - _price_term(cfg, w, u, item, None))
    r = rng.random(E)
    behavior = np.where(r < p_buy, 3, np.where(r < p_buy + (1 - p_buy) * cfg.cart_rate, 2, 1))
    order = np.lexsort((ts, u))
    u, ts, item, behavior = u[order], ts[order], item[order], behavior[order]
    return {
        "user_id": u + 1,
        "ts": ts.astype(np.int64),
        "behavior": behavior.astype(np.int64),
        "item_id": item.astype(np.int64),
        "category": (w.item_topic[item] // cfg.topics_per_category + 1).astype(np.int64),
        "topic": (w.item_topic[item] + 1).astype(np.int64),
        "brand": (w.item_topic[item] * cfg.n_modes + w.item_style[item] + 1).astype(np.int64),
        "price_bucket": w.item_price_bucket[item].astype(np.int64),
    }


def _requests(
    cfg: SynthConfig, w: World, users: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    lam = cfg.requests_mean * (w.n_events[users] / cfg.events_median) ** cfg.requests_activity_power
    r = 1 + rng.poisson(lam)
    u = np.repeat(users, r)
    R, C = u.size, cfg.candidates_per_request
    t_lo = cfg.request_start_frac * cfg.days * DAY
    ts = T0 + (t_lo + rng.random(R) * (cfg.days * DAY - t_lo)).astype(np.int64)
    hour = ((ts - T0) // 3600) % N_HOURS
    device = np.where(rng.random(R) < 0.8, w.device_pref[u], rng.integers(1, N_DEVICES + 1, R))
    surface = _draw(np.cumsum([0.5, 0.3, 0.2]), rng, R) + 1
    mode = w.mode_table[hour // (N_HOURS // HOUR_BLOCKS), surface - 1]
    # candidates
    ui = np.repeat(u, C)
    src = _draw(np.cumsum(cfg.candidate_mix), rng, R * C)
    K = w.int_cell.shape[1]
    t_int = w.int_cell[ui, rng.integers(0, K, R * C)] // cfg.n_modes  # uniform over interests
    item_int = _pick_item(cfg, w, t_int, rng.integers(0, cfg.n_modes, R * C), rng)
    item_pop = _draw(np.cumsum(w.item_pop[1:]), rng, R * C) + 1
    item_rand = rng.integers(1, cfg.n_items + 1, R * C)
    item = np.choose(src, [item_int, item_pop, item_rand])
    rq = np.repeat(np.arange(R), C)
    m, dev, surf = mode[rq], device[rq], surface[rq]
    topic, style = w.item_topic[item], w.item_style[item]
    aff, buy = _interest_match(cfg, w, ui, topic, m)
    price = _price_term(cfg, w, ui, item, dev)
    pop_z = np.log(w.item_pop[item] * cfg.n_items)
    logit_click = (
        cfg.click_bias
        + cfg.beta_affinity * aff
        + cfg.beta_style * (style == m)
        + w.cat_surface[topic // cfg.topics_per_category, surf - 1]
        - price
        + cfg.beta_pop * pop_z
    )
    logit_conv = cfg.conv_bias + w.buyer[ui] + cfg.beta_buy * buy + 0.5 * aff - 1.5 * price
    p_click, p_conv = _sigmoid(logit_click), _sigmoid(logit_conv)
    click = (rng.random(R * C) < p_click).astype(np.int64)
    conversion = click * (rng.random(R * C) < p_conv).astype(np.int64)
    return {
        "req": rq,
        "user_id": ui + 1,
        "ts": ts[rq],
        "item_id": item.astype(np.int64),
        "hour": (hour[rq] + 1).astype(np.int64),
        "device": dev.astype(np.int64),
        "surface": surf.astype(np.int64),
        "click": click,
        "conversion": conversion,
        "p_click": p_click.astype(np.float32),
        "p_conversion": p_conv.astype(np.float32),
        "mode": m,
    }


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
EVENT_COLUMNS = (
    "user_id",
    "ts",
    "behavior",
    "item_id",
    "category",
    "topic",
    "brand",
    "price_bucket",
)
IMPRESSION_COLUMNS = (
    "request_id",
    "user_id",
    "ts",
    "item_id",
    "hour",
    "device",
    "surface",
    "click",
    "conversion",
    "split",
    "p_click",
    "p_conversion",
)


def _table(cols: dict[str, np.ndarray], names) -> pa.Table:
    return pa.table({k: cols[k] for k in names})


def generate(
    cfg: SynthConfig,
    out: str | Path,
    *,
    seed: int,
    name: str | None = None,
    progress: bool = True,
    row_group: int = 1_000_000,
) -> Path:
    """Write the world for (cfg, seed) into the folder `out` (created; must not hold a dataset)."""
    out = new_dataset_folder(out)
    ss = np.random.SeedSequence([seed, GENERATOR_VERSION])
    world_ss, *chunk_ss = ss.spawn(1 + -(-cfg.n_users // cfg.user_chunk))
    w = build_world(cfg, np.random.default_rng(world_ss))
    manifest = _manifest(cfg, name or f"synth-s{seed}", seed)
    val_ts, test_ts = manifest.split.val_start_ts, manifest.split.test_start_ts

    ev_columns = tuple(c for c in EVENT_COLUMNS if c != "topic" or cfg.expose_topic)
    ev_schema = pa.schema([(c, pa.int64()) for c in ev_columns])
    reqs: list[dict[str, np.ndarray]] = []
    starts = range(0, cfg.n_users, cfg.user_chunk)
    with pq.ParquetWriter(out / EVENTS, ev_schema) as writer:
        for s, css in tqdm(
            list(zip(starts, chunk_ss)), desc="synth: users", unit="chunk", disable=not progress
        ):
            rng = np.random.default_rng(css)
            users = np.arange(s, min(s + cfg.user_chunk, cfg.n_users))
            ev = _events(cfg, w, users, rng)
            writer.write_table(_table(ev, ev_columns), row_group_size=row_group)
            del ev
            reqs.append(_requests(cfg, w, users, rng))

    # impressions: global order by (ts, user, request-in-chunk); request ids follow that order
    imp = {k: np.concatenate([r[k] for r in reqs]) for k in reqs[0]}
    chunk_of = np.concatenate([np.full(r["req"].size, i) for i, r in enumerate(reqs)])
    pos = np.arange(imp["ts"].size)
    order = np.lexsort((pos, imp["req"], chunk_of, imp["ts"]))
    imp = {k: v[order] for k, v in imp.items()}
    new_req = np.ones(order.size, dtype=bool)
    new_req[1:] = (imp["req"][1:] != imp["req"][:-1]) | (
        chunk_of[order][1:] != chunk_of[order][:-1]
    )
    imp["request_id"] = np.cumsum(new_req).astype(np.int64)
    imp["split"] = np.where(
        imp["ts"] >= test_ts, "test", np.where(imp["ts"] >= val_ts, "val", "train")
    )
    pq.write_table(_table(imp, IMPRESSION_COLUMNS), out / IMPRESSIONS, row_group_size=row_group)

    uid = np.arange(1, cfg.n_users + 1)
    pq.write_table(
        pa.table(
            {
                "user_id": uid,
                "age_bucket": w.age.astype(np.int64),
                "user_activity": np.log1p(w.n_events).astype(np.float32),
            }
        ),
        out / USERS,
    )
    iid = np.arange(1, cfg.n_items + 1)
    topic_col = {"topic": (w.item_topic[iid] + 1).astype(np.int64)} if cfg.expose_topic else {}
    pq.write_table(
        pa.table(
            {
                "item_id": iid,
                "category": (w.item_topic[iid] // cfg.topics_per_category + 1).astype(np.int64),
                **topic_col,
                "brand": (w.item_topic[iid] * cfg.n_modes + w.item_style[iid] + 1).astype(np.int64),
                "price_bucket": w.item_price_bucket[iid],
                "price": np.round(np.exp(w.item_logprice[iid]), 2).astype(np.float32),
            }
        ),
        out / ITEMS,
    )

    manifest = replace(manifest, stats=compute_stats(out, manifest))
    manifest.save(out)
    return out


def generate_preset(preset: str, seed: int, out: str | Path, progress: bool = True) -> Path:
    return generate(
        preset_config(preset), out, seed=seed, name=f"synth-{preset}-s{seed}", progress=progress
    )


def _cache_key(preset: str, seed: int) -> str:
    digest = hashlib.sha256(
        json.dumps(asdict(preset_config(preset)), sort_keys=True).encode()
    ).hexdigest()[:8]
    return f"synth-{preset}-s{seed}-v{GENERATOR_VERSION}-{digest}"


def cached_folder(preset: str, seed: int, cache_dir: str | Path) -> Path:
    """Where ensure_synthetic keeps (preset, seed): <cache_dir>/synth-<preset>-s<seed>-v<version>-<hash>."""
    return Path(cache_dir) / _cache_key(preset, seed)


def expected_train_impressions(preset: str) -> int:
    """The expected number of train-split impressions of a preset, from its parameters alone (for
    planning before the world is generated): users x requests per user x candidates x the share of
    the request window before val starts. Requests per user are 1 + Poisson(mean (n/median)^power)
    with n lognormal around the median, so E[(n/median)^power] = exp((power sigma)^2 / 2)."""
    c = preset_config(preset)
    per_user = 1.0 + c.requests_mean * math.exp(
        (c.requests_activity_power * c.events_sigma) ** 2 / 2
    )
    train_share = (c.val_frac - c.request_start_frac) / (1.0 - c.request_start_frac)
    return int(c.n_users * per_user * c.candidates_per_request * train_share)


def ensure_synthetic(preset: str, seed: int, cache_dir: str | Path, progress: bool = True) -> Path:
    """The folder of (preset, seed, generator version), generated if absent. Generation goes into a
    temporary sibling folder renamed into place, so an interrupted run never leaves a half dataset."""
    cache_dir = Path(cache_dir)
    final = cached_folder(preset, seed, cache_dir)
    if (final / "manifest.yaml").exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        generate_preset(preset, seed, tmp, progress=progress)
        os.replace(tmp, final)
    except OSError:
        if (final / "manifest.yaml").exists():  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
