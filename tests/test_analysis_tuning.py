"""analysis/tuning.py on a tuned fixture sweep with known choices (tests/fixtures/make_runs.py TUNED):
the chosen value per point, the edge flag, the tie rule, a point with a failed candidate, seeds
averaged, val (never test) choosing, --tune-fixed, and the law fitted over the chosen runs."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.collect import collect
from analysis.fit import FitSettings
from analysis.tuning import TuningError, choose, select, tuned_points
from harness.sweepfile import TuneSpec
from tests.fixtures.make_runs import TEST_B, TUNED, make_tuned, tuned_test_auc

SETTINGS = FitSettings(n_boot=200, seed=0)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = make_tuned(tmp_path_factory.mktemp("tuned"), tie=True)
    coll = collect([folder])
    report, warnings = tuned_points(coll, None, SETTINGS)
    assert report is not None and not warnings
    return coll, report


def _point(report, length: int):
    pts = report.selection.points
    row = pts[pts["point"] == f"len{length}"]
    assert len(row) == 1, pts
    return row.iloc[0]


def test_chosen_value_is_the_best_mean_val_metric(tuned):
    _, report = tuned
    for length, best in TUNED["best"].items():
        assert _point(report, length)["chosen"] == pytest.approx(best), length


def test_edge_flag_marks_a_winner_at_either_end_of_the_search(tuned):
    _, report = tuned
    assert _point(report, 64)["edge"] == "high"  # best 3e-3, the largest searched
    assert _point(report, 512)["edge"] == "low"  # best 3e-4, the smallest
    assert _point(report, 128)["edge"] == "" and _point(report, 256)["edge"] == ""
    lines = " ".join(report.lines)
    assert "chose an edge of the search" in lines and "len64: 0.003, high" in lines


def test_exact_tie_goes_to_the_first_listed_candidate(tuned):
    _, report = tuned
    assert _point(report, 1024)["chosen"] == pytest.approx(TUNED["tie"][1024][0])
    spec = TuneSpec(key="train.lr", values=(3e-3, 1e-3), by="val.ctr_auc")
    assert choose({repr(3e-3): 0.7, repr(1e-3): 0.7}, spec) == 3e-3
    reverse = TuneSpec(key="train.lr", values=(1e-3, 3e-3), by="val.ctr_auc")
    assert choose({repr(3e-3): 0.7, repr(1e-3): 0.7}, reverse) == 1e-3
    # a loss is minimised, not maximised
    loss = TuneSpec(key="train.lr", values=(1e-3, 3e-3), by="val.ctr_logloss")
    assert choose({repr(3e-3): 0.4, repr(1e-3): 0.5}, loss) == 3e-3


def test_failed_candidate_is_listed_and_never_chosen(tuned):
    coll, report = tuned
    row = _point(report, 256)
    assert row["failed"] == "0.003" and row["chosen"] == pytest.approx(1e-3)
    assert "0.003: 0" in row["seeds"]  # no finished seed
    # the failed runs stay in the collection (the report lists them), out of the fits
    kept = report.selection.apply(coll)
    assert (kept.runs["status"] == "failed").sum() == TUNED["seeds"]


def test_seeds_are_averaged_before_choosing(tuned):
    _, report = tuned
    # seed 0 alone would pick 3e-4 (0.760 vs 0.750); the mean over both seeds picks 1e-3
    row = _point(report, 128)
    assert row["chosen"] == pytest.approx(1e-3)
    assert row["score"] == pytest.approx(np.mean(TUNED["seed_split"][128][1e-3]))
    assert row["spread"] > 0


def test_the_fits_see_all_seeds_of_the_chosen_candidate_only(tuned):
    coll, report = tuned
    kept = report.selection.apply(coll).done
    assert len(kept) == (len(TUNED["best"]) + 1) * TUNED["seeds"]
    for length, best in TUNED["best"].items():
        lrs = kept[kept["axes.seq_len"] == length]["name"].str.extract(r"lr([^-]+)")[0]
        assert set(lrs.astype(float)) == {best}


def test_choice_uses_val_never_test(tuned):
    coll, report = tuned
    # on test every step away from the val-best rate gains, so a test-based choice would differ
    for length, best in TUNED["best"].items():
        on_test = max(TUNED["values"], key=lambda v: tuned_test_auc(length, v))
        assert on_test != best and _point(report, length)["chosen"] == pytest.approx(best)


def test_tuned_law_recovers_the_true_slope_and_fixed_values_differ(tuned):
    _, report = tuned
    shift = report.shift
    tuned_row = shift[shift["selection"] == "tuned"].iloc[0]
    # the test metric at the chosen rate is exactly a + TEST_B·log10(L); FLOPs ∝ L
    assert tuned_row["per 2x FLOPs"] == pytest.approx(TEST_B * np.log10(2), rel=1e-6)
    lengths = [*TUNED["best"], 1024]
    for v in TUNED["values"]:
        # untuned at v: the least-squares line through the test metric at v (exact, noise-free);
        # length 256's runs at 3e-3 failed, so that fixed law has one point fewer
        ls = [n for n in lengths if TUNED["failed"].get(n) != v]
        want = np.polyfit(np.log2(ls), [tuned_test_auc(n, v) for n in ls], 1)[0]
        got = shift[shift["selection"] == f"fixed {v:g}"].iloc[0]["per 2x FLOPs"]
        assert got == pytest.approx(want, rel=1e-6), v
        assert abs(got - tuned_row["per 2x FLOPs"]) > 5e-4  # tuning moved the law
    assert set(shift["selection"]) == {"tuned", "fixed 0.0003", "fixed 0.001", "fixed 0.003"}


def test_tune_fixed_pins_every_point(tuned):
    coll, _ = tuned
    report, _ = tuned_points(coll, "1e-3", SETTINGS)
    pts = report.selection.points
    assert (pts["chosen"] == 1e-3).all() and (pts["edge"] == "").all()
    kept = report.selection.apply(coll).done
    assert set(kept["name"].str.extract(r"lr([^-]+)")[0].astype(float)) == {1e-3}
    assert "pinned to 0.001" in report.lines[0]
    with pytest.raises(TuningError, match="not a candidate.*0.0003, 0.001, 0.003"):
        tuned_points(coll, "0.01", SETTINGS)


def test_preset_tune_block_is_read_for_the_preset_folder(tmp_path):
    folder = make_tuned(tmp_path, preset="ci")
    coll = collect([folder])
    report, _ = tuned_points(coll, None, SETTINGS)
    assert report is not None and len(report.selection.points) == len(TUNED["best"])


def test_untuned_sweeps_are_left_alone(tmp_path):
    from tests.fixtures.make_runs import make_runs

    coll = collect([make_runs(tmp_path, only="width")])
    report, _ = tuned_points(coll, None, SETTINGS)
    assert report is None
    with pytest.raises(TuningError, match="none of these sweeps has a `tune:` block"):
        tuned_points(coll, "0.001", SETTINGS)
    sel = select(coll.runs, {})
    assert len(sel.apply(coll).runs) == len(coll.runs)


def test_one_dotted_lookup_serves_the_planner_and_the_analysis():
    """harness.sweepfile.lookup is the one dotted-key reader (analysis.tuning imports it): a missing
    part or a non-mapping on the way gives the default, a stored None stays None."""
    from harness.sweepfile import _lookup, lookup

    cfg = {"train": {"lr": 0.001, "none": None}, "seed": 3}
    assert lookup(cfg, "train.lr") == 0.001 and lookup(cfg, "seed") == 3
    assert lookup(cfg, "train.none", "absent") is None
    assert lookup(cfg, "train.wd") is None and lookup(cfg, "seed.x", "absent") == "absent"
    # the planner's form: a flat override wins over the nested base
    assert _lookup(cfg, {"train.lr": 0.01}, "train.lr") == 0.01
    assert _lookup(cfg, {}, "train.lr") == 0.001
