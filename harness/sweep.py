"""`python -m harness.sweep`: plan, run, follow and cancel a sweep.

    python -m harness.sweep sweeps/length.yaml --preset laptop             # plan, then run what is not done
    python -m harness.sweep sweeps/length.yaml --dry-run                   # plan only
    python -m harness.sweep status sweeps/length.yaml --preset ci          # table of run states
    python -m harness.sweep sweeps/length.yaml --only data.seq_len=1024 --retry-failed
    python -m harness.sweep sweeps/length.yaml --cancel                    # cancel its queued/running jobs

Runs land in <runs-dir>/<sweep>[-<preset>]/<run_id>/ (docs/contracts.md §4). Re-running the command
skips DONE runs and runs whose job is still queued or running (asked of the scheduler through the
sweep's ledger), resumes interrupted runs from their last checkpoint (Ctrl-C, SIGTERM, cancel,
preemption: docs/operations.md), and leaves failed ones alone unless --retry-failed.

From Python: `run_sweep(FILE, command=..., preset=..., ...)` does what the command line does and
returns the rows (`SweepOutcome.rows`: each run's name, id, state, job and, when done, its
result.json). The dispatch code prints nothing: it emits `SweepEvent`s (a line and its kind: plan,
progress, result, warning) to a callback; `main` parses the arguments and prints the events
(`print_events`), and `run_sweep` prints them to the streams it is given unless `on_event` is passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import yaml

from harness import executors
from harness.cluster import choose_executor
from harness.resolved import describe_key, samples_per_step
from harness.runstore import (
    CONFIG,
    FLOOR,
    INTERRUPTED,
    SWEEP_META,
    Interrupted,
    Ledger,
    RunStore,
    RunStoreError,
    SweepStore,
    atomic_write_text,
    describe_owner,
    raise_on_signals,
    restore_signals,
    signal_name,
    within_runs_dir,
)
from harness.sweepfile import (
    DatasetRecipe,
    ResolvedRun,
    Sweep,
    SweepFileError,
    load_sweep,
    resolve,
    sweep_dir_name,
)

COMMANDS = ("run", "status", "plan", "cancel")
# states a rerun submits by default; failed/cancelled need --retry-failed, done needs --rerun-done
RUNNABLE = ("new", "interrupted")

# A sweep planning more runs than this gets a warning first (a typo'd axis or one axis too many
# multiplies the runs); --warn-runs N changes it, 0 turns it off. docs/sweeps.md.
WARN_RUNS = 1000


@dataclass
class Row:
    """One run of the sweep as the plan and `status` show it."""

    run: ResolvedRun
    run_dir: Path
    status: str  # new | queued | running | done | interrupted | failed | cancelled
    job: str  # SLURM job id or "pid N" of its latest submission; "" when none
    params: int | None = None
    flops_example: float | None = None
    flops_total: float | None = None
    cost_h: float | None = None
    result: dict[str, Any] | None = None  # result.json of a done run
    problem: str | None = None  # e.g. DONE beside a damaged result.json (path, problem, fix)

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Final metrics per split ({"test": {"ctr_auc": ...}}) of a done run, else {}."""
        return (self.result or {}).get("metrics") or {}


class SweepError(Exception):
    """A user mistake or a refusal: the CLI prints `<prefix><message>` on stderr and exits `code`."""

    def __init__(self, message: str, code: int = 2, prefix: str = "error: "):
        super().__init__(message)
        self.code, self.prefix = code, prefix

    @property
    def line(self) -> str:
        return f"{self.prefix}{self}"


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """What `run_sweep` is asked to do: the command line's options (docs/sweeps.md)."""

    command: str = "run"  # run | plan | status | cancel
    preset: str | None = None
    executor: str | None = None  # slurm | local | debug; None: slurm when a cluster answers
    runs_dir: Path | None = None  # None: $HARNESS_RUNS_DIR, else runs
    only: tuple[str, ...] = ()  # KEY=VALUE filters, ANDed
    dry_run: bool = False
    retry_failed: bool = False
    rerun_done: bool = False
    max_parallel: int | None = None
    no_wait: bool = False
    progress_every: float = 30.0
    describe: bool = True  # params / FLOPs / cost columns
    floor: bool = True  # write the count-feature floor of the runs' datasets to .sweep/floor.json
    warn_runs: int = WARN_RUNS  # warn when a sweep plans more runs than this (0: never)


@dataclass
class SweepOutcome:
    """What `run_sweep` did. `rows`: every selected run in plan order with its state after the
    command (done runs with their result.json); `code`: the CLI's exit code (0 when every run is
    done or the command runs nothing, 1 when some run is not done)."""

    sweep: Sweep
    sweep_dir: Path
    rows: list[Row]
    code: int
    executor: str | None = None  # the executor a `run` chose (with --dry-run too)
    cancelled: list[str] = field(default_factory=list)  # run ids whose jobs `cancel` stopped


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SweepEvent:
    """One thing the driver tells its user: a line of text and its kind. The dispatch code emits
    these and prints nothing; the command line prints them (`print_events`: warnings on stderr
    after "warning: ", the rest on stdout), and a caller from Python may keep, filter or show them
    as it likes. A run's progress line also carries its id and state (start, done, failed, ...)."""

    kind: str  # one of EVENT_KINDS
    text: str
    run_id: str | None = None
    state: str | None = None


# plan: the table and what it implies; progress: what happens while it runs; result: what it
# ended with; warning: what the user should look at (stderr)
EVENT_KINDS = ("plan", "progress", "result", "warning")
Emit = Callable[[SweepEvent], None]


def print_events(out: TextIO, err: TextIO) -> Emit:
    """The command line's view: one line per event, flushed at once (a tail -f of a log follows)."""

    def show(event: SweepEvent) -> None:
        if event.kind == "warning":
            print(f"warning: {event.text}", file=err, flush=True)
        else:
            print(event.text, file=out, flush=True)

    return show


def _say(emit: Emit, kind: str) -> Callable[[str], None]:
    """A line callback for the helpers that only say one kind of thing (conversion, floor)."""
    return lambda text: emit(SweepEvent(kind, text))


# ------------------------------------------------------------------------------------ run state


def classify(run_dir: Path, entry: dict[str, Any] | None, known: dict[str, str]) -> tuple[str, str]:
    """(status, job description) of one run from its folder (RunStore.folder_state) and the scheduler
    (`known`: job states asked beforehand, executors.known_states)."""
    job = ""
    if entry is not None:
        job = entry.get("job_id") or (f"pid {entry['pid']}" if entry.get("pid") else "")
    store = RunStore(run_dir)
    folder = store.folder_state()
    if folder == "done":
        return "done", job
    state = executors.job_state(entry, run_dir, known)
    if state in executors.LIVE_STATES:
        return ("queued" if state == "PENDING" else "running"), job
    if folder == "running":  # a live process owns the folder (lock held)
        owner = store.owner() or {}
        return "running", job if state == "RUNNING" or not owner.get(
            "pid"
        ) else f"pid {owner['pid']}"
    if (store.status() or {}).get("state") == INTERRUPTED:
        # the run saved its checkpoint on a signal (Ctrl-C, SIGTERM, cancel, preemption, time
        # limit): whatever the scheduler calls the job now (CANCELLED, TIMEOUT), it resumes
        return "interrupted", job
    if state == "CANCELLED":
        return "cancelled", job
    if folder == "failed" or state in (
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
    ):
        return "failed", job
    if folder == "interrupted":
        return "interrupted", job  # resumes from its checkpoint
    return "new", job


def build_rows(
    runs: list[ResolvedRun], sweep_dir: Path, with_describe: bool = True
) -> tuple[list[Row], str]:
    latest = Ledger(sweep_dir).latest()
    known = executors.known_states(list(latest.values()))
    rows = []
    for r in runs:
        run_dir = sweep_dir / r.run_id
        status, job = classify(run_dir, latest.get(r.run_id), known)
        store = RunStore(run_dir)
        result = store.result() if status == "done" else None
        rows.append(
            Row(
                run=r,
                run_dir=run_dir,
                status=status,
                job=job,
                result=result,
                problem=store.done_problem(),
            )
        )
    note = _describe(rows) if with_describe else ""
    return rows, note


def _describe(rows: list[Row]) -> str:
    """Params / FLOPs / estimated cost, read from each run's resolved config (harness/resolved.py:
    the model's analytic accounting, and the samples the run will train on)."""
    errors = []
    # the description builds the model on the meta device (~10 ms); runs that differ only in what
    # it does not read (lr, seed, steps...) share one answer, so a 10,000-point grid over
    # lr x seq_len builds 100 models, not 10,000 (describe_key: everything it reads).
    described: dict[str, Any] = {}
    # the train split's size is read from a manifest (or the generator's expectation): once per
    # dataset, whichever run of it asks first
    impressions: dict[tuple[str, int, str], int | None] = {}
    absent: set[str] = set()  # real-data folders not there yet (a `datasets:` entry converts them)
    for row in rows:
        c = row.run.cfg
        if c.data.synthetic_preset is None and not Path(c.data.dataset).is_dir():
            absent.add(c.data.dataset)  # the model's size needs the manifest's vocabularies
            continue
        key = describe_key(c)
        if key not in described:
            try:
                described[key] = row.run.resolved().description
            except Exception as err:  # one bad run must not hide the plan of the others
                described[key] = f"{type(err).__name__}: {err}"
        d = described[key]
        if isinstance(d, str):
            errors.append(f"{row.run.name}: {d}")
            continue
        row.params = d["params"].get("dense")
        row.flops_example = d["flops"]["train_per_example"] or d["flops"]["forward_per_example"]
        if not row.flops_example:
            continue
        t = c.train
        if t.max_steps > 0:  # samples the run will see: steps x per-device batch x devices
            samples = t.max_steps * samples_per_step(c)
        elif t.max_epochs > 0:  # epochs x the train split's impressions
            skey = (c.data.dataset, c.data.data_seed, c.data.cache_dir)
            if skey not in impressions:
                impressions[skey] = row.run.resolved().dataset.train_impressions
            samples = (impressions[skey] or 0) * t.max_epochs
        else:
            samples = 0
        if samples:
            row.flops_total = row.flops_example * samples
            row.cost_h = (
                row.flops_total / (row.run.resources.assumed_tflops * 1e12) / 3600.0
            )  # device-hours at the assumed rate
    notes = [
        f"params/FLOPs of the runs on {d}: shown once the folder exists (they need its manifest)"
        for d in sorted(absent)
    ]
    if errors:
        notes.append("describe failed for: " + "; ".join(errors[:3]))
    return "\n".join(notes)


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
    if r.plan.tune:  # a candidate of a tuned point: marked so the plan reads as a search
        parts.append(f"{r.plan.tune['key'].split('.')[-1]}={r.plan.tune['value']}?")
    return " ".join(parts) or "-"


def tune_lines(sweep: Sweep, rows: list[Row]) -> list[str]:
    """What a tuned sweep's plan adds: the search, candidates per point and their total cost."""
    t = sweep.tune
    if t is None:
        return []
    points = {(r.run.plan.label, r.run.plan.tune["point"]) for r in rows if r.run.plan.tune}
    cost = [r.cost_h for r in rows if r.cost_h is not None]
    values = ", ".join(map(str, t.values))
    return [
        f"tune: {t.key} over [{values}] at every point, chosen by the best mean {t.by} over seeds "
        f"(analysis/tuning.py; never the test split): {len(points)} point(s) x {len(t.values)} "
        f"candidates x {len(sweep.seeds)} seed(s) = {len(rows)} runs"
        + (
            f"; est. {sum(cost):.3g} device-hours in all, {len(t.values)}x the untuned sweep"
            if cost
            else ""
        )
    ]


def budget_lines(sweep: Sweep, rows: list[Row]) -> list[str]:
    """Matched compute: the budget, and the steps each model gets from it (one line per model)."""
    if sweep.budget is None:
        return []

    lines = [
        f"budget: {_human(sweep.budget)} training FLOPs per run; train.max_steps = "
        "floor(budget / (training FLOPs per example x samples per step)) per model:"
    ]
    seen = set()
    for r in rows:
        c = r.run.cfg
        key = (
            r.run.plan.label,
            c.model.name,
            c.model.size,
            repr(sorted(c.model.overrides.items())),
        )
        key += (c.data.seq_len, samples_per_step(c))
        if key in seen:
            continue
        seen.add(key)
        spent = (
            r.flops_example * c.train.max_steps * samples_per_step(c) if r.flops_example else None
        )
        lines.append(
            f"  {c.model.name}/{c.model.size}"
            + (f" {dict(c.model.overrides)}" if c.model.overrides else "")
            + f" len{c.data.seq_len}: {_human(r.flops_example)} FLOPs/example x "
            f"{samples_per_step(c)} per step -> {c.train.max_steps} steps"
            + (f" ({_human(spent)} FLOPs)" if spent else "")
        )
    return lines


def table_lines(rows: list[Row]) -> list[str]:
    """The plan's table, one line per run, then the count per state and the estimated cost."""
    head = (
        "#",
        "run_id",
        "name",
        "axes",
        "params",
        "FLOPs/ex",
        "class",
        "status",
        "job",
        "est dev-h",
    )
    table = [head] + [
        (
            str(r.run.plan.index),
            r.run.run_id,
            r.run.name,
            _axes(r.run),
            _human(r.params),
            _human(r.flops_example),
            r.run.plan.resource_class,
            r.status,
            r.job or "-",
            f"{r.cost_h:.3g}" if r.cost_h is not None else "-",
        )
        for r in rows
    ]
    widths = [min(40, max(len(row[i]) for row in table)) for i in range(len(head))]
    lines = ["  ".join(c[:w].ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    total_h = sum(r.cost_h for r in rows if r.cost_h is not None)
    lines.append(
        f"{len(rows)} runs: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + (
            f"; est. {total_h:.3g} device-hours at the resource classes' assumed TFLOP/s"
            if total_h
            else ""
        )
    )
    return lines


# -------------------------------------------------------------------------------------- filters

RESULT_COLUMNS = ("ctr_auc", "ctr_uauc", "cvr_auc", "cvr_uauc")


def read_floor(sweep_dir: Path, split: str = "test") -> dict[tuple[str, int], dict[str, float]]:
    """(data.dataset, seq_len) -> the count-feature floor's metrics on `split`, from
    <sweep folder>/.sweep/floor.json (written by write_floor); empty when there is none."""
    import json

    try:
        doc = json.loads(SweepStore(sweep_dir).floor.read_text())
    except (OSError, ValueError):
        return {}
    return {
        (str(e.get("data.dataset")), int(r["seq_len"])): r.get(split) or {}
        for e in doc.get("datasets", [])
        for r in e.get("records", [])
    }


def results_lines(rows: list[Row], split: str = "test") -> list[str]:
    """Final metrics of the finished runs, each beside the oracle's (synthetic data) and the
    count-feature floor's CTR AUC at the run's seq_len (when .sweep/floor.json has it); none
    when no run is done."""
    done = [(r, r.result) for r in rows if r.status == "done" and r.result]
    if not done:
        return []
    floor = read_floor(done[0][0].run_dir.parent, split)
    head = ["name", "model", *RESULT_COLUMNS, "wall s"] + (["floor ctr_auc"] if floor else [])
    table = [head]
    oracle: dict[str, float] = {}
    below = []
    for r, res in done:
        m = (res.get("metrics") or {}).get(split, {})
        oracle = oracle or (res.get("oracle") or {}).get(split, {})
        row = [
            r.run.name,
            f"{res.get('model', '')}/{res.get('size', '')}",
            *(f"{m[c]:.4f}" if c in m else "-" for c in RESULT_COLUMNS),
            f"{res.get('wall_time_s', 0):.0f}",
        ]
        if floor:
            d = r.run.cfg.data
            fl = floor.get((d.dataset, int(d.seq_len)), {}).get("ctr_auc")
            row.append("-" if fl is None else f"{fl:.4f}")
            if fl is not None and "ctr_auc" in m and m["ctr_auc"] < fl:
                row[-1] += " (model below)"
                below.append(f"{r.run.name} {m['ctr_auc'] - fl:+.4f}")
        table.append(row)
    if oracle:
        table.append(
            [
                "oracle (Bayes)",
                "p_click/p_conversion",
                *(f"{oracle[c]:.4f}" if c in oracle else "-" for c in RESULT_COLUMNS),
                "",
            ]
            + ([""] if floor else [])
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [f"results ({split} split):"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    if below:
        lines.append(
            "below the count-feature floor (a logistic regression on history counts at the run's "
            f"seq_len, docs/analysis.md): {', '.join(below)}"
        )
    return lines


def _match(r: ResolvedRun, key: str, want: str, parsed: Any) -> bool:
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
    return got == parsed or str(got) == want


def select(runs: list[ResolvedRun], only: list[str]) -> list[ResolvedRun]:
    out = runs
    for item in only:
        if "=" not in item:
            raise SystemExit(
                f"--only {item!r}: expected key=value, e.g. --only data.seq_len=1024 or --only label=dcnv2"
            )
        key, value = item.split("=", 1)
        value = value.strip()
        try:  # read as the sweep file's values are (1024 an int, [a, b] a list)
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError as err:
            problem = str(getattr(err, "problem", "") or "not valid YAML")
            raise SystemExit(
                f"--only {item!r}: the value {value!r} is not valid YAML ({problem}); write a "
                f"value as in the sweep file, e.g. --only data.seq_len=1024 or --only "
                f"'model.overrides.causal=[true, false]'"
            ) from None
        matched = [r for r in out if _match(r, key.strip(), value, parsed)]
        if not matched:
            raise SystemExit(
                f"--only {item!r} matches no run of this sweep (keys: axes like "
                f"{', '.join(runs[0].plan.axes) or '-'}, label, name, run_id or any dotted config key)"
            )
        out = matched
    return out


# ------------------------------------------------------------------------------------- running


def prepare(rows: list[Row], sweep_dir: Path, sweep_path: Path | str | None) -> None:
    """Write each run's resolved config.yaml (atomically) and the sweep's plan under .sweep/."""
    plan = [
        {
            "run_id": r.run.run_id,
            "name": r.run.name,
            "label": r.run.plan.label,
            "axes": r.run.plan.axes,
            "seed": r.run.plan.seed,
            "resource_class": r.run.plan.resource_class,
            # a tuned sweep's candidate ({key, value, by, point}): analysis/tuning.py reads it here
            **({"tune": r.run.plan.tune} if r.run.plan.tune else {}),
        }
        for r in rows
    ]
    SweepStore(sweep_dir).write_plan(plan, sweep_path)
    for r in rows:
        store = RunStore(r.run_dir)
        store.create()
        text = r.run.cfg.to_yaml()
        path = store / CONFIG
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)


def set_aside(run_dir: Path) -> Path:
    """--rerun-done: move a finished run folder aside (never delete results)."""
    return SweepStore(run_dir.parent).set_aside(run_dir.name)


FINISHED = ("done", "failed", "cancelled", "interrupted", "followed", "stopped", "skipped")


class Reporter:
    """One line per event of a run: start, progress (step and ETA), done, failed, following (another
    process owns the run), followed (it finished it), skipped, warning."""

    def __init__(self, total: int, emit: Emit):
        self.total, self.finished, self.emit, self.t0 = total, 0, emit, time.time()
        self.counts: dict[str, int] = {}

    def __call__(self, task: executors.Task, event: str, detail: str) -> None:
        if event in FINISHED:
            self.finished += 1
            self.counts[event] = self.counts.get(event, 0) + 1
        stamp = time.strftime("%H:%M:%S")
        self.emit(
            SweepEvent(
                "progress",
                f"{stamp} [{self.finished}/{self.total}] {event:<10} {task.name} ({task.run_id}) {detail}",
                run_id=task.run_id,
                state=event,
            )
        )


def _wait_for_driver(
    store: SweepStore, runs: list[ResolvedRun], sweep_dir: Path, every_s: float, emit: Emit
) -> Any:
    """Wait for the other driver of this sweep folder, saying whom and how far it is."""
    state = {"last": 0.0, "said": False}

    def on_wait(owner: dict[str, Any]) -> None:
        if not state["said"]:
            state["said"] = True
            emit(
                SweepEvent(
                    "progress",
                    f"another driver owns {sweep_dir}: {describe_owner(owner)}.\n"
                    f"waiting for it to finish (Ctrl-C stops waiting, nothing is lost; --no-wait "
                    f"refuses instead); this driver then runs whatever is still not done",
                )
            )
        if time.time() - state["last"] >= every_s:
            state["last"] = time.time()
            rows, _ = build_rows(runs, sweep_dir, with_describe=False)
            counts: dict[str, int] = {}
            for r in rows:
                counts[r.status] = counts.get(r.status, 0) + 1
            running = [
                f"{r.run.name} ({executors.progress_text(RunStore(r.run_dir)) or 'starting'})"
                for r in rows
                if r.status == "running"
            ]
            emit(
                SweepEvent(
                    "progress",
                    f"{time.strftime('%H:%M:%S')} waiting: "
                    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                    + (f"; running: {'; '.join(running)}" if running else ""),
                )
            )

    return store.lock(wait_s=float("inf"), on_wait=on_wait, poll_s=1.0)


def _executor_why(chosen: tuple[str, str], requested: str | None, runs: list[ResolvedRun]) -> str:
    """The executor line's reason; a default SLURM choice for CPU-only runs says how to stay here."""
    name, why = chosen
    if requested is None and name == "slurm" and runs:
        if all(r.resources.accelerator == "cpu" for r in runs):
            why += (
                "; these runs ask for CPUs only: --executor local runs them on this machine instead"
            )
    return why


def _size_warning(sweep: Sweep, runs: list[ResolvedRun], limit: int) -> str:
    axes = [f"{k} {len(v)}" for k, v in sweep.grid.items()] + [
        f"zip[{i}] {len(next(iter(g.values())))}" for i, g in enumerate(sweep.zip)
    ]
    shape = " x ".join(axes + [f"{len(sweep.seeds)} seed(s)"])
    return (
        f"{sweep.path or 'the sweep'} plans {len(runs):,} runs (more than --warn-runs {limit:,}; "
        f"grid: {shape}"
        + (f", plus {len(sweep.baselines)} baseline(s)" if sweep.baselines else "")
        + "). Check the grid, select a subset with --only, or pass "
        f"--warn-runs {len(runs)} if this is intended"
    )


def _gpu_runs(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.run.resources.accelerator == "gpu"]


HELP = """commands (the first argument; default: run):
  run     FILE   print the plan, then run every run that is not done (resumes interrupted ones)
  plan    FILE   print the plan only (same as --dry-run; nothing is written)
  status  FILE   print the plan with each run's state and the results of finished runs
  cancel  FILE   stop the selected runs: the driver starts none of them, running ones save a
                 checkpoint and end `interrupted` (a plain rerun resumes them); same as --cancel

examples:
  python -m harness.sweep sweeps/length.yaml --preset laptop --max-parallel 2
  python -m harness.sweep plan sweeps/length.yaml
  python -m harness.sweep status sweeps/length.yaml --preset laptop
  python -m harness.sweep sweeps/length.yaml --only data.seq_len=1024 --retry-failed

One driver owns a sweep folder at a time: a second one started on the same folder waits for the
first (or, with --no-wait, refuses) and then runs only what is still not done. See docs/sweeps.md."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    ap = argparse.ArgumentParser(
        prog=f"python -m harness.sweep [{'|'.join(COMMANDS)}]",
        description="Plan and run a sweep file (docs/sweeps.md).",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("file", type=Path, help="sweep file, e.g. sweeps/length.yaml")
    ap.add_argument("--preset", default=None, help="named preset of the file (ci, laptop)")
    ap.add_argument(
        "--executor",
        choices=tuple(executors.EXECUTORS),
        default=None,
        help="default: slurm when a cluster answers sinfo, else local (refused when the runs ask "
        "for GPUs: pass --executor local to run them here anyway)",
    )
    ap.add_argument(
        "--runs-dir", type=Path, default=Path(os.environ.get("HARNESS_RUNS_DIR", "runs"))
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="restrict to matching runs (axis, label, name, run_id or dotted config key); repeatable",
    )
    ap.add_argument(
        "--retry-failed", action="store_true", help="also rerun failed and cancelled runs"
    )
    ap.add_argument(
        "--rerun-done", action="store_true", help="move finished runs aside and run them again"
    )
    ap.add_argument(
        "--cancel", action="store_true", help="cancel the queued/running jobs of the selected runs"
    )
    ap.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="local: processes at once (default 1); slurm: array parallelism cap",
    )
    ap.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit and return (follow with `status`); any executor: refuse instead of "
        "waiting when another driver owns the sweep folder",
    )
    ap.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="local: report each running run's step and ETA this often (0: never); default 30",
    )
    ap.add_argument("--no-describe", action="store_true", help="skip params/FLOPs (faster plan)")
    ap.add_argument(
        "--no-floor",
        action="store_true",
        help="do not compute the count-feature floor of the runs' datasets (.sweep/floor.json, "
        "harness/data/floor.py; cached in the dataset folder, seconds on laptop-sized data)",
    )
    ap.add_argument(
        "--warn-runs",
        type=int,
        default=WARN_RUNS,
        metavar="N",
        help=f"warn when the sweep plans more than N runs (default {WARN_RUNS}; 0: never)",
    )
    args = ap.parse_args(argv)
    # SIGTERM (a scheduler, `kill`) stops the driver the way Ctrl-C does: its runs are stopped at a
    # checkpoint and recorded interrupted, one line says so, the exit code is 128 + signal
    previous = raise_on_signals()
    try:
        outcome = run_sweep(
            args.file,
            on_event=print_events(sys.stdout, sys.stderr),  # the one place that prints events
            command="cancel" if args.cancel else command,
            preset=args.preset,
            executor=args.executor,
            runs_dir=args.runs_dir,
            only=tuple(args.only),
            dry_run=args.dry_run,
            retry_failed=args.retry_failed,
            rerun_done=args.rerun_done,
            max_parallel=args.max_parallel,
            no_wait=args.no_wait,
            progress_every=args.progress_every,
            describe=not args.no_describe,
            floor=not args.no_floor,
            warn_runs=args.warn_runs,
        )
    except SweepError as err:
        print(err.line, file=sys.stderr)
        return err.code
    except (KeyboardInterrupt, Interrupted) as err:  # outside run_sweep's own handling
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"interrupted by {signal_name(signum)}", file=sys.stderr)
        return 128 + signum
    finally:
        restore_signals(previous)
    return outcome.code


def run_sweep(
    file: str | Path,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    on_event: Emit | None = None,
    **options: Any,
) -> SweepOutcome:
    """Plan, run, show or cancel the runs of a sweep file, as `python -m harness.sweep` does.

    `options` are SweepOptions fields (command, preset, executor, runs_dir, only, dry_run, ...).
    Emits the plan, the events of the runs and the results as SweepEvents to `on_event` as it
    goes (default: printed, `print_events(out, err)`, stdout and stderr unless given), and
    returns every selected run with its state after the command.
    Raises SweepError (message and exit code) for a bad sweep file, an unwritable runs directory,
    another driver with no_wait, GPU runs without a cluster; SystemExit for a bad `only`."""
    opts = SweepOptions(**options)
    if opts.command not in COMMANDS:
        raise ValueError(f"command {opts.command!r}: choose one of {COMMANDS}")
    if opts.command == "plan":
        opts = replace(opts, dry_run=True)
    emit = on_event or print_events(out or sys.stdout, err or sys.stderr)
    runs_dir = Path(
        opts.runs_dir if opts.runs_dir is not None else os.environ.get("HARNESS_RUNS_DIR", "runs")
    )
    try:
        sweep = load_sweep(file, opts.preset)
        runs = resolve(sweep)
    except SweepFileError as e:
        raise SweepError(str(e)) from None
    runs = select(runs, list(opts.only))
    try:
        sweep_dir = within_runs_dir(runs_dir, sweep_dir_name(sweep), f"{file}: name")
    except RunStoreError as e:
        raise SweepError(str(e)) from None
    store = SweepStore(sweep_dir)
    chosen = None
    if opts.command == "run":
        # which executor, and why, is the first line a run (or a dry run) prints: a laptop sweep on a
        # machine where a (test) SLURM cluster answers goes to that cluster by default, and the user
        # must see that before anything is planned or submitted
        try:
            chosen = choose_executor(opts.executor)
        except RuntimeError as e:
            raise SweepError(str(e)) from None
        emit(
            SweepEvent(
                "plan", f"executor: {chosen[0]} ({_executor_why(chosen, opts.executor, runs)})"
            )
        )
    bad_ledger = Ledger(sweep_dir).problems()
    if bad_ledger:
        more = f" (and {len(bad_ledger) - 1} more bad line(s))" if len(bad_ledger) > 1 else ""
        if opts.command in ("run", "cancel") and not opts.dry_run:
            # the run a bad line names has lost its job record: submitting or cancelling now could
            # start it a second time or miss its live job, so the user fixes the line first
            raise SweepError(f"{bad_ledger[0]}{more}; nothing was started or cancelled")
        emit(SweepEvent("warning", f"{bad_ledger[0]}{more}; that line is ignored here"))
    if opts.warn_runs and len(runs) > opts.warn_runs and opts.command in ("run", "plan"):
        emit(SweepEvent("warning", _size_warning(sweep, runs, opts.warn_runs)))
    lock = None
    if opts.command == "run" and not opts.dry_run:
        # one driver per sweep folder: a second one waits (or refuses), then plans from what is on disk
        try:
            owner = store.owner()
            if owner is not None and opts.no_wait:
                raise SweepError(
                    f"another driver owns {sweep_dir}: {describe_owner(owner)}; nothing was started "
                    f"(--no-wait). Follow it with: python -m harness.sweep status {file}"
                    + (f" --preset {opts.preset}" if opts.preset else ""),
                    code=3,
                )
            lock = _wait_for_driver(store, runs, sweep_dir, opts.progress_every or 60.0, emit)
        except RunStoreError as e:
            raise SweepError(str(e)) from None
        except (KeyboardInterrupt, Interrupted) as e:
            raise SweepError(
                "stopped waiting for the other driver; nothing was started",
                code=128 + getattr(e, "signum", signal.SIGINT),
                prefix="",
            ) from None
        try:
            store.clear_cancel()  # a cancel request older than this driver is not for it
        except RunStoreError as e:
            lock.release()
            raise SweepError(str(e)) from None
    try:
        return _dispatch(file, opts, sweep, runs, sweep_dir, emit, chosen)
    except RunStoreError as e:
        raise SweepError(str(e)) from None
    except (KeyboardInterrupt, Interrupted) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        raise SweepError(
            f"interrupted by {signal_name(signum)}; runs it had started were stopped at a "
            f"checkpoint (state interrupted): run the same command again to resume them",
            code=128 + signum,
            prefix="",
        ) from None
    finally:
        if lock is not None:
            lock.release()


def _dispatch(
    file: str | Path,
    opts: SweepOptions,
    sweep: Sweep,
    runs: list[ResolvedRun],
    sweep_dir: Path,
    emit: Emit,
    chosen: tuple[str, str] | None = None,
) -> SweepOutcome:
    """The plan first, then what the command asks: show it (plan, status), cancel, or run."""
    rows = _plan(opts, sweep, runs, sweep_dir, emit)
    if opts.command in ("status", "plan"):
        _show(opts, rows, sweep_dir, emit)
        return SweepOutcome(sweep=sweep, sweep_dir=sweep_dir, rows=rows, code=0)
    if opts.command == "cancel":
        cancelled = _cancel(rows, sweep_dir, emit)
        return SweepOutcome(
            sweep=sweep, sweep_dir=sweep_dir, rows=rows, code=0, cancelled=cancelled
        )
    assert chosen is not None  # run_sweep chose (and emitted) it before planning
    rows, code = _run(file, opts, runs, rows, sweep_dir, chosen[0], emit)
    return SweepOutcome(sweep=sweep, sweep_dir=sweep_dir, rows=rows, code=code, executor=chosen[0])


def _plan(
    opts: SweepOptions, sweep: Sweep, runs: list[ResolvedRun], sweep_dir: Path, emit: Emit
) -> list[Row]:
    """Convert the datasets a run needs and lacks, then the plan: its table, what it costs, and
    what the user should know before anything starts."""
    pending = pending_datasets(sweep, runs)
    if pending and opts.command == "run" and not opts.dry_run:
        # before the plan: its params/FLOPs read the dataset's manifest, and every run needs it
        convert_datasets(sweep, pending, _say(emit, "progress"))
        pending = []
    rows, note = build_rows(runs, sweep_dir, with_describe=opts.describe)
    plan = _say(emit, "plan")
    plan(
        f"sweep {sweep.name}"
        + (f" (preset {sweep.preset})" if sweep.preset else "")
        + f": {len(runs)} runs in {sweep_dir}"
    )
    for line in table_lines(rows):
        plan(line)
    if note:
        plan(note)
    for line in tune_lines(sweep, rows) + budget_lines(sweep, rows):
        plan(line)
    for r in rows:
        if r.problem:
            emit(SweepEvent("warning", f"{r.name} ({r.run_id}): {r.problem}"))
    for rec in pending:
        plan(f"dataset {rec.folder}: not converted yet; `run` converts it first ({rec.command()})")
    for stale in stale_datasets(sweep, runs):
        emit(SweepEvent("warning", stale))
    if opts.dry_run:  # how small an effect this plan can detect, from earlier runs of its configs
        from harness.power import sweep_mde_lines

        for line in sweep_mde_lines(sweep, rows):
            plan(line)
    return rows


def _show(opts: SweepOptions, rows: list[Row], sweep_dir: Path, emit: Emit) -> None:
    """`plan` and `status`: who drives the sweep now, and (status) the finished runs' results."""
    owner = SweepStore(sweep_dir).owner()
    if owner is not None:
        emit(SweepEvent("plan", f"driver: {describe_owner(owner)} owns this sweep folder"))
    if opts.command == "status":
        for line in results_lines(rows):
            emit(SweepEvent("result", line))


def _cancel(rows: list[Row], sweep_dir: Path, emit: Emit) -> list[str]:
    """`cancel`: ask the driver to start none of the selected runs, stop their live jobs; the
    run ids whose jobs were cancelled."""
    sweep_store = SweepStore(sweep_dir)
    driver = sweep_store.owner()
    if driver is not None:
        # first, so that the driver starts none of them while the live ones are stopped
        sweep_store.request_cancel([r.run_id for r in rows if r.status != "done"])
        emit(
            SweepEvent(
                "result",
                f"asked the driver ({describe_owner(driver)}) to start none of the "
                f"{sum(r.status != 'done' for r in rows)} selected run(s) not done",
            )
        )
    latest = Ledger(sweep_dir).latest()
    entries = {
        r.run_id: latest[r.run_id]
        for r in rows
        if r.status in ("queued", "running") and r.run_id in latest
    }
    cancelled = executors.cancel(entries, {r.run_id: r.run_dir for r in rows})
    emit(
        SweepEvent(
            "result",
            f"cancelled {len(cancelled)} job(s): "
            + ", ".join(f"{r.name} ({r.job})" for r in rows if r.run_id in cancelled)
            + (
                "; running runs save a checkpoint and stop (state interrupted): a plain rerun "
                "resumes them"
                if cancelled
                else ""
            ),
        )
    )
    return cancelled


def _run(
    file: str | Path,
    opts: SweepOptions,
    runs: list[ResolvedRun],
    rows: list[Row],
    sweep_dir: Path,
    name: str,
    emit: Emit,
) -> tuple[list[Row], int]:
    """`run`: start what is not done with the executor `name`, follow what runs elsewhere, wait,
    and give the rows after it with the exit code (1 when some run is not done)."""
    todo = _todo(rows, opts)
    ex = executors.make_executor(
        name, sweep_dir, opts.max_parallel, progress_every_s=opts.progress_every
    )
    _check_gpu(_gpu_runs(todo or rows), ex, name, opts, emit)
    emit(SweepEvent("plan", _to_run_line(rows, todo)))
    # runs started elsewhere that this executor waits for instead of starting them again: SLURM jobs
    # of an earlier driver still queued/running; local runs another process still trains (a killed
    # driver's launcher, a hand-started run)
    followed = ex.follow([(_task(r), r.job) for r in rows if r.status in ("queued", "running")])
    if opts.dry_run or (not todo and not followed):
        if not opts.dry_run:
            if opts.floor:
                write_floor(rows, sweep_dir, _say(emit, "progress"))
            emit(
                SweepEvent(
                    "result",
                    f"nothing to run: {sum(r.status == 'done' for r in rows)}/{len(rows)} runs done",
                )
            )
        return rows, 0 if all(r.status == "done" for r in rows) or opts.dry_run else 1

    progress = _say(emit, "progress")
    for r in todo:
        if r.status == "done":
            progress(f"  moved finished run {r.name} aside to {set_aside(r.run_dir)}")
    prepare(todo, sweep_dir, file)
    if ex.on_this_machine:
        prepare_synthetic(todo, progress)
    if opts.floor:
        write_floor(rows, sweep_dir, progress)
    tasks = [_task(r) for r in todo]
    report = Reporter(len(tasks) + len(followed), emit)
    t0 = time.time()
    submitted = ex.submit(tasks, report)
    if opts.no_wait and ex.detached:
        progress(
            f"submitted {len(submitted)} job(s); follow with: python -m harness.sweep status {file}"
            + (f" --preset {opts.preset}" if opts.preset else "")
        )
        return _restate(rows, runs, sweep_dir), 0
    if followed and ex.detached:
        progress(
            f"following {len(followed)} job(s) submitted earlier: "
            + ", ".join(f"{h.task.name} ({h.job_id})" for h in followed)
        )
    _wait(ex, submitted + followed, report, file, opts)
    rows = _restate(rows, runs, sweep_dir)
    n_done = sum(r.status == "done" for r in rows)
    here = report.counts.get("done", 0)
    others = report.counts.get("followed", 0)
    emit(
        SweepEvent(
            "result",
            f"finished in {time.time() - t0:.1f} s: {n_done}/{len(rows)} runs done "
            f"({here} trained by this driver"
            + (f", {others} finished by another process" if others else "")
            + f", {n_done - here - others} done before)",
        )
    )
    for line in results_lines(rows):
        emit(SweepEvent("result", line))
    return rows, 0 if n_done == len(rows) else 1


def _todo(rows: list[Row], opts: SweepOptions) -> list[Row]:
    """The runs to start: new and interrupted ones, failed/cancelled with --retry-failed, done
    ones with --rerun-done."""
    return [
        r
        for r in rows
        if r.status in RUNNABLE
        or (opts.retry_failed and r.status in ("failed", "cancelled"))
        or (opts.rerun_done and r.status == "done")
    ]


def _to_run_line(rows: list[Row], todo: list[Row]) -> str:
    skipped = {
        s: sum(1 for r in rows if r.status == s and r not in todo)
        for s in ("done", "queued", "running", "failed", "cancelled")
    }
    return (
        f"to run: {len(todo)}; skipped: "
        + (", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "none")
        + (
            ""
            if not skipped["failed"] and not skipped["cancelled"]
            else "  (--retry-failed to rerun failed/cancelled)"
        )
    )


def _check_gpu(
    gpu: list[Row], ex: executors.Executor, name: str, opts: SweepOptions, emit: Emit
) -> None:
    """GPU runs on an executor of this machine: refused when the executor was the default choice
    (a dry run warns), a warning when the user asked for it."""
    if not gpu or not ex.on_this_machine:
        return
    rc_names = sorted({r.run.plan.resource_class for r in gpu})
    msg = (
        f"{len(gpu)} run(s) ask for GPUs (resources {', '.join(rc_names)}: accelerator gpu) but the "
        f"executor is {name}, on this machine"
    )
    if opts.executor is None:
        msg += (
            ". Use a CPU-sized preset (e.g. --preset laptop), submit from a machine with a SLURM cluster, "
            "or pass --executor local to run them here anyway."
        )
        if not opts.dry_run:
            raise SweepError(msg)
        emit(SweepEvent("warning", msg))
    else:
        emit(SweepEvent("warning", f"{msg} (--executor {name} as requested)"))


def _wait(
    ex: executors.Executor, handles: list, report: Reporter, file: str | Path, opts: SweepOptions
) -> None:
    """Wait for the runs; a signal stops them at a checkpoint and says how to resume."""
    try:
        ex.wait(handles, report)
    except (KeyboardInterrupt, Interrupted) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        n = report.counts.get("interrupted", 0)
        raise SweepError(
            f"interrupted by {signal_name(signum)}: {n} run(s) stopped at a checkpoint (state "
            f"interrupted), the others not started; run the same command again to resume: "
            f"python -m harness.sweep {file}" + (f" --preset {opts.preset}" if opts.preset else ""),
            code=128 + signum,
            prefix="",
        ) from None


def _restate(old: list[Row], runs: list[ResolvedRun], sweep_dir: Path) -> list[Row]:
    """The rows again, from the run folders and the scheduler after dispatch; the plan's params,
    FLOPs and cost carried over (they do not change)."""
    rows, _ = build_rows(runs, sweep_dir, with_describe=False)
    for new, was in zip(rows, old):
        new.params, new.flops_example, new.flops_total, new.cost_h = (
            was.params,
            was.flops_example,
            was.flops_total,
            was.cost_h,
        )
    return rows


def prepare_synthetic(rows: list[Row], say: Callable[[str], None] = lambda _line: None) -> None:
    """Generate each synthetic world the runs need once, here, before they start (local runs in
    parallel would otherwise each generate it, silently, inside their launchers); `say` gets
    one line before and after each."""
    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.resolve import dataset_folder, ensure_dataset, is_ready

    seen = set()
    for r in rows:
        d = r.run.cfg.data
        preset = d.synthetic_preset
        if preset is None or (preset, d.data_seed, d.cache_dir) in seen:
            continue
        seen.add((preset, d.data_seed, d.cache_dir))
        folder = dataset_folder(d.dataset, d.data_seed, d.cache_dir)
        if not is_ready(d.dataset, d.data_seed, d.cache_dir):
            say(
                f"generating the synthetic world {d.dataset} (seed {d.data_seed}) once into {folder} ..."
            )
            t0 = time.time()
            ensure_dataset(d.dataset, d.data_seed, d.cache_dir, progress=False)
            say(f"  done in {time.time() - t0:.0f} s; every run of this and later sweeps reuses it")


# the driver fits the floor itself up to this many events (~150 bytes each at the peak: ~3 GB);
# larger logs: `python -m harness.data stats DIR --floor ...` elsewhere fills the dataset's cache
FLOOR_MAX_EVENTS = 20_000_000


def _dataset_folder(cfg) -> Path:
    """Where a run's dataset lies on this machine (a synthetic world's cache folder, else the path)."""
    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.resolve import dataset_folder

    return dataset_folder(cfg.data.dataset, cfg.data.data_seed, cfg.data.cache_dir)


def write_floor(
    rows: list[Row], sweep_dir: Path, say: Callable[[str], None] = lambda _line: None
) -> Path | None:
    """The count-feature floor (harness/data/floor.py) of every dataset the sweep's runs read, at
    their seq_len values, into <sweep folder>/.sweep/floor.json, merged with what is there (an
    --only subset keeps the other windows). The analysis reads that file (no torch there).

    Informational, never an error: a dataset that is not on this machine (a SLURM-only path, a
    synthetic world not generated yet), larger than FLOOR_MAX_EVENTS and not cached, or that cannot
    be fitted is skipped with a note. The floor itself is cached in the dataset folder (.floor.json),
    so a rerun costs a file hash. `say` gets one line per dataset (its floor, or why skipped)."""
    import json

    import pyarrow as pa

    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.contract import MANIFEST
    from harness.data.floor import compute_floor

    wanted: dict[Path, tuple[str, set[int]]] = {}
    for r in rows:
        folder = _dataset_folder(r.run.cfg)
        wanted.setdefault(folder, (r.run.cfg.data.dataset, set()))[1].add(
            int(r.run.cfg.data.seq_len)
        )
    path = SweepStore(sweep_dir).floor
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        old = {}
    entries = {(e.get("folder"), e.get("fingerprint")): e for e in old.get("datasets", [])}
    for folder, (name, lens) in wanted.items():
        if not (folder / MANIFEST).exists():
            say(f"count-feature floor of {name}: skipped ({folder} is not on this machine)")
            continue
        t0 = time.time()
        try:
            f = compute_floor(folder, lens, max_events=FLOOR_MAX_EVENTS)
        except (ValueError, OSError, pa.ArrowException) as e:
            say(f"count-feature floor of {name}: skipped ({type(e).__name__}: {e})")
            continue
        f["data.dataset"] = name
        prev = entries.pop((f["folder"], f["fingerprint"]), None)
        if prev is not None:  # keep windows of earlier calls (another --only subset)
            have = {r["seq_len"] for r in f["records"]}
            f["records"] = sorted(
                f["records"] + [r for r in prev.get("records", []) if r["seq_len"] not in have],
                key=lambda r: r["seq_len"],
            )
        entries = {k: v for k, v in entries.items() if k[0] != f["folder"]}  # a stale fingerprint
        entries[(f["folder"], f["fingerprint"])] = f
        test = ", ".join(
            f"L {r['seq_len']} {r['test'].get('ctr_auc', float('nan')):.4f}"
            for r in f["records"]
            if r["seq_len"] in lens
        )
        say(
            f"count-feature floor of {name} (test CTR AUC; {SWEEP_META}/{FLOOR}, "
            f"{time.time() - t0:.1f} s): {test}"
        )
    if not entries:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"sweep": sweep_dir.name, "datasets": list(entries.values())}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def pending_datasets(sweep: Sweep, runs: list[ResolvedRun]) -> list[DatasetRecipe]:
    """The sweep file's `datasets:` folders that selected runs read and that do not exist yet."""
    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.contract import MANIFEST

    used = dict.fromkeys(r.cfg.data.dataset for r in runs)
    return [
        sweep.datasets[d] for d in used if d in sweep.datasets and not (Path(d) / MANIFEST).exists()
    ]


def stale_datasets(sweep: Sweep, runs: list[ResolvedRun]) -> list[str]:
    """Warnings for `datasets:` folders converted by an older converter: one without the `item_pop`
    impression feature (added in issue #20) that its recipe does not turn off. Runs are identified by
    their config, not by the data's content, so the folder is never replaced behind the user's back:
    the warning says how to reconvert (and that finished runs on the old folder stay as they are)."""
    import yaml

    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.contract import MANIFEST

    notes = []
    for d in dict.fromkeys(r.cfg.data.dataset for r in runs):
        rec = sweep.datasets.get(d)
        path = Path(d) / MANIFEST
        if rec is None or not path.exists() or rec.opt.get("item_pop", True) is False:
            continue
        try:
            labels = (yaml.safe_load(path.read_text()) or {}).get("labels") or {}
        except (OSError, yaml.YAMLError):
            continue  # validation reports a damaged manifest with its own message
        if "item_pop" not in labels:
            notes.append(
                f"dataset {d}: converted before the converters wrote item_pop (the candidate's "
                f"events so far, docs/converters.md); to use it, move the folder away and rerun, or "
                f"`{rec.command()} --overwrite`, and run the sweep into a new --runs-dir (finished "
                "runs on the old folder keep their results)"
            )
    return notes


def convert_datasets(
    sweep: Sweep, recipes: list[DatasetRecipe], say: Callable[[str], None]
) -> None:
    """Convert each missing dataset from its raw logs once, saying so (the real-data presets
    used to need a hand-typed conversion first). Any failure is one SweepError line; the converter
    writes into a temporary sibling, so a failed conversion leaves no half folder behind."""
    # harness.data pulls numpy, pandas and pyarrow: on use only, the driver and planner stay light
    from harness.data.contract import ContractError
    from harness.data.converters import convert

    where = sweep.path or "<sweep>"
    for rec in recipes:
        raw = rec.raw_path()
        if not raw.is_dir():
            raise SweepError(
                f"{where}: datasets.{rec.folder}: the raw folder {raw} does not exist (relative "
                f"to {Path.cwd()}); put the {rec.convert} files there (docs/converters.md) or "
                f"convert them yourself: {rec.command('RAW_DIR')}; nothing "
                "was started"
            )
        say(f"converting {rec.convert} logs {raw} once into {rec.folder} ({rec.command()}) ...")
        t0 = time.time()
        try:
            convert(rec.convert, raw, Path(rec.folder), **rec.opt)
        except (ContractError, FileExistsError, OSError, ValueError, TypeError, KeyError) as err:
            raise SweepError(
                f"{where}: datasets.{rec.folder}: converting {raw} failed ({type(err).__name__}: "
                f"{err}); nothing was started. Run `{rec.command()}` to see it alone"
            ) from None
        say(
            f"  done in {time.time() - t0:.0f} s; every later run reuses it "
            f"(check: python -m harness.data validate {rec.folder})"
        )


def _task(r: Row) -> executors.Task:
    return executors.Task(
        run_id=r.run.run_id,
        name=r.run.name,
        run_dir=r.run_dir,
        resource_class=r.run.plan.resource_class,
        resources=r.run.resources,
    )


if __name__ == "__main__":
    sys.exit(main())
