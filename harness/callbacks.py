"""Lightning pieces that make a run resumable, safe and measured.

ResumableLoader   wraps a train loader so that a resumed run skips the batches it already trained on
ChainLoader       next-batch protocol: train, then val, then test, in time order, each batch tagged
ResumeState       checkpoints the data position and the RNG states (bitwise resume on CPU)
AtomicCheckpointIO  writes checkpoints to a temporary file and renames it (a kill never leaves a torn last.ckpt)
CsvMetrics        a Lightning logger writing runstore.MetricsCsv (the local source of truth)
ProgressFile      progress.json every few seconds: step, total steps, rate, ETA (the sweep driver shows it)
EvalProgress      a line every N evaluation batches: split, batches done of total, elapsed, ETA
Throughput        impressions trained and the wall time spent training (validation excluded)
StopOnSignal      SIGTERM / SIGINT / the scheduler's USR2 stop the run at a batch end, checkpoint saved
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from harness.runstore import (
    Interrupted,
    MetricsCsv,
    RunStore,
    RunStoreError,
    atomic_write_bytes,
    signal_name,
)

SPLIT_KEY = "_split"  # batch key set by ChainLoader (a str; the system pops it before the model)


class ResumableLoader:
    """Any iterable of batches; the next iteration skips the first `skip` batches (fetched and
    dropped, so any loader works; the cost is the loading time of those batches, once per resume).
    Lightning sees `sampler` (to call set_epoch) and `len`."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.skip = 0

    @property
    def sampler(self):
        return getattr(self.loader, "sampler", None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(it)
        yield from it


class _FanOutSampler:
    def __init__(self, samplers: list):
        self.samplers = [s for s in samplers if s is not None]

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)


class ChainLoader:
    """Loaders one after the other (next-batch protocol: the whole stream in time order); each
    batch gets batch[SPLIT_KEY] = the split it came from."""

    def __init__(self, parts: list[tuple[str, Iterable]]):
        self.parts = parts
        self.sampler = _FanOutSampler([getattr(loader, "sampler", None) for _, loader in parts])

    def __len__(self) -> int:
        return sum(len(loader) for _, loader in self.parts)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        for split, loader in self.parts:
            for batch in loader:
                batch[SPLIT_KEY] = split
                yield batch


def _rng_state() -> dict[str, Any]:
    """Global RNG states in types torch.load(weights_only=True) accepts (tensors, ints, tuples)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(Callback):
    """Counts the batches trained in the current epoch and saves that count and the RNG states in
    every checkpoint; on resume, the train loader skips those batches and the RNGs are restored
    just before the first resumed batch, so training continues exactly where the checkpoint was
    taken.

    (Lightning keeps its step counters on resume but, for a plain DataLoader, restarts the epoch's
    data from the first batch; and it does not checkpoint RNG states.) Checkpoint callbacks run
    after this one (Lightning orders them last), so the saved count includes the current batch.
    The skip is set while the checkpoint is restored: Lightning creates (and prefetches from) the
    first epoch's iterator before on_train_epoch_start."""

    def __init__(self, loader: ResumableLoader):
        self.loader = loader
        self.epoch, self.batches = 0, 0
        self._pending_rng: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.batches = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch, self.batches = state_dict["epoch"], state_dict["batches"]
        self._pending_rng = state_dict["rng"]
        try:
            n = len(self.loader)
        except TypeError:
            n = None
        # saved after the last batch of an epoch: Lightning resumes at the next epoch, nothing to skip
        self.loader.skip = 0 if (n is not None and self.batches >= n) else self.batches


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary sibling, then rename: a checkpoint file is whole or absent."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        # a failed write (full disk) removes its temporary file and raises RunStoreError naming the path
        path = Path(path)
        fs = get_filesystem(path)
        fs.makedirs(str(path.parent), exist_ok=True)
        atomic_write_bytes(path, lambda f: torch.save(checkpoint, f), mode="wb")


class CsvMetrics(Logger):
    """Lightning logger -> metrics.csv (long form). Rank 0 only; hyper-parameters go to config.yaml."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        super().__init__()
        self.csv = MetricsCsv(path)
        self.resume_step = resume_step
        self._at_resume: set[str] = set()
        if rank_zero_only.rank == 0:
            # resuming: drop rows logged after the checkpoint; starting over (no checkpoint, e.g. a
            # run killed before its first one): drop the rows of the attempt being repeated
            self.csv.truncate_after(resume_step if resume_step is not None else -1)
            if resume_step is not None:
                # Rows at the checkpoint's own step were partly logged after it was saved (the
                # next batch's train rows, which Lightning logs at this step; the final val/test
                # of a run stopped during its evaluation or whose result.json was removed): the
                # resumed run logs those again, and a row logged again replaces the old one
                self._at_resume = {r["metric"] for r in self.csv.read() if r["step"] == resume_step}

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if not metrics:
            return
        step = int(step or 0)
        if step == self.resume_step and self._at_resume:
            again = self._at_resume & metrics.keys()
            if again:
                self.csv.drop(step, again)
                self._at_resume -= again
        self.csv.append(step, metrics)


class Throughput(Callback):
    """Impressions trained and the training wall time (from the first to the last training batch,
    validation time subtracted). Counts come from tensor shapes: no device sync. Both are saved in
    checkpoints, so after a resume they cover the work the final model rests on (work lost after
    the last checkpoint is not counted)."""

    def __init__(self):
        self.samples = 0
        self.train_time = 0.0
        self._t0: float | None = None
        self._val_t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += int(batch["click"].shape[0])

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_t0 is not None and self._t0 is not None:
            self._t0 += (
                time.perf_counter() - self._val_t0
            )  # leave evaluation out of the training time
        self._val_t0 = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            self.train_time += time.perf_counter() - self._t0
            self._t0 = None

    def state_dict(self) -> dict[str, Any]:
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return {"samples": self.samples, "train_time": self.train_time + running}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples, self.train_time = int(state_dict["samples"]), float(state_dict["train_time"])


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class EvalProgress(Callback):
    """`eval test: 400/1200 batches (33%), 1 min 02 s, ETA 2 min 04 s` on stderr every
    `every_n_batches` evaluation batches (rank 0), and one closing line with the pass's time when
    any was printed: a long final evaluation (hours on a full-size log) says where it is, a short
    one stays silent. The ETA assumes the remaining batches take the mean time of those done."""

    def __init__(self, every_n_batches: int, stream: Any = None):
        self.every = every_n_batches
        self.stream = stream
        self._t0 = 0.0
        self._printed = False

    def _say(self, text: str) -> None:
        import sys

        print(text, file=self.stream or sys.stderr, flush=True)

    def _start(self, trainer) -> None:
        self._t0, self._printed = time.perf_counter(), False

    def _batch(self, trainer, split: str, total_per_loader: list, batch_idx: int, idx: int) -> None:
        if not self.every or trainer.global_rank != 0 or (batch_idx + 1) % self.every:
            return
        done, total = batch_idx + 1, int(total_per_loader[idx]) if total_per_loader else 0
        took = time.perf_counter() - self._t0
        if total and total != float("inf"):
            eta = took / done * max(total - done, 0)
            self._say(
                f"eval {split}: {done}/{total} batches ({100 * done // total}%), "
                f"{_duration(took)}, ETA {_duration(eta)}"
            )
        else:
            self._say(f"eval {split}: {done} batches, {_duration(took)}")
        self._printed = True

    def _end(self, trainer, split: str) -> None:
        if self._printed and trainer.global_rank == 0:
            self._say(f"eval {split}: done in {_duration(time.perf_counter() - self._t0)}")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._start(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch(trainer, "val", trainer.num_val_batches, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch(trainer, "test", trainer.num_test_batches, batch_idx, dataloader_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end(trainer, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._end(trainer, "test")


class ProgressFile(Callback):
    """Writes the run's position to progress.json (RunStore.write_progress) at most every
    `every_s` seconds: step, total steps (Lightning's estimate: max_steps, or epochs x batches),
    steps/s over this attempt and the ETA of training (evaluation excluded). Rank 0 only."""

    def __init__(self, store: RunStore, every_s: float = 10.0):
        self.store, self.every_s = store, every_s
        self._t0: float | None = None
        self._step0 = 0
        self._last = 0.0

    def _write(self, trainer, phase: str) -> None:
        if trainer.global_rank != 0:
            return
        step = int(trainer.global_step)
        try:
            total = int(trainer.estimated_stepping_batches)
        except Exception:  # an iterable without len: no total
            total = None
        rate = eta = None
        if self._t0 is not None and step > self._step0:
            rate = (step - self._step0) / max(time.perf_counter() - self._t0, 1e-9)
            if total:
                eta = max(total - step, 0) / rate
        try:
            self.store.write_progress(
                step=step,
                total=total,
                epoch=int(trainer.current_epoch),
                phase=phase,
                steps_per_s=rate,
                eta_s=eta,
            )
        except RunStoreError:
            pass  # progress is for the eyes only; checkpoints and results report a full disk
        self._last = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = time.perf_counter(), int(trainer.global_step)
        self._write(trainer, "train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.perf_counter() - self._last >= self.every_s:
            self._write(trainer, "train")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._write(trainer, "validating")

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, "final evaluation")


class StopOnSignal(Callback):
    """Signals stop a run where it can resume exactly, and say so.

    SIGTERM (scancel, SLURM preemption and time limit, the sweep's `cancel`, a driver stopping its
    runs) and SIGINT (Ctrl-C) received while the training loop runs are acted on at the end of the
    current training batch: the full state is saved to `ckpt_path` there (the same kind of
    checkpoint as the periodic ones, so the resume is bitwise), then Interrupted is raised and
    train_run records the run `interrupted`. Received anywhere else (data set-up, validation, the
    final evaluation) they raise Interrupted at once: the last checkpoint on disk is whole (atomic
    writes) and a rerun resumes from it. A second signal while the first waits for the batch end
    stops at once.

    Under submitit the scheduler's warning signal (USR2 by default, SUBMITIT_PREEMPT_SIGNAL) already
    has submitit's handler, which checkpoints the callable, requeues the job and exits: it is
    chained, not replaced, and runs after our checkpoint is saved.

    Why our own handler: Lightning's (installed at fit start) only sets a flag and raises
    SIGTERMException, a SystemExit with code 0, without saving anything; and it turns
    KeyboardInterrupt into sys.exit(1). Ours is put back in on_train_start, over Lightning's.
    Multi-process runs agree on stopping at the same batch (one reduction per batch), since saving
    a checkpoint is a collective."""

    STOP = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, ckpt_path: str | Path):
        self.ckpt_path = Path(ckpt_path)
        self.signum: int | None = None
        self.saved_step: int | None = None
        self._defer = False
        self._previous: dict[int, Any] = {}
        self._chain: Any = None  # submitit's handler of its preemption signal
        self._chain_signum: int | None = None

    # -- installation (main thread only: Python runs signal handlers there)
    def install(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in self.STOP:
            self._previous[s] = signal.signal(s, self._handle)
        name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
        usr = getattr(signal, name, None)
        if usr is not None and callable(signal.getsignal(usr)):
            self._chain, self._chain_signum = signal.getsignal(usr), usr
            self._previous[usr] = signal.signal(usr, self._handle)
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        repeat = self.signum is not None
        self.signum = signum
        if self._defer and not repeat:
            return  # acted on at the end of the current training batch (on_train_batch_end)
        self._stop(frame)

    def _stop(self, frame: Any = None) -> None:
        signum = self.signum if self.signum is not None else signal.SIGTERM
        if signum == self._chain_signum and self._chain is not None:
            self._chain(signum, frame)  # submitit: checkpoint the callable, requeue, sys.exit
        where = (
            f"checkpoint saved at step {self.saved_step} ({self.ckpt_path})"
            if self.saved_step is not None
            else f"the last checkpoint on disk stays ({self.ckpt_path})"
        )
        raise Interrupted(signum, f"stopped by {signal_name(signum)}; {where}")

    # -- the training loop
    def on_train_start(self, trainer, pl_module) -> None:
        for s in self._previous:
            signal.signal(s, self._handle)  # over the handler Lightning installed at fit start
        self._defer = True
        if self.signum is not None:  # arrived during set-up
            self._stop()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved_step is None:
            # where ModelCheckpoint saves too: a resume from here is exact. Stopping waits for the
            # next hook, since Lightning logs this step's metrics after on_train_batch_end (else
            # the resumed metrics.csv would miss this step's rows)
            trainer.save_checkpoint(self.ckpt_path)
            self.saved_step = int(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.saved_step is not None:
            self._stop()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._defer = False  # a signal during evaluation stops at once: nothing to save there
        if self.signum is not None:
            self._stop()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._defer = trainer.state.fn == "fit"  # back in the training loop

    def on_train_end(self, trainer, pl_module) -> None:
        self._defer = False
        if self.signum is not None:
            self._stop()
