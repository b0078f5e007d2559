"""Evaluation at scale: progress lines with an ETA, a seeded subsample of users with a bootstrap CI
over users in result.json, and run ids that stay those of main while the new section is off."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import ConfigError, RunConfig, apply_overrides, load_config, run_id
from harness.eval_sample import _task_replicates, bootstrap_ci, n_sampled, sample_requests
from harness.metrics import auc, split_metrics, uauc
from harness.train import train_run
from tests import train_support as S
from tests.conftest import REPO

# run_id on main at ec12134, before the eval section existed: the default config and configs/tiny.yaml
MAIN_DEFAULT_ID, MAIN_TINY_ID = "f815d60447be", "ccaa645cf588"


def test_run_ids_of_main_are_unchanged_while_eval_sampling_is_off():
    assert run_id(RunConfig()) == MAIN_DEFAULT_ID
    assert run_id(load_config(REPO / "configs" / "tiny.yaml")) == MAIN_TINY_ID
    # knobs that change nothing while sampling is off, and the progress cadence, keep the id
    quiet = apply_overrides(
        RunConfig(), ["eval.progress_every_n_batches=7", "eval.bootstrap=50", "eval.sample_seed=3"]
    )
    assert run_id(quiet) == MAIN_DEFAULT_ID
    on = apply_overrides(RunConfig(), ["eval.sample_users=0.1"])
    assert run_id(on) != MAIN_DEFAULT_ID
    assert run_id(apply_overrides(on, ["eval.sample_seed=1"])) != run_id(on)
    assert run_id(apply_overrides(on, ["eval.progress_every_n_batches=7"])) == run_id(on)


@pytest.mark.parametrize("bad", ["eval.sample_users=-1", "eval.sample_users=2.5"])
def test_bad_sample_size_is_refused_with_the_choices(bad):
    with pytest.raises(ConfigError, match="fraction in \\(0, 1\\) or a whole number"):
        apply_overrides(RunConfig(), [bad])


def test_sample_is_seeded_sized_and_keeps_request_order():
    rng = np.random.default_rng(0)
    request_user = rng.integers(1, 201, 5000)
    requests = np.arange(0, 5000, 2)
    a, ca = sample_requests(requests, request_user, 0.25, seed=0, split="val")
    b, _ = sample_requests(requests, request_user, 0.25, seed=0, split="val")
    c, _ = sample_requests(requests, request_user, 0.25, seed=1, split="val")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert ca["of_users"] == len(np.unique(request_user[requests]))
    assert ca["users"] == n_sampled(0.25, ca["of_users"]) == len(np.unique(request_user[a]))
    assert np.all(np.diff(a) > 0) and np.isin(a, requests).all()  # chronological order kept
    # every request of a sampled user is kept, none of the others
    assert set(request_user[a]) == set(
        request_user[requests][np.isin(request_user[requests], request_user[a])]
    )
    assert sample_requests(requests, request_user, 30, seed=0, split="val")[1]["users"] == 30
    assert (
        sample_requests(requests, request_user, 10**6, seed=0, split="val")[1]["users"]
        == ca["of_users"]
    )


def _predictions(n_users: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, n_users + 1), rng.integers(2, 30, n_users))
    taste = rng.normal(size=n_users + 1)[user]
    z = rng.normal(size=user.size) + taste
    click = (rng.random(user.size) < 1 / (1 + np.exp(-z))).astype(np.float32)
    conv = click * (rng.random(user.size) < 0.3)
    return {
        "user_id": user,
        "click": click,
        "conversion": conv.astype(np.float32),
        # rounded scores: ties must count 1/2 as in the exact metrics
        "ctr_logit": np.round(z + rng.normal(size=user.size), 1),
        "cvr_logit": np.round(rng.normal(size=user.size), 1),
    }


def test_replicate_with_every_user_once_is_the_exact_metric():
    p = _predictions(300)
    ones = np.ones((1, 300), np.int64)
    a, u = _task_replicates(p["click"], p["ctr_logit"], p["user_id"], ones)
    assert a[0] == pytest.approx(auc(p["click"], p["ctr_logit"]), abs=1e-12)
    assert u[0] == pytest.approx(uauc(p["click"], p["ctr_logit"], p["user_id"]), abs=1e-12)
    twice = np.full((1, 300), 2)  # every user drawn twice: the same population, the same figures
    assert _task_replicates(p["click"], p["ctr_logit"], p["user_id"], twice)[0][0] == pytest.approx(
        a[0]
    )


def test_bootstrap_ci_is_seeded_covers_the_estimate_and_shrinks_with_users():
    small, big = _predictions(100, seed=1), _predictions(2000, seed=1)
    kw = dict(n_boot=200, seed=0, level=0.95, split="test")
    ci = bootstrap_ci(small, "clicked", **kw)
    assert ci == bootstrap_ci(small, "clicked", **kw)
    assert set(ci) == {"ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc"}
    point = split_metrics(small, "clicked")
    for k, (lo, hi) in ci.items():
        assert lo <= point[k] <= hi, k
    wide = ci["ctr_auc"][1] - ci["ctr_auc"][0]
    lo, hi = bootstrap_ci(big, "clicked", **kw)["ctr_auc"]
    assert 0 < hi - lo < wide / 2  # 20x the users: about 1/sqrt(20) of the width
    assert bootstrap_ci(small, "ctcvr", **kw)["cvr_auc"] != ci["cvr_auc"]
    with pytest.raises(ValueError, match="cvr_metric_mode"):
        bootstrap_ci(small, "clicked_per_impression", **kw)


@pytest.mark.usefixtures("stand_in")
def test_sampled_evaluation_reports_counts_and_ci_and_prints_progress(world, tmp_path, capsys):
    full = train_run(S.make_cfg(world, steps=4, ckpt_every=4, log_every=2), tmp_path / "full")
    assert "eval_sample" not in full
    assert "eval val:" not in capsys.readouterr().err  # default cadence: a tiny run stays quiet
    cfg = S.make_cfg(
        world,
        steps=4,
        ckpt_every=4,
        log_every=2,
        **{
            "eval.sample_users": 0.5,
            "eval.progress_every_n_batches": 1,
            "eval.bootstrap": 50,
            "data.eval_batch_size": 64,
        },
    )
    res = train_run(cfg, tmp_path / "sampled")
    err = capsys.readouterr().err
    assert "eval test: 1/" in err and "ETA" in err and "eval test: done in" in err
    es = res["eval_sample"]
    assert es["method"] == "percentile bootstrap over users" and es["bootstrap"] == 50
    for split in ("val", "test"):
        s = es["splits"][split]
        assert s["users"] == n_sampled(0.5, s["of_users"]) < s["of_users"]
        assert s["requests"] < s["of_requests"]
        assert res["eval_impressions"][split] < full["eval_impressions"][split]
        for k in ("ctr_auc", "ctr_uauc"):
            lo, hi = s["ci"][k]
            assert lo <= res["metrics"][split][k] <= hi


def test_sampling_is_refused_with_the_next_batch_protocol(world, tmp_path, stand_in):
    cfg = S.make_cfg(
        world,
        steps=4,
        ckpt_every=4,
        log_every=2,
        **{"train.protocol": "next_batch", "eval.sample_users": 0.5},
    )
    with pytest.raises(ConfigError, match="next_batch"):
        train_run(cfg, tmp_path / "run")
