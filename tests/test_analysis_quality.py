"""Analysis you can trust when runs go wrong (issue #13): bad runs are flagged, listed and kept out of the
fits; nothing is dropped silently; fits below 3 x-values or at a bound make no claims; hints are read;
the minimum detectable effect is right; Figure 3 answers its question. Fixtures with known truths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import figure3
from analysis.analyze import analyze
from analysis.collect import collect
from analysis.fit import FitSettings, fit, powerlaw_problem
from analysis.hints import HintError, find_hints, override
from analysis.quality import outliers, training_loss_problem
from analysis.report.__main__ import main
from analysis.report.build import series_sentence
from harness.power import mde_per_doubling
from tests.fixtures.make_runs import (
    NOISE_SD,
    TRUTH,
    find_run,
    make_runs,
    plant_collapse,
    plant_corrupt,
    plant_nan,
)

SETTINGS = FitSettings(n_boot=300, seed=1)
TRUE_B2 = TRUTH["length"]["ctr_auc"]["b"] * np.log10(2)  # true gain of AUC per doubling of seq_len


def _length_series(an, metric="ctr_auc", x="seq_len"):
    return next(
        s for s in an.series if s.sweep == "length" and s.metric == metric and s.x_name == x
    )


@pytest.fixture(scope="module")
def length_clean(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("clean"), only="length")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- flagged runs


@pytest.mark.parametrize("diverge", [True, False], ids=["diverged-loss", "outlier-only"])
def test_planted_bad_seed_is_flagged_listed_and_left_out(length_clean, tmp_path, diverge):
    """The issue's case: one seed at one point collapsed to AUC 0.5. Flagged (by its diverged training
    loss, or by the robust seed-outlier rule when its curve looks normal), left out by default: the fit's
    CI contains the true slope and is no wider than 1.5x the fit without that run; the fit with it is shown."""
    runs = _copy(length_clean, tmp_path / "bad")
    bad = plant_collapse(runs, value=512, seed=1, diverge=diverge)
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc",))
    flagged = an.flags[an.flags["run_id"] == bad.name]
    assert len(flagged) and set(flagged["reason"]) == ({"diverged"} if diverge else {"outlier"})
    assert set(an.flags["run_id"]) == {bad.name}  # nothing else flagged
    s = _length_series(an)
    b, lo, hi = s.slope()
    assert lo <= TRUE_B2 <= hi and s.excluded == (bad.name,) and s.n_runs == 17

    shutil.rmtree(bad)  # the same sweep without that run
    ref = _length_series(analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc",)))
    assert (hi - lo) <= 1.5 * (ref.slope()[2] - ref.slope()[1])
    # the estimate with the flagged run is reported too, and it is the broken one
    with_bad = s.alt_fits["loglinear"]
    w_lo, w_hi = with_bad.ci["b_per_doubling"]
    assert with_bad.n_points == 18 and (w_hi - w_lo) > 3 * (hi - lo)
    assert "left out; with it:" in series_sentence(an, s)


def test_include_flagged_switch_and_report_listing(length_clean, tmp_path, capsys):
    runs = _copy(length_clean, tmp_path / "bad")
    bad = plant_collapse(runs, value=512, seed=1)
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc",), include_flagged=True)
    s = _length_series(an)
    assert s.n_runs == 18 and s.alt_fits["loglinear"].n_points == 17
    assert "included (--include-flagged); without it" in series_sentence(an, s)
    out = tmp_path / "out"
    assert (
        main(
            [str(runs), "--out", str(out), "--n-boot", "100", "--metrics", "ctr_auc", "--no-vector"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.index("flagged run") < printed.index("- length")  # listed before the conclusions
    assert bad.name in printed and "diverged" in printed
    html = (out / "report.html").read_text()
    assert html.index("Flagged and left-out runs") < html.index("Figure 3") and bad.name in html
    flagged_csv = pd.read_csv(out / "flagged.csv")
    assert flagged_csv["run_id"].tolist() == [bad.name]


def test_nan_metric_is_listed_and_counts_are_the_fitted_ones(length_clean, tmp_path):
    runs = _copy(length_clean, tmp_path / "nan")
    run = plant_nan(runs, value=256, seed=0, metric="ctr_auc")
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc", "ctr_uauc"))
    f = an.flags
    assert f[["run_id", "reason", "metrics"]].values.tolist() == [
        [run.name, "nan_metric", "ctr_auc"]
    ]
    auc, uauc = _length_series(an, "ctr_auc"), _length_series(an, "ctr_uauc")
    assert auc.n_runs == 17 and auc.n_seeds == (2, 3) and auc.fits["loglinear"].n_points == 17
    assert uauc.n_runs == 18 and not uauc.excluded  # the run's other metrics still count
    hold = an.holdout_table()
    assert hold["observed"].notna().all() and hold["inside"].all()
    table = __import__("analysis.tables", fromlist=["x"]).config_table(
        an.collection.done, "test", an.flags
    )
    row = table[table["seq_len"] == 256].iloc[0]
    assert (
        row["ctr_auc"].endswith("(2)") and row["ctr_uauc"].endswith("(3)") and row["flagged"] == 1
    )


def test_infinite_metrics_are_flagged_by_run_and_metric(length_clean, tmp_path, capsys):
    """Issue #21: `Infinity` / `-Infinity` in result.json (valid JSON to Python) used to leave the fit
    silently (its isfinite filter); now each is a flag naming the run and the metric, in the console
    listing and flagged.csv, and the fit's run count says it is out. A metric the analysis does not
    fit (cvr_auc here) is flagged too."""
    runs = _copy(length_clean, tmp_path / "inf")
    pos = find_run(runs, "length", 256, 0)
    neg = find_run(runs, "length", 512, 1)
    for run, metric, text in ((pos, "ctr_auc", "Infinity"), (neg, "cvr_auc", "-Infinity")):
        rec = (run / "result.json").read_text()
        data = json.loads(rec)
        data["metrics"]["test"][metric] = "__X__"
        (run / "result.json").write_text(json.dumps(data).replace('"__X__"', text))
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc",))
    got = sorted(map(tuple, an.flags[["run_id", "reason", "metrics", "detail"]].values.tolist()))
    assert got == sorted(
        [
            (pos.name, "nonfinite_metric", "ctr_auc", "test.ctr_auc is inf in result.json"),
            (neg.name, "nonfinite_metric", "cvr_auc", "test.cvr_auc is -inf in result.json"),
        ]
    )
    s = _length_series(an)
    assert s.n_runs == 17 and pos.name in s.excluded
    out = tmp_path / "out"
    main([str(runs), "--out", str(out), "--n-boot", "100", "--metrics", "ctr_auc", "--no-vector"])
    printed = capsys.readouterr().out
    assert pos.name in printed and neg.name in printed and "nonfinite_metric" in printed
    flagged = pd.read_csv(out / "flagged.csv")
    assert set(flagged["run_id"]) == {pos.name, neg.name}


def test_training_loss_rules(tmp_path):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    steps = range(0, 1001, 100)
    good = "step,metric,value,time\n" + "".join(
        f"{s},train/loss,{0.4 + 0.3 * np.exp(-s / 200):.4f},0\n" for s in steps
    )
    assert training_loss_problem(write("good.csv", good)) is None
    nan = good.replace("500,train/loss,0.4246", "500,train/loss,nan")
    assert training_loss_problem(write("nan.csv", nan))[0] == "nonfinite_loss"
    assert "step 500" in training_loss_problem(write("nan.csv", nan))[1]
    inf = "step,train/loss\n0,0.7\n10,inf\n20,0.5\n"
    assert training_loss_problem(write("inf.csv", inf))[0] == "nonfinite_loss"
    gaps = (
        "step,train/loss,val/auc\n0,0.7,\n10,0.6,0.6\n20,0.5,\n30,0.45,0.65\n"  # empty = not logged
    )
    assert training_loss_problem(write("gaps.csv", gaps)) is None
    climb = "step,train/loss\n" + "".join(
        f"{s},{v}\n" for s, v in enumerate([0.7, 0.6, 0.5, 0.45, 0.44, 0.43, 0.5, 0.6, 0.65, 0.7])
    )
    assert training_loss_problem(write("climb.csv", climb))[0] == "diverged"
    flat = "step,train/loss\n" + "".join(f"{s},{0.69 + 0.002 * (-1) ** s}\n" for s in range(20))
    assert (
        training_loss_problem(write("flat.csv", flat)) is None
    )  # did not learn, but did not diverge
    # noisy per-batch losses of a run that learns little: the noise alone must not look like divergence
    rng = np.random.default_rng(7)
    noisy = 0.45 + 0.05 * np.exp(-np.arange(300) / 30) + rng.normal(0, 0.05, 300)
    text = "step,train/loss\n" + "".join(f"{i * 10},{v:.4f}\n" for i, v in enumerate(noisy))
    assert training_loss_problem(write("noisy.csv", text)) is None
    blown = np.concatenate([noisy[:240], 0.9 + rng.normal(0, 0.05, 60)])  # ... and then it blows up
    text = "step,train/loss\n" + "".join(f"{i * 10},{v:.4f}\n" for i, v in enumerate(blown))
    assert training_loss_problem(write("blown.csv", text))[0] == "diverged"


def test_outlier_rule_rarely_fires_on_clean_seeds_and_always_on_a_broken_one():
    rng = np.random.default_rng(0)
    fired, n_series = 0, 300
    for _ in range(n_series):
        x = np.repeat([64, 128, 256, 512, 1024, 2048], 3)
        df = pd.DataFrame(
            {
                "sweep": "s",
                "model": "m",
                "size": "z",
                "axes.seq_len": x,
                "m": 0.7 + 0.003 * np.log2(x) + rng.normal(0, NOISE_SD, len(x)),
            }
        )
        fired += bool(outliers(df, "m"))
    assert fired / n_series <= 0.05, fired
    df.loc[4, "m"] += 50 * NOISE_SD
    hits = outliers(df, "m")
    assert [h[0] for h in hits] == [4] and hits[0][1] > 20


# ----------------------------------------------------------------------------- nothing dropped silently


def test_corrupt_result_is_reported_and_the_report_still_built(length_clean, tmp_path, capsys):
    runs = _copy(length_clean, tmp_path / "corrupt")
    run = plant_corrupt(runs, value=1024, seed=2)
    out = tmp_path / "out"
    assert (
        main(
            [str(runs), "--out", str(out), "--n-boot", "100", "--metrics", "ctr_auc", "--no-vector"]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert str(run / "result.json") in captured.out and "exit 1" in captured.err
    assert (out / "report.html").exists() and str(run / "result.json") in (
        out / "report.html"
    ).read_text()
    doc = json.loads((out / "fits.json").read_text())
    assert any(r["status"] == "corrupt" for r in doc["excluded_runs"])


def test_two_x_values_make_no_claims_and_every_output_reads_in_pandas(tmp_path, capsys):
    runs = make_runs(tmp_path / "runs", only="width")
    for seed in range(2):
        shutil.rmtree(find_run(runs, "width", 256, seed))
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_auc",))
    s = next(s for s in an.series if s.x_name == "d_model")
    assert not s.fits and ">= 3 distinct x-values" in s.skipped["loglinear"]
    assert any("2 distinct values" in n for n in an.notes)
    assert "no fit claimed" in series_sentence(an, s)
    out = tmp_path / "out"
    assert (
        main([str(runs), "--out", str(out), "--n-boot", "100", "--metrics", "ctr_auc,ctr_logloss"])
        == 0
    )
    assert "no fit claimed" in capsys.readouterr().out
    csvs = list(out.rglob("*.csv"))
    assert len(csvs) >= 6
    for path in csvs:
        pd.read_csv(path)  # raises on a file pandas cannot read
    assert list(pd.read_csv(out / "predictions.csv").columns)[:3] == ["sweep", "model", "axis"]
    doc = json.loads((out / "fits.json").read_text())  # strict JSON (no NaN tokens)
    assert "NaN" not in (out / "fits.json").read_text() and isinstance(
        pd.json_normalize(doc["fits"]), pd.DataFrame
    )


# ----------------------------------------------------------------------------- honest power laws


def test_powerlaw_at_a_bound_or_below_the_bayes_floor_is_failed():
    rng = np.random.default_rng(2)
    x = np.repeat(np.geomspace(64, 4096, 7), 3)
    below = fit(
        x, 0.38 + 0.8 * x**-0.5 + rng.normal(0, 5e-4, len(x)), form="powerlaw", settings=SETTINGS
    )
    assert "below the Bayes floor" in powerlaw_problem(below, floor=0.395)
    assert powerlaw_problem(below, floor=0.37) is None  # a floor above the oracle is fine
    rising = fit(
        x, 0.4 + 1e-3 * np.log(x) + rng.normal(0, 5e-4, len(x)), form="powerlaw", settings=SETTINGS
    )
    assert "bound" in powerlaw_problem(rising)


def test_failed_powerlaw_is_marked_in_fits_and_text(length_clean, tmp_path):
    runs = _copy(length_clean, tmp_path / "oracle")
    for res in runs.rglob("result.json"):  # a Bayes floor above the true floor (0.40)
        rec = json.loads(res.read_text())
        if rec.get("oracle"):
            rec["oracle"]["test"]["ctr_logloss"] = 0.43
            res.write_text(json.dumps(rec))
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_logloss",))
    s = _length_series(an, "ctr_logloss")
    assert "below the Bayes floor" in s.failed["powerlaw"] and s.best_form() == "loglinear"
    t = an.fits_table()
    row = t[(t["form"] == "powerlaw") & (t["x"] == "seq_len")].iloc[0]
    assert row["status"].startswith("failed") and not row["chosen"]
    assert "saturating fit failed" in series_sentence(an, s)
    assert not [h for h in s.holdout if h["form"] == "powerlaw"]


# ----------------------------------------------------------------------------- axes and hints


def test_sweep_hints_are_read_and_the_command_line_overrides_them(tmp_path):
    runs = make_runs(tmp_path / "runs", only="depth")
    meta = runs / "depth" / ".sweep"
    meta.mkdir()
    (meta / "sweep.yaml").write_text(
        "name: depth\nbase: {}\ngrid: {model.overrides.n_layers: [2, 4]}\n"
        "analysis: {x: params, metrics: [test.ctr_uauc], fit: loglinear}\n"
    )
    coll = collect([runs])
    found, warnings = find_hints(coll.runs["run_dir"])
    assert found["depth"].x == "params" and found["depth"].metrics == ("ctr_uauc",) and not warnings
    an = analyze(coll, settings=SETTINGS, hints=found)
    assert {s.metric for s in an.series} == {"ctr_uauc"} and {s.x_name for s in an.series} == {
        "params",
        "train_flops",
    }
    s = next(s for s in an.series if s.primary)
    assert s.x_name == "params" and set(s.fits) == {"loglinear"}  # fit: loglinear -> no power law
    dense = coll.done.groupby("axes.n_layers")["params.dense"].first()
    assert sorted(r["x"] for r in s.fits["loglinear"].residuals) == sorted(dense.unique())
    # dense params x 2 per doubling of depth here: the gain per doubling of params is the depth truth
    assert s.slope()[1] <= TRUTH["depth"]["ctr_auc"]["b"] * np.log10(2) <= s.slope()[2]
    over = {
        "depth": override(found["depth"], x="flops", metrics=("ctr_logloss",), fit="saturating")
    }
    an2 = analyze(coll, settings=SETTINGS, hints=over)
    assert {s.metric for s in an2.series} == {"ctr_logloss"} and all(
        s.x_name == "train_flops" for s in an2.series
    )
    (meta / "sweep.yaml").write_text("name: depth\nanalysis: {x: n_layers, fit: cubic}\n")
    _, warnings = find_hints(coll.runs["run_dir"])
    assert warnings and "cubic" in warnings[0]
    with pytest.raises(HintError, match="cubic"):
        find_hints([], [meta / "sweep.yaml"])


def test_a_hinted_x_that_does_not_vary_falls_back_with_a_note(length_clean):
    """Dense params do not change with sequence length: the length series stays on seq_len, and says so."""
    hints = {"length": override(None, x="params")}
    an = analyze(collect([length_clean]), settings=SETTINGS, metrics=("ctr_auc",), hints=hints)
    assert _length_series(an).primary and any("does not vary along seq_len" in n for n in an.notes)


# ----------------------------------------------------------------------------- minimum detectable effect


def test_mde_has_the_stated_power():
    """A slope equal to the MDE is detected (two-sided t-test at 95%) in ~80% of simulated sweeps; a zero
    slope in ~5%."""
    rng = np.random.default_rng(3)
    xs = np.repeat(np.geomspace(64, 2048, 6), 3)
    u = np.log2(xs)
    sigma, dof = 0.002, len(xs) - 6
    mde = mde_per_doubling(xs, sigma, dof)
    sxx = np.sum((u - u.mean()) ** 2)
    assert mde == pytest.approx(
        (stats.t.ppf(0.975, dof) + stats.t.ppf(0.8, dof)) * sigma / np.sqrt(sxx)
    )
    crit = stats.t.ppf(0.975, dof)
    for slope, lo, hi in ((mde, 0.74, 0.86), (0.0, 0.02, 0.08)):
        y = 0.7 + slope * u + rng.normal(0, sigma, (3000, len(u)))
        b = ((u - u.mean()) @ y.T) / sxx
        cfg = y.reshape(3000, 6, 3)
        s_hat = np.sqrt(
            ((cfg - cfg.mean(2, keepdims=True)) ** 2).sum((1, 2)) / dof
        )  # pooled seed sd
        rate = np.mean(np.abs(b) / (s_hat / np.sqrt(sxx)) > crit)
        assert lo <= rate <= hi, (slope, rate)
    # quadrupling the seeds halves the MDE; one seed per config without a sigma gives none
    assert mde_per_doubling(np.repeat(xs, 4), sigma, 10_000) < 0.55 * mde
    assert np.isnan(mde_per_doubling(xs, float("nan"), 0))


@pytest.mark.parametrize(
    "how", (["--dry-run"], ["plan"])
)  # `plan FILE` is the same as `FILE --dry-run`
def test_dry_run_prints_the_mde_from_earlier_runs(tmp_path, capsys, how):
    from harness.sweep import main as sweep_main
    from harness.sweepfile import load_sweep, resolve, sweep_dir_name

    sweep = load_sweep("sweeps/length.yaml", "ci")
    rng = np.random.default_rng(4)
    for r in resolve(sweep):
        d = tmp_path / sweep_dir_name(sweep) / r.run_id
        d.mkdir(parents=True)
        x = r.plan.axes["data.seq_len"]
        d.joinpath("result.json").write_text(
            json.dumps(
                {"metrics": {"test": {"ctr_uauc": 0.6 + 0.003 * np.log2(x) + rng.normal(0, 0.002)}}}
            )
        )
        d.joinpath("DONE").write_text("")
    argv = ["sweeps/length.yaml", "--preset", "ci", "--no-describe", "--runs-dir", str(tmp_path)]
    assert sweep_main(how + argv if how == ["plan"] else argv + how) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("MDE base: test.ctr_uauc"))
    assert (
        "per doubling of data.seq_len" in line
        and "5 finished runs" in line
        and "seed noise not measured" in line
    )


def test_series_mde_is_reported_beside_the_estimate(length_clean):
    an = analyze(collect([length_clean]), settings=SETTINGS, metrics=("ctr_auc",))
    s = _length_series(an)
    u = np.log2(np.repeat(TRUTH["length"]["values"], 3))
    expected = (
        (stats.t.ppf(0.975, 12) + stats.t.ppf(0.8, 12))
        * s.mde["sigma"]
        / np.sqrt(np.sum((u - u.mean()) ** 2))
    )
    assert (
        s.mde["source"] == "seeds"
        and s.mde["dof"] == 12
        and s.mde["mde"] == pytest.approx(expected)
    )
    assert s.mde["sigma"] == pytest.approx(NOISE_SD, rel=0.5)
    assert f"MDE {s.mde['mde']:.2g}" in series_sentence(an, s) and "resolved" in series_sentence(
        an, s
    )
    t = an.fits_table()
    assert t.loc[(t["form"] == "loglinear") & (t["x"] == "seq_len"), "mde_per_doubling"].iloc[
        0
    ] == pytest.approx(expected)


# ----------------------------------------------------------------------------- Figure 3


@pytest.fixture(scope="module")
def four_sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig3")
    for sweep in ("length", "depth", "width", "baselines"):
        make_runs(root, only=sweep)
    return analyze(collect([root]), settings=FitSettings(n_boot=400, seed=5), metrics=("ctr_auc",))


def test_figure3a_names_the_axis_that_buys_most_per_flop(four_sweeps):
    # truths on training FLOPs (fixture: FLOPs ∝ seq_len · n_layers · d_model²)
    l2 = np.log10(2)
    truth = {"length": 0.010 * l2, "depth": 0.008 * l2, "width": 0.006 * l2 / 2}
    ranked, sentence, diffs = figure3.decision_3a(four_sweeps, "ctr_auc")
    assert [figure3.axis_name(s) for s in ranked][0] == "length"
    assert "Length buys the most per FLOP" in sentence
    for s in ranked:
        b, lo, hi = s.slope()
        assert lo <= truth[figure3.axis_name(s)] <= hi
    assert set(diffs["second"]) == {"depth", "width"}
    for r in diffs.itertuples():
        assert r.lo <= truth["length"] - truth[r.second] <= r.hi
        assert ("not resolved" if not r.resolved else "resolved") in sentence


def test_figure3b_gives_the_slope_difference_to_the_scaled_baseline(four_sweeps):
    l2 = np.log10(2)
    truth = {"length": 0.010 * l2, "depth": 0.008 * l2, "width": 0.006 * l2 / 2}
    base_truth = 0.004 * l2 / 2
    ours, base, sentence, diffs = figure3.decision_3b(four_sweeps, "ctr_auc")
    assert [s.model for s in base] == ["rankmixer_transformer"] and len(ours) == 3
    assert len(diffs) == 3 and "rankmixer_transformer" in sentence
    for r in diffs.itertuples():
        assert r.lo <= truth[r.ours] - base_truth <= r.hi


def test_flagged_runs_stay_out_of_the_paper_tables(tmp_path):
    runs = make_runs(tmp_path / "runs", only="main")
    res = next(
        p
        for p in sorted(runs.rglob("result.json"))
        if json.loads(p.read_text())["model"] == "dcnv2_din"
    )
    rec = json.loads(res.read_text())
    rec["metrics"]["test"]["ctr_uauc"] = 0.5
    res.write_text(json.dumps(rec))
    (res.parent / "metrics.csv").write_text("step,train/loss\n0,0.7\n1,0.5\n2,0.45\n3,0.9\n4,1.5\n")
    an = analyze(collect([runs]), settings=SETTINGS, metrics=("ctr_uauc",))
    assert an.flags["run_id"].tolist() == [rec["run_id"]] and an.flags["reason"].tolist() == [
        "diverged"
    ]
    spec = __import__("analysis.report.build", fromlist=["x"]).build_report(
        an, tmp_path / "out", vector=False
    )
    t2 = next(t for t in spec.tables() if t.name == "table2").frame
    base = t2[t2["model"] == "dcnv2_din"].iloc[0]
    other = collect([runs]).done
    kept = other[(other["model"] == "dcnv2_din") & (other["run_id"] != rec["run_id"])][
        "test.ctr_uauc"
    ].iloc[0]
    assert base["seeds"] == 1 and base["ctr_uauc abs"] == pytest.approx(kept)


def test_saturating_hint_on_auc_fits_the_shortfall(length_clean, tmp_path):
    """`fit: saturating` on an AUC: 1 − AUC = E + A·L^-α is fitted and drawn back in AUC; the truth is
    recovered; a ceiling 1 − E above the Bayes AUC is a failed fit."""
    runs = _copy(length_clean, tmp_path / "sat")
    rng = np.random.default_rng(6)
    for res in runs.rglob("result.json"):
        rec = json.loads(res.read_text())
        if not (res.parent / "DONE").exists():
            continue
        L = rec["axes"]["seq_len"]
        rec["metrics"]["test"]["ctr_auc"] = 0.78 - 0.5 * L**-0.5 + rng.normal(0, 5e-4)
        rec["oracle"]["test"]["ctr_auc"] = 0.79
        res.write_text(json.dumps(rec))
    hints = {"length": override(None, metrics=("ctr_auc",), fit="saturating")}
    an = analyze(collect([runs]), settings=SETTINGS, hints=hints)
    s = _length_series(an)
    f = s.fits["powerlaw"]
    assert f.fitted_on == "1 - y" and not s.failed
    assert f.ci["E"][0] <= 0.22 <= f.ci["E"][1] and f.ci["alpha"][0] <= 0.5 <= f.ci["alpha"][1]
    means = {r["x"]: r["mean"] for r in f.residuals}
    assert means[2048] == pytest.approx(0.78 - 0.5 * 2048**-0.5, abs=2e-3)  # residuals back in AUC
    assert f.predict([2048])[0] == pytest.approx(0.78 - 0.5 * 2048**-0.5, abs=2e-3)
    assert f.band[0][-1] <= f.pred[-1] <= f.band[1][-1] and f.pred[-1] > f.pred[0]
    hold = [h for h in s.holdout if h["form"] == "powerlaw"][0]
    assert hold["lo"] <= hold["observed"] <= hold["hi"]
    for res in runs.rglob("result.json"):  # a Bayes AUC below the fitted ceiling
        rec = json.loads(res.read_text())
        if rec.get("oracle"):
            rec["oracle"]["test"]["ctr_auc"] = 0.76
            res.write_text(json.dumps(rec))
    bad = _length_series(analyze(collect([runs]), settings=SETTINGS, hints=hints))
    assert (
        "of 1 − ctr_auc" in bad.failed["powerlaw"]
        and "below the Bayes floor" in bad.failed["powerlaw"]
    )


def test_a_sweep_where_nothing_finished_still_gets_a_report(tmp_path, capsys):
    run = tmp_path / "runs" / "length" / "abc123"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": "CUDA out of memory"}))
    assert (
        main(
            [
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "out"),
                "--n-boot",
                "100",
                "--no-vector",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "No fits" in out and "CUDA out of memory" in (tmp_path / "out" / "report.html").read_text()
    )


def test_hints_of_a_preset_folder_reach_its_runs(tmp_path):
    """harness.sweep puts a preset's runs in <name>-<preset>/ and labels them with that folder name."""
    f = tmp_path / "length-ci" / ".sweep" / "sweep.yaml"
    f.parent.mkdir(parents=True)
    f.write_text("name: length\nanalysis: {x: data.seq_len, metrics: [val.ctr_auc], fit: none}\n")
    found, _ = find_hints([tmp_path / "length-ci" / "abc"])
    assert (
        found["length-ci"].fit == "none"
        and found["length-ci"].split == "val"
        and found["length"].x == "seq_len"
    )
