"""benchmarks/model_step.py --quick runs and writes a complete JSON record (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_model_step_quick(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "model_step", REPO / "benchmarks" / "model_step.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "model_step.json"
    threads = torch.get_num_threads()
    try:
        mod.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # --threads is global
    rec = json.loads(out.read_text())
    (row,) = rec["steps"]
    assert row["size"] == "onetrans-tiny" and row["batch"] == 8 and row["input_tokens"] == 20
    assert row["step_s_median"] > 0 and row["samples_per_s"] > 0 and row["achieved_tflops"] > 0
    assert row["mfu"] is None and row["peak_tflops"] is None  # CPU: no stated peak
    assert row["flops_per_example"]["train"] == 3 * row["flops_per_example"]["forward"]
    (mixed,) = rec["mixed_projection"]
    assert mixed["einsum_s"] > 0 and mixed["loop_s"] > 0 and mixed["loop_over_einsum"] > 0
