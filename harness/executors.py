"""Where runs execute: in-process (debug), local processes, or SLURM through submitit.

Every executor starts the same callable, `harness.launch.LaunchRun()(run_dir)`, on a run folder that
already holds the resolved `config.yaml`. Every submission is appended to the sweep's ledger
(`<runs>/<sweep>/.sweep/ledger.jsonl`: run id, executor, job id or pid) so that a driver killed and
started again can ask the scheduler which runs are still queued or running instead of submitting
them twice.

Before starting or submitting a run, every executor looks at its folder again
(`RunStore.availability`): a run finished meanwhile is not started, and a run another live process
owns is followed or skipped, never trained twice; the launcher itself refuses a folder another
process owns (exit 75).

Every executor has one interface (`Executor`): `submit` hands it runs, `follow` adds runs started
elsewhere that it should wait for, `wait` returns when all of them have ended; `state` and `cancel`
act on the ledger entries of earlier submissions (whichever driver made them), through the class of
the executor that made each one (`job_state`, `cancel`). The sweep driver (harness/sweep.py) picks
one executor and never asks which one it is; two flags say what differs for it (`on_this_machine`,
`detached`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from harness.config import Resources
from harness.runstore import (
    EXIT_BUSY,
    INTERRUPTED,
    STATUS,
    Interrupted,
    Ledger,
    RunStore,
    RunStoreError,
    SweepStore,
    describe_owner,
)

__all__ = [
    "Ledger",
    "Task",
    "Handle",
    "Executor",
    "LIVE_STATES",
    "job_state",
    "known_states",
    "mark_failed",
    "make_executor",
    "cancel",
    "submitit_parameters",
]

# exit codes of a launcher stopped by SIGTERM or SIGINT: 128 + signal when it said so itself,
# -signal when the signal killed it before its handlers were installed
INTERRUPT_CODES = frozenset(
    {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}
)
# how long a driver that was stopped waits for its runs to save their checkpoints and exit
STOP_WAIT_S = float(os.environ.get("HARNESS_STOP_WAIT_S", "300"))
NOT_STARTED = "not started: the sweep was cancelled (harness.sweep cancel); a plain rerun starts it"

# scheduler states in which a job still owns its run (do not submit it again)
LIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SIGNALING",
        "STAGE_OUT",
        "PREEMPTED",
    }
)


@dataclass(frozen=True, kw_only=True)
class Task:
    run_id: str
    name: str
    run_dir: Path
    resource_class: str
    resources: Resources  # the run config's resources: devices, nodes, accelerator have one home

    @property
    def store(self) -> RunStore:
        return RunStore(self.run_dir)


Progress = Callable[[Task, str, str], None]  # (task, event, detail)
Entry = dict[str, Any]  # one ledger line: run_id, executor, job_id or pid, time


@dataclass(eq=False)
class Handle:
    """One run an executor answers for until it ends: submitted by this driver, or followed
    (started elsewhere: an earlier driver's SLURM job, a process that owns the run folder)."""

    task: Task
    job_id: str = ""  # SLURM job id ("123_4"); "" for local and debug runs
    job: Any = None  # the submitit job, once there is one
    followed: bool = False  # started elsewhere: waited for, never started here


@runtime_checkable
class Executor(Protocol):
    """Where runs execute. A driver makes one (`make_executor`), hands it the runs to start
    (`submit`) and the runs started elsewhere to wait for (`follow`), then `wait`s for all of them.
    `state` and `cancel` work on ledger entries this executor's kind wrote, by any driver; they are
    class methods, so any executor's entries can be asked about whichever one a driver picked."""

    name: ClassVar[str]
    on_this_machine: ClassVar[
        bool
    ]  # runs train on this machine (GPU runs refused, data made here first)
    detached: ClassVar[bool]  # runs outlive the driver: it may submit and return (--no-wait)

    def submit(self, tasks: list[Task], progress: Progress) -> list[Handle]:
        """Hand over runs to start; runs that are done or owned by now are reported, not started."""
        ...

    def follow(self, running: list[tuple[Task, str]]) -> list[Handle]:
        """Of the runs the sweep sees queued or running (task, job description), those this
        executor waits for, without starting them again. Selects only: no output, no scheduler call."""
        ...

    def wait(self, handles: list[Handle], progress: Progress) -> None:
        """Return when every run of `handles` has ended, reporting each event through `progress`."""
        ...

    @classmethod
    def known_states(cls, entries: list[Entry]) -> dict[str, str]:
        """Scheduler states of these entries' jobs asked at once (job id -> state), for `state`."""
        ...

    @classmethod
    def state(cls, entry: Entry, run_dir: Path, known: dict[str, str] | None = None) -> str:
        """The scheduler's view of one submission: a LIVE_STATES member while its job still owns
        the run, else how it ended (EXITED, FAILED, CANCELLED, UNKNOWN...)."""
        ...

    @classmethod
    def cancel(cls, entries: dict[str, Entry], run_dirs: dict[str, Path]) -> list[str]:
        """Cancel the live jobs of these runs (run id -> latest entry); the run ids cancelled."""
        ...


# ----------------------------------------------------------------------------------- job states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state per job id ("123" or array task "123_4"): squeue for live jobs, sacct after.

    Ids the scheduler no longer knows map to "UNKNOWN" (e.g. sacct disabled and job finished)."""
    out: dict[str, str] = {}
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return out
    q = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)], capture_output=True, text=True
    )
    if q.returncode == 0:
        for line in q.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in ids:
                out[jid] = state.split()[0]
    rest = [j for j in ids if j not in out]
    if rest:
        s = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(rest)],
            capture_output=True,
            text=True,
        )
        if s.returncode == 0:
            for line in s.stdout.splitlines():
                jid, _, state = line.strip().partition("|")
                if jid in rest and state:
                    out[jid] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    for j in ids:
        out.setdefault(j, "UNKNOWN")
    return out


def _pid_runs(pid: int | None, run_dir: Path) -> bool:
    """True when `pid` is alive and is the launcher of this run (guards against pid reuse)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"harness.launch" in cmdline and str(run_dir).encode() in cmdline


def job_state(
    entry: Entry | None, run_dir: Path, known: dict[str, str] | None = None
) -> str | None:
    """The scheduler's view of the latest submission of a run, or None when there is none.
    `known`: job states asked beforehand for many entries at once (`known_states`)."""
    if entry is None:
        return None
    return executor_class(entry["executor"]).state(entry, run_dir, known)


def known_states(entries: list[Entry]) -> dict[str, str]:
    """Job id -> scheduler state for these entries, one question per executor kind (squeue once)."""
    out: dict[str, str] = {}
    for kind, group in _by_executor(entries).items():
        out.update(executor_class(kind).known_states(group))
    return out


def _by_executor(entries: list[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[e["executor"]].append(e)
    return groups


def mark_failed(run_dir: Path, error: str) -> str | None:
    """Record a failure the run itself could not record (RunStore.mark_failed). Never raises: a
    driver that cannot write one run's status (full disk) goes on with the others; the returned
    text (None when all went well) says what could not be recorded."""
    try:
        RunStore(run_dir).mark_failed(error)
    except (RunStoreError, OSError) as err:
        return f"could not record the failure in {Path(run_dir) / STATUS}: {err}"
    return None


def _record(ledger: Ledger, task: Task, progress: Progress, executor: str, **ids: Any) -> None:
    """Ledger line of a submission; a ledger that cannot be written (full disk) is reported, not
    fatal: the run's own lock still prevents a second training of it."""
    try:
        ledger.record(task.run_id, executor, **ids)
    except RunStoreError as err:
        progress(task, "warning", str(err))


# ------------------------------------------------------------------------------------- executors


def progress_text(store: RunStore) -> str | None:
    """'step 120/1200 (10%), 2.1 steps/s, ETA 8m34s' from the run's progress.json (None: none yet)."""
    p = store.progress()
    if not p or p.get("step") is None:
        return None
    step, total, rate, eta = p.get("step"), p.get("total"), p.get("steps_per_s"), p.get("eta_s")
    text = f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")
    if p.get("phase") and p["phase"] != "train":
        return text + f", {p['phase']}"  # evaluation: the training ETA says nothing about it
    if rate:
        text += f", {rate:.3g} steps/s"
    if eta is not None:
        text += f", ETA {_duration(eta)}"
    return text


def _duration(s: float) -> str:
    s = int(round(s))
    return (
        f"{s // 3600}h{s % 3600 // 60:02d}m"
        if s >= 3600
        else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
    )


class _QueueThenWait:
    """submit/follow of the executors that run on the driver's machine (debug, local): `submit`
    only queues (their `wait` starts the runs), and a run another live process already owns (a
    killed driver's launcher, a hand-started run) is followed until that process lets go of it."""

    def submit(self, tasks: list[Task], progress: Progress) -> list[Handle]:
        return [Handle(task) for task in tasks]

    def follow(self, running: list[tuple[Task, str]]) -> list[Handle]:
        return [
            Handle(task, followed=True) for task, _ in running if task.store.owner() is not None
        ]


class DebugExecutor(_QueueThenWait):
    """In the driver's process, one run after another (breakpoints work). `submit` only queues:
    `wait` runs them; followed runs are counted by the driver, not polled (see wait)."""

    name = "debug"
    on_this_machine = True
    detached = False

    def __init__(self, sweep_dir: Path, **_: Any):
        self.ledger = Ledger(sweep_dir)
        self.sweep = SweepStore(sweep_dir)

    def wait(self, handles: list[Handle], progress: Progress) -> None:
        # submitit: on use only (the local and debug executors need none of it)
        from harness.launch import LaunchRun

        for handle in handles:
            if handle.followed:  # in-process runs only; another process's run ends on its own
                continue
            task = handle.task
            if task.run_id in self.sweep.cancel_requested():
                progress(task, "cancelled", NOT_STARTED)
                continue
            state, owner = task.store.availability()
            if state == "done":
                progress(task, "followed", "finished meanwhile by another process")
                continue
            if state == "owned":
                progress(task, "skipped", f"owned by {describe_owner(owner)}; not trained twice")
                continue
            _record(self.ledger, task, progress, self.name, pid=os.getpid())
            progress(task, "start", "in-process")
            t0 = time.time()
            try:
                LaunchRun()(str(task.run_dir))
            except (Interrupted, KeyboardInterrupt) as err:
                # in-process: the signal stops the run (checkpoint saved, recorded interrupted)
                # and the sweep with it
                progress(task, "interrupted", str(err) or "Ctrl-C")
                raise
            except Exception as err:  # the sweep goes on; the run folder says what happened
                note = mark_failed(
                    task.run_dir, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}"
                )
                progress(
                    task, "failed", f"{type(err).__name__}: {err}" + (f" ({note})" if note else "")
                )
                continue
            progress(task, "done", f"{time.time() - t0:.1f} s")

    @classmethod
    def known_states(cls, entries: list[Entry]) -> dict[str, str]:
        return {}

    @classmethod
    def state(cls, entry: Entry, run_dir: Path, known: dict[str, str] | None = None) -> str:
        return "EXITED"  # debug runs live and die with the driver

    @classmethod
    def cancel(cls, entries: dict[str, Entry], run_dirs: dict[str, Path]) -> list[str]:
        return []


class _Output:
    """A launcher's stdout+stderr: copied to logs/launch.log and its tail kept in memory, so the
    run's own error reaches the driver even when the log cannot be written (full disk)."""

    def __init__(self, proc: subprocess.Popen, log_path: Path, keep: int = 200):
        self.lines: deque[str] = deque(maxlen=keep)
        self.log_error: str | None = None
        self.log_path = log_path
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(log_path, "ab")
        except OSError as err:
            self.log, self.log_error = None, str(err)
        self.thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            if self.log is not None:
                try:
                    self.log.write(raw)
                    self.log.flush()
                except OSError as err:
                    self.log_error = str(err)
                    try:
                        self.log.close()
                    except OSError:
                        pass
                    self.log = None
        stream.close()

    def close(self) -> None:
        self.thread.join(timeout=10)
        if self.log is not None:
            try:
                self.log.close()
            except OSError as err:
                self.log_error = str(err)

    def error_line(self) -> str:
        """The launcher's last 'error: ...' line, else its last non-empty line."""
        lines = [x for x in self.lines if x.strip()]
        for x in reversed(lines):
            if x.startswith("error:") or "Error:" in x:
                return x.strip()
        return lines[-1].strip() if lines else "(no output)"

    def tail(self, n: int = 15) -> list[str]:
        return [x for x in self.lines if x.strip()][-n:]


def local_threads(cpus_per_task: int, share: int) -> int:
    """Torch threads for a run the local executor starts: the CPUs its resource class asks for
    (what SLURM grants it as cpus_per_task), at most its share of this machine's cores (cores /
    runs at once). Not the share alone: a run's float sums are split by thread, so the same run
    on 1 or 2 threads ends on other figures (the tmall preset at L 128, seed 0: val CTR AUC 0.7327
    on one thread, 0.7293 on two; docs/sweeps.md), and a class of 1 CPU would train on 2 threads
    when it ran alone (a rerun of one failed run) and on 1 beside its siblings."""
    return max(1, min(int(cpus_per_task), share))


class LocalExecutor(_QueueThenWait):
    """Local processes (`python -m harness.launch RUN_DIR`), at most `max_parallel` at a time.

    Each process gets an equal share of the machine's cores as torch threads, so N parallel runs do
    not oversubscribe the CPU. Right before starting a run the executor looks at its folder again:
    a run finished meanwhile is not started, and a run another live process owns (another driver's
    launcher, a hand-started `harness.train`) is followed until that process lets go of it. Every
    `progress_every_s` seconds it reports each running run's step and ETA (progress.json).
    `submit` only queues: `wait` starts the processes as slots free up."""

    name = "local"
    on_this_machine = True
    detached = False

    def __init__(
        self,
        sweep_dir: Path,
        max_parallel: int | None = 1,
        progress_every_s: float = 30.0,
        **_: Any,
    ):
        self.ledger = Ledger(sweep_dir)
        self.sweep = SweepStore(sweep_dir)
        self.max_parallel = max(1, int(max_parallel or 1))  # None: the default, one at a time
        self.progress_every_s = progress_every_s

    def wait(self, handles: list[Handle], progress: Progress) -> None:
        pending = [h.task for h in handles if not h.followed]
        n_new = len(pending)
        running: dict[subprocess.Popen, tuple[Task, float, _Output]] = {}
        followed: list[Task] = [h.task for h in handles if h.followed]
        for task in followed:
            progress(task, "following", f"owned by {describe_owner(task.store.owner())}")
        share = max(1, (os.cpu_count() or 1) // min(self.max_parallel, max(1, n_new)))
        last_report = time.time()
        said: dict[str, str] = {}
        stopping: set[int] = set()  # pids of our launchers already sent SIGTERM for a cancel
        try:
            while pending or running or followed:
                cancelled = self.sweep.cancel_requested()
                if cancelled:
                    # `cancel` (another process) stops the queue: what is not started never is,
                    # and our own launchers of these runs get SIGTERM (cancel may have read the
                    # ledger before we recorded a launcher started just now)
                    for task in [t for t in pending if t.run_id in cancelled]:
                        pending.remove(task)
                        progress(task, "cancelled", NOT_STARTED)
                    for proc, (task, _, _) in running.items():
                        if task.run_id in cancelled and proc.pid not in stopping:
                            stopping.add(proc.pid)
                            proc.send_signal(signal.SIGTERM)
                while pending and len(running) < self.max_parallel:
                    task = pending.pop(0)
                    store = task.store
                    state, owner = store.availability()
                    if state == "done":
                        progress(
                            task,
                            "followed",
                            "finished meanwhile by another process; not started again",
                        )
                        continue
                    if state == "owned":
                        progress(
                            task,
                            "following",
                            f"owned by {describe_owner(owner)}; waiting for it, not training it twice",
                        )
                        followed.append(task)
                        continue
                    threads = local_threads(task.resources.cpus_per_task, share)
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "harness.launch", str(task.run_dir)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env={
                            **os.environ,
                            "HARNESS_NUM_THREADS": str(threads),
                            "OMP_NUM_THREADS": str(threads),
                            "PYTHONUNBUFFERED": "1",
                        },
                        start_new_session=True,
                    )
                    out = _Output(proc, store.launch_log)
                    _record(self.ledger, task, progress, self.name, pid=proc.pid)
                    running[proc] = (task, time.time(), out)
                    progress(task, "start", f"pid {proc.pid}")
                time.sleep(0.2)
                for proc in [p for p in running if p.poll() is not None]:
                    task, t0, out = running.pop(proc)
                    out.close()
                    self._ended(task, proc.returncode, time.time() - t0, out, progress, followed)
                for task in list(followed):
                    if task.store.owner() is None:
                        followed.remove(task)
                        self._followed_ended(task, progress)
                if self.progress_every_s and time.time() - last_report >= self.progress_every_s:
                    last_report = time.time()
                    for task, event in [
                        *((t, "progress") for t, _, _ in running.values()),
                        *((t, "following") for t in followed),
                    ]:
                        text = progress_text(task.store)
                        if text and said.get(task.run_id) != text:  # only news
                            said[task.run_id] = text
                            progress(task, event, text)
        except (KeyboardInterrupt, Interrupted):
            # Ctrl-C or SIGTERM stops the sweep: our launchers get SIGTERM, save a checkpoint and
            # record `interrupted`; we wait for that (a second Ctrl-C stops waiting), so that the
            # driver's last lines say where each run stopped and a plain rerun resumes them
            self._stop(running, progress, followed)
            raise

    def _stop(
        self,
        running: dict[subprocess.Popen, tuple[Task, float, _Output]],
        progress: Progress,
        followed: list[Task],
    ) -> None:
        for proc in running:
            proc.send_signal(signal.SIGTERM)  # the launcher alone: it stops its own data workers
        deadline = time.time() + STOP_WAIT_S
        while running and time.time() < deadline:
            for proc in [p for p in running if p.poll() is not None]:
                task, t0, out = running.pop(proc)
                out.close()
                self._ended(task, proc.returncode, time.time() - t0, out, progress, followed)
            time.sleep(0.1)
        for proc, (task, _, _) in running.items():
            progress(task, "warning", f"pid {proc.pid} did not stop within {STOP_WAIT_S:.0f} s")

    def _ended(
        self,
        task: Task,
        rc: int,
        seconds: float,
        out: _Output,
        progress: Progress,
        followed: list[Task],
    ) -> None:
        log = task.store.launch_log
        if rc == 0 and task.store.is_done():
            progress(task, "done", f"{seconds:.1f} s")
            return
        if rc in INTERRUPT_CODES:
            # a signal (cancel, Ctrl-C, a stopped driver), not a failure: a plain rerun resumes it.
            # The exit code decides, not status.json: an earlier attempt's `interrupted` must not
            # hide this attempt's failure
            status = task.store.status() or {}
            said = status.get("error") if status.get("state") == INTERRUPTED else None
            progress(task, "interrupted", f"exit {rc}: {said or out.error_line()}")
            return
        if rc == EXIT_BUSY:
            # another process took the run between our look and the launcher's lock: follow it
            progress(task, "following", out.error_line())
            followed.append(task)
            return
        note = mark_failed(
            task.run_dir, f"launcher exited with code {rc}: {out.error_line()} (log: {log})"
        )
        detail = f"exit {rc}: {out.error_line()}; log: {log}"
        if out.log_error:
            detail += f" (the log is incomplete: {out.log_error}; its last lines follow)"
        if note:
            detail += f"; {note}"
        progress(task, "failed", detail + "\n" + "\n".join(f"      | {x}" for x in out.tail()))

    def _followed_ended(self, task: Task, progress: Progress) -> None:
        store = task.store
        if store.is_done():
            progress(task, "followed", "finished by its other owner")
        else:
            st = store.status() or {}
            progress(
                task,
                "stopped",
                f"its other owner stopped without finishing it (status {st.get('state')}: "
                f"{st.get('error') or '-'}); rerun the sweep to resume it",
            )

    @classmethod
    def known_states(cls, entries: list[Entry]) -> dict[str, str]:
        return {}

    @classmethod
    def state(cls, entry: Entry, run_dir: Path, known: dict[str, str] | None = None) -> str:
        return "RUNNING" if _pid_runs(entry.get("pid"), run_dir) else "EXITED"

    @classmethod
    def cancel(cls, entries: dict[str, Entry], run_dirs: dict[str, Path]) -> list[str]:
        """SIGTERM to the launcher: it saves a checkpoint, records the run `interrupted` and
        stops its own data workers (signalling its whole process group would kill those workers
        under it, mid-batch)."""
        done = []
        for run_id, e in entries.items():
            if _pid_runs(e.get("pid"), run_dirs[run_id]):
                os.kill(e["pid"], signal.SIGTERM)
                done.append(run_id)
        return done


def submitit_parameters(rc: Resources, name: str, max_parallel: int | None) -> dict[str, Any]:
    """submitit parameters of one resource class: the one place a Resources becomes a SLURM
    request. tasks per node = devices = GPUs per node (gpu)."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": int(rc.time_min),
        "nodes": rc.nodes,
        "tasks_per_node": rc.tasks_per_node,
        "cpus_per_task": rc.cpus_per_task,
        "mem_gb": rc.mem_gb,
        "slurm_array_parallelism": min(rc.array_parallelism, max_parallel or rc.array_parallelism),
        "slurm_signal_delay_s": rc.signal_delay_s,
    }
    if rc.gpus_per_node:
        params["gpus_per_node"] = rc.gpus_per_node
    for key in ("partition", "account", "qos"):
        value = getattr(rc, key)
        if value:
            params[f"slurm_{key}"] = value
    return params


class SlurmExecutor:
    """SLURM through submitit: one job array per resource class, Checkpointable jobs (requeue)."""

    name = "slurm"
    on_this_machine = False
    detached = True

    def __init__(
        self, sweep_dir: Path, max_parallel: int | None = None, job_prefix: str = "", **_: Any
    ):
        self.sweep_dir = Path(sweep_dir)
        self.ledger = Ledger(sweep_dir)
        self.submitit_dir = SweepStore(sweep_dir).submitit / "%j"
        self.max_parallel = max_parallel
        self.job_prefix = job_prefix or self.sweep_dir.name

    def submit(self, tasks: list[Task], progress: Progress) -> list[Handle]:
        import submitit

        # submitit: on use only (the local and debug executors need none of it)
        from harness.launch import LaunchRun

        by_class: dict[str, list[Task]] = defaultdict(list)
        for task in tasks:
            state, owner = task.store.availability()
            if state == "done":
                progress(task, "followed", "finished meanwhile by another process; not submitted")
                continue
            if state == "owned":  # e.g. a hand-started harness.train on this folder
                progress(task, "skipped", f"owned by {describe_owner(owner)}; not submitted twice")
                continue
            by_class[task.resource_class].append(task)
        submitted = []
        for cls, group in by_class.items():
            rc = group[0].resources
            ex = submitit.AutoExecutor(
                folder=self.submitit_dir, cluster="slurm", slurm_max_num_timeout=rc.max_num_timeout
            )
            ex.update_parameters(
                **submitit_parameters(rc, f"{self.job_prefix}-{cls}", self.max_parallel)
            )
            with ex.batch():
                jobs = [ex.submit(LaunchRun(), str(t.run_dir)) for t in group]
            for task, job in zip(group, jobs):
                _record(self.ledger, task, progress, self.name, job_id=str(job.job_id))
                try:
                    task.store.add_job(str(job.job_id))
                except RunStoreError as err:
                    progress(task, "warning", str(err))
                progress(task, "submitted", f"job {job.job_id} ({cls})")
                submitted.append(Handle(task, job_id=str(job.job_id), job=job))
        return submitted

    def follow(self, running: list[tuple[Task, str]]) -> list[Handle]:
        # jobs an earlier driver submitted (job ids from the ledger); submitit handles come in wait()
        return [Handle(task, job_id=job, followed=True) for task, job in running if job]

    def wait(self, handles: list[Handle], progress: Progress, poll_s: float = 5.0) -> None:
        """Follow the jobs until each one ends; report requeues and failures as they happen."""
        import submitit

        open_jobs = {
            h.job_id: (
                h.task,
                h.job or submitit.SlurmJob(folder=self.submitit_dir, job_id=h.job_id),
            )
            for h in handles
        }
        seen: dict[str, str] = {}
        while open_jobs:
            states = slurm_states(list(open_jobs))
            for jid, (task, job) in list(open_jobs.items()):
                state = states.get(jid, "UNKNOWN")
                if state != seen.get(jid):
                    seen[jid] = state
                    if state in LIVE_STATES:
                        progress(task, state.lower(), f"job {jid}")
                if state in LIVE_STATES:
                    continue
                if task.store.is_done():
                    progress(task, "done", f"job {jid}")
                    del open_jobs[jid]
                elif (task.store.status() or {}).get("state") == INTERRUPTED:
                    # the run saved its checkpoint on the signal (scancel, preemption, time limit)
                    progress(task, "interrupted", f"job {jid} {state}; a plain rerun resumes it")
                    del open_jobs[jid]
                elif state != "UNKNOWN" or _result_file_written(job):
                    note = mark_failed(
                        task.run_dir,
                        f"SLURM job {jid} ended {state} without finishing the run; "
                        f"log: {_job_log(job)}",
                    )
                    progress(
                        task,
                        "failed" if state != "CANCELLED" else "cancelled",
                        f"job {jid} {state}; log: {_job_log(job)}" + (f"; {note}" if note else ""),
                    )
                    del open_jobs[jid]
            if open_jobs:
                time.sleep(poll_s)

    @classmethod
    def known_states(cls, entries: list[Entry]) -> dict[str, str]:
        ids = [e["job_id"] for e in entries if e.get("job_id")]
        return slurm_states(ids) if ids else {}

    @classmethod
    def state(cls, entry: Entry, run_dir: Path, known: dict[str, str] | None = None) -> str:
        states = known if known is not None else slurm_states([entry["job_id"]])
        return states.get(entry["job_id"], "UNKNOWN")

    @classmethod
    def cancel(cls, entries: dict[str, Entry], run_dirs: dict[str, Path]) -> list[str]:
        """scancel the jobs the scheduler still calls live (one call for all of them)."""
        states = cls.known_states(list(entries.values()))
        live = {
            run_id: e["job_id"]
            for run_id, e in entries.items()
            if states.get(e["job_id"]) in LIVE_STATES
        }
        if live:
            subprocess.run(["scancel", *live.values()], check=True)
        return list(live)


def _result_file_written(job: Any) -> bool:
    try:
        return job.paths.result_pickle.exists()
    except Exception:
        return False


def _job_log(job: Any) -> str:
    try:
        return str(job.paths.stderr)
    except Exception:
        return "?"


def _add_job_to_status(run_dir: Path, job_id: str) -> None:
    RunStore(run_dir).add_job(job_id)


# The one registry of executor names: the CLI's --executor choices (harness/sweep.py),
# cluster.choose_executor's check and make_executor all read it. The order is the one --help shows.
EXECUTORS: dict[str, type[Executor]] = {
    "slurm": SlurmExecutor,
    "local": LocalExecutor,
    "debug": DebugExecutor,
}


def executor_class(name: str) -> type[Executor]:
    """The executor kind that wrote a ledger entry. An unknown name (a hand-edited ledger) reads
    like a debug entry: nothing to ask, nothing to cancel."""
    return EXECUTORS.get(name, DebugExecutor)


def cancel(entries: dict[str, Entry], run_dirs: dict[str, Path]) -> list[str]:
    """Cancel the live jobs of these runs (SLURM: scancel; local: SIGTERM to the launcher), each
    through the kind of executor that submitted it."""
    done: list[str] = []
    for kind in dict.fromkeys(e["executor"] for e in entries.values()):
        group = {run_id: e for run_id, e in entries.items() if e["executor"] == kind}
        done += executor_class(kind).cancel(group, run_dirs)
    return done


def make_executor(
    name: str, sweep_dir: Path, max_parallel: int | None, progress_every_s: float = 30.0
) -> Executor:
    """The named executor for a sweep folder; each takes the options it uses and ignores the rest."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](sweep_dir, max_parallel=max_parallel, progress_every_s=progress_every_s)
