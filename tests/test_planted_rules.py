"""The planted-rule family on any dataset folder (harness/data/rules.py): every rule's labels against
a plain per-impression reference on two different source worlds, the control's histories, the
candidate swap, and clear errors for bad rules. Fast (no training); the learning checks live in
tests/test_planted_history.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.data.contract import Manifest
from harness.data.planted import PlantedConfig, generate_planted
from harness.data.rules import KINDS, Rule, relabel
from harness.data.synth import generate_preset
from harness.data.validate import validate

RULES = [
    Rule(kind="item", window=16),
    Rule(kind="side", field="brand", window=16),
    Rule(kind="count", field="category", window=16, k=3),
    Rule(kind="behavior", field="brand", window=16, behavior=1),
    Rule(kind="side", field="brand", window=4),  # recency: a window shorter than seq_len
    Rule(kind="context", field="brand", window=16, context="hour"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    return {
        "ci": generate_preset("ci", 0, base / "ci", progress=False),
        "planted": generate_planted(base / "planted", PlantedConfig(n_users=300), seed=1),
    }


def _reference(src: Path, im: pd.DataFrame, rule: Rule) -> np.ndarray:
    """The labels of impressions IM recomputed one at a time, straight from the rule's wording."""
    ev = pq.read_table(src / "events.parquet").to_pandas()  # the source's (unpermuted) histories
    items = pq.read_table(src / "items.parquet").to_pandas().set_index("item_id")
    by_user = {u: g for u, g in ev.groupby("user_id")}
    labels = np.zeros(len(im), np.int64)
    for i, row in enumerate(im.itertuples(index=False)):
        g = by_user.get(row.user_id)
        if g is None:
            continue
        hist = g[g.ts < row.ts].tail(rule.window).iloc[::-1]  # most recent first
        if rule.kind == "behavior":
            hist = hist[hist.behavior == rule.behavior]
        if rule.kind == "context" and getattr(row, rule.context) % 2 == 1:
            hist = hist.iloc[: rule.window // 4]
        if rule.kind == "item":
            matches = int((hist.item_id == row.item_id).sum())
        else:
            matches = int((hist[rule.field] == items.loc[row.item_id, rule.field]).sum())
        labels[i] = matches >= (rule.k if rule.kind == "count" else 1)
    return labels


@pytest.mark.parametrize("source", ["ci", "planted"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_labels_match_a_per_row_reference(sources, tmp_path, source, rule):
    src = sources[source]
    out = relabel(src, tmp_path / "out", rule, seed=3)
    im = pq.read_table(out / "impressions.parquet").to_pandas()
    # the reference is slow: check a seeded sample of 600 impressions (all of them where fewer)
    rows = np.random.default_rng(0).permutation(len(im))[:600]
    assert (im["click"].to_numpy()[rows] == _reference(src, im.iloc[rows], rule)).all()
    assert (im["p_click"].to_numpy() == im["click"].to_numpy()).all()
    rate = im["click"].mean()
    assert 0.05 < rate < 0.95, f"{rule.name} on {source}: click rate {rate:.3f} is degenerate"
    assert not [p for p in validate(out) if p.severity == "error"]
    assert Manifest.load(out).has_oracle


def test_control_hands_histories_to_other_users(sources, tmp_path):
    src = sources["ci"]
    rule = Rule(kind="side", field="brand", window=16)
    real = relabel(src, tmp_path / "real", rule, seed=5)
    ctl = relabel(src, tmp_path / "ctl", Rule(**{**rule.__dict__, "control": True}), seed=5)
    a = pq.read_table(real / "impressions.parquet").to_pandas()
    b = pq.read_table(ctl / "impressions.parquet").to_pandas()
    assert (a["click"] == b["click"]).all() and (a["item_id"] == b["item_id"]).all()
    ev_a = pq.read_table(real / "events.parquet").to_pandas()
    ev_b = pq.read_table(ctl / "events.parquet").to_pandas()
    assert len(ev_a) == len(ev_b) and (ev_a.user_id.to_numpy() != ev_b.user_id.to_numpy()).any()
    assert not [p for p in validate(ctl) if p.severity == "error"]  # still sorted by (user, ts)


def test_swap_share_zero_keeps_every_candidate(sources, tmp_path):
    src = sources["planted"]
    out = relabel(src, tmp_path / "o", Rule(kind="item", window=8, positive_share=0.0))
    before = pq.read_table(src / "impressions.parquet").column("item_id").to_numpy()
    after = pq.read_table(out / "impressions.parquet").column("item_id").to_numpy()
    assert (before == after).all()


@pytest.mark.parametrize(
    "text,kw,message",
    [
        ("colour", {}, "unknown"),
        ("side", {}, "needs a side field"),
        ("side:brand", {"window": 0}, "must be >= 1"),
        ("context:brand", {"window": 2}, "window >= 4"),
    ],
)
def test_bad_rules_are_refused_clearly(text, kw, message):
    with pytest.raises(ValueError, match=message):
        Rule.parse(text, **kw)


def test_rule_naming_a_missing_field_names_the_fields(sources, tmp_path):
    with pytest.raises(ValueError, match="side fields are"):
        relabel(sources["planted"], tmp_path / "o", Rule.parse("side:colour"))


def test_every_kind_is_covered():
    assert {r.kind for r in RULES} == set(KINDS)


def test_cli_relabels_a_folder_and_names_bad_input(sources, tmp_path, capsys):
    from harness.data.__main__ import main

    out = tmp_path / "cli"
    rc = main(["planted", "--from", str(sources["planted"]), "--rule", "count:brand", "--k", "2",
               "--window", "8", "--out", str(out)])  # fmt: skip
    assert rc == 0 and "count-brand-k2-w8" in capsys.readouterr().out
    assert Manifest.load(out).has_oracle
    rc = main(["planted", "--from", str(sources["planted"]), "--rule", "side:colour", "--out",
               str(tmp_path / "bad")])  # fmt: skip
    assert rc == 2 and "side fields are" in capsys.readouterr().err
