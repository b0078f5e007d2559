"""The synthetic world: determinism, contract conformance, stored statistics, and its designed
properties (a) ceiling above any no-history predictor, (b) longer history windows keep helping,
(c) the context decides which part of the history matters."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.data import synth
from harness.data.contract import EVENTS, IMPRESSIONS, Manifest
from harness.data.oracle import history_match_counts, load_for_predictors, no_history_table
from harness.data.stats import compute_stats, prior_counts
from harness.data.validate import errors, validate
from harness.metrics import auc

TINY = synth.SynthConfig(
    n_users=40,
    n_topics=8,
    n_interest_topics=3,
    days=20,
    events_median=60,
    events_max=400,
    requests_mean=2.0,
    user_chunk=16,
)
WINDOWS = (64, 128, 256, 512, 1024, 2048)


@pytest.fixture(scope="module")
def ci_world(tmp_path_factory) -> Path:
    return synth.ensure_synthetic("ci", 0, tmp_path_factory.mktemp("synth_cache"), progress=False)


@pytest.fixture(scope="module")
def ci_arrays(ci_world) -> dict:
    return load_for_predictors(ci_world)


def _digest(folder: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.parquet"))
    }


def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    a = synth.generate(TINY, tmp_path / "a", seed=3, progress=False)
    b = synth.generate(TINY, tmp_path / "b", seed=3, progress=False)
    c = synth.generate(TINY, tmp_path / "c", seed=4, progress=False)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 4
    assert (a / "manifest.yaml").read_text() == (b / "manifest.yaml").read_text()
    assert _digest(a)[EVENTS] != _digest(c)[EVENTS]


def test_chunking_is_part_of_the_seeded_recipe_but_output_is_valid(tmp_path):
    # several chunks (user_chunk=16 < 40 users) write several row groups; the folder stays valid
    out = synth.generate(TINY, tmp_path / "w", seed=0, progress=False, row_group=500)
    assert pq.ParquetFile(out / EVENTS).num_row_groups > 1
    assert errors(validate(out)) == []


def test_ci_world_conforms_to_the_contract_and_layout(ci_world):
    found = validate(ci_world)
    # no error; the world has a few exact duplicate events by design (repeated actions within one
    # second), reported as a warning (docs/data-contract.md)
    assert errors(found) == [] and {v.kind for v in found} <= {"duplicate_event"}
    m = Manifest.load(ci_world)
    spec = m.feature_spec(seq_len=32)
    assert spec.side_names == ("category", "brand", "price_bucket")
    assert spec.cat_names == ("user_id", "age_bucket", "hour", "device", "surface")
    assert spec.num_names == ("price", "user_activity")
    assert spec.behavior_names == ("click", "cart", "purchase")
    assert spec.intent_order == ("purchase", "cart", "click")
    imp = pq.read_table(ci_world / IMPRESSIONS).to_pandas()
    ev = pq.read_table(ci_world / EVENTS).to_pandas()
    assert set(ev["behavior"].unique()) == {1, 2, 3}
    assert (imp.loc[imp["conversion"] == 1, "click"] == 1).all()
    assert set(imp["split"].unique()) == {"train", "val", "test"}
    assert imp["p_click"].between(0, 1).all() and imp["p_conversion"].between(0, 1).all()
    # requests group several candidates, mixing topics the user has and has not shown
    assert imp.groupby("request_id").size().min() == synth.PRESETS["ci"].candidates_per_request
    # labels are Bernoulli draws of the stored probabilities (calibration within 2 points)
    assert abs(imp["click"].mean() - imp["p_click"].mean()) < 0.02
    clicked = imp[imp["click"] == 1]
    assert abs(clicked["conversion"].mean() - clicked["p_conversion"].mean()) < 0.03


def test_conversion_depends_on_purchase_history(ci_world):
    """Users who purchase more often in their log convert more often after a click."""
    imp = pq.read_table(ci_world / IMPRESSIONS).to_pandas()
    ev = pq.read_table(ci_world / EVENTS, columns=["user_id", "behavior"]).to_pandas()
    buy_rate = (ev["behavior"] == 3).groupby(ev["user_id"]).mean()
    clicked = imp[imp["click"] == 1].copy()
    clicked["buyer"] = buy_rate.reindex(clicked["user_id"]).to_numpy()
    assert auc(clicked["conversion"], clicked["buyer"]) > 0.6


def test_stored_stats_equal_recomputed_and_prior_counts_match_reference(ci_world):
    m = Manifest.load(ci_world)
    again = compute_stats(ci_world, m)
    assert again["oracle"] == m.stats["oracle"] and again["splits"] == m.stats["splits"]
    assert again["prior_events_percentiles"] == m.stats["prior_events_percentiles"]
    assert m.stats["impressions"] == pq.read_metadata(ci_world / IMPRESSIONS).num_rows
    assert m.stats["oracle"]["test"]["ctr_auc"] > 0.75
    rng = np.random.default_rng(0)
    ev_u = np.sort(rng.integers(1, 6, 200))
    ev_t = np.concatenate([np.sort(rng.integers(0, 50, (ev_u == u).sum())) for u in range(1, 6)])
    q_u, q_t = rng.integers(1, 7, 100), rng.integers(0, 55, 100)
    ref = [int(((ev_u == u) & (ev_t < t)).sum()) for u, t in zip(q_u, q_t)]
    assert prior_counts(ev_u, ev_t, q_u, q_t).tolist() == ref


def test_manifest_for_matches_generated_manifest_without_data(ci_world):
    planned = Manifest.load(ci_world).to_dict()
    planned.pop("stats")
    expected = synth.manifest_for("ci", 0).to_dict()
    expected.pop("stats")
    assert planned == expected
    assert synth.manifest_for("paper", 1).item_vocab == synth.PRESETS["paper"].n_items + 1


def test_ensure_synthetic_reuses_and_never_leaves_half_folders(tmp_path, monkeypatch):
    cfg_small = replace(synth.PRESETS["ci"], n_users=30, user_chunk=30)
    monkeypatch.setitem(synth.PRESETS, "ci", cfg_small)
    first = synth.ensure_synthetic("ci", 5, tmp_path, progress=False)
    stamp = (first / EVENTS).stat().st_mtime_ns
    assert synth.ensure_synthetic("ci", 5, tmp_path, progress=False) == first
    assert (first / EVENTS).stat().st_mtime_ns == stamp  # reused, not regenerated

    def boom(*a, **k):
        raise KeyboardInterrupt("interrupted")

    real_generate = synth.generate_preset
    monkeypatch.setattr(
        synth,
        "generate_preset",
        lambda preset, seed, out, progress=True: (
            real_generate(preset, seed, out, progress),
            boom(),
        ),
    )
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_synthetic("ci", 6, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # nothing half-written left


def test_a_oracle_clearly_above_best_no_history_predictor(ci_arrays):
    """(a) The no-history predictor is a click-rate table over every non-sequential factor the click
    model uses (candidate cell, context mode, surface, device, price bucket, age), fitted on train.
    The ceiling (true p_click) must be far above it; a history statistic must add to it."""
    d = ci_arrays
    test = d["split"] == "test"
    nh = no_history_table(d, d["split"] == "train")
    oracle_auc, nh_auc = auc(d["click"][test], d["p_click"][test]), auc(d["click"][test], nh[test])
    hist = history_match_counts(d, [2048], mode_matched=True)[2048]
    both = auc(d["click"][test], (np.log(nh) + 3 * np.log1p(hist))[test])
    assert nh_auc > 0.55  # the table is a real predictor, not a strawman
    assert oracle_auc - nh_auc > 0.15, (oracle_auc, nh_auc)
    assert both - nh_auc > 0.05, (both, nh_auc)


def _window_aucs(d, mode_matched: bool) -> list[float]:
    ev = d["split"] != "train"
    counts = history_match_counts(d, WINDOWS, mode_matched=mode_matched)
    return [auc(d["click"][ev], counts[w][ev]) for w in WINDOWS]


def test_b_longer_windows_help_on_ci_up_to_its_history_lengths(ci_arrays):
    """(b, CI size) the history statistic improves from 64 to 512 events (CI users hold ~300)."""
    a = _window_aucs(ci_arrays, mode_matched=True)[:4]
    assert all(y > x for x, y in zip(a, a[1:])), a
    assert a[-1] - a[0] > 0.05, a


def test_c_context_decides_which_history_matters(ci_arrays):
    """(c) Counting only the candidate topic's events in the style of the impression's context mode
    predicts better than counting all of that topic's events: the relevant history depends on context."""
    d = ci_arrays
    ev = d["split"] != "train"
    matched = history_match_counts(d, [2048], mode_matched=True)[2048]
    anymode = history_match_counts(d, [2048], mode_matched=False)[2048]
    a_m, a_u = auc(d["click"][ev], matched[ev]), auc(d["click"][ev], anymode[ev])
    assert a_m - a_u > 0.02, (a_m, a_u)
    # For impressions in context mode m, counting the topic's events of style m' predicts best
    # exactly when m' = m: each context has its own relevant slice of the history.
    M = int(d["n_modes"])
    grid = np.zeros((M, M))
    for other in range(M):
        c = history_match_counts(
            d, [2048], mode_matched=True, style=np.full(d["mode"].size, other)
        )[2048]
        for m in range(M):
            sel = ev & (d["mode"] == m)
            grid[m, other] = auc(d["click"][sel], c[sel])
    assert (grid.argmax(1) == np.arange(M)).all(), grid


@pytest.mark.slow
def test_b_laptop_history_gain_is_monotone_from_64_to_2048(tmp_path_factory):
    """(b) On the laptop preset the history statistics' AUC rises at every doubling: the mode-matched
    count 64 -> 2048, and the topic count over the laptop length sweep's grid, 8 -> 128."""
    folder = synth.ensure_synthetic("laptop", 0, tmp_path_factory.mktemp("laptop"), progress=False)
    m = Manifest.load(folder)
    assert m.stats["impressions_with_prior_ge_2048"] > 10_000  # active users hold >= 2048 events
    d = load_for_predictors(folder)
    a = _window_aucs(d, mode_matched=True)
    assert all(y > x for x, y in zip(a, a[1:])), a
    assert a[-1] - a[0] > 0.08, a
    ev = d["split"] != "train"
    sweep_grid = [8, 16, 32, 64, 128]
    counts = history_match_counts(d, sweep_grid, mode_matched=False)
    t = [auc(d["click"][ev], counts[w][ev]) for w in sweep_grid]
    assert all(y > x for x, y in zip(t, t[1:])), t
    assert t[-1] - t[0] > 0.1, t


def test_paper_preset_scales_to_a_million_impressions_and_long_histories(tmp_path):
    """The paper preset's per-user recipe, run on 1% of its users: extrapolated to its 30k users it
    gives >= 1M impressions, and active users hold >= 2048 prior events. (The full preset: 1.57M
    impressions, 44.9M events, seed 0; docs/synthetic-world.md.)"""
    cfg = synth.PRESETS["paper"]
    out = synth.generate(
        replace(cfg, n_users=300, user_chunk=300), tmp_path / "p", seed=0, progress=False
    )
    stats = Manifest.load(out).stats
    assert stats["impressions"] / 300 * cfg.n_users > 1.2e6, stats["impressions"]
    assert stats["impressions_with_prior_ge_2048"] > 0.1 * stats["impressions"]


def test_part_file_directories_are_read_like_single_files(ci_world, tmp_path):
    """events.parquet may be a directory of part files (docs/data-contract.md)."""
    import shutil

    dst = tmp_path / "parts"
    shutil.copytree(ci_world, dst)
    ev = pq.read_table(dst / EVENTS)
    (dst / EVENTS).unlink()
    (dst / EVENTS).mkdir()
    half = ev.num_rows // 2
    pq.write_table(ev.slice(0, half), dst / EVENTS / "part-00000.parquet")
    pq.write_table(ev.slice(half), dst / EVENTS / "part-00001.parquet")
    assert errors(validate(dst)) == []
    assert (
        compute_stats(dst)["prior_events_percentiles"]
        == Manifest.load(ci_world).stats["prior_events_percentiles"]
    )
