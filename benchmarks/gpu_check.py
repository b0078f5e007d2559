"""Helpers of scripts/gpu_check.sh (issue #16): the environment step and the final report.

    python benchmarks/gpu_check.py env --out OUT/raw/env.json [--dry]
    python benchmarks/gpu_check.py report --out-dir OUT [--dry]

`env` records the GPU, torch/CUDA/cuDNN versions, the driver, whether flash-attn imports (on a GPU,
when it does not, it tries `pip install --only-binary=:all: flash-attn`: a wheel only, never a
source build, within --install-timeout seconds; a wheel that installs but does not import with this
torch is uninstalled again so that attention="auto" cannot pick a broken flash-attn), the attention
backend attention="auto" picks for bf16, and the dense bf16 peak used for MFU (with its source).

`report` reads OUT/raw/ (the steps' own JSON outputs and steps.jsonl, one status line per step
written by the shell script) and writes OUT/gpu_check.json (every figure, every step's status,
errors included) and OUT/gpu_check.md (a short summary). A step that failed leaves its section
with "error" set and its figures absent; the report itself never stops at a missing file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MFU_GOAL = 0.40  # issue #16: OneTrans-L training step on one H100-class GPU
SERVE_P99_GOAL_MS = 5.0  # issue #16: one request of 100 candidates, OneTrans-L, bf16, model time
DRY_PEAK_TFLOPS = 1.0  # dry mode only: a nominal peak so the MFU path runs; not a device figure
PAPER_MFU = {"OneTrans paper (OneTrans-L)": 0.308, "Primus-DLRM on B200": 0.145}


# ------------------------------------------------------------------------------------------
# env
# ------------------------------------------------------------------------------------------


def _flash_import() -> tuple[bool, str]:
    """Does flash-attn import with this torch, down to the kernel the model calls?"""
    if importlib.util.find_spec("flash_attn") is None:
        return False, "not installed"
    code = "import flash_attn; from flash_attn import flash_attn_varlen_func; print(flash_attn.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return True, proc.stdout.strip().splitlines()[-1]
    return False, "installed but does not import: " + (proc.stderr.strip().splitlines() or ["?"])[
        -1
    ]


def _try_install_flash(timeout_s: float) -> dict:
    """pip install a flash-attn WHEEL (no source build); undo it when it does not import."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--only-binary=:all:",
        "--no-deps",
        "--retries",
        "0",
        "--timeout",
        "10",
        "--disable-pip-version-check",
    ]
    wheel = os.environ.get("FLASH_ATTN_WHEEL", "").strip()
    cmd += [wheel, "einops"] if wheel else ["flash-attn", "einops"]
    rec: dict = {"attempted": True, "command": " ".join(cmd[2:]), "timeout_s": timeout_s}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rec.update(
            ok=False, reason=f"pip did not finish in {timeout_s:g} s (registry unreachable or slow)"
        )
        return rec
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    rec["pip_tail"] = tail
    if proc.returncode != 0:
        rec.update(
            ok=False,
            reason="no installable flash-attn wheel for this torch/python/platform "
            "(flash-attn on PyPI is a source distribution) or registry unreachable",
        )
        return rec
    ok, why = _flash_import()
    if not ok:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", "flash-attn"],
            capture_output=True,
            timeout=120,
        )
        rec.update(
            ok=False,
            reason=f"a wheel installed but {why}; uninstalled it again (ABI mismatch with this torch)",
        )
        return rec
    rec.update(ok=True, reason=f"installed flash-attn {why}")
    return rec


def _nvidia_smi() -> dict | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except Exception as err:  # noqa: BLE001 - informational only
        return {"error": repr(err)}
    return {
        "query": "name,driver_version,memory.total,clocks.max.sm,power.limit",
        "rows": proc.stdout.strip().splitlines(),
        "rc": proc.returncode,
    }


def cmd_env(args) -> int:
    import torch

    from benchmarks.model_step import dense_bf16_peak
    from model.attention import choose_backend
    from model.onetrans import SIZES

    cuda = torch.cuda.is_available()
    rec: dict = {
        "dry": args.dry,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "device_count": torch.cuda.device_count() if cuda else 0,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        rec.update(
            gpu_name=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=props.total_memory / 2**30,
            sm_count=props.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        rec["gpu_name"] = None
    rec["nvidia_smi"] = _nvidia_smi()

    ok, why = _flash_import()
    flash: dict = {"importable_before": ok, "status_before": why}
    if ok:
        flash["install"] = {"attempted": False, "reason": "already importable"}
    elif args.dry or not cuda:
        flash["install"] = {
            "attempted": False,
            "reason": "dry mode / no CUDA device: no install attempted",
        }
    elif os.environ.get("GPU_CHECK_NO_INSTALL") == "1":
        flash["install"] = {"attempted": False, "reason": "GPU_CHECK_NO_INSTALL=1"}
    else:
        flash["install"] = _try_install_flash(args.install_timeout)
    flash["importable"], flash["status"] = _flash_import()
    rec["flash_attn"] = flash

    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    rec["attention_auto"] = {
        size: dict(
            zip(("backend", "reason"), choose_backend("auto", dev, dtype, SIZES[size].head_dim))
        )
        for size in ("onetrans-s", "onetrans-l")
    }
    if not flash["importable"] and cuda:
        rec["attention_note"] = (
            "flash-attn unavailable: attention='auto' uses PyTorch SDPA (" + flash["status"] + ")"
        )

    if args.dry and not os.environ.get("GPU_PEAK_TFLOPS"):
        peak, source = (
            DRY_PEAK_TFLOPS,
            f"dry mode: nominal {DRY_PEAK_TFLOPS:g} TFLOP/s (not a device figure)",
        )
    else:
        peak, source = dense_bf16_peak(rec["gpu_name"])
    rec["peak_tflops"], rec["peak_source"] = peak, source

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    (out.parent / "peak_tflops.txt").write_text(f"{peak}\n" if peak else "")
    print(
        f"torch {rec['torch']} (CUDA {rec['torch_cuda']}, cuDNN {rec['cudnn']}), GPU: {rec['gpu_name']}, "
        f"flash-attn: {flash['status']} (install: {flash['install'].get('reason')}), "
        f"auto attention: {rec['attention_auto']['onetrans-l']['backend']}, peak {peak} TFLOP/s ({source})"
    )
    if not cuda and not args.dry:
        print(
            "ERROR: no CUDA device; the GPU steps cannot run (use --dry for the CPU dry mode)",
            file=sys.stderr,
        )
        return 3
    return 0


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} was not written (see the step's log)")
    return json.loads(path.read_text())


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _section(fn, *a) -> dict:
    try:
        return fn(*a)
    except Exception as err:  # noqa: BLE001 - recorded, never raised: the other sections still count
        return {"error": f"{type(err).__name__}: {err}"}


def sec_environment(raw: Path) -> dict:
    e = _load(raw / "env.json")
    keys = (
        "gpu_name",
        "capability",
        "gpu_memory_gib",
        "torch",
        "torch_cuda",
        "cudnn",
        "python",
        "cuda_available",
        "device_count",
        "nvidia_smi",
        "flash_attn",
        "attention_auto",
        "attention_note",
        "peak_tflops",
        "peak_source",
        "cpu_count",
        "platform",
    )
    return {k: e.get(k) for k in keys}


def sec_pytest(raw: Path) -> dict:
    path = raw / "pytest_gpu.xml"
    if not path.is_file():
        raise FileNotFoundError("pytest_gpu.xml was not written (see logs/pytest_gpu.log)")
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    cases = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                cases[name] = {"outcome": outcome, "message": (el.get("message") or "")[:300]}
                break
        else:
            cases[name] = {"outcome": outcome}
    return {
        "collected": tot["tests"],
        "passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
        "failed": tot["failures"],
        "errors": tot["errors"],
        "skipped": tot["skipped"],
        "cases": cases,
    }


STEP_KEYS = (
    "size",
    "batch",
    "seq_len",
    "input_tokens",
    "attention",
    "precision",
    "compile",
    "compile_backend",
    "step_s_median",
    "tokens_per_s",
    "samples_per_s",
    "achieved_tflops",
    "peak_tflops",
    "peak_source",
    "mfu",
    "peak_memory_gb",
    "warmup_s_all",
    "dynamo_counters",
)


def sec_model_step(raw: Path, files: dict[str, str]) -> dict:
    out: dict = {"rows": {}, "errors": {}}
    for mode, name in files.items():
        try:
            rec = _load(raw / name)
        except Exception as err:  # noqa: BLE001
            out["errors"][mode] = str(err)
            continue
        for r in rec["steps"]:
            row = {k: r.get(k) for k in STEP_KEYS}
            row["step_ms"] = 1e3 * r["step_s_median"]
            row["train_gflops_per_example"] = r["flops_per_example"]["train"] / 1e9
            out["rows"][f"{r['size']}/{'compile' if r.get('compile') else 'eager'}"] = row
        out.setdefault("device_name", rec.get("device_name"))
    large = [
        r for k, r in out["rows"].items() if k.startswith("onetrans-l/") and _num(r.get("mfu"))
    ]
    if large:
        best = max(large, key=lambda r: r["mfu"])
        out["onetrans_l_best"] = {
            "mode": "compile" if best["compile"] else "eager",
            "mfu": best["mfu"],
            "goal": MFU_GOAL,
            "goal_met": best["mfu"] >= MFU_GOAL,
            "references": PAPER_MFU,
        }
    if not out["rows"]:
        out["error"] = "; ".join(f"{m}: {e}" for m, e in out["errors"].items()) or "no rows"
    if not out["errors"]:
        del out["errors"]
    return out


def sec_efficiency(raw: Path) -> dict:
    e = _load(raw / "efficiency.json")
    rows = {}
    for name, r in e["rows"].items():
        if "error" in r or "skipped" in r:
            rows[name] = {
                "error": (r.get("error") or "").strip().splitlines()[-1:] or None,
                "skipped": r.get("skipped"),
            }
            continue
        rows[name] = {
            "ratio": e["ratios"].get(name, {}),
            "pct_change": {m: 100.0 * (v - 1.0) for m, v in e["ratios"].get(name, {}).items()},
            "paper_pct": e["paper_pct"].get(name),
        }
    base = e["rows"].get("baseline", {})
    out = {
        "size": e["size"],
        "seq_len": e["seq_len"],
        "train_batch": e["train_batch"],
        "serve_cands": e["serve_cands"],
        "device": e["machine"].get("device"),
        "gpu": e["machine"].get("gpu"),
        "memory_method": e["memory_method"],
        "baseline_absolute": {
            k: base.get(k) for k in ("train_ms", "train_mem", "serve_p99_ms", "serve_mem")
        },
        "rows": rows,
        "table": e["table"],
    }
    bad = [n for n, r in e["rows"].items() if "error" in r]
    if bad:
        out["error"] = f"variants failed: {bad}"
    return out


def sec_serving(raw: Path) -> dict:
    s = _load(raw / "serving.json")
    (cell,) = s["serving"]
    on = cell["cache_on"]
    return {
        "size": s["size"],
        "spec": s.get("spec"),
        "device": s.get("device"),
        "precision": s.get("precision"),
        "overrides": s["overrides"],
        "attention": s.get("attention"),
        "seq_len": cell["seq_len"],
        "candidates": cell["candidates"],
        "cache_on": on,
        "cache_off": cell["cache_off"],
        "speedup_cands_per_s": cell["speedup_cands_per_s"],
        "max_abs_dprob": cell["max_abs_dprob"],
        "p99_ms": on["p99_ms"],
        "p99_goal_ms": SERVE_P99_GOAL_MS,
        "goal_met": on["p99_ms"] <= SERVE_P99_GOAL_MS,
    }


def sec_profile(raw: Path) -> dict:
    p = _load(raw / "profile.json")
    keys = (
        "device_name",
        "size",
        "seq_len",
        "batch",
        "precision",
        "attention",
        "measure",
        "wall_ms_per_step",
        "profiled_total_ms_per_step",
        "device_busy_fraction",
        "class_share",
        "train_flops_per_step",
        "top",
    )
    return {k: p.get(k) for k in keys}


def _steps(raw: Path, log_dir: Path) -> dict:
    steps: dict = {}
    path = raw / "steps.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        if rec["status"] != "ok":
            log = log_dir / f"{rec['name']}.log"
            tail = (
                log.read_text(errors="replace").strip().splitlines()[-15:] if log.is_file() else []
            )
            rec["error"] = rec.get("error") or "\n".join(tail) or f"exit status {rec.get('rc')}"
        steps[rec["name"]] = rec
    return steps


def build_report(out_dir: Path, dry: bool, expected: list[str]) -> dict:
    raw, logs = out_dir / "raw", out_dir / "logs"
    steps = _steps(raw, logs)
    for name in expected:
        steps.setdefault(
            name,
            {"name": name, "status": "missing", "error": "the script recorded no status for it"},
        )
    rep = {
        "schema": 1,
        "issue": 16,
        "mode": "dry" if dry else "gpu",
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "goals": {"mfu_onetrans_l": MFU_GOAL, "serve_p99_ms": SERVE_P99_GOAL_MS},
        "steps": steps,
        "environment": _section(sec_environment, raw),
        "pytest_gpu": _section(sec_pytest, raw),
        "model_step": _section(
            sec_model_step,
            raw,
            {
                "model_step_eager": "model_step_eager.json",
                "model_step_compile_s": "model_step_compile_s.json",
                "model_step_compile_l": "model_step_compile_l.json",
            },
        ),
        "efficiency": _section(sec_efficiency, raw),
        "serving": _section(sec_serving, raw),
        "profile": _section(sec_profile, raw),
    }
    rep["failed_steps"] = [n for n, s in steps.items() if s.get("status") != "ok"]
    rep["ok"] = not rep["failed_steps"]
    wall = [s.get("seconds") for s in steps.values() if _num(s.get("seconds"))]
    rep["steps_total_s"] = sum(wall)
    return rep


def _f(x, fmt: str = ".1f", scale: float = 1.0) -> str:
    return format(x * scale, fmt) if _num(x) else "-"


def markdown(rep: dict) -> str:
    env = rep["environment"]
    lines = [f"# GPU check ({rep['mode']} mode), {rep['written']}", ""]
    lines.append(
        f"Result: **{'all steps ok' if rep['ok'] else 'FAILED steps: ' + ', '.join(rep['failed_steps'])}**; "
        f"steps took {rep['steps_total_s']:.0f} s in all."
    )
    lines.append("")
    if "error" in env:
        lines.append(f"Environment: error: {env['error']}")
    else:
        fl = env.get("flash_attn") or {}
        lines.append(
            f"Environment: {env.get('gpu_name') or 'no GPU'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, "
            f"cuDNN {env.get('cudnn')}); flash-attn: {fl.get('status')} (install: "
            f"{(fl.get('install') or {}).get('reason')}); attention='auto' -> "
            f"{((env.get('attention_auto') or {}).get('onetrans-l') or {}).get('backend')}; "
            f"MFU peak {env.get('peak_tflops')} TFLOP/s ({env.get('peak_source')})."
        )
    lines += ["", "| step | status | seconds | timeout |", "|---|---|---|---|"]
    for n, s in rep["steps"].items():
        lines.append(
            f"| {n} | {s.get('status')} | {_f(s.get('seconds'))} | {s.get('timeout_s', '-')} |"
        )
    pt = rep["pytest_gpu"]
    lines += [
        "",
        "`pytest -m gpu`: "
        + (
            f"error: {pt['error']}"
            if "error" in pt
            else f"{pt['passed']} passed, {pt['failed']} failed, {pt['errors']} errors, {pt['skipped']} skipped"
        ),
    ]
    ms = rep["model_step"]
    lines += ["", "Training step (benchmarks/model_step.py):"]
    if ms.get("rows"):
        lines += [
            "",
            "| size / mode | batch | tokens | attention | step ms | tokens/s | TFLOP/s | MFU | peak mem GB | first step s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, r in ms["rows"].items():
            lines.append(
                f"| {k} | {r['batch']} | {r['input_tokens']} | {(r.get('attention') or ['-'])[0]} | {_f(r['step_ms'])} | "
                f"{_f(r['tokens_per_s'], '.3g')} | {_f(r['achieved_tflops'], '.3g')} | {_f(r['mfu'], '.1f', 100)}% | "
                f"{_f(r.get('peak_memory_gb'), '.2f')} | {_f((r.get('warmup_s_all') or [None])[0], '.1f')} |"
            )
        if "onetrans_l_best" in ms:
            b = ms["onetrans_l_best"]
            lines.append(
                f"\nOneTrans-L best MFU {100 * b['mfu']:.1f}% ({b['mode']}); goal {100 * b['goal']:.0f}%: "
                f"{'met' if b['goal_met'] else 'NOT met'} (paper 30.8%, Primus-DLRM on B200 14.5%)."
            )
    for mode, err in (ms.get("errors") or {}).items():
        lines.append(f"\n{mode}: error: {err}")
    if "error" in ms and not ms.get("rows"):
        lines.append(f"\nerror: {ms['error']}")
    ef = rep["efficiency"]
    lines += [
        "",
        "Table 5 (benchmarks/efficiency.py): "
        + (
            f"error: {ef['error']}"
            if "error" in ef and "table" not in ef
            else f"{ef['size']} seq_len {ef['seq_len']}, train {ef['train_batch']}, serve 1x{ef['serve_cands']} on {ef.get('gpu') or ef['device']}"
        ),
    ]
    if "table" in ef:
        lines += [""] + ef["table"]
        if "error" in ef:
            lines.append(f"\nerror: {ef['error']}")
    sv = rep["serving"]
    lines += [
        "",
        "Serving (benchmarks/serving.py): "
        + (
            f"error: {sv['error']}"
            if "error" in sv
            else f"{sv['size']} L={sv['seq_len']} C={sv['candidates']} {sv['precision']}: cache on p50 {_f(sv['cache_on']['p50_ms'], '.2f')} / "
            f"p99 {_f(sv['cache_on']['p99_ms'], '.2f')} ms (n={sv['cache_on']['n_reps']}), cache off p99 "
            f"{_f(sv['cache_off']['p99_ms'], '.2f')} ms; goal p99 <= {sv['p99_goal_ms']:g} ms: {'met' if sv['goal_met'] else 'NOT met'}; "
            f"max |dp| on/off {sv['max_abs_dprob']:.1e}"
        ),
    ]
    pr = rep["profile"]
    lines += [
        "",
        "Profile (benchmarks/profile_step.py): "
        + (
            f"error: {pr['error']}"
            if "error" in pr
            else f"{pr['size']} batch {pr['batch']} {pr['precision']} on {pr['device_name']}, {_f(pr['wall_ms_per_step'])} ms/step wall, "
            f"device busy {_f(pr.get('device_busy_fraction'), '.0f', 100)}%; by class: "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in (pr.get("class_share") or {}).items())
        ),
    ]
    if "top" in pr:
        lines += ["", "| share | ms | calls | kernel / op |", "|---|---|---|---|"]
        for r in pr["top"][:10]:
            lines.append(
                f"| {_f(r['share'], '.1f', 100)}% | {_f(r['self_us'], '.2f', 1e-3)} | {r['calls']} | "
                f"`{r['name'][:90].replace('|', '/')}` |"
            )
    failed = {n: s for n, s in rep["steps"].items() if s.get("status") != "ok"}
    if failed:
        lines += ["", "## Errors"]
        for n, s in failed.items():
            lines += [
                "",
                f"{n} ({s.get('status')}):",
                "",
                "```",
                str(s.get("error", ""))[-2000:],
                "```",
            ]
    return "\n".join(lines) + "\n"


def cmd_report(args) -> int:
    out_dir = Path(args.out_dir)
    rep = build_report(out_dir, args.dry, args.expect.split(",") if args.expect else [])
    (out_dir / "gpu_check.json").write_text(json.dumps(rep, indent=2))
    (out_dir / "gpu_check.md").write_text(markdown(rep))
    print(markdown(rep))
    print(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    return 0 if rep["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--out", required=True)
    e.add_argument("--dry", action="store_true")
    e.add_argument("--install-timeout", type=float, default=40.0)
    r = sub.add_parser("report")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--dry", action="store_true")
    r.add_argument(
        "--expect", default="", help="comma-separated step names that must have a status"
    )
    args = p.parse_args(argv)
    return cmd_env(args) if args.cmd == "env" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
