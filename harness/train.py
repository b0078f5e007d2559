"""One training run: `train_run(cfg, run_dir) -> result`, `describe(cfg)` and the CLI.

    python -m harness.train --config configs/tiny.yaml [--set train.max_steps=50 ...] [--runs-dir runs]
    python -m harness.train --config configs/tiny.yaml --describe      # params and FLOPs, no data

train_run is idempotent: a run folder with DONE returns its result.json untouched; a folder with
checkpoints/last.ckpt resumes from it (same data position, optimizer state and RNG state); a
fresh folder starts from scratch. The folder layout is docs/contracts.md §4 (harness/runstore.py).

Order of work (`_train`, one line per step of harness/trainer_setup.py): decide precision /
threads / W&B mode, resolve the config once (harness/resolved.py: model, execution switches,
dataset folder, axes), resolve the dataset and validate it (a missing or contract-breaking dataset
fails here, before any model is built), build the model, record every decision with its reason in
provenance.json, train, evaluate, write result.json, DONE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness import provenance
from harness import trainer_setup as setup
from harness.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    run_id,
    run_name,
)
from harness.resolved import resolve
from harness.runstore import (
    CONFIG,
    DISK_ERRNOS,
    INTERRUPTED,
    PROVENANCE,
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


def describe(cfg: RunConfig) -> dict[str, Any]:
    """Parameters and analytic FLOPs of the run's model (`--describe`): read from the resolved
    config, the model built on the meta device (no data, no memory)."""
    return resolve(cfg).describe()


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
    stored = _stored_config(store, cfg)
    owner = process_rank() == 0
    lock = store.lock(wait_s=lock_wait_s) if owner else None
    try:
        if store.is_done():  # finished by the previous owner while this process waited
            return store.result()  # type: ignore[return-value]
        store.create()
        if owner:
            store.clean_tmp()  # temporary files of a killed attempt (we own the folder now)
            store.discard_stale_done()  # DONE beside a damaged result.json: re-evaluated below
            changed = _keep_config(store, cfg, stored)
            if attempt is not None or changed:
                store.record_attempt(
                    **(attempt or {}), **({"config_changed": changed} if changed else {})
                )
        store.write_status("running", new_attempt=True)
        from harness.callbacks import StopOnSignal  # Lightning: only when a run trains

        stop = StopOnSignal(store.last_ckpt).install()
        try:
            result = _train(cfg, store, stop)
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


def _stored_config(store: RunStore, cfg: RunConfig) -> RunConfig | None:
    """The config the run folder already holds (config.yaml, read in its current form), or None.
    Another run's folder is refused before anything is touched."""
    path = store / CONFIG
    if not path.exists():
        return None
    old = load_config(path, check_model=False, stored=True)
    rid = run_id(cfg)
    if run_id(old) != rid:
        raise ConfigError(
            f"{store.path} holds run {run_id(old)} ({path}); this config is run {rid}. "
            f"Use the folder <runs>/<sweep>/{rid} (nothing was changed)."
        )
    return old


def _keep_config(store: RunStore, cfg: RunConfig, stored: RunConfig | None) -> dict[str, Any]:
    """config.yaml is the config the run is trained with (harness.launch trains a folder from it):
    written when absent, left untouched (mtime too) when it already says the same, rewritten when
    this attempt runs the same run id with other settings outside the id (execution switches,
    logging, workers...). Returns those changes, {dotted key: {"was", "now"}}, for logs/jobs.jsonl,
    so that which attempt ran with which settings stays on record (docs/contracts.md)."""
    text = cfg.to_yaml()
    path = store / CONFIG
    if stored is not None and path.read_text() == text:
        return {}
    store.write_text(CONFIG, text)
    if stored is None:
        return {}
    was, now = _flat(stored.to_dict()), _flat(cfg.to_dict())
    changed = {
        k: {"was": was.get(k), "now": now.get(k)}
        for k in sorted(was.keys() | now.keys())
        if was.get(k) != now.get(k)
    }
    if changed:
        print(
            f"note: {path}: this attempt runs with other settings ({', '.join(changed)}); "
            "rewritten, the change recorded in logs/jobs.jsonl",
            file=sys.stderr,
        )
    return changed


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def _train(cfg: RunConfig, store: RunStore, stop: Any) -> dict[str, Any]:
    """The run's steps (harness/trainer_setup.py), in order."""
    t_start = time.perf_counter()
    setup.quiet_libraries()
    env = setup.decide_environment(cfg)
    plan = resolve(cfg)  # model, execution switches, dataset folder, axes: decided once
    setup.check_protocol(cfg)
    data = setup.prepare_data(plan)  # resolved and validated before anything is built
    model, system = setup.build_system(plan, data)
    loaders = setup.make_loaders(data)
    ckpt_path, resume_step = setup.resume_point(store)
    loggers, wandb_logger = setup.make_loggers(plan, store, env, resume_step)
    decisions = {
        **plan.execution_decisions(),
        **env.decisions,
        "attention": {
            "value": None,
            "reason": "decided by the model at its first forward (see end of run)",
        },
        "train_order": setup.train_order_decision(cfg, loaders[0], data.next_batch),
        "resumed_from_step": resume_step,
        "dataset_warnings": data.warnings,
    }
    store.write_json(PROVENANCE, provenance.collect(cfg, decisions))
    trainer = setup.make_trainer(plan, store, env, loggers, loaders[0], stop, data.next_batch)
    results = setup.fit_and_evaluate(trainer, system, data, loaders, store, ckpt_path, wandb_logger)
    decisions["attention"] = setup.attention_decision(model, cfg)
    store.write_json(PROVENANCE, provenance.collect(cfg, decisions))
    return setup.result_record(
        plan, model, data, trainer, loaders[0], results, env, time.perf_counter() - t_start
    )


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
    # the data stack and Lightning: not before the arguments parse (--help stays instant)
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
