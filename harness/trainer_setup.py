"""The steps of one training run, each a function `harness/train.py` `_train` calls in order:

    decide_environment  precision, threads, W&B mode: decisions of this machine, with reasons
    check_protocol      the run's protocol against its resources and evaluation settings
    prepare_data        the dataset folder (a synthetic world generated once), validated, loaded
    build_system        the seeded model (compiled when asked) inside the LightningModule
    make_loaders        the resumable train loader (next_batch: train -> val -> test) and val
    make_trainer        loggers, callbacks (resume state, throughput, progress, stop, checkpoints)
    fit_and_evaluate    train, checkpoint, the final evaluation with the final weights
    result_record       result.json's content

What is decided from the config alone (model, execution switches, dataset folder, axes) comes
resolved (harness/resolved.py); these steps add what needs this machine, the data and a
Trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from harness import provenance, tracking
from harness.config import ConfigError, RunConfig, run_name
from harness.resolved import ResolvedConfig
from harness.runstore import METRICS, RESULT_SCHEMA, Interrupted, RunStore, RunStoreError
from model.registry import build_model

# Lightning, the data stack (pyarrow, pandas, the data module, the validator) and W&B are imported
# inside the steps that use them ("# on use"): `python -m harness.train --describe` imports this
# module and needs none of them.

# ---- environment and protocol ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Environment:
    """What this machine decides for the run (provenance.json records each with its reason)."""

    precision: str
    wandb_mode: str
    decisions: dict[str, Any]


def decide_environment(cfg: RunConfig) -> Environment:
    """Threads first (it sets torch's thread count before any data or model is built), then the
    precision and the W&B mode (decided before wandb.init, never by try-then-fallback)."""
    threads, threads_why = provenance.decide_threads(cfg.data.num_workers)
    precision, precision_why = provenance.decide_precision(cfg)
    wandb_mode, wandb_why = tracking.decide_mode(cfg)
    return Environment(
        precision=precision,
        wandb_mode=wandb_mode,
        decisions={
            "precision": {"value": precision, "reason": precision_why},
            "wandb": {"value": wandb_mode, "reason": wandb_why},
            "threads": {"value": threads, "reason": threads_why},
        },
    )


def check_protocol(cfg: RunConfig) -> None:
    """next_batch is one chronological pass over every request on one device: refuse settings
    that contradict it (before any data is generated)."""
    t, res = cfg.train, cfg.resources  # resources: the one home of accelerator, devices and nodes
    if t.protocol == "next_batch" and (t.max_epochs != 1 or res.devices * res.nodes != 1):
        raise ConfigError(
            "train.protocol = next_batch is one chronological pass on one device: set "
            "train.max_epochs = 1 and resources.devices = resources.nodes = 1."
        )
    if t.protocol == "next_batch" and cfg.eval.sampled:
        raise ConfigError(
            "eval.sample_users samples the holdout val/test passes; train.protocol = next_batch "
            "trains on every request of every split in time order, so it cannot skip users: "
            "set eval.sample_users = 0 or train.protocol = holdout."
        )


# ---- data ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PreparedData:
    folder: Path
    warnings: list[str]  # the validator's warnings (provenance.json keeps them)
    dm: Any  # harness.data.datamodule.OneTransDataModule, set up for "fit"
    next_batch: bool  # train.protocol == "next_batch": one chronological stream, no val loader


def prepare_data(plan: ResolvedConfig) -> PreparedData:
    """The dataset resolved (a synthetic world generated once, cached) and validated before
    anything is built: a missing or contract-breaking dataset fails here."""
    from harness.data.datamodule import OneTransDataModule  # on use

    cfg = plan.cfg
    d = cfg.data
    folder = plan.dataset.ensure(progress=cfg.logging.progress_bar)
    # the built-in world's warnings are by design (e.g. repeated actions within one second): not printed
    warnings = validate_dataset(folder, announce=d.synthetic_preset is None)
    next_batch = cfg.train.protocol == "next_batch"
    dm = OneTransDataModule(
        folder,
        seq_len=d.seq_len,
        batch_size=d.batch_size,
        eval_batch_size=d.batch_size if next_batch else d.eval_batch_size,
        num_workers=d.num_workers,
        seed=cfg.seed,
        n_gap_buckets=d.n_gap_buckets,
        chronological=next_batch or not d.shuffle,
        eval_sample_users=cfg.eval.sample_users,
        eval_sample_seed=cfg.eval.sample_seed,
        storage=d.storage,
        mapped_dir=Path(d.cache_dir) / "prepared",
        shuffle_block=d.shuffle_block,
        shuffle_window=d.shuffle_window,
    )
    _setup_data(dm, folder)
    return PreparedData(folder=folder, warnings=warnings, dm=dm, next_batch=next_batch)


def validate_dataset(folder: Path, announce: bool = True) -> list[str]:
    """Raise ContractError listing every violation (file, column, example row, fix); return the
    warnings (printed to stderr when `announce`)."""
    from harness.data.contract import ContractError, Manifest  # on use
    from harness.data.validate import errors, validate  # on use

    if not folder.is_dir():
        raise ContractError(
            f"data.dataset: {folder} is not a dataset folder. Give a folder of the data "
            f"contract (docs/data-contract.md) or 'synthetic:<preset>'."
        )
    problems = validate(folder)
    bad = errors(problems)
    if bad:
        raise ContractError(
            f"{folder}: the dataset breaks the data contract ({len(bad)} problem(s)); "
            f"nothing was trained:\n" + "\n".join(str(p) for p in bad)
        )
    warnings = [str(p) for p in problems]  # the run goes on; provenance.json keeps them
    if announce:
        for w in warnings:
            print(f"{folder}: {w}", file=sys.stderr)
    Manifest.load(folder)
    return warnings


def _setup_data(dm: Any, folder: Path) -> None:
    """dm.setup("fit"), with a damaged file named (the validator reads only the contract's columns)."""
    import pyarrow as pa  # on use

    from harness.data.contract import ContractError  # on use
    from harness.data.validate import unreadable_files  # on use

    try:
        dm.setup("fit")
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # a file-system error (full disk, permissions), not a damaged file
        bad = unreadable_files(folder)
        raise ContractError(
            (f"{folder}: " + "\n".join(str(v) for v in bad))
            if bad
            else f"{folder}: the data module could not read the dataset ({type(err).__name__}: {err}); "
            f"check it with: python -m harness.data validate {folder}"
        ) from err


# ---- model and loaders ---------------------------------------------------------------------


def build_system(plan: ResolvedConfig, data: PreparedData) -> tuple[Any, Any]:
    """The model (seeded, then compiled whole when the model has no per-block switch) and the
    RankingSystem around it. The feature spec is the data module's: the one the data matches."""
    import lightning as L  # on use

    from harness.system import RankingSystem  # on use (a LightningModule)

    cfg, m = plan.cfg, plan.cfg.model
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(m.name, data.dm.feature_spec, m.size, m.overrides, plan.execution_kwargs())
    if plan.decisions["compile"]["value"] == "model":
        model = torch.compile(model)
    system = RankingSystem(model, cfg.train, has_oracle=data.dm.has_oracle, eval_cfg=cfg.eval)
    return model, system


def make_loaders(data: PreparedData) -> tuple[Any, Any]:
    """The train loader, resumable (ResumeState skips the batches already trained); next_batch
    streams train -> val -> test through it and has no val loader."""
    from harness.callbacks import ChainLoader, ResumableLoader  # on use

    dm = data.dm
    if data.next_batch:
        train = ResumableLoader(ChainLoader([(s, dm.loader(s)) for s in ("train", "val", "test")]))
        return train, None
    return ResumableLoader(dm.train_dataloader()), dm.val_dataloader()


# ---- checkpoints ---------------------------------------------------------------------------


class UnsafeCheckpointError(RunStoreError):
    """A checkpoint that holds more than tensors and plain values (or cannot be read at all): it
    is never unpickled, since unpickling can run any code the file names."""


def train_order_decision(cfg: RunConfig, train_loader: Any, next_batch: bool) -> dict[str, Any]:
    """How the train split is ordered, for provenance.json, with a warning on stderr when the order
    and the step budget combine badly: chronological epochs (data.shuffle: false) cut by
    train.max_steps part-way into a later epoch end on the log's *oldest* impressions, so the final
    model leans on the past. Measured on the converted Tmall log (L 64, onetrans-tiny, 2 seeds):
    1600 steps over 1.26 chronological epochs scored val CTR AUC 0.681 where one chronological pass
    scored 0.699 and shuffled epochs 0.701 (docs/learning-history.md section 13)."""
    t = cfg.train
    if next_batch:
        return {
            "value": "chronological",
            "reason": "train.protocol next_batch: one stream in time order",
        }
    per_epoch = len(train_loader)
    budget = (
        per_epoch * t.max_epochs if t.max_steps < 0 else min(t.max_steps, per_epoch * t.max_epochs)
    )
    epochs = budget / max(per_epoch, 1)
    if cfg.data.shuffle:
        return {
            "value": "shuffled",
            "reason": f"data.shuffle: true: a new request order per (seed, epoch); {epochs:.2f} epochs of {per_epoch} batches",
        }
    decision = {
        "value": "chronological",
        "reason": f"data.shuffle: false (the paper's order); {epochs:.2f} epochs of {per_epoch} batches",
    }
    cut = budget % per_epoch
    if budget > per_epoch and cut:
        decision["warning"] = (
            f"train order: chronological (data.shuffle: false) over {epochs:.2f} epochs: "
            f"train.max_steps {t.max_steps} stops {cut} batches into epoch {budget // per_epoch + 1}, "
            f"so the last {cut} steps retrain the log's oldest impressions and the final model leans "
            f"on the past (on the Tmall log: 0.02 lower val CTR AUC, docs/learning-history.md "
            f"section 13). Fix: data.shuffle: true, or train.max_epochs: 1 (the paper's one "
            f"chronological pass), or a step budget of whole epochs ({per_epoch} batches each)."
        )
        print(f"warning: {decision['warning']}", file=sys.stderr)
    return decision


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of this harness, loaded weights-only (tensors, numbers, strings, lists, tuples,
    dicts: all a checkpoint of ours holds). A run folder is data, and a file in it must never be
    able to run code when a run is resumed: torch.load(weights_only=False) would execute whatever
    a crafted pickle asks for. Raises UnsafeCheckpointError naming the file and the fix."""
    fix = (
        f"move it aside (mv {path} {path}.refused) and rerun (a sweep: with --retry-failed): "
        f"the run then starts over from step 0 in the same folder"
    )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        what = str(err).strip().splitlines()
        detail = next((x.strip() for x in what if "Unsupported" in x or "GLOBAL" in x), what[0])
        raise UnsafeCheckpointError(
            f"refused to load checkpoint {path}: it holds objects other than tensors and plain "
            f"values ({detail}); a checkpoint this harness wrote never does, and loading it could "
            f"run code. Nothing was loaded; {fix}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UnsafeCheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}; "
            f"{fix}"
        ) from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("global_step"), int):
        raise UnsafeCheckpointError(
            f"checkpoint {path} is not a training checkpoint of this harness (no integer "
            f"'global_step'); {fix}"
        )
    return ckpt


def resume_point(store: RunStore) -> tuple[Path | None, int | None]:
    """The checkpoint to resume from and its step (checked weights-only first), or (None, None)."""
    if not store.last_ckpt.exists():
        return None, None
    return store.last_ckpt, int(load_checkpoint(store.last_ckpt)["global_step"])


# ---- trainer -------------------------------------------------------------------------------


def trainer_plugins() -> list[Any]:
    """Atomic checkpoint writes; under SLURM (srun sets SLURM_NTASKS) a SLURMEnvironment with
    auto_requeue off: submitit owns requeueing (USR2 + Checkpointable), Lightning must not too."""
    from harness.callbacks import AtomicCheckpointIO  # on use

    plugins: list[Any] = [AtomicCheckpointIO()]
    if "SLURM_NTASKS" in os.environ:
        from lightning.pytorch.plugins.environments import SLURMEnvironment  # on use

        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def quiet_libraries() -> None:
    """Keep run logs about the run: Lightning's info lines (GPU/TPU available, the litlogger tip,
    `fit stopped: max_steps reached`; the device and every decision are in provenance.json) and two
    warnings that do not apply here."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Resume is exact without Lightning's stateful-loader protocol: ResumeState (harness/callbacks.py)
    # checkpoints the batches trained in the epoch and the RNG states, and ResumableLoader skips those
    # batches on resume (tests/test_train_run.py: a killed run ends bitwise equal to an uninterrupted one).
    warnings.filterwarnings("ignore", message=r".*dataloader is not resumable.*")
    # an installed SLURM client outside a SLURM job (e.g. a stopped test cluster): nothing to do with this run
    warnings.filterwarnings(
        "ignore", message=r"The `srun` command is available on your system but is not used"
    )
    # the next-batch protocol evaluates inside the training pass on purpose (no val loader)
    warnings.filterwarnings(
        "ignore", message=r"You defined a `validation_step` but have no `val_dataloader`"
    )
    # Lightning's pytree helper on torch >= 2.6 (internal to Lightning; nothing to change on our side)
    warnings.filterwarnings(
        "ignore", message=r".*isinstance\(treespec, LeafSpec\).*"
    )  # FutureWarning/Deprecation


def make_loggers(
    plan: ResolvedConfig, store: RunStore, env: Environment, resume_step: int | None
) -> tuple[list[Any], Any | None]:
    """metrics.csv (the source of truth; continued, not restarted, on resume) and, when W&B is
    on, its logger: (loggers, the W&B logger or None)."""
    from harness.callbacks import CsvMetrics  # on use

    cfg = plan.cfg
    loggers: list[Any] = [CsvMetrics(store / METRICS, resume_step=resume_step)]
    wandb_logger = tracking.make_logger(cfg, plan.run_id, run_name(cfg), store.logs, env.wandb_mode)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    return loggers, wandb_logger


@dataclasses.dataclass(frozen=True)
class TrainerSetup:
    trainer: Any  # lightning.Trainer
    throughput: Any  # harness.callbacks.Throughput: samples and training time


def make_trainer(
    plan: ResolvedConfig,
    store: RunStore,
    env: Environment,
    loggers: list[Any],
    train_loader: Any,
    stop: Any,
    next_batch: bool,
) -> TrainerSetup:
    """The Lightning Trainer with this harness's callbacks and plugins."""
    import lightning as L  # on use
    from lightning.pytorch.callbacks import ModelCheckpoint  # on use

    from harness.callbacks import EvalProgress, ProgressFile, ResumeState, Throughput  # on use

    cfg, t, res = plan.cfg, plan.cfg.train, plan.cfg.resources
    throughput = Throughput()
    ckpt_cb = ModelCheckpoint(
        dirpath=store.checkpoints,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=t.ckpt_every_n_steps,
        enable_version_counter=False,
    )
    eval_every = t.eval_every_n_steps
    trainer = L.Trainer(
        accelerator=res.accelerator,
        devices=res.devices,
        num_nodes=res.nodes,
        precision=env.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        logger=loggers,
        # StopOnSignal after the callbacks whose state a checkpoint holds (batch count, samples),
        # so that a checkpoint it saves at a batch end counts that batch, as ModelCheckpoint's do
        callbacks=[
            ResumeState(train_loader),
            throughput,
            ProgressFile(store),
            EvalProgress(cfg.eval.progress_every_n_batches),
            stop,
            ckpt_cb,
        ],
        plugins=trainer_plugins(),
        enable_progress_bar=cfg.logging.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        limit_val_batches=0 if next_batch else 1.0,
        val_check_interval=eval_every if (eval_every > 0 and not next_batch) else None,
        check_val_every_n_epoch=None if (eval_every > 0 and not next_batch) else 1,
        use_distributed_sampler=False,
        default_root_dir=str(store.logs),
        gradient_clip_val=None,
    )
    return TrainerSetup(trainer=trainer, throughput=throughput)


# ---- fit, evaluate, record -----------------------------------------------------------------


def fit_and_evaluate(
    setup: TrainerSetup,
    system: Any,
    data: PreparedData,
    loaders: tuple[Any, Any],
    store: RunStore,
    ckpt_path: Path | None,
    wandb_logger: Any | None,
) -> dict[str, Any]:
    """Train (resuming from ckpt_path), save the final checkpoint, then evaluate the final
    weights: {split: {"metrics", "oracle", "n"}}. W&B is closed whatever happens."""
    trainer = setup.trainer
    train_loader, val_loader = loaders
    try:
        # weights_only=True: Lightning's own load of the resume checkpoint must not unpickle
        # arbitrary objects either (load_checkpoint already refused a bad file; this keeps
        # Lightning safe even if TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set in the environment)
        trainer.fit(
            system,
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
            ckpt_path=ckpt_path,
            weights_only=True,
        )
        if trainer.interrupted:
            raise Interrupted(signal.SIGINT, "training was interrupted")
        # weights_only=False here means "the full training state" (optimizer, loops, callbacks),
        # not unsafe pickling: every value in it is a tensor or a plain type (load_checkpoint)
        trainer.save_checkpoint(store.last_ckpt, weights_only=False)
        if data.next_batch:
            return system.next_batch_results()
        if system.results.get("val", {}).get("step") != trainer.global_step:
            trainer.validate(system, dataloaders=val_loader, verbose=False)
        trainer.test(system, dataloaders=data.dm.test_dataloader(), verbose=False)
        return {s: system.results[s] for s in ("val", "test")}
    finally:
        if wandb_logger is not None and trainer.global_rank == 0:
            import wandb  # on use

            if wandb.run is not None:
                wandb.finish()


def unwrap(model: Any) -> Any:
    """The model itself, whether or not torch.compile wrapped it."""
    return model._orig_mod if hasattr(model, "_orig_mod") else model


def attention_decision(model: Any, cfg: RunConfig) -> dict[str, Any]:
    """The attention backend the model chose at its first forward, with its reason."""
    att = getattr(unwrap(model), "attention_decision", None)
    if att:
        return {"value": att[0], "reason": att[1]}
    return {"value": None, "reason": f"model {cfg.model.name!r} reports no attention decision"}


def result_record(
    plan: ResolvedConfig,
    model: Any,
    data: PreparedData,
    setup: TrainerSetup,
    train_loader: Any,
    results: dict[str, Any],
    env: Environment,
    wall_time_s: float,
) -> dict[str, Any]:
    """result.json's content (docs/contracts.md): metrics, the model's own params and FLOPs,
    throughput and MFU, the axes and config as resolved."""
    from harness.eval_sample import sample_record  # on use

    cfg, t = plan.cfg, plan.cfg.train
    core, trainer, throughput = unwrap(model), setup.trainer, setup.throughput
    desc_flops = core.flops_per_example()
    samples = throughput.samples
    sps = samples / throughput.train_time if throughput.train_time > 0 else None
    peak, peak_why = provenance.peak_flops(
        provenance.device_info(cfg.resources.accelerator), env.precision
    )
    batches_per_epoch = max(len(train_loader), 1)
    sampled = (
        {"eval_sample": sample_record(cfg.eval, data.dm.eval_sample, results)}
        if cfg.eval.sampled
        else {}
    )
    has_oracle = data.dm.has_oracle
    return {
        "schema": RESULT_SCHEMA,
        "run_id": plan.run_id,
        "name": run_name(cfg),
        "sweep": cfg.sweep,
        "axis": cfg.axis,
        "model": cfg.model.name,
        "size": cfg.model.size,
        "config": cfg.to_dict(),
        "axes": dict(plan.axes),
        "seed": cfg.seed,
        "status": "done",
        "metrics": {s: r["metrics"] for s, r in results.items()},
        "oracle": {s: r["oracle"] for s, r in results.items()} if has_oracle else {},
        "params": core.param_counts(),
        "flops": {
            "forward_per_example": float(desc_flops["forward"]),
            "train_per_example": float(desc_flops["train"]),
            "train_total": float(desc_flops["train"]) * samples,
        },
        "train": {
            "steps": int(trainer.global_step),
            "samples": samples,
            "epochs": trainer.global_step / batches_per_epoch,
        },
        "throughput": {"samples_per_s": sps, "train_time_s": throughput.train_time},
        "mfu": (float(desc_flops["train"]) * sps * trainer.world_size / peak)
        if (peak and sps)
        else None,
        "mfu_note": peak_why,
        "eval_impressions": {s: r["n"] for s, r in results.items()},
        "wall_time_s": wall_time_s,
        "protocol": t.protocol,
        "dataset": str(data.folder),
        **sampled,
    }
