"""Where runs execute: in-process (debug), local processes, or SLURM through submitit.

Every executor starts the same callable, `harness.launch.LaunchRun()(run_dir)`, on a run folder that
already holds the resolved `config.yaml`. Every submission is appended to the sweep's ledger
(`<runs>/<sweep>/.sweep/ledger.jsonl`: run id, executor, job id or pid) so that a driver killed and
started again can ask the scheduler which runs are still queued or running instead of submitting
them twice.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.runstore import STATUS, RunStore, atomic_write_json
from harness.sweepfile import ResourceClass

LEDGER = Path(".sweep") / "ledger.jsonl"
SUBMITIT_DIR = Path(".sweep") / "submitit"
# scheduler states in which a job still owns its run (do not submit it again)
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                         "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"})


@dataclass(frozen=True, kw_only=True)
class Task:
    run_id: str
    name: str
    run_dir: Path
    resource_class: str
    resources: ResourceClass
    devices: int                    # the run config's train.devices (asserted equal to resources.devices)


Progress = Callable[[Task, str, str], None]      # (task, event, detail)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------ ledger

class Ledger:
    """Append-only record of submissions; the latest line per run id wins."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / LEDGER

    def record(self, run_id: str, executor: str, job_id: str | None = None, pid: int | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"run_id": run_id, "executor": executor, "job_id": job_id, "pid": pid,
                                "time": _now()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue        # a line torn by a killed driver: the ones before it still count
            out[entry["run_id"]] = entry
        return out

    def history(self, run_id: str) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("run_id") == run_id:
                rows.append(e)
        return rows


# ----------------------------------------------------------------------------------- job states

def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state per job id ("123" or array task "123_4"): squeue for live jobs, sacct after.

    Ids the scheduler no longer knows map to "UNKNOWN" (e.g. sacct disabled and job finished)."""
    out: dict[str, str] = {}
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return out
    q = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)], capture_output=True, text=True)
    if q.returncode == 0:
        for line in q.stdout.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in ids:
                out[jid] = state.split()[0]
    rest = [j for j in ids if j not in out]
    if rest:
        s = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(rest)],
                           capture_output=True, text=True)
        if s.returncode == 0:
            for line in s.stdout.splitlines():
                jid, _, state = line.strip().partition("|")
                if jid in rest and state:
                    out[jid] = state.split()[0]      # "CANCELLED by 0" -> CANCELLED
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


def job_state(entry: dict[str, Any] | None, run_dir: Path, slurm: dict[str, str] | None = None) -> str | None:
    """The scheduler's view of the latest submission of a run, or None when there is none."""
    if entry is None:
        return None
    if entry["executor"] == "slurm":
        states = slurm if slurm is not None else slurm_states([entry["job_id"]])
        return states.get(entry["job_id"], "UNKNOWN")
    if entry["executor"] == "local":
        return "RUNNING" if _pid_runs(entry.get("pid"), run_dir) else "EXITED"
    return "EXITED"     # debug runs live and die with the driver


def mark_failed(run_dir: Path, error: str) -> None:
    """Record a failure the run itself could not record (crash before train_run, scheduler kill).

    Keeps every other key of status.json; leaves a run that is DONE alone."""
    if (run_dir / "DONE").exists():
        return
    status = _read_status(run_dir)
    if status.get("state") == "failed" and status.get("error"):
        status["dispatch_error"] = error        # the run's own error says more: keep it first
    else:
        status.update({"state": "failed", "error": error})
    status["updated"] = _now()
    status.setdefault("attempts", 0)
    atomic_write_json(run_dir / STATUS, status)


def _read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict; {} when absent or unreadable (a run killed mid-write leaves no half
    file thanks to atomic writes, but a hand-edited one may be broken)."""
    try:
        return RunStore(run_dir).status() or {}
    except json.JSONDecodeError:
        return {}


# ------------------------------------------------------------------------------------- executors

class DebugExecutor:
    """In the driver's process, one run after another (breakpoints work)."""

    name = "debug"

    def __init__(self, sweep_dir: Path, **_: Any):
        self.ledger = Ledger(sweep_dir)

    def run(self, tasks: list[Task], progress: Progress) -> None:
        from harness.launch import LaunchRun
        for task in tasks:
            self.ledger.record(task.run_id, self.name, pid=os.getpid())
            progress(task, "start", "in-process")
            t0 = time.time()
            try:
                LaunchRun()(str(task.run_dir))
            except Exception as err:  # the sweep goes on; the run folder says what happened
                mark_failed(task.run_dir, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
                progress(task, "failed", f"{type(err).__name__}: {err}")
                continue
            progress(task, "done", f"{time.time() - t0:.1f} s")


class LocalExecutor:
    """Local processes (`python -m harness.launch RUN_DIR`), at most `max_parallel` at a time.

    Each process gets an equal share of the machine's cores as torch threads, so N parallel runs do
    not oversubscribe the CPU."""

    name = "local"

    def __init__(self, sweep_dir: Path, max_parallel: int = 1, **_: Any):
        self.ledger = Ledger(sweep_dir)
        self.max_parallel = max(1, int(max_parallel))

    def run(self, tasks: list[Task], progress: Progress) -> None:
        pending = list(tasks)
        running: dict[subprocess.Popen, tuple[Task, float, Any]] = {}
        threads = max(1, (os.cpu_count() or 1) // min(self.max_parallel, max(1, len(tasks))))
        env = {**os.environ, "HARNESS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        try:
            while pending or running:
                while pending and len(running) < self.max_parallel:
                    task = pending.pop(0)
                    (task.run_dir / "logs").mkdir(parents=True, exist_ok=True)
                    log = open(task.run_dir / "logs" / "launch.log", "ab")
                    proc = subprocess.Popen([sys.executable, "-m", "harness.launch", str(task.run_dir)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                    self.ledger.record(task.run_id, self.name, pid=proc.pid)
                    running[proc] = (task, time.time(), log)
                    progress(task, "start", f"pid {proc.pid}")
                time.sleep(0.2)
                for proc in [p for p in running if p.poll() is not None]:
                    task, t0, log = running.pop(proc)
                    log.close()
                    if proc.returncode == 0 and (task.run_dir / "DONE").exists():
                        progress(task, "done", f"{time.time() - t0:.1f} s")
                    else:
                        mark_failed(task.run_dir, f"launcher exited with code {proc.returncode} "
                                                  f"(see {task.run_dir / 'logs' / 'launch.log'})")
                        progress(task, "failed", f"exit {proc.returncode}; log: {task.run_dir / 'logs' / 'launch.log'}")
        except KeyboardInterrupt:
            # Ctrl-C stops the sweep: end our own children (their checkpoints let a rerun resume).
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            raise


def submitit_parameters(rc: ResourceClass, name: str, max_parallel: int | None) -> dict[str, Any]:
    """submitit parameters of one resource class. tasks per node = devices = GPUs per node (gpu)."""
    params: dict[str, Any] = {
        "name": name, "timeout_min": int(rc.time_min), "nodes": rc.nodes,
        "tasks_per_node": rc.tasks_per_node, "cpus_per_task": rc.cpus_per_task, "mem_gb": rc.mem_gb,
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


def check_devices(task: Task) -> None:
    """The one-value rule: SLURM tasks per node == Trainer devices (== GPUs per node on GPUs)."""
    rc = task.resources
    ok = rc.tasks_per_node == task.devices and (rc.accelerator != "gpu" or rc.gpus_per_node == task.devices)
    if not ok:
        raise AssertionError(f"run {task.name}: tasks_per_node={rc.tasks_per_node}, gpus_per_node={rc.gpus_per_node}, "
                             f"train.devices={task.devices} must all be equal (one srun task per device)")


class SlurmExecutor:
    """SLURM through submitit: one job array per resource class, Checkpointable jobs (requeue)."""

    name = "slurm"

    def __init__(self, sweep_dir: Path, max_parallel: int | None = None, job_prefix: str = "", **_: Any):
        self.sweep_dir = Path(sweep_dir)
        self.ledger = Ledger(sweep_dir)
        self.max_parallel = max_parallel
        self.job_prefix = job_prefix or self.sweep_dir.name

    def submit(self, tasks: list[Task], progress: Progress) -> list[tuple[Task, Any]]:
        import submitit

        from harness.launch import LaunchRun
        by_class: dict[str, list[Task]] = defaultdict(list)
        for task in tasks:
            check_devices(task)
            by_class[task.resource_class].append(task)
        submitted = []
        for cls, group in by_class.items():
            rc = group[0].resources
            ex = submitit.AutoExecutor(folder=self.sweep_dir / SUBMITIT_DIR / "%j", cluster="slurm",
                                       slurm_max_num_timeout=rc.max_num_timeout)
            ex.update_parameters(**submitit_parameters(rc, f"{self.job_prefix}-{cls}", self.max_parallel))
            with ex.batch():
                jobs = [ex.submit(LaunchRun(), str(t.run_dir)) for t in group]
            for task, job in zip(group, jobs):
                self.ledger.record(task.run_id, self.name, job_id=str(job.job_id))
                _add_job_to_status(task.run_dir, str(job.job_id))
                progress(task, "submitted", f"job {job.job_id} ({cls})")
                submitted.append((task, job))
        return submitted

    def attach(self, pairs: list[tuple[Task, str]]) -> list[tuple[Task, Any]]:
        """submitit handles of jobs submitted by an earlier driver (from the ledger's job ids)."""
        import submitit
        return [(task, submitit.SlurmJob(folder=self.sweep_dir / SUBMITIT_DIR / "%j", job_id=jid)) for task, jid in pairs]

    def wait(self, submitted: list[tuple[Task, Any]], progress: Progress, poll_s: float = 5.0) -> None:
        """Follow the jobs until each one ends; report requeues and failures as they happen."""
        open_jobs = {str(job.job_id): (task, job) for task, job in submitted}
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
                if (task.run_dir / "DONE").exists():
                    progress(task, "done", f"job {jid}")
                    del open_jobs[jid]
                elif state != "UNKNOWN" or _result_file_written(job):
                    mark_failed(task.run_dir, f"SLURM job {jid} ended {state} without finishing the run; "
                                              f"log: {_job_log(job)}")
                    progress(task, "failed" if state != "CANCELLED" else "cancelled", f"job {jid} {state}; log: {_job_log(job)}")
                    del open_jobs[jid]
            if open_jobs:
                time.sleep(poll_s)


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
    """Mirror the job id into the run's status.json ("jobs" list), keeping its other keys."""
    status = _read_status(run_dir)
    status.setdefault("state", "queued")
    if status["state"] in ("failed",):
        status["state"] = "queued"
    status["jobs"] = [*status.get("jobs", []), job_id]
    status["updated"] = _now()
    atomic_write_json(run_dir / STATUS, status)


def cancel(entries: dict[str, dict[str, Any]], run_dirs: dict[str, Path]) -> list[str]:
    """Cancel the live jobs of these runs (SLURM: scancel; local: SIGTERM to the launcher)."""
    done = []
    slurm_ids = [e["job_id"] for e in entries.values() if e["executor"] == "slurm" and e.get("job_id")]
    states = slurm_states(slurm_ids) if slurm_ids else {}
    to_scancel = []
    for run_id, e in entries.items():
        if e["executor"] == "slurm" and states.get(e["job_id"]) in LIVE_STATES:
            to_scancel.append(e["job_id"])
            done.append(run_id)
        elif e["executor"] == "local" and _pid_runs(e.get("pid"), run_dirs[run_id]):
            os.killpg(e["pid"], signal.SIGTERM)
            done.append(run_id)
    if to_scancel:
        subprocess.run(["scancel", *to_scancel], check=True)
    return done


def make_executor(name: str, sweep_dir: Path, max_parallel: int | None):
    if name == "debug":
        return DebugExecutor(sweep_dir)
    if name == "local":
        return LocalExecutor(sweep_dir, max_parallel=max_parallel or 1)
    if name == "slurm":
        return SlurmExecutor(sweep_dir, max_parallel=max_parallel)
    raise ValueError(f"unknown executor {name!r}; choose slurm, local or debug")
