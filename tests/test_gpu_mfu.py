"""scripts/gpu_mfu.sh (issue #25 step 2) cannot rot: its CPU dry mode runs every step end to end and the
report holds every section with real numbers, and --bundle leaves exactly the three files the device
tool brings back. (No figure is asserted.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = (
    "pytest_gpu",
    "eager_matrix",
    "serving_before",
    "serving_after",
    "compile_after_l",
    "profile_after",
    "compile_before_l",
)


def test_dry_mode_end_to_end_bundled(tmp_path):
    out = tmp_path / "mfu"
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_mfu.sh"), str(out), "--dry", "--bundle"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_mfu.json",
        "gpu_mfu.md",
        "gpu_mfu_raw.tar.gz",
    ]
    rep = json.loads((out / "gpu_mfu.json").read_text())
    assert rep["mode"] == "dry" and rep["ok"] and tuple(rep["steps"]) == STEPS
    rows = rep["eager_matrix"]["rows"]
    assert {"l_before", "l_after", "s_before", "s_after"} <= set(rows)
    for name, r in rows.items():
        assert "error" not in r and r["step_ms"] > 0 and r["mfu"] > 0 and r["mfu_causal"] > 0, name
    assert rows["l_after"]["attention"] == "sdpa_causal" and rows["l_before"]["attention"] == "sdpa"
    assert rows["l_after"]["fused_ops"] is True and rows["l_before"]["fused_ops"] is False
    for tag in ("before", "after"):
        assert rep["compile_l"][tag]["step_ms"] > 0
        s = rep["serving"][tag]
        assert s["on"]["p99_ms"] > 0 and s["graph"]["p99_ms"] > 0 and s["graphed"] is False
        assert s["max_abs_dprob_graph_off"] < 5e-3  # bf16 on CPU at the tiny size
    assert rep["profile_after"]["top"]
    md = (out / "gpu_mfu.md").read_text()
    assert md.startswith("# GPU MFU check (dry mode)") and "l_after" in md
