"""A learning probe: train a model on a dataset folder with the harness' own data module, model
registry, task loss, optimiser and gradient clipping, in a plain torch loop (no Lightning, no
checkpoints, no run folder), and score CTR AUC on a split.

What it is for: the many small trainings of experiment rows (scripts/train_probe.py) and of the
planted-rule tests (tests/test_planted_history.py), where a Lightning run's start-up, run folder and
checkpoints would cost more than the training itself. What it is not: a source of figures a report
quotes; those come from `python -m harness.train` / `harness.sweep`. A probe step is a run's
training step (harness/system.py): the same model, task loss plus the model's auxiliary loss,
optimiser groups, per-group clipping and warm-up schedule; it differs in seeding and in having no
validation, checkpoints or logging between steps.

The batches of a split can be collated once (`collate`) and replayed for several trainings, so a
test that compares two models at two rates on one world pays for the data once. `Pool` runs
independent probe trainings in worker processes, one torch thread each: the probe's shapes are too
small for torch's threads to use a second core (400 steps: 6.3 s on one thread, 7.6 s on two), so
two trainings side by side are how a 2-core machine finishes a family of them in half the time.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.config import ModelConfig, RunConfig, TrainConfig
from harness.data.datamodule import OneTransDataModule
from harness.metrics import auc
from harness.optim import build_optimizer, clip_per_group
from harness.resolved import execution
from harness.system import task_losses
from model.registry import build_model

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ProbeModel:
    """Which model to train and how: the run config's model.* and train.* fields."""

    name: str = "onetrans"
    size: str = "onetrans-tiny"
    overrides: dict | None = None  # model.overrides
    train: dict | None = None  # TrainConfig fields (lr, request_level, cvr_loss, ...)

    def configs(self) -> tuple[RunConfig, TrainConfig]:
        cfg = TrainConfig(**(self.train or {}))
        run = RunConfig(
            model=ModelConfig(name=self.name, size=self.size, overrides=dict(self.overrides or {})),
            train=cfg,
        )
        return run, cfg


def collate(dm: OneTransDataModule, split: str) -> list[Batch]:
    """The split's batches as the data module yields them (epoch 0's order for train)."""
    return list(dm.loader(split))


def load(
    folder, seq_len: int, batch_size: int, eval_batch_size: int = 2048, seed: int = 0
) -> tuple[OneTransDataModule, list[Batch], list[Batch]]:
    """A dataset folder's data module, set up, with its train and val batches collated once."""
    dm = OneTransDataModule(
        folder, seq_len=seq_len, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm, collate(dm, "train"), collate(dm, "val")


def build(
    dm: OneTransDataModule, spec: ProbeModel, seed: int | None = 0
) -> tuple[torch.nn.Module, TrainConfig]:
    """The model a run of `spec` would build (execution switches through harness.resolved, which
    refuses one the model lacks with a ConfigError), seeded with `seed` (None: the caller has
    seeded torch already)."""
    run, cfg = spec.configs()
    kw, _ = execution(run)
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(spec.name, dm.feature_spec, spec.size, dict(spec.overrides or {}), kw)
    return model, cfg


def fit(
    model: torch.nn.Module,
    cfg: TrainConfig,
    batches: Iterable[Batch],
    steps: int,
    on_step=None,
) -> torch.nn.Module:
    """`steps` optimiser steps over `batches`, iterated again for every pass until the steps are
    done (a list repeats its order; a DataLoader yields its next epoch; a one-shot iterator is
    refused once used up). `on_step(step, loss)` is called after every step."""
    opt, schedule = build_optimizer(model, cfg, steps)
    model.train()
    step = 0
    while step < steps:
        seen = False
        for b in batches:
            seen = True
            loss = task_losses(model(b), b, cfg)["loss"]
            aux = model.aux_loss() if hasattr(model, "aux_loss") else None
            if aux is not None:  # as harness/system.py: e.g. RankMixer's routing penalty
                loss = loss + aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_per_group(opt)
            opt.step()
            if schedule is not None:
                schedule.step()
            step += 1
            if on_step is not None:
                on_step(step, loss)
            if step >= steps:
                break
        if not seen:
            raise ValueError(
                f"fit: no training batches after {step} of {steps} steps (an empty train split, "
                f"or a one-shot iterator already used up: pass a list or a DataLoader)"
            )
    return model


@torch.no_grad()
def scores(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """(clicks, CTR logits) over `batches`, in eval mode."""
    was = model.training
    model.eval()
    ys, ss = [], []
    for b in batches:
        ys.append(b["click"].numpy())
        ss.append(model(b)["ctr"].float().numpy())
    model.train(was)
    return np.concatenate(ys), np.concatenate(ss)


@torch.no_grad()
def window_scores(
    model: torch.nn.Module, batches: Iterable[Batch]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clicks, CTR logits, in_window) over `batches`, in eval mode; in_window: whether the
    impression's candidate item is among its request's (unpadded) history events, for
    harness.metrics.window_aucs."""
    was = model.training
    model.eval()
    ys, ss, hits = [], [], []
    for b in batches:
        ys.append(b["click"].numpy())
        ss.append(model(b)["ctr"].float().numpy())
        r = b["req_index"]
        match = (b["seq_item"][r] == b["cand_item"][:, None]) & b["seq_mask"][r]
        hits.append(match.any(1).numpy())
    model.train(was)
    return np.concatenate(ys), np.concatenate(ss), np.concatenate(hits)


def ctr_auc(model: torch.nn.Module, batches: Iterable[Batch]) -> float:
    y, s = scores(model, batches)
    return float(auc(y, s))


def train_val_auc(
    dm: OneTransDataModule,
    train: Iterable[Batch],
    val: Iterable[Batch],
    spec: ProbeModel,
    steps: int,
    seed: int | None = 0,
) -> float:
    """One probe training of `spec` for `steps` steps on `train`, scored on `val` (CTR AUC)."""
    model, cfg = build(dm, spec, seed=seed)
    return ctr_auc(fit(model, cfg, train, steps), val)


# a worker's latest world: (folder, seq_len, batch_size) -> load()'s result. Jobs are submitted
# world by world, so each worker loads a world once for its consecutive trainings on it.
_WORLD: dict = {}


def _worker_start(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_and_score(
    folder: str, seq_len: int, batch_size: int, spec: ProbeModel, steps: int, seed: int
) -> float:
    key = (folder, seq_len, batch_size)
    if key not in _WORLD:
        _WORLD.clear()
        _WORLD[key] = load(folder, seq_len=seq_len, batch_size=batch_size)
    return train_val_auc(*_WORLD[key], spec, steps, seed)


class Pool:
    """Probe trainings in `workers` processes (spawned: no torch state is forked), each on
    `threads` torch threads. `val_auc` submits one training (the data module set up and collated
    in the worker, kept for the worker's next job on the same world) and returns a Future of its
    val CTR AUC, the same figure `train_val_auc(*load(...), ...)` gives in-process on as many
    threads. A job's exception is raised by its Future's result(); closing cancels what
    has not started."""

    def __init__(self, workers: int = 2, threads: int = 1) -> None:
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(threads,),
        )

    def val_auc(
        self,
        folder: str | Path,
        spec: ProbeModel,
        steps: int,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
    ) -> Future:
        return self._pool.submit(
            _train_and_score, str(folder), seq_len, batch_size, spec, steps, seed
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
