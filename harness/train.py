"""One training run: `train_run(cfg, run_dir) -> result`, `describe(cfg)` and the CLI.

    python -m harness.train --config configs/tiny.yaml [--set train.max_steps=50 ...] [--runs-dir runs]
    python -m harness.train --config configs/tiny.yaml --describe      # params and FLOPs, no data

train_run is idempotent: a run folder with DONE returns its result.json untouched; a folder with
checkpoints/last.ckpt resumes from it (same data position, optimizer state and RNG state); a
fresh folder starts from scratch. The folder layout is docs/contracts.md §4 (harness/runstore.py).

Order of work: resolve the dataset and validate it (a missing or contract-breaking dataset fails
here, before any model is built), build the model, decide precision / attention / compile / W&B
mode and record them with reasons in provenance.json, train, evaluate, write result.json, DONE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from harness import provenance
from harness.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    check_model_config,
    load_config,
    run_id,
    run_name,
)
from harness.runstore import (
    CONFIG,
    DISK_ERRNOS,
    INTERRUPTED,
    METRICS,
    PROVENANCE,
    RESULT_SCHEMA,
    STATUS,
    Busy,
    Interrupted,
    OutsideRunsDir,
    RunStore,
    RunStoreError,
    disk_message,
    process_rank,
    raise_on_signals,
    restore_signals,
    run_dir_for,
    signal_name,
)

AXIS_FIELDS = ("n_layers", "d_model", "n_heads")


# ---- dataset -------------------------------------------------------------------------------


def resolve_dataset(cfg: RunConfig, progress: bool = False) -> Path:
    """The dataset folder: generated (once, cached) for "synthetic:<preset>", else the given path."""
    from harness.data.resolve import ensure_dataset

    d = cfg.data
    return ensure_dataset(d.dataset, d.data_seed, d.cache_dir, progress=progress)


def validate_dataset(folder: Path, announce: bool = True) -> list[str]:
    """Raise ContractError listing every violation (file, column, example row, fix); return the
    warnings (printed to stderr when `announce`)."""
    from harness.data.contract import ContractError, Manifest
    from harness.data.validate import errors, validate

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
    import pyarrow as pa

    from harness.data.contract import ContractError
    from harness.data.validate import unreadable_files

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


def manifest_of(cfg: RunConfig):
    """The dataset's manifest without generating or reading data."""
    from harness.data.resolve import planning_manifest

    return planning_manifest(cfg.data.dataset, cfg.data.data_seed)


# ---- checkpoints ---------------------------------------------------------------------------


class UnsafeCheckpointError(RunStoreError):
    """A checkpoint that holds more than tensors and plain values (or cannot be read at all): it
    is never unpickled, since unpickling can run any code the file names."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of this harness, loaded weights-only (tensors, numbers, strings, lists, tuples,
    dicts: all a checkpoint of ours holds). A run folder is data, and a file in it must never be
    able to run code when a run is resumed: torch.load(weights_only=False) would execute whatever
    a crafted pickle asks for. Raises UnsafeCheckpointError naming the file and the fix."""
    import pickle

    import torch

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


# ---- model ---------------------------------------------------------------------------------


def execution(cfg: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's execution switches (train.attention, train.recompute, train.compile,
    train.request_level: their one home) as keywords for the model's build(), and the decisions
    with reasons. The one place they are applied; a switch the model lacks is an error, not a
    silent no-op."""
    from model.registry import execution_switches

    model_cfg = check_model_config(cfg.model)
    switches = execution_switches(cfg.model.name)
    kw: dict[str, Any] = {}
    decisions: dict[str, Any] = {}
    t = cfg.train
    if t.attention != "auto":
        if "attention" not in switches:
            raise ConfigError(
                f"train.attention = {t.attention!r} but model {cfg.model.name!r} has no attention "
                f"switch; leave it 'auto'."
            )
        kw["attention"] = t.attention
    if t.recompute:
        if "recompute" not in switches:
            raise ConfigError(
                f"train.recompute = true but model {cfg.model.name!r} does not implement recomputation."
            )
        kw["recompute"] = True
    decisions["recompute"] = {
        "value": t.recompute,
        "reason": "requested" if t.recompute else "default off",
    }
    if t.request_level:
        _check_request_level(cfg, switches, model_cfg)
        kw["request_level"] = True
    decisions["request_level"] = {
        "value": t.request_level,
        "reason": "requested" if t.request_level else "default off",
    }
    if t.compile:
        if "compile_blocks" in switches:
            kw["compile_blocks"] = True
            decisions["compile"] = {
                "value": "blocks",
                "reason": "requested; the model compiles each block (static shapes per run)",
            }
        else:
            decisions["compile"] = {
                "value": "model",
                "reason": "requested; torch.compile on the whole model (no per-block switch)",
            }
    else:
        decisions["compile"] = {
            "value": False,
            "reason": "default off (compile costs ~15 s cold on CPU)",
        }
    return kw, decisions


def _check_request_level(cfg: RunConfig, switches: tuple[str, ...], model_cfg: Any) -> None:
    """train.request_level needs a model whose history side can be shared by a request's
    impressions: OneTrans with causal attention. The baselines have no such side: what depends on
    the request alone (event embeddings; LONGER's token merge) already runs once per request, and
    the rest reads the candidate (DIN's target attention, BST's and LONGER's target tokens)."""
    if "request_level" not in switches:
        raise ConfigError(
            f"train.request_level = true but model {cfg.model.name!r} has no request-level "
            "switch: its request-only part already runs once per request and the rest reads the "
            "candidate; set train.request_level = false for this model (in a sweep file, per row: "
            "a zip `set` column, docs/sweeps.md)."
        )
    if getattr(model_cfg, "causal", True) is False:
        raise ConfigError(
            "train.request_level = true needs model.overrides.causal = true: with full attention "
            "the S tokens read the NS tokens, so one request's impressions cannot share them; "
            "set one of the two to false."
        )


def describe(cfg: RunConfig) -> dict[str, Any]:
    """Parameters and analytic FLOPs of the run's model, built on the meta device (no data, no memory)."""
    import torch

    from model.registry import build_model

    spec = manifest_of(cfg).feature_spec(cfg.data.seq_len, n_gap_buckets=cfg.data.n_gap_buckets)
    kw, _ = execution(cfg)
    kw.pop("compile_blocks", None)
    with torch.device("meta"):
        model = build_model(cfg.model.name, spec, cfg.model.size, cfg.model.overrides, kw)
    fl = model.flops_per_example()
    return {
        "params": model.param_counts(),
        "flops": {
            "forward_per_example": float(fl["forward"]),
            "train_per_example": float(fl["train"]),
        },
    }


def train_samples_estimate(cfg: RunConfig) -> int | None:
    """Training impressions in one epoch of the run, for planning (no data is read or generated):
    the dataset's manifest statistics when its folder exists (a cached synthetic world included),
    else, for "synthetic:<preset>", the generator's expectation; None when unknown."""
    from harness.data.resolve import train_impressions_estimate

    d = cfg.data
    return train_impressions_estimate(d.dataset, d.data_seed, d.cache_dir)


def axes(cfg: RunConfig) -> dict[str, Any]:
    model_cfg = check_model_config(cfg.model)
    out: dict[str, Any] = {"seq_len": cfg.data.seq_len}
    for f in AXIS_FIELDS:
        if hasattr(model_cfg, f):
            out[f] = getattr(model_cfg, f)
    return out


# ---- the run -------------------------------------------------------------------------------


def trainer_plugins() -> list[Any]:
    """Atomic checkpoint writes; under SLURM (srun sets SLURM_NTASKS) a SLURMEnvironment with
    auto_requeue off: submitit owns requeueing (USR2 + Checkpointable), Lightning must not too."""
    from harness.callbacks import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]
    if "SLURM_NTASKS" in os.environ:
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def quiet_libraries() -> None:
    """Keep run logs about the run: Lightning's info lines (GPU/TPU available, the litlogger tip,
    `fit stopped: max_steps reached`; the device and every decision are in provenance.json) and two
    warnings that do not apply here."""
    import logging
    import warnings

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


def train_run(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    attempt: dict[str, Any] | None = None,
    lock_wait_s: float = 2.0,
) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) the run in run_dir.

    The run folder is owned by this process while it trains (RunStore.lock; rank 0 of a
    multi-process run): another live owner makes this raise runstore.Busy after waiting
    lock_wait_s seconds (the default 2 s absorbs a `status` view probing the lock at that instant),
    so a run never trains twice at once and nobody resumes from a checkpoint that is still being written. `attempt` (launcher's job ids) goes to logs/jobs.jsonl."""
    store = RunStore(run_dir)
    if store.is_done():
        return store.result()  # type: ignore[return-value]
    rid = run_id(cfg)
    cfg_path = store / CONFIG
    if cfg_path.exists():
        old = load_config(cfg_path, check_model=False, stored=True)
        if run_id(old) != rid:
            raise ConfigError(
                f"{store.path} holds run {run_id(old)} ({cfg_path}); this config is run {rid}. "
                f"Use the folder <runs>/<sweep>/{rid} (nothing was changed)."
            )
    owner = process_rank() == 0
    lock = store.lock(wait_s=lock_wait_s) if owner else None
    try:
        if store.is_done():  # finished by the previous owner while this process waited
            return store.result()  # type: ignore[return-value]
        store.create()
        if owner:
            store.clean_tmp()  # temporary files of a killed attempt (we own the folder now)
            store.discard_stale_done()  # DONE beside a damaged result.json: re-evaluated below
            if attempt is not None:
                store.record_attempt(**attempt)
        store.write_text(CONFIG, cfg.to_yaml())
        store.write_status("running", new_attempt=True)
        from harness.callbacks import StopOnSignal

        stop = StopOnSignal(store.last_ckpt).install()
        try:
            result = _train(cfg, store, rid, stop)
        except Interrupted as e:
            _record_interrupt(store, str(e), e.signum)
            raise
        except RunStoreError as e:
            _record_failure(store, str(e))
            raise
        except OSError as e:
            if e.errno not in DISK_ERRNOS:
                _record_failure(store, f"{type(e).__name__}: {e}")
                raise
            msg = disk_message(e, e.filename or store.path)
            _record_failure(store, msg)
            raise RunStoreError(msg) from e
        except Exception as e:
            if stop.signum is not None:
                # after a stop signal: its consequence, not a failure (e.g. data workers that got
                # the terminal's Ctrl-C too and died before the batch end). The last checkpoint
                # stays.
                msg = f"stopped by {signal_name(stop.signum)} ({type(e).__name__} while stopping)"
                _record_interrupt(store, msg, stop.signum)
                raise Interrupted(stop.signum, msg) from e
            _record_failure(store, f"{type(e).__name__}: {e}")
            raise
        except (KeyboardInterrupt, SystemExit) as e:
            # Not from StopOnSignal: submitit's requeue handler (it exits after our checkpoint) or
            # a Ctrl-C outside the main thread's handler. Either way the checkpoint is whole.
            what = "the scheduler (submitit requeued it)" if isinstance(e, SystemExit) else "Ctrl-C"
            _record_interrupt(store, f"stopped by {what}", stop.signum)
            raise
        finally:
            stop.uninstall()
        store.finish(result)
        return result
    finally:
        if lock is not None:
            lock.release()


def _record_interrupt(store: RunStore, what: str, signum: int | None) -> None:
    """status.json interrupted (not failed: nothing went wrong), saying how to resume."""
    msg = f"{what}; rerun the same command to resume it from its last checkpoint"
    try:
        store.write_status(INTERRUPTED, error=msg, signal=signal_name(signum) if signum else None)
    except (RunStoreError, OSError) as err:
        print(
            f"warning: could not record the interrupt in {store / STATUS}: {err}", file=sys.stderr
        )
    if store.owned:
        store.clean_tmp()


def _record_failure(store: RunStore, error: str) -> None:
    """status.json failed, whatever else goes wrong: a failure to record it (e.g. the disk is full
    even for status.json) is printed, never raised over the run's own error."""
    try:
        store.write_status("failed", error=error)
    except (RunStoreError, OSError) as err:
        print(f"warning: could not record the failure in {store / STATUS}: {err}", file=sys.stderr)
    if store.owned:
        store.clean_tmp()


def _train(cfg: RunConfig, store: RunStore, rid: str, stop: Any) -> dict[str, Any]:
    t_start = time.perf_counter()
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from harness import tracking
    from harness.callbacks import (
        ChainLoader,
        CsvMetrics,
        EvalProgress,
        ProgressFile,
        ResumableLoader,
        ResumeState,
        Throughput,
    )
    from harness.data.datamodule import OneTransDataModule
    from harness.eval_sample import sample_record
    from harness.system import RankingSystem
    from model.registry import build_model

    quiet_libraries()
    t, name = cfg.train, run_name(cfg)
    threads, threads_why = provenance.decide_threads(cfg.data.num_workers)
    precision, precision_why = provenance.decide_precision(cfg)
    wandb_mode, wandb_why = tracking.decide_mode(cfg)
    execution_kw, decisions = execution(cfg)
    res = cfg.resources  # the one home of accelerator, devices and nodes
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

    # 1. data: resolved and validated before anything is built
    folder = resolve_dataset(cfg, progress=cfg.logging.progress_bar)
    # the built-in world's warnings are by design (e.g. repeated actions within one second): not printed
    data_warnings = validate_dataset(folder, announce=cfg.data.synthetic_preset is None)
    next_batch = t.protocol == "next_batch"
    dm = OneTransDataModule(
        folder,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.batch_size if next_batch else cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        n_gap_buckets=cfg.data.n_gap_buckets,
        chronological=next_batch or not cfg.data.shuffle,
        eval_sample_users=cfg.eval.sample_users,
        eval_sample_seed=cfg.eval.sample_seed,
    )
    _setup_data(dm, folder)

    # 2. model (seeded), system
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(
        cfg.model.name, dm.feature_spec, cfg.model.size, cfg.model.overrides, execution_kw
    )
    if decisions["compile"]["value"] == "model":
        model = torch.compile(model)
    system = RankingSystem(model, t, has_oracle=dm.has_oracle, eval_cfg=cfg.eval)

    # 3. loaders: the train loader is resumable; next_batch streams train -> val -> test
    if next_batch:
        train_loader = ResumableLoader(
            ChainLoader([(s, dm.loader(s)) for s in ("train", "val", "test")])
        )
    else:
        train_loader = ResumableLoader(dm.train_dataloader())
    val_loader = None if next_batch else dm.val_dataloader()

    # 4. resume point, loggers, callbacks
    ckpt_path = store.last_ckpt if store.last_ckpt.exists() else None
    resume_step = None
    if ckpt_path is not None:
        resume_step = int(load_checkpoint(ckpt_path)["global_step"])
    loggers: list[Any] = [CsvMetrics(store / METRICS, resume_step=resume_step)]
    wandb_logger = tracking.make_logger(cfg, rid, name, store.logs, wandb_mode)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    decisions |= {
        "precision": {"value": precision, "reason": precision_why},
        "wandb": {"value": wandb_mode, "reason": wandb_why},
        "threads": {"value": threads, "reason": threads_why},
        "attention": {
            "value": None,
            "reason": "decided by the model at its first forward (see end of run)",
        },
        "resumed_from_step": resume_step,
        "dataset_warnings": data_warnings,
    }
    store.write_json(PROVENANCE, provenance.collect(cfg, decisions))

    resume_state, throughput = ResumeState(train_loader), Throughput()
    ckpt_cb = ModelCheckpoint(
        dirpath=store.checkpoints,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=t.ckpt_every_n_steps,
        enable_version_counter=False,
    )
    plugins = trainer_plugins()
    eval_every = t.eval_every_n_steps
    trainer = L.Trainer(
        accelerator=res.accelerator,
        devices=res.devices,
        num_nodes=res.nodes,
        precision=precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        logger=loggers,
        # StopOnSignal after the callbacks whose state a checkpoint holds (batch count, samples),
        # so that a checkpoint it saves at a batch end counts that batch, as ModelCheckpoint's do
        callbacks=[
            resume_state,
            throughput,
            ProgressFile(store),
            EvalProgress(cfg.eval.progress_every_n_batches),
            stop,
            ckpt_cb,
        ],
        plugins=plugins,
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

    # 5. train, then final evaluation with the final weights
    try:
        # weights_only=True: Lightning's own load of the resume checkpoint must not unpickle
        # arbitrary objects either (load_checkpoint above already refused a bad file; this keeps
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
        if next_batch:
            results = system.next_batch_results()
        else:
            if system.results.get("val", {}).get("step") != trainer.global_step:
                trainer.validate(system, dataloaders=val_loader, verbose=False)
            trainer.test(system, dataloaders=dm.test_dataloader(), verbose=False)
            results = {s: system.results[s] for s in ("val", "test")}
    finally:
        if wandb_logger is not None and trainer.global_rank == 0:
            import wandb

            if wandb.run is not None:
                wandb.finish()

    # 6. the record
    core = model._orig_mod if hasattr(model, "_orig_mod") else model
    att = getattr(core, "attention_decision", None)
    decisions["attention"] = (
        {"value": att[0], "reason": att[1]}
        if att
        else {"value": None, "reason": f"model {cfg.model.name!r} reports no attention decision"}
    )
    store.write_json(PROVENANCE, provenance.collect(cfg, decisions))
    desc_flops = core.flops_per_example()
    samples = throughput.samples
    sps = samples / throughput.train_time if throughput.train_time > 0 else None
    peak, peak_why = provenance.peak_flops(provenance.device_info(res.accelerator), precision)
    batches_per_epoch = max(len(train_loader), 1)
    sampled = (
        {"eval_sample": sample_record(cfg.eval, dm.eval_sample, results)}
        if (cfg.eval.sampled)
        else {}
    )
    return {
        "schema": RESULT_SCHEMA,
        "run_id": rid,
        "name": name,
        "sweep": cfg.sweep,
        "axis": cfg.axis,
        "model": cfg.model.name,
        "size": cfg.model.size,
        "config": cfg.to_dict(),
        "axes": axes(cfg),
        "seed": cfg.seed,
        "status": "done",
        "metrics": {s: r["metrics"] for s, r in results.items()},
        "oracle": {s: r["oracle"] for s, r in results.items()} if dm.has_oracle else {},
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
        "wall_time_s": time.perf_counter() - t_start,
        "protocol": t.protocol,
        "dataset": str(folder),
        **sampled,
    }


# ---- CLI -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    # SIGTERM / Ctrl-C before training starts: one line, exit 128 + signal (train_run refines it)
    previous = raise_on_signals()
    try:
        return _main(argv)
    except Interrupted as e:  # e.g. while the libraries are imported
        print(f"interrupted: {e}; nothing was started", file=sys.stderr)
        return e.exit_code
    finally:
        restore_signals(previous)


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", required=True, type=Path, help="run config YAML (see configs/)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, repeatable: --set train.max_steps=50 --set model.overrides.n_layers=4",
    )
    ap.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="the run goes to RUNS_DIR/<sweep>/<run_id>",
    )
    ap.add_argument(
        "--run-dir", type=Path, default=None, help="exact run folder (overrides --runs-dir)"
    )
    ap.add_argument(
        "--describe", action="store_true", help="print params and FLOPs (no data, no training)"
    )
    args = ap.parse_args(argv)
    from harness.data.contract import ContractError
    from harness.system import NonFiniteLossError

    try:
        cfg = apply_overrides(
            load_config(args.config), args.overrides, where=f"{args.config} + --set"
        )
        if args.describe:
            print(
                json.dumps(
                    {"run_id": run_id(cfg), "name": run_name(cfg), **describe(cfg)}, indent=2
                )
            )
            return 0
        run_dir = args.run_dir or run_dir_for(args.runs_dir, cfg.sweep, run_id(cfg))
        print(f"run {run_id(cfg)} ({run_name(cfg)}) -> {run_dir}", file=sys.stderr)
        result = train_run(cfg, run_dir)
    except (ConfigError, ContractError, OutsideRunsDir) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Busy as e:
        print(
            f"error: {e}; not training it twice (wait for it, or stop that process)",
            file=sys.stderr,
        )
        return 75
    except (NonFiniteLossError, RunStoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"interrupted: {e}; rerun the same command to resume", file=sys.stderr)
        return e.exit_code
    summary = {
        k: result[k]
        for k in ("run_id", "name", "metrics", "oracle", "train", "throughput", "wall_time_s")
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
