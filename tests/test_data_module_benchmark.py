"""The throughput benchmark script runs end to end (tiny size) and writes a sane JSON report.
It measures; it does not assert a speed (speed goals live in the benchmark output, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "data_throughput.py"),
            "--quick",
            "--workers",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["seq_len"] for r in rows] == [16, 64] and report["quick"] is True
    for r in rows:
        assert r["samples"] > 0 and r["samples_per_s"] > 0 and r["mean_impressions_per_batch"] <= 64
        assert r["peak_rss_mb_main"] >= r["rss_mb_before_data"] > 0
    assert "samples/s" in res.stdout
