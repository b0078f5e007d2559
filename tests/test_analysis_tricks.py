"""Tricks across scale (analysis/tricks.py) on fixtures with known truths: a growing, a constant and a
fading switch gain (tests/fixtures/make_runs.py TRICK_TRUTH), the zero crossing of the fading one, the
MDE, the degenerate sweeps, the sweep-file schema of `analysis.trick` and the report section."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from analysis.analyze import analyze
from analysis.collect import collect
from analysis.fit import FitSettings
from analysis.hints import Hints
from analysis.report.build import build_report
from analysis.report.markdown import render_markdown
from analysis.tricks import analyze_tricks, paired_interval, trend_fit, value_pairs
from harness.sweepfile import SweepFileError, expand, load_sweep, parse_sweep
from tests.fixtures.make_runs import (
    TRICK_NOISE_SD,
    TRICK_TRUTH,
    make_trick_runs,
    trick_zero_flops,
)

KEYS = list(TRICK_TRUTH)
METRICS = ["test.ctr_uauc", "test.ctr_logloss"]


def trends_of(root, metrics=METRICS, keys=KEYS):
    return analyze_tricks(collect([root]).done, keys, metrics)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = make_trick_runs(tmp_path_factory.mktemp("tricks"))
    return root, trends_of(root)


def by_key(ta, key, metric="test.ctr_uauc"):
    (t,) = [t for t in ta.trends if t.key == key and t.metric == metric]
    return t


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("metric", METRICS)
def test_verdicts_match_the_planted_trends(planted, key, metric):
    """Growing, constant and fading gains get grows / holds / fades, on AUC and on logloss (where a
    gain is a decrease: the sign is handled, so the verdict is the same)."""
    _, ta = planted
    t = by_key(ta, key, metric)
    truth = TRICK_TRUTH[key]
    assert t.verdict == truth["verdict"], t.sentence
    assert len(t.scales) == 5 and t.n_pairs == 15
    # the trend's CI covers the planted trend per doubling (FLOPs double from one scale to the next)
    assert t.slope_lo <= truth["per_doubling"] <= t.slope_hi, t.sentence
    assert f"**{truth['verdict']}" in t.sentence
    # every switch is paired with the reference: its context is the other switches' reference values
    others = [k.split(".")[-1] for k in KEYS if k != key]
    assert all(o in t.context for o in others)


def test_gain_per_scale_recovers_the_truth_with_its_interval(planted):
    _, ta = planted
    t = by_key(ta, "model.overrides.tokenizer_skip")
    assert [s.n_seeds for s in t.scales] == [3] * 5
    for s in t.scales:
        assert s.lo < s.gain < s.hi
        # the shared seed effect (sd 0.002) is paired out: the interval is set by the run noise only
        assert abs(s.gain - TRICK_TRUTH["model.overrides.tokenizer_skip"]["at_smallest"]) < 0.004
    # scales are labelled by what differs between them, in FLOPs order
    assert t.scales[0].scale == "d_model=16, n_layers=1"
    assert [s.flops for s in t.scales] == sorted(s.flops for s in t.scales)


def test_zero_crossing_of_a_fading_gain(tmp_path):
    """Without noise the extrapolated zero is exact; with the fixture's noise it is within a doubling."""
    key = "model.overrides.mixed_params"
    for noise, tol in ((1e-6, 0.02), (TRICK_NOISE_SD, 1.0)):
        root = make_trick_runs(tmp_path / f"n{noise}", noise_sd=noise)
        t = by_key(trends_of(root, ["test.ctr_uauc"], [key]), key)
        assert t.verdict == "fades"
        err = abs(np.log2(t.zero_flops / trick_zero_flops(key)))
        assert err < tol, (noise, t.zero_flops, trick_zero_flops(key))
        assert "beyond the largest scale" in t.sentence  # the truth crosses one doubling past it


@pytest.mark.parametrize(
    "at_smallest,per_doubling,verdict,where",
    [
        (0.010, -0.004, "fades", "already inside the sweep"),  # zero at 2.5 doublings: inside
        (-0.002, -0.003, "grows", None),  # a harm that grows is "grows" too (magnitude)
        (-0.012, 0.002, "fades", "beyond the largest scale"),  # a harm that fades, zero at 6
    ],
)
def test_verdict_follows_the_sign_of_the_gain(
    tmp_path, monkeypatch, at_smallest, per_doubling, verdict, where
):
    key = "model.overrides.mixed_params"
    monkeypatch.setitem(
        TRICK_TRUTH,
        key,
        {**TRICK_TRUTH[key], "at_smallest": at_smallest, "per_doubling": per_doubling},
    )
    root = make_trick_runs(tmp_path, noise_sd=1e-6)
    t = by_key(trends_of(root, ["test.ctr_uauc"], [key]), key)
    assert t.verdict == verdict and t.slope == pytest.approx(per_doubling, abs=1e-5)
    if where:
        assert where in t.sentence
        assert abs(np.log2(t.zero_flops / trick_zero_flops(key))) < 0.02
    else:
        assert t.zero_flops is None


def test_a_convexly_growing_gain_grows(tmp_path, monkeypatch):
    """Gains that are positive at every scale and rise faster than a line (+0.001 ... +0.025, as
    match_init's did on the laptop tricks sweep) put the fitted line's start below 0; the verdict
    reads the sign of the gain from the measured per-scale gains, so this is "grows", not a harm that
    fades and has already turned."""
    key = "model.overrides.match_init"
    truth = {**TRICK_TRUTH[key], "at_smallest": 0.001, "per_doubling": 0.0, "curve": 0.0015}
    monkeypatch.setitem(TRICK_TRUTH, key, truth)
    root = make_trick_runs(tmp_path, noise_sd=1e-6)
    t = by_key(trends_of(root, ["test.ctr_uauc"], [key]), key)
    assert all(s.gain > 0 for s in t.scales)
    u0 = np.log2(t.scales[0].flops)
    assert t.intercept + t.slope * u0 < 0  # the line alone would say the sign has turned
    assert t.verdict == "grows" and t.zero_flops is None, t.sentence
    assert "**grows**" in t.sentence


def test_mde_is_the_power_formula_on_the_seed_noise(planted, tmp_path):
    """MDE = (t_0.975 + t_0.80) · sigma_d / sqrt(Sxx): sigma_d the seed sd of the paired differences
    (truth: sqrt(2) · noise sd), Sxx over the 15 pairs at log2 FLOPs 0..4 (3 seeds each: 30)."""
    _, ta = planted
    t = by_key(ta, "model.overrides.tokenizer_skip")
    assert t.mde_source == "seeds" and t.mde_dof == 10  # 5 scales x (3 - 1) seeds
    q = stats.t.ppf(0.975, 10) + stats.t.ppf(0.8, 10)
    assert t.mde == pytest.approx(q * t.mde_sigma / np.sqrt(30.0))
    assert 0.5 < t.mde_sigma / (np.sqrt(2) * TRICK_NOISE_SD) < 2.0
    # a switch that holds shows a trend well below the MDE; a planted trend far above it is found
    assert abs(t.slope) < t.mde
    assert abs(TRICK_TRUTH["model.overrides.match_init"]["per_doubling"]) > 3 * t.mde
    # more seeds, smaller MDE
    more = by_key(trends_of(make_trick_runs(tmp_path, seeds=8)), t.key)
    assert more.mde < t.mde


def test_one_scale_one_seed_says_why_there_is_no_trend(tmp_path):
    root = make_trick_runs(tmp_path, scales=1, seeds=1)
    ta = trends_of(root, ["test.ctr_uauc"])
    assert len(ta.trends) == 3
    for t in ta.trends:
        assert t.verdict == "undetermined" and len(t.scales) == 1
        assert np.isnan(t.slope) and np.isnan(t.scales[0].lo)  # one seed: no interval either
        assert "one scale only" in t.sentence and "add a size or length axis" in t.sentence
        assert "MDE not available" in t.sentence


def test_two_scales_one_seed_has_no_degrees_of_freedom(tmp_path):
    root = make_trick_runs(tmp_path, scales=2, seeds=1)
    t = by_key(trends_of(root, ["test.ctr_uauc"]), "model.overrides.match_init")
    assert t.verdict == "undetermined" and np.isfinite(t.slope)
    assert "no degrees of freedom" in t.sentence and "add seeds" in t.sentence


def test_unpaired_runs_and_unset_switches_are_named(tmp_path):
    root = make_trick_runs(tmp_path, scales=3, seeds=2)
    done = collect([root]).done
    # drop one match_init run: its reference partner loses its pair at that seed
    victim = done[done["name"] == "match_init-d1-w16-s0"]["run_dir"].iloc[0]
    shutil.rmtree(victim)
    ta = trends_of(root, ["test.ctr_uauc"])
    t = by_key(ta, "model.overrides.match_init")
    assert [s.n_seeds for s in t.scales] == [1, 2, 2]
    assert any("no partner with the same seed" in n for n in ta.notes)
    # a key no run sets: named, with the fix
    ta = trends_of(root, ["test.ctr_uauc"], ["model.overrides.causal"])
    assert not ta.trends and "cross it in the sweep file" in ta.notes[0]
    # a run without a recorded config is left out, and counted
    rec_path = next(root.rglob("result.json"))
    rec = json.loads(rec_path.read_text())
    del rec["config"]
    rec_path.write_text(json.dumps(rec))
    ta = trends_of(root, ["test.ctr_uauc"])
    assert any("no 'config' in result.json" in n for n in ta.notes)


def test_statistics_helpers():
    m, lo, hi = paired_interval(np.array([1.0, 2.0, 3.0]))
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert np.isnan(paired_interval(np.array([1.0]))[1])
    u = np.repeat([0.0, 1.0, 2.0], 2)
    f = trend_fit(u, 0.5 + 0.25 * u + np.array([0.01, -0.01] * 3), np.repeat(["a", "b", "c"], 2))
    assert f["b"] == pytest.approx(0.25) and f["a"] == pytest.approx(0.5)
    assert f["dof"] == 4 and f["lo"] < 0.25 < f["hi"] and f["lof_p"] > 0.5
    # a curved gain: the line's lack of fit is detected
    bent = trend_fit(u, np.array([0, 0.001, 1, 1.001, 0, 0.001]), np.repeat(["a", "b", "c"], 2))
    assert bent["lof_p"] < 0.01
    assert value_pairs([True, False, True]) == [(True, False)]
    # non-boolean: the most frequent value is the reference of a one-flip design
    assert value_pairs(["auto_split"] * 3 + ["group"]) == [("group", "auto_split")]
    assert value_pairs([True, True]) == []


# ------------------------------------------------------------------------------ sweep-file schema


def _sweep(**analysis):
    return {
        "name": "t",
        "base": {"model": {"name": "onetrans", "size": "onetrans-tiny"}},
        "grid": {"model.overrides.match_init": [False, True], "model.overrides.n_layers": [1, 2]},
        "analysis": {"x": "flops", **analysis},
    }


def test_the_trick_hint_is_validated_with_a_fix():
    assert parse_sweep(_sweep(trick="model.overrides.match_init")).analysis.trick == (
        "model.overrides.match_init",
    )
    with pytest.raises(SweepFileError, match="is not a grid or zip axis.*crossing it with a size"):
        parse_sweep(_sweep(trick=["model.overrides.mixed_params"]))
    with pytest.raises(SweepFileError, match="dotted run-config key or a list"):
        parse_sweep(_sweep(trick=[3]))
    with pytest.raises(SweepFileError, match="repeats a key"):
        parse_sweep(_sweep(trick=["model.overrides.match_init"] * 2))
    no_scale = _sweep(trick="model.overrides.match_init")
    no_scale["grid"] = {"model.overrides.match_init": [False, True]}
    with pytest.raises(SweepFileError, match="needs a size or length axis"):
        parse_sweep(no_scale)
    one_value = _sweep(trick="model.overrides.match_init")
    one_value["grid"]["model.overrides.match_init"] = [True]
    with pytest.raises(SweepFileError, match="takes one value only"):
        parse_sweep(one_value)


def test_tricks_yaml_crosses_named_variants_with_sizes():
    """Each run name holds its variant and its size (a `_name` column names only its own group); every
    switch is flipped once off the reference, at three sizes, in every preset."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "sweeps" / "tricks.yaml"
    for preset in (None, "ci", "laptop"):
        sweep = load_sweep(path, preset)
        runs = expand(sweep)
        assert (
            len(sweep.analysis.trick) == 4 and "model.overrides.match_init" in sweep.analysis.trick
        )
        sizes = {
            (r.overrides["model.overrides.n_layers"], r.overrides["model.overrides.d_model"])
            for r in runs
        }
        assert len(sizes) == 3
        assert len({r.name for r in runs}) == len(runs)
        ref = [r for r in runs if r.name.startswith("reference-")]
        assert len(ref) == 3 * len(sweep.seeds)
        for r in runs:
            flipped = [k for k in sweep.analysis.trick if r.overrides[k] != ref[0].overrides[k]]
            assert len(flipped) == (0 if r.name.startswith("reference-") else 1), r.name


# ------------------------------------------------------------------------------ report section


def test_the_report_has_a_tricks_section(tmp_path):
    root = make_trick_runs(tmp_path / "runs", scales=3, seeds=2)
    hints = {
        "tricks": Hints(x="train_flops", metrics=("ctr_uauc",), split="test", trick=tuple(KEYS))
    }
    an = analyze(
        collect([root]), settings=FitSettings(n_boot=50), metrics=("ctr_uauc",), hints=hints
    )
    spec = build_report(an, tmp_path / "out", vector=False)
    (sec,) = [s for s in spec.sections if s.title == "Tricks across scale"]
    md = render_markdown(spec, tmp_path / "out")
    assert "## Tricks across scale" in md
    for key in KEYS:
        assert f"{key.split('.')[-1]} on − off" in md
    assert "**grows**" in md and "**fades**" in md
    names = {t.name for t in spec.tables()}
    assert {"tricks_trends_tricks", "tricks_gains_tricks"} <= names
    assert (tmp_path / "out" / "figures" / "tricks_tricks.png").exists()
    # a sweep without the hint gets no section
    spec2 = build_report(
        analyze(collect([root]), settings=FitSettings(n_boot=50), metrics=("ctr_uauc",)),
        tmp_path / "out2",
        vector=False,
    )
    assert "Tricks across scale" not in [s.title for s in spec2.sections]


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_ci_preset_end_to_end(tmp_path):
    """sweeps/tricks.yaml --preset ci trains its 30 tiny runs in-process, and the report built from
    the sweep folder (hints read from its .sweep/sweep.yaml) has a verdict sentence for every switch.
    Minutes on a loaded 2-core machine (each 4-step run costs ~5-30 s of set-up and evaluation)."""
    import io
    from pathlib import Path

    from analysis.report.__main__ import main as report
    from harness import sweep as S

    path = Path(__file__).resolve().parents[1] / "sweeps" / "tricks.yaml"
    runs = tmp_path / "runs"
    outcome = S.run_sweep(
        path, out=io.StringIO(), describe=False, preset="ci", executor="debug", runs_dir=runs
    )
    assert outcome.code == 0 and len(outcome.rows) == 30
    out = tmp_path / "report"
    assert (
        report([str(runs / "tricks-ci"), "--out", str(out), "--n-boot", "100", "--no-vector"]) == 0
    )
    md = (out / "report.md").read_text()
    assert "## Tricks across scale" in md
    section = md.split("## Tricks across scale")[1].split("\n## ")[0]
    for switch in ("shared_side_tables", "tokenizer_skip", "match_init", "mixed_params"):
        for metric in ("test.ctr_uauc", "test.ctr_auc", "test.ctr_logloss"):
            assert f"{switch} on − off" in section and metric in section
    # 3 scales x 2 seeds per switch: every trend has its interval, so a verdict (whatever it is)
    sentences = [
        line for line in section.splitlines() if line.startswith("- ") and "on − off" in line
    ]
    assert len(sentences) == 12 and not any("**trend undetermined**" in x for x in sentences)
    assert all(any(f"**{v}" in x for v in ("holds", "grows", "fades")) for x in sentences)
    assert (out / "tables" / "tricks_trends_tricks-ci.csv").exists()
