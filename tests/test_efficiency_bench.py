"""benchmarks/efficiency.py --quick: every Table 5 row is measured in its own process (or skipped
with a stated reason) and the JSON holds the table and the ratios."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.efficiency import METRICS, VARIANTS, main


@pytest.mark.slow
def test_efficiency_quick(tmp_path):
    out = tmp_path / "eff.json"
    main(["--quick", "--device", "cpu", "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res["rows"]) == set(VARIANTS)
    assert "CPU bf16" in res["rows"]["bf16_recompute"]["skipped"]  # CPU: skipped, and says why
    assert "bf16 left out" in res["rows"]["all"]["note"]
    for name, r in res["rows"].items():
        if "skipped" in r:
            continue
        assert r["train_reps"] >= 1 and r["serve_reps"] >= 1
        assert all(r[m] >= 0 for m in METRICS) and r["train_ms"] > 0 and r["serve_p99_ms"] > 0
        assert all(math.isfinite(x) for x in res["ratios"][name].values())
    assert res["rows"]["kv_cache"]["kv"] and res["rows"]["pyramid"]["config"]["pyramid"]
    assert res["rows"]["baseline"]["config"]["attention"] == "reference"
    assert len(res["table"]) == 3 + len(VARIANTS) - 1 + 1
