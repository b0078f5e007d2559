"""Model comparison (Table 2 layout): each difference vs the reference model carries a 95% Welch CI
over seeds, checked against scipy's own Welch test, and the report's conclusion sentence says it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import tables


def _done(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (model, size), ys in values.items():
        for seed, y in enumerate(ys):
            rows.append(
                {
                    "sweep": "baselines",
                    "model": model,
                    "size": size,
                    "run_id": f"{model}{seed}",
                    "test.ctr_auc": y,
                    "test.ctr_uauc": y - 0.01,
                    "params.dense": 1e4,
                    "train_flops": 1e12,
                }
            )
    return pd.DataFrame(rows)


def test_table2_difference_ci_matches_scipy_welch():
    rng = np.random.default_rng(7)
    ref = list(0.70 + 0.004 * rng.standard_normal(3))
    ours = list(0.72 + 0.010 * rng.standard_normal(4))
    same = list(0.70 + 0.004 * rng.standard_normal(3))
    t2 = tables.table2(
        _done(
            {
                ("dcnv2_din", "tiny"): ref,
                ("onetrans", "onetrans-tiny"): ours,
                ("wukong_din", "tiny"): same,
            }
        ),
        "test",
    )
    row = t2.set_index("model").loc["onetrans"]
    want = stats.ttest_ind(ours, ref, equal_var=False).confidence_interval(0.95)
    assert row["ctr_auc pts lo"] == pytest.approx(want.low * 100, rel=1e-9)
    assert row["ctr_auc pts hi"] == pytest.approx(want.high * 100, rel=1e-9)
    assert row["ctr_auc pts"] == pytest.approx((np.mean(ours) - np.mean(ref)) * 100)
    base = t2.set_index("model").loc["dcnv2_din"]
    assert base["ctr_auc pts"] == pytest.approx(0.0)
    # no CI of the reference against itself
    assert np.isnan(base["ctr_auc pts lo"]) and np.isnan(base["ctr_auc pts hi"])

    line = tables.table2_sentence(t2, "ctr_auc")
    assert line.index("onetrans onetrans-tiny") < line.index(
        "dcnv2_din tiny"
    )  # ranked by the metric
    assert (
        f"onetrans onetrans-tiny {row['ctr_auc pts']:+.2f} pts [{row['ctr_auc pts lo']:+.2f}"
        in line
    )
    verdict = "resolved" if want.low > 0 or want.high < 0 else "not resolved"
    assert f"{row['ctr_auc pts hi']:+.2f}] {verdict}" in line


def test_table2_reference_is_configurable_and_one_seed_has_no_ci():
    t2 = tables.table2(
        _done({("dcnv2_din", "tiny"): [0.70], ("onetrans", "onetrans-tiny"): [0.75, 0.76]}),
        "test",
        reference="onetrans",
    )
    row = t2.set_index("model").loc["dcnv2_din"]
    assert row["ctr_auc pts"] == pytest.approx(-5.5)
    assert np.isnan(row["ctr_auc pts lo"]) and np.isnan(row["ctr_auc pts hi"])
    assert "CI needs >= 2 seeds" in tables.table2_sentence(t2, "ctr_auc", reference="onetrans")
    assert tables.table2(
        _done({("onetrans", "onetrans-tiny"): [0.75]}), "test"
    ).empty  # no reference runs
