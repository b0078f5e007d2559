"""scripts/planted_sizes.py: the planted-rule family per model variant (issue #20 item 4) writes one
row per (rule, variant) with the settings it trained with, and refuses an unknown rule or variant
naming the choices. A few steps only: the figures are experiment rows, not test assertions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "planted_sizes.py"


def _script():
    spec = importlib.util.spec_from_file_location("planted_sizes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_per_rule_and_variant(tmp_path, capsys):
    out = tmp_path / "rows.json"
    argv = ["--variants", "din-tiny,tiny-recipe", "--rules", "item,recency", "--steps", "3"]
    assert _script().main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["rule"], r["variant"]) for r in rows] == [
        ("item", "din-tiny"),
        ("item", "tiny-recipe"),
        ("recency", "din-tiny"),
        ("recency", "tiny-recipe"),
    ]
    for r in rows:
        assert 0.0 <= r["val_ctr_auc"] <= 1.0
        assert (r["steps"], r["seq_len"], r["batch"], r["lr"]) == (3, 16, 64, 1e-3)
    assert capsys.readouterr().out.count("val CTR AUC") == 4


@pytest.mark.parametrize("flag,bad", [("--variants", "s-huge"), ("--rules", "colour")])
def test_unknown_choice_is_named(flag, bad, capsys):
    with pytest.raises(SystemExit):
        _script().main([flag, bad])
    err = capsys.readouterr().err
    assert bad in err and "choose from" in err
