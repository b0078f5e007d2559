"""`python -m harness.sweep`: plan, run, follow and cancel a sweep.

    python -m harness.sweep sweeps/length.yaml --preset laptop             # plan, then run what is not done
    python -m harness.sweep sweeps/length.yaml --dry-run                   # plan only
    python -m harness.sweep status sweeps/length.yaml --preset ci          # table of run states
    python -m harness.sweep sweeps/length.yaml --only data.seq_len=1024 --retry-failed
    python -m harness.sweep sweeps/length.yaml --cancel                    # cancel its queued/running jobs

Runs land in <runs-dir>/<sweep>[-<preset>]/<run_id>/ (docs/contracts.md §4). Re-running the command
skips DONE runs and runs whose job is still queued or running (asked of the scheduler through the
sweep's ledger), resumes interrupted runs from their last checkpoint, and leaves failed ones alone
unless --retry-failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import executors as X
from harness.cluster import choose_executor
from harness.runstore import RunStore
from harness.sweepfile import ResolvedRun, SweepFileError, load_sweep, resolve, sweep_dir_name

COMMANDS = ("run", "status", "plan", "cancel")
# states a rerun submits by default; failed/cancelled need --retry-failed, done needs --rerun-done
RUNNABLE = ("new", "interrupted")


@dataclass
class Row:
    run: ResolvedRun
    run_dir: Path
    status: str
    job: str
    params: int | None = None
    flops_example: float | None = None
    flops_total: float | None = None
    cost_h: float | None = None


# ------------------------------------------------------------------------------------ run state

def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def classify(run_dir: Path, entry: dict[str, Any] | None, slurm: dict[str, str]) -> tuple[str, str]:
    """(status, job description) of one run from its folder and the scheduler."""
    job = ""
    if entry is not None:
        job = entry.get("job_id") or (f"pid {entry['pid']}" if entry.get("pid") else "")
    if RunStore(run_dir).is_done():            # DONE and result.json (DONE is written last)
        return "done", job
    state = X.job_state(entry, run_dir, slurm)
    if state in X.LIVE_STATES:
        return ("queued" if state == "PENDING" else "running"), job
    if state == "CANCELLED":
        return "cancelled", job
    st = _read_json(run_dir / "status.json").get("state")
    if st == "failed" or state in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"):
        return "failed", job
    if st == "running" or (run_dir / "checkpoints" / "last.ckpt").exists():
        return "interrupted", job      # resumes from its checkpoint
    return "new", job


def build_rows(runs: list[ResolvedRun], sweep_dir: Path, with_describe: bool = True) -> tuple[list[Row], str]:
    latest = X.Ledger(sweep_dir).latest()
    slurm_ids = [e["job_id"] for e in latest.values() if e["executor"] == "slurm" and e.get("job_id")]
    slurm = X.slurm_states(slurm_ids) if slurm_ids else {}
    rows = []
    for r in runs:
        run_dir = sweep_dir / r.run_id
        status, job = classify(run_dir, latest.get(r.run_id), slurm)
        rows.append(Row(run=r, run_dir=run_dir, status=status, job=job))
    note = _describe(rows) if with_describe else ""
    return rows, note


def _describe(rows: list[Row]) -> str:
    """Params / FLOPs / estimated cost from harness.train.describe (analytic, per run config)."""
    try:
        from harness.train import describe
    except ImportError as err:
        return f"params/FLOPs not shown: harness.train.describe is not importable ({err})"
    errors = []
    for row in rows:
        try:
            d = describe(row.run.cfg)
        except Exception as err:  # one bad run must not hide the plan of the others
            errors.append(f"{row.run.name}: {type(err).__name__}: {err}")
            continue
        p, f = d.get("params"), d.get("flops")
        row.params = p.get("dense") if isinstance(p, dict) else p
        if isinstance(f, dict):
            row.flops_example = f.get("train_per_example") or f.get("train") or f.get("forward_per_example")
            row.flops_total = f.get("train_total")
        elif isinstance(f, (int, float)):
            row.flops_example = f
        rc, t = row.run.resources, row.run.cfg.train
        if row.flops_total is None and row.flops_example and t.max_steps > 0:
            # samples the run will see: steps x per-device batch x devices (epoch-bounded runs: unknown)
            row.flops_total = row.flops_example * t.max_steps * row.run.cfg.data.batch_size * t.devices * t.num_nodes
        if row.flops_total:
            row.cost_h = row.flops_total / (rc.assumed_tflops * 1e12) / 3600.0   # device-hours at the assumed rate
    return ("describe failed for: " + "; ".join(errors[:3])) if errors else ""


# ------------------------------------------------------------------------------------- printing

def _human(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _axes(r: ResolvedRun) -> str:
    parts = [f"{k.split('.')[-1]}={v}" for k, v in r.plan.axes.items()]
    if r.plan.label != "base":
        parts.insert(0, r.plan.label)
    return " ".join(parts) or "-"


def print_table(rows: list[Row], out=None) -> None:
    out = out or sys.stdout
    head = ("#", "run_id", "name", "axes", "params", "FLOPs/ex", "class", "status", "job", "est dev-h")
    table = [head] + [(str(r.run.plan.index), r.run.run_id, r.run.name, _axes(r.run), _human(r.params),
                       _human(r.flops_example), r.run.plan.resource_class, r.status, r.job or "-",
                       f"{r.cost_h:.3g}" if r.cost_h is not None else "-") for r in rows]
    widths = [min(40, max(len(row[i]) for row in table)) for i in range(len(head))]
    for row in table:
        print("  ".join(c[:w].ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    total_h = sum(r.cost_h for r in rows if r.cost_h is not None)
    print(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + (f"; est. {total_h:.3g} device-hours at the resource classes' assumed TFLOP/s" if total_h else ""), file=out)


# -------------------------------------------------------------------------------------- filters

RESULT_COLUMNS = ("ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc")


def print_results(rows: list[Row], split: str = "test", out=None) -> None:
    """Final metrics of the finished runs, each beside the oracle's (synthetic data) and the gap."""
    done = [(r, _read_json(r.run_dir / "result.json")) for r in rows if r.status == "done"]
    done = [(r, res) for r, res in done if res]
    if not done:
        return
    out = out or sys.stdout
    head = ["name", "model", *RESULT_COLUMNS, "wall s"]
    table = [head]
    oracle: dict[str, float] = {}
    for r, res in done:
        m = (res.get("metrics") or {}).get(split, {})
        oracle = oracle or (res.get("oracle") or {}).get(split, {})
        table.append([r.run.name, f"{res.get('model', '')}/{res.get('size', '')}",
                      *(f"{m[c]:.4f}" if c in m else "-" for c in RESULT_COLUMNS),
                      f"{res.get('wall_time_s', 0):.0f}"])
    if oracle:
        table.append(["oracle (Bayes)", "p_click/p_conversion",
                      *(f"{oracle[c]:.4f}" if c in oracle else "-" for c in RESULT_COLUMNS), ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print(f"results ({split} split):", file=out)
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)


def _match(r: ResolvedRun, key: str, want: str) -> bool:
    if key in ("label", "name", "run_id"):
        got: Any = {"label": r.plan.label, "name": r.name, "run_id": r.run_id}[key]
    elif key in r.plan.axes:
        got = r.plan.axes[key]
    else:
        node: Any = r.cfg.to_dict()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        got = node
    parsed = yaml.safe_load(want) if want else want
    return got == parsed or str(got) == want


def select(runs: list[ResolvedRun], only: list[str]) -> list[ResolvedRun]:
    out = runs
    for item in only:
        if "=" not in item:
            raise SystemExit(f"--only {item!r}: expected key=value, e.g. --only data.seq_len=1024 or --only label=dcnv2")
        key, value = item.split("=", 1)
        matched = [r for r in out if _match(r, key.strip(), value.strip())]
        if not matched:
            raise SystemExit(f"--only {item!r} matches no run of this sweep (keys: axes like "
                             f"{', '.join(runs[0].plan.axes) or '-'}, label, name, run_id or any dotted config key)")
        out = matched
    return out


# ------------------------------------------------------------------------------------- running

def prepare(rows: list[Row], sweep_dir: Path, sweep_path: Path | None) -> None:
    """Write each run's resolved config.yaml (atomically) and the sweep's plan under .sweep/."""
    meta = sweep_dir / ".sweep"
    meta.mkdir(parents=True, exist_ok=True)
    if sweep_path is not None:
        shutil.copyfile(sweep_path, meta / "sweep.yaml")
    plan = [{"run_id": r.run.run_id, "name": r.run.name, "label": r.run.plan.label, "axes": r.run.plan.axes,
             "seed": r.run.plan.seed, "resource_class": r.run.plan.resource_class} for r in rows]
    (meta / "plan.json").write_text(json.dumps(plan, indent=2, default=str))
    for r in rows:
        r.run_dir.mkdir(parents=True, exist_ok=True)
        text = r.run.cfg.to_yaml()
        path = r.run_dir / "config.yaml"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".yaml.tmp")
            tmp.write_text(text)
            tmp.replace(path)


def set_aside(run_dir: Path) -> Path:
    """--rerun-done: move a finished run folder aside (never delete results)."""
    dest = run_dir.parent / ".sweep" / "replaced" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(dest)
    return dest


class Reporter:
    def __init__(self, total: int, out=None):
        self.total, self.finished, self.out, self.t0 = total, 0, out or sys.stdout, time.time()

    def __call__(self, task: X.Task, event: str, detail: str) -> None:
        if event in ("done", "failed", "cancelled"):
            self.finished += 1
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} [{self.finished}/{self.total}] {event:<10} {task.name} ({task.run_id}) {detail}",
              file=self.out, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    ap = argparse.ArgumentParser(prog=f"python -m harness.sweep [{'|'.join(COMMANDS)}]",
                                 description="Plan and run a sweep file (see docs/sweeps.md).")
    ap.add_argument("file", type=Path, help="sweep file, e.g. sweeps/length.yaml")
    ap.add_argument("--preset", default=None, help="named preset of the file (ci, laptop)")
    ap.add_argument("--executor", choices=("slurm", "local", "debug"), default=None,
                    help="default: slurm when a cluster answers sinfo, else local")
    ap.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("HARNESS_RUNS_DIR", "runs")))
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="restrict to matching runs (axis, label, name, run_id or dotted config key); repeatable")
    ap.add_argument("--retry-failed", action="store_true", help="also rerun failed and cancelled runs")
    ap.add_argument("--rerun-done", action="store_true", help="move finished runs aside and run them again")
    ap.add_argument("--cancel", action="store_true", help="cancel the queued/running jobs of the selected runs")
    ap.add_argument("--max-parallel", type=int, default=None,
                    help="local: processes at once (default 1); slurm: array parallelism cap")
    ap.add_argument("--no-wait", action="store_true", help="slurm: submit and return (follow with `status`)")
    ap.add_argument("--no-describe", action="store_true", help="skip params/FLOPs (faster plan)")
    args = ap.parse_args(argv)
    if args.cancel:
        command = "cancel"

    try:
        sweep = load_sweep(args.file, args.preset)
        runs = resolve(sweep)
    except SweepFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = select(runs, args.only)
    sweep_dir = args.runs_dir / sweep_dir_name(sweep)
    rows, note = build_rows(runs, sweep_dir, with_describe=not args.no_describe)

    print(f"sweep {sweep.name}" + (f" (preset {sweep.preset})" if sweep.preset else "")
          + f": {len(runs)} runs in {sweep_dir}")
    print_table(rows)
    if note:
        print(note)
    if args.dry_run:        # how small an effect this plan can detect, from earlier runs of its configs
        from harness.power import sweep_mde_lines
        for line in sweep_mde_lines(sweep, rows):
            print(line)
    if command in ("status", "plan"):
        if command == "status":
            print_results(rows)
        return 0

    if command == "cancel":
        latest = X.Ledger(sweep_dir).latest()
        entries = {r.run.run_id: latest[r.run.run_id] for r in rows
                   if r.status in ("queued", "running") and r.run.run_id in latest}
        cancelled = X.cancel(entries, {r.run.run_id: r.run_dir for r in rows})
        print(f"cancelled {len(cancelled)} job(s): " + ", ".join(
            f"{r.run.name} ({r.job})" for r in rows if r.run.run_id in cancelled))
        return 0

    todo = [r for r in rows if r.status in RUNNABLE
            or (args.retry_failed and r.status in ("failed", "cancelled"))
            or (args.rerun_done and r.status == "done")]
    skipped = {s: sum(1 for r in rows if r.status == s and r not in todo) for s in ("done", "queued", "running", "failed", "cancelled")}
    name, why = choose_executor(args.executor)
    print(f"executor: {name} ({why})")
    print(f"to run: {len(todo)}; skipped: " + (", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none")
          + ("" if not skipped["failed"] and not skipped["cancelled"] else "  (--retry-failed to rerun failed/cancelled)"))
    # SLURM jobs of this sweep still queued/running from an earlier driver: followed, not resubmitted
    live = [r for r in rows if r.status in ("queued", "running") and name == "slurm" and r.job]
    if args.dry_run or (not todo and not live):
        return 0 if all(r.status == "done" for r in rows) or args.dry_run else 1

    for r in todo:
        if r.status == "done":
            print(f"  moved finished run {r.run.name} aside to {set_aside(r.run_dir)}")
    prepare(todo, sweep_dir, args.file)
    tasks = [_task(r) for r in todo]
    report = Reporter(len(tasks) + len(live))
    ex = X.make_executor(name, sweep_dir, args.max_parallel)
    t0 = time.time()
    if name == "slurm":
        submitted = ex.submit(tasks, report) if tasks else []
        if args.no_wait:
            print(f"submitted {len(submitted)} job(s); follow with: python -m harness.sweep status {args.file}"
                  + (f" --preset {args.preset}" if args.preset else ""))
            return 0
        if live:
            print(f"following {len(live)} job(s) submitted earlier: " + ", ".join(f"{r.run.name} ({r.job})" for r in live))
        ex.wait(submitted + ex.attach([(_task(r), r.job) for r in live]), report)
    else:
        ex.run(tasks, report)
    rows, _ = build_rows(runs, sweep_dir, with_describe=False)
    n_done = sum(r.status == "done" for r in rows)
    print(f"finished in {time.time() - t0:.1f} s: {n_done}/{len(rows)} runs done")
    print_results(rows)
    return 0 if n_done == len(rows) else 1


def _task(r: Row) -> X.Task:
    return X.Task(run_id=r.run.run_id, name=r.run.name, run_dir=r.run_dir, resource_class=r.run.plan.resource_class,
                  resources=r.run.resources, devices=r.run.cfg.train.devices)


if __name__ == "__main__":
    sys.exit(main())
