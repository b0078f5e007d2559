"""The run folder and the sweep folder (docs/contracts.md §4): file names, states, locks, writes.

    <runs>/<sweep>/<run_id>/
      config.yaml  provenance.json  status.json  progress.json  metrics.csv  result.json
      checkpoints/  logs/{launch.log,jobs.jsonl}  .lock.owner  DONE
    <runs>/<sweep>/.sweep/
      sweep.yaml  plan.json  floor.json  ledger.jsonl  lock.owner  cancel.json  submitit/  replaced/

This module is the only code that knows these names, the run states, what "done" means, the
timestamp format and the locks; the trainer, the launcher, the executors, the sweep driver and
analysis ask it. It imports no torch (analysis reads run folders without torch).

Writes. Every JSON/YAML file is written to a temporary sibling (`.<name>.tmp.<pid>`) and renamed
into place, so a reader never sees half a file and a kill leaves the old or the new version. A write
that fails (full disk, read-only folder) removes its temporary file and raises `RunStoreError`
naming the path; temporary files left by a killed process are removed by the next owner of the
folder (`RunStore.clean_tmp`). DONE is written last, after result.json, only by `finish()`.

Ownership. A run folder is owned by the one process that trains it (`RunStore.lock()`), a sweep
folder by the one driver that dispatches it (`SweepStore.lock()`). Both are `flock` locks on the
folder itself (`FolderLock`: a lock file could be deleted while held and let a second owner in):
the kernel drops them when the holder dies, however it dies (SIGKILL, OOM, a lost node), so a
killed process never leaves a folder stuck. Who holds a lock is written beside it
(`<lock>.owner`: pid, host, command, since) so that a second process can say whom it waits for.
"""

from __future__ import annotations

import csv
import datetime as _dt
import errno
import fcntl
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ---- names ---------------------------------------------------------------------------------
CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
STATUS = "status.json"
PROGRESS = "progress.json"
METRICS = "metrics.csv"
RESULT = "result.json"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
LAST_CKPT = "last.ckpt"
LAUNCH_LOG = "launch.log"  # in logs/: the local launcher's stdout + stderr
JOBS = "jobs.jsonl"  # in logs/: one line per attempt (job id, host, restart count)
RUN_LOCK = ".lock"
SWEEP_META = ".sweep"
LEDGER = "ledger.jsonl"
SWEEP_LOCK = "lock"
SUBMITIT = "submitit"
CANCEL = "cancel.json"  # in .sweep/: `cancel` asks the driver to start none of these runs
REPLACED = "replaced"
SWEEP_FILE = "sweep.yaml"  # in .sweep/: the copy of the sweep file the driver ran (analysis hints)
PLAN = "plan.json"  # in .sweep/: the planned runs
FLOOR = "floor.json"  # in .sweep/: the count-feature floor of the runs' datasets (harness.sweep)
# files whose presence makes a directory a run folder (analysis looks for these)
RUN_MARKERS = (RESULT, STATUS, CONFIG)
RESULT_SCHEMA = 1

# ---- states --------------------------------------------------------------------------------
# status.json "state" as the run writes it
RUNNING, DONE_STATE, FAILED, QUEUED = "running", "done", "failed", "queued"
# stopped by a signal (SIGTERM, SIGINT, cancel, the scheduler's preemption or time limit) with its
# last checkpoint on disk: not a failure, a plain rerun resumes it
INTERRUPTED = "interrupted"
# the folder's state as the sweep driver and analysis read it (scheduler knowledge added by sweep.py)
FOLDER_STATES = ("new", "running", "done", "failed", "interrupted")

# exit code of a launcher that found its run folder owned by another live process (EX_TEMPFAIL)
EXIT_BUSY = 75

# errors of the file system the user can fix (space, permissions, read-only mounts)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class RunStoreError(RuntimeError):
    """A run or sweep folder could not be written or is owned by another process; the message
    names the path and the fix."""


class Interrupted(BaseException):
    """A run or a driver stopped by a signal. A BaseException, like KeyboardInterrupt, so that the
    `except Exception` of a failure path never records it as a failure; unlike KeyboardInterrupt,
    Lightning does not swallow it (it turns KeyboardInterrupt into sys.exit(1)). `signum` gives the
    exit code 128 + signum; the message says what was saved and how to resume."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"stopped by {signal_name(signum)}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return f"signal {signum}"


def raise_on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> dict[int, Any]:
    """Make these signals raise Interrupted in the main thread (the CLIs call it first, so that a
    SIGTERM or Ctrl-C before training starts is one clear line and exit code 128 + signal, not a
    traceback or a silent death). train_run refines this while it trains (StopOnSignal). Returns
    the previous handlers, for `restore_signals` (a CLI called from Python leaves none behind)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    return {s: signal.signal(s, handler) for s in signums}


def restore_signals(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class Busy(RunStoreError):
    """The folder's lock is held by another live process (`owner`: what it wrote about itself)."""

    def __init__(self, message: str, owner: dict[str, Any] | None = None):
        super().__init__(message)
        self.owner = owner or {}


def process_rank() -> int:
    """Global rank of this process in a multi-process run (0 when alone): only rank 0 owns the folder."""
    for var in ("SLURM_PROCID", "RANK", "LOCAL_RANK"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def now_iso() -> str:
    """The one timestamp format of run and sweep folders: UTC, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def full_disk(message: Callable[[OSError], str]) -> Iterator[None]:
    """Inside the block, a full disk or quota (ENOSPC, EDQUOT) becomes a RunStoreError with
    message(err): one sentence naming what was written, the space it needs and the fix. Any other
    error passes unchanged. For the data layer's own temporary builds (data.storage=mapped, the
    stats' spill files), whose fix is not a run folder's."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL_DISK_ERRNOS:
            raise
        raise RunStoreError(message(e)) from e


def disk_message(err: OSError, path: Path | str | None = None) -> str:
    """A one-line explanation of a failed write, naming the path and what to do."""
    where = str(path or err.filename or "?")
    code = err.errno
    if code in FULL_DISK_ERRNOS:
        fix = (
            "free space there (or use another --runs-dir) and rerun (a sweep: with "
            "--retry-failed): the run resumes from its last checkpoint"
        )
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    elif code == errno.EROFS:
        what, fix = (
            "read-only file system",
            "choose a writable runs directory (--runs-dir or HARNESS_RUNS_DIR)",
        )
    elif code in (errno.EACCES, errno.EPERM):
        what, fix = (
            "permission denied",
            "choose a runs directory you can write (--runs-dir or HARNESS_RUNS_DIR)",
        )
    else:
        what, fix = (err.strerror or str(err)), "check the file system"
    return f"cannot write {where}: {what}; {fix}"


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> null (strict JSON has no NaN), tuples -> lists, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def atomic_write_bytes(
    path: Path, write: Callable[[Any], None], mode: str = "w", **open_kw: Any
) -> None:
    """Write through `write(file)` into a temporary sibling, fsync, rename. On failure the
    temporary file is removed and RunStoreError names the path (OSError is kept as __cause__)."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            rec = _RecordingFile(f)
            try:
                write(rec)
            except RuntimeError as err:
                # torch.save reports a failed write (e.g. ENOSPC) as "RuntimeError: [enforce fail
                # at inline_container.cc] unexpected pos ...": the OSError underneath is the news
                oserr = rec.error or _os_error_in(err)
                if oserr is None:
                    raise
                raise oserr from err
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            raise RunStoreError(disk_message(err, path)) from err
        raise


class _RecordingFile:
    """A file whose failed writes are remembered, so that a writer that wraps the OSError in
    something else (torch.save) cannot hide a full disk."""

    def __init__(self, f: Any):
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> Any:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _os_error_in(err: BaseException) -> OSError | None:
    """The first OSError in an exception's cause/context chain."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file as a dict; None when absent or unreadable (a hand-edited or torn file)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


class OutsideRunsDir(RunStoreError):
    """A sweep or run name that would put its folder outside the runs directory."""


def within_runs_dir(runs_dir: str | Path, name: str, what: str = "sweep name") -> Path:
    """runs_dir/name, refusing a name that leads anywhere else ('..', an absolute path, empty or
    '.' parts): a folder name comes from a config or a sweep file (`--set sweep=..`), and the
    harness writes and moves folders there, so it stays inside the runs directory whatever the
    name says. Subfolders ('group/length') are allowed."""
    parts = str(name).split("/")
    if not name or str(name).startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OutsideRunsDir(
            f"{what} {name!r} would put run folders outside the runs directory {runs_dir} "
            f"(it resolves to {(Path(runs_dir) / str(name)).resolve()}); use a plain name "
            f"(letters, digits, '-', '_'; no '..', no leading '/', e.g. sweep=my-sweep), or "
            f"choose the folder itself with --runs-dir / --run-dir"
        )
    return Path(runs_dir) / name


def run_dir_for(runs_dir: str | Path, sweep: str, rid: str) -> Path:
    """<runs_dir>/<sweep>/<rid>, confined to runs_dir (OutsideRunsDir otherwise)."""
    return within_runs_dir(runs_dir, sweep) / rid


# ---- locks ---------------------------------------------------------------------------------


def describe_owner(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process (it wrote no owner record)"
    cmd = owner.get("command") or ""
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}" + (
        f" (`{cmd[:120]}`)" if cmd else ""
    )


class FolderLock:
    """An exclusive flock on the folder itself, plus `<name>.owner` saying who holds it.

    Why the folder and not a lock file: a lock file can be deleted while it is held (by hand, by a
    cleanup script), and the next process then creates a new file and locks that one: two owners.
    A folder that holds files cannot be unlinked (rmdir refuses), so deleting any file in it,
    `<name>.owner` included, lets no second owner in. Where the file system cannot flock a
    directory (NFS emulates flock with POSIX locks, which need a file open for writing), it falls
    back to the lock file `<name>`, checking after each acquisition that the path still names the
    file it locked (inode) and retrying otherwise; there, a lock file deleted while held is not
    detected (docs/sweeps.md, "Ownership").

    Non-reentrant across objects: a second FolderLock on the same folder, even in the same process,
    sees it held (flock locks belong to an open file description), which is what the tests of two
    owners need. The kernel drops the lock when its holder dies, however it dies."""

    # errors of flock on a directory that mean "this file system cannot": use the lock file
    NO_DIR_FLOCK = frozenset({errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP})

    def __init__(self, folder: Path, name: str, what: str):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self.owner_path = self.folder / f"{name}.owner"
        self.on_folder = True  # False after the file system refused a directory flock
        self._fd: int | None = None

    def _try(self) -> int | None:
        """One non-blocking attempt: the locked descriptor, or None when another holds the lock.
        OSError: the folder (or its lock file) cannot be opened."""
        if self.on_folder:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as err:
                os.close(fd)
                if err.errno not in self.NO_DIR_FLOCK:
                    raise
                self.on_folder = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # the file may have been deleted or replaced between our open and our lock: a lock on
            # a file the path no longer names excludes nobody, so take the one it names now
            try:
                st, mine = os.stat(self.path), os.fstat(fd)
            except FileNotFoundError:
                os.close(fd)
                continue
            if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)

    @staticmethod
    def _unlock(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> dict[str, Any] | None:
        """None when nobody holds the lock; else the holder's owner record ({} if it wrote none).
        Probing needs no write access to the folder; a folder that cannot be opened (or, on the
        lock-file fallback, whose lock file cannot be) is reported free."""
        if self._fd is not None:
            return self.owner()
        if not self.folder.is_dir():
            return None
        try:
            fd = self._try()
        except OSError:
            return None
        if fd is None:
            return self.owner() or {}
        self._unlock(fd)
        return None

    def owner(self) -> dict[str, Any]:
        return read_json(self.owner_path) or {}

    def acquire(
        self,
        wait_s: float = 0.0,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 1.0,
    ) -> FolderLock:
        """Take the lock, waiting up to wait_s seconds (float('inf'): forever); `on_wait(owner)` is
        called once before waiting and then every poll. Raises Busy when still held, RunStoreError
        when the folder cannot be made or opened (read-only, full)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunStoreError(disk_message(err, self.folder)) from err
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = self._try()
            except OSError as err:
                raise RunStoreError(disk_message(err, self.folder)) from err
            if fd is not None:
                break
            owner = self.owner()
            if time.monotonic() >= deadline:
                raise Busy(f"{self.what} {self.folder} is owned by {describe_owner(owner)}", owner)
            if on_wait is not None:
                on_wait(owner)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or poll_s)
        self._fd = fd
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": now_iso(),
            "command": " ".join(sys.argv),
        }
        try:
            atomic_write_json(self.owner_path, record)
        except (RunStoreError, OSError):
            pass  # the lock holds without its record; waiters then say "another process"
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if (self.owner() or {}).get("pid") == os.getpid():
                self.owner_path.unlink()
        except OSError:
            pass
        fd, self._fd = self._fd, None
        self._unlock(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---- the run folder ------------------------------------------------------------------------


# status.json fields the harness reads, and the types it reads them as (others are kept as they are)
STATUS_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "state": ((str,), "a string (running, done, failed, queued)"),
    "attempts": ((int,), "an integer >= 0"),
    "error": ((str, type(None)), "a string or null"),
    "dispatch_error": ((str, type(None)), "a string or null"),
    "updated": ((str,), "a timestamp string"),
    "jobs": ((list,), "a list of job ids"),
}


def _status_field_problem(key: str, value: Any) -> str | None:
    if key not in STATUS_TYPES:
        return None
    types_, expected = STATUS_TYPES[key]
    ok = isinstance(value, types_) and not isinstance(value, bool)
    if ok and key == "attempts":
        ok = value >= 0
    if ok and key == "jobs":
        ok = all(isinstance(j, str) for j in value)
    if ok:
        return None
    return f"{key!r} is {json.dumps(value)[:60]} ({type(value).__name__}), expected {expected}"


class RunStore:
    """One run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = FolderLock(self.path, RUN_LOCK, "run folder")

    # paths
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @property
    def launch_log(self) -> Path:
        return self.logs / LAUNCH_LOG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def create(self) -> None:
        try:
            for p in (self.path, self.checkpoints, self.logs):
                p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunStoreError(disk_message(err, self.path)) from err

    # ownership
    def lock(
        self, wait_s: float = 0.0, on_wait: Callable[[dict[str, Any]], None] | None = None
    ) -> FolderLock:
        """Own this run folder (raises Busy naming the owner). Use as a context manager."""
        return self._lock.acquire(wait_s=wait_s, on_wait=on_wait)

    @property
    def owned(self) -> bool:
        """Whether this RunStore object holds the folder's lock."""
        return self._lock.held

    def owner(self) -> dict[str, Any] | None:
        """None when no live process owns the folder, else its owner record."""
        return self._lock.holder()

    def clean_tmp(self) -> list[Path]:
        """Remove temporary files of interrupted atomic writes (`.<name>.tmp.<pid>`). Call only
        while owning the folder: then no other process is writing one."""
        removed = []
        for d in (self.path, self.checkpoints):
            if not d.is_dir():
                continue
            for p in d.glob(".*.tmp*"):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        return removed

    # state
    def marked_done(self) -> bool:
        """DONE and result.json are there (whether result.json is readable or not: analysis
        lists such a run as corrupt, naming the file)."""
        return (self.path / DONE).exists() and (self.path / RESULT).exists()

    def is_done(self) -> bool:
        """The one definition of a finished run: DONE (written last) and a readable result.json.
        A run whose result.json is damaged is not done, whatever DONE says: the driver says so
        (`done_problem`) and a plain rerun re-evaluates it from its final checkpoint."""
        return (self.path / DONE).exists() and self.result_problem() is None

    def result_problem(self) -> str | None:
        """None when result.json is a JSON object, else what is wrong with it (its fields are
        analysis's to judge: analysis/collect.py names a malformed record)."""
        path = self.path / RESULT
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return "missing"
        except (OSError, UnicodeDecodeError) as err:
            return f"unreadable ({err})"
        except json.JSONDecodeError as err:
            return f"not valid JSON ({err})"
        if not isinstance(data, dict):
            return f"not a JSON object (a {type(data).__name__})"
        return None

    def done_problem(self) -> str | None:
        """One line when DONE says finished but result.json disagrees: path, problem, fix."""
        if not (self.path / DONE).exists():
            return None
        problem = self.result_problem()
        if problem is None:
            return None
        fix = (
            f"a plain rerun re-evaluates it from its final checkpoint ({self.last_ckpt})"
            if self.has_checkpoint()
            else "a plain rerun trains it again (no checkpoint is left)"
        )
        return (
            f"{self.path / RESULT}: {problem}, although {self.path / DONE} says the run finished; "
            f"the run is not counted as done: {fix}"
        )

    def discard_stale_done(self) -> None:
        """Remove a DONE whose result.json is damaged (the owner does, before re-evaluating), so
        that DONE again means what it says if this attempt stops early."""
        if (self.path / DONE).exists() and self.result_problem() is not None:
            (self.path / DONE).unlink()

    def availability(self) -> tuple[str, dict[str, Any] | None]:
        """May a driver start this run now? ("done", None): finished; ("owned", owner record):
        another live process owns the folder; ("free", None): yes. Every executor asks this right
        before it starts or submits a run, so that none is trained twice."""
        if self.is_done():
            return "done", None
        owner = self.owner()
        if owner is not None:
            return "owned", owner
        return "free", None

    def has_checkpoint(self) -> bool:
        return self.last_ckpt.exists()

    def read_json(self, name: str) -> dict | None:
        return read_json(self.path / name)

    def result(self) -> dict | None:
        return self.read_json(RESULT)

    def status(self) -> dict | None:
        """status.json, its wrong-typed fields left out (status_problems names them): a hand-edited
        or foreign file must not fail every later start of the run; the next write replaces it."""
        status = self.read_json(STATUS)
        if status is None:
            return None
        return {k: v for k, v in status.items() if _status_field_problem(k, v) is None}

    def status_problems(self) -> list[str]:
        """One line per field of status.json the harness cannot use, naming it and what is done."""
        path = self.path / STATUS
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return [
                f"{path}: unreadable ({type(err).__name__}); read as unknown state, rewritten "
                "when the run next starts"
            ]
        if not isinstance(raw, dict):
            return [
                f"{path}: expected a JSON object, got {type(raw).__name__}; read as unknown "
                "state, rewritten when the run next starts"
            ]
        out = []
        for key, value in raw.items():
            problem = _status_field_problem(key, value)
            if problem:
                out.append(
                    f"{path}: {problem}; read as unknown, rewritten when the run next starts"
                )
        return out

    def progress(self) -> dict | None:
        return self.read_json(PROGRESS)

    def folder_state(self) -> str:
        """new | running (a live process owns the folder) | done | failed | interrupted (resumable)."""
        if self.is_done():
            return "done"
        if self.owner() is not None:
            return "running"
        st = (self.status() or {}).get("state")
        if st == FAILED:
            return "failed"
        if st in (RUNNING, DONE_STATE, INTERRUPTED) or self.has_checkpoint():
            return "interrupted"
        return "new"

    def write_status(
        self, state: str, *, error: str | None = None, new_attempt: bool = False, **extra
    ) -> dict:
        """state: running | done | failed | interrupted. `attempts` counts starts of this run (resumes included).

        On a full disk the atomic write (a new file) can fail where rewriting the existing small
        file in place still fits (its blocks are freed first), so a failure is recorded even then."""
        self._warn_status_problems()
        old = self.status() or {}
        attempts = int(old.get("attempts", 0)) + (1 if new_attempt else 0)
        status = {
            "state": state,
            "updated": now_iso(),
            "attempts": attempts,
            "error": error,
            **extra,
        }
        if "jobs" in old and "jobs" not in extra:
            status["jobs"] = old["jobs"]  # scheduler job ids mirrored by the sweep dispatcher
        self._write_status(status)
        return status

    def _warn_status_problems(self) -> None:
        """Name status.json's wrong-typed fields on stderr right before a write replaces them."""
        for line in self.status_problems():
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def _write_status(self, status: dict[str, Any]) -> None:
        path = self.path / STATUS
        text = json.dumps(_clean(status), indent=2, allow_nan=False) + "\n"
        try:
            atomic_write_text(path, text)
        except RunStoreError as err:
            cause = err.__cause__
            if not (
                isinstance(cause, OSError) and cause.errno in FULL_DISK_ERRNOS and path.exists()
            ):
                raise
            try:
                with open(path, "r+") as f:
                    f.truncate(0)
                    f.write(text)
            except OSError:
                raise err from None

    def mark_failed(self, error: str) -> bool:
        """Record a failure the run itself could not record (crash before training, scheduler kill).

        Keeps every other key of status.json (the run's own error first, the dispatcher's beside it);
        leaves a DONE run alone, and a folder another live process owns. Returns whether it wrote."""
        if (self.path / DONE).exists() or (not self._lock.held and self.owner() is not None):
            return False
        self._warn_status_problems()
        status = self.status() or {}
        if status.get("state") == INTERRUPTED:
            # the run recorded that a signal stopped it after saving its checkpoint: the scheduler
            # calling the job CANCELLED or TIMEOUT afterwards does not make it a failure
            return False
        if status.get("state") == FAILED and status.get("error"):
            status["dispatch_error"] = error  # the run's own error says more: keep it first
        else:
            status.update({"state": FAILED, "error": error})
        status["updated"] = now_iso()
        status.setdefault("attempts", 0)
        self._write_status(status)
        return True

    def add_job(self, job_id: str) -> None:
        """Mirror a scheduler job id into status.json ("jobs" list), keeping its other keys."""
        self._warn_status_problems()
        status = self.status() or {}
        status.setdefault("state", QUEUED)
        if status["state"] == FAILED:
            status["state"] = QUEUED
        status["jobs"] = [*status.get("jobs", []), job_id]
        status["updated"] = now_iso()
        self._write_status(status)

    def record_attempt(self, **entry: Any) -> None:
        """Append one line to logs/jobs.jsonl (one per start or requeue of this run)."""
        line = {
            "time": now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumed_from_checkpoint": self.has_checkpoint(),
            **entry,
        }
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            with open(self.logs / JOBS, "a") as f:
                f.write(json.dumps(_clean(line)) + "\n")
        except OSError as err:
            raise RunStoreError(disk_message(err, self.logs / JOBS)) from err

    def attempts(self) -> list[dict[str, Any]]:
        path = self.logs / JOBS
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def write_progress(self, **progress: Any) -> None:
        """progress.json: the training loop's position (step, total, rate); read by the driver."""
        atomic_write_json(
            self.path / PROGRESS, {"updated": now_iso(), "time": time.time(), **progress}
        )

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def finish(self, result: dict) -> None:
        """result.json, then status done, then DONE (last, atomically)."""
        self.write_json(RESULT, result)
        self.write_status(DONE_STATE)
        atomic_write_text(self.path / DONE, now_iso() + "\n")


# ---- the sweep folder ----------------------------------------------------------------------


# the fields every reader of a ledger entry relies on, with the types they expect
LEDGER_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "executor": (str,),
    "job_id": (str, type(None)),
    "pid": (int, type(None)),
}


def ledger_entry_problem(entry: Any) -> str | None:
    """What is wrong with one parsed ledger line (None: nothing)."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__} {json.dumps(entry)[:60]}"
    for key, types_ in LEDGER_FIELDS.items():
        required = type(None) not in types_
        if key not in entry:
            if required:
                return f"missing {key!r}"
            continue
        value = entry[key]
        if not isinstance(value, types_) or isinstance(value, bool):
            return f"{key!r} is {json.dumps(value)[:60]} ({type(value).__name__})"
    return None


class Ledger:
    """Append-only record of submissions (`.sweep/ledger.jsonl`); the latest line per run id wins."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / SWEEP_META / LEDGER

    def record(
        self, run_id: str, executor: str, job_id: str | None = None, pid: int | None = None
    ) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "run_id": run_id,
                            "executor": executor,
                            "job_id": job_id,
                            "pid": pid,
                            "time": now_iso(),
                        }
                    )
                    + "\n"
                )
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise RunStoreError(disk_message(err, self.path)) from err

    def _read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(well-formed entries, one line per wrong-shaped line). A torn line (not JSON: a killed
        driver) is skipped silently as before; valid JSON of the wrong shape (a hand edit, another
        tool) is reported, since the run it names loses its job record."""
        if not self.path.exists():
            return [], []
        out, problems = [], []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a killed driver: the ones before it still count
            problem = ledger_entry_problem(entry)
            if problem is None:
                out.append(entry)
            else:
                problems.append(
                    f"{self.path} line {n}: {problem}; a ledger line is "
                    '{"run_id": "<12 hex>", "executor": "slurm|local|debug", "job_id": "..." or '
                    'null, "pid": <int> or null, "time": "..."}: fix or delete that line'
                )
        return out, problems

    def _entries(self) -> list[dict[str, Any]]:
        return self._read()[0]

    def problems(self) -> list[str]:
        """One line per ledger line of the wrong shape, naming the file, the line and the fix."""
        return self._read()[1]

    def latest(self) -> dict[str, dict[str, Any]]:
        return {e["run_id"]: e for e in self._entries() if "run_id" in e}

    def history(self, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self._entries() if e.get("run_id") == run_id]


class SweepStore:
    """One sweep folder: its run folders and `.sweep/` (sweep file copy, plan, ledger, lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = self.path / SWEEP_META
        self.ledger = Ledger(self.path)
        self._lock = FolderLock(self.meta, SWEEP_LOCK, "sweep folder")

    def run(self, run_id: str) -> RunStore:
        return RunStore(self.path / run_id)

    @property
    def submitit(self) -> Path:
        return self.meta / SUBMITIT

    @property
    def sweep_file(self) -> Path:
        return self.meta / SWEEP_FILE

    @property
    def floor(self) -> Path:
        return self.meta / FLOOR

    def is_sweep_folder(self) -> bool:
        """Whether a driver has used this folder (it holds .sweep/), not just a folder of runs."""
        return self.meta.is_dir()

    def lock(
        self,
        wait_s: float = 0.0,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 1.0,
    ) -> FolderLock:
        """Own this sweep folder as its driver (raises Busy naming the other driver)."""
        return self._lock.acquire(wait_s=wait_s, on_wait=on_wait, poll_s=poll_s)

    def owner(self) -> dict[str, Any] | None:
        return self._lock.holder()

    # cancel requests: `python -m harness.sweep cancel` (another process, maybe another host that
    # shares the folder) asks the driver to start none of these runs; the driver polls the file
    # while it waits for its runs, and clears it when it starts (a request older than it is stale)
    def request_cancel(self, run_ids: list[str]) -> None:
        old = set(self.cancel_requested())
        atomic_write_json(
            self.meta / CANCEL,
            {
                "run_ids": sorted(old | set(run_ids)),
                "time": now_iso(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )

    def cancel_requested(self) -> frozenset[str]:
        data = read_json(self.meta / CANCEL) or {}
        ids = data.get("run_ids")
        return frozenset(str(x) for x in ids) if isinstance(ids, list) else frozenset()

    def clear_cancel(self) -> None:
        try:
            (self.meta / CANCEL).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise RunStoreError(disk_message(err, self.meta / CANCEL)) from err

    def write_plan(self, plan: list[dict[str, Any]], sweep_file: Path | None) -> None:
        try:
            self.meta.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunStoreError(disk_message(err, self.meta)) from err
        if sweep_file is not None:
            atomic_write_text(self.sweep_file, Path(sweep_file).read_text())
        atomic_write_text(self.meta / PLAN, json.dumps(_clean(plan), indent=2, default=str) + "\n")

    def set_aside(self, run_id: str) -> Path:
        """Move a run folder to .sweep/replaced/<run_id>-<time> (never delete results)."""
        src = self.path / run_id
        dest = self.meta / REPLACED / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dest)
        return dest


class MetricsCsv:
    """metrics.csv in long form, one row per (step, metric): `step,metric,value,time`.

    Long form keeps appends valid whatever the metrics of a row are. On resume, rows logged after
    the checkpoint being resumed from (step > resume_step) are dropped, and a run restarted without
    a checkpoint drops every row of the attempt it repeats (`truncate_after(-1)`); rows at the
    resume step that the resumed run logs again replace the old ones (`drop`, by
    callbacks.CsvMetrics), so the file of a resumed run matches that of an uninterrupted one (wall
    times aside) and holds no (step, metric) twice."""

    FIELDS = ("step", "metric", "value", "time")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        self._rewrite([r for r in self._rows() if int(r["step"]) <= step])

    def drop(self, step: int, metrics: set[str]) -> None:
        """Remove the rows of these metrics at this step (a resumed run logs them again)."""
        if not self.path.exists():
            return
        self._rewrite(
            [r for r in self._rows() if not (int(r["step"]) == step and r["metric"] in metrics)]
        )

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        def write(f) -> None:
            w = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

        atomic_write_bytes(self.path, write, newline="")

    def append(self, step: int, metrics: dict[str, float]) -> None:
        new = not self.path.exists()
        t = round(_dt.datetime.now().timestamp(), 3)
        try:
            with open(self.path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(self.FIELDS)
                for k, v in metrics.items():
                    w.writerow((step, k, repr(float(v)), t))
        except OSError as err:
            if err.errno in DISK_ERRNOS:
                raise RunStoreError(disk_message(err, self.path)) from err
            raise

    def _rows(self) -> list[dict[str, str]]:
        """Parsable rows (a line torn by a full disk or a kill is skipped)."""
        out = []
        with open(self.path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    int(r["step"]), float(r["value"])
                except (TypeError, ValueError, KeyError):
                    continue
                out.append(r)
        return out

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [
            {"step": int(r["step"]), "metric": r["metric"], "value": float(r["value"])}
            for r in self._rows()
        ]

    def records(self) -> list[tuple[int | float, str, str]] | None:
        """Every logged (step, metric, value as written), in file order, for readers of finished
        runs (analysis: curves and the training-loss checks). Reads the long form this class
        writes and the wide form of older runs (one column per metric, Lightning's CSVLogger).
        The value stays text so that a reader tells a logged 'nan' (a problem) from an empty cell
        (not logged at that step: left out here). A row whose step is not a number (a line torn
        by a kill) is skipped. None when the file is absent, unreadable or has no step column."""
        try:
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            return None
        if not rows or "step" not in rows[0]:
            return None
        header = rows[0]
        at = header.index("step")
        long = "metric" in header and "value" in header
        # wide form: every column but the step and the bookkeeping ones is a metric
        columns = (
            [(header.index("metric"), header.index("value"))]
            if long
            else [(None, i) for i, c in enumerate(header) if c not in ("step", "epoch", "time")]
        )
        out = []
        for row in rows[1:]:
            step = _number(row[at]) if at < len(row) else None
            if step is None:
                continue
            for name_at, value_at in columns:
                if value_at >= len(row) or (name_at is not None and name_at >= len(row)):
                    continue
                value = row[value_at]
                if value.strip() != "":
                    out.append(
                        (step, row[name_at] if name_at is not None else header[value_at], value)
                    )
        return out


def _number(text: str) -> int | float | None:
    """A step as written: an int when it is one (the harness's steps), else a float; None if neither."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None
