"""benchmarks/serving.py --quick runs end to end, checks its own parity, and writes its JSON.
(No timing is asserted: speed is measured by the benchmark, not by tests.)"""

from __future__ import annotations

import json
import math

from benchmarks.serving import main


def test_serving_quick(tmp_path):
    out = tmp_path / "serving.json"
    res = main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["serving"] == res["serving"] and saved["quick"] is True
    assert {(c["seq_len"], c["candidates"]) for c in saved["serving"]} == {(32, 1), (32, 10)}
    for cell in saved["serving"]:
        assert cell["max_abs_dprob"] < 1e-5  # cache on and off score the same
        for tag in ("cache_on", "cache_off"):
            r = cell[tag]
            assert r["n_reps"] >= 1 and 0 < r["p50_ms"] <= r["p99_ms"]
            assert math.isclose(
                r["cands_per_s"], cell["candidates"] / (r["p50_ms"] / 1e3), rel_tol=1e-9
            )
    assert {(c["candidates_per_request"], c["requests"]) for c in saved["training"]} == {
        (1, 8),
        (4, 2),
    }
    assert all(c["speedup"] > 0 for c in saved["training"])
    assert saved["machine"]["cpu_count"] >= 1
