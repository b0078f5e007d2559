"""The run config: one typed, validated description of a training run (docs/contracts.md §4).

    cfg = load_config("configs/tiny.yaml")                       # YAML -> RunConfig (validated)
    cfg = apply_overrides(cfg, ["train.max_steps=10", "model.overrides.n_layers=4"])
    run_id(cfg), run_name(cfg), cfg.to_yaml()

Every section is a frozen, keyword-only dataclass. Values are type-checked against the field
annotations (Literal choices included) both when built from a dict and when built in Python, so a
config that exists is a valid one. Unknown keys are rejected with the file, the key and the closest
valid name.

Run identity. `run_id(cfg)` is the first 12 hex characters of the sha256 of the sorted JSON of the
*semantic* config: everything that can change what the run computes, seed included. Excluded (they
change how or where a run executes or how it is labelled, never its result), listed in
`RUN_ID_EXCLUDED`:
  - labels: sweep, axis, name
  - data.num_workers, data.cache_dir, data.storage   (loader parallelism, where synthetic data is
                                                 cached, RAM or memory-mapped: same batches)
  - train.log_every_n_steps, train.eval_every_n_steps, train.ckpt_every_n_steps   (cadences)
  - logging.*                                   (W&B mode/project/group/tags, progress bar)
  - resources.*                                 (the scheduler request: partition, account, qos,
                                                 memory, time limit, cpus), except devices, nodes
                                                 and accelerator (below)
Defaults are part of the hash: adding a field with a default changes every id (deliberately: a
new knob may change what an old config means). The exception is a section added later and off by
default (`RUN_ID_WHEN_ON`: `eval`, whose sampling only changes what a run reports when it is on;
train.emb_lr_scale, whose 1.0 is the one rate of before; train.lr_decay, whose "none" is the
constant rate of before; data.shuffle_block and .shuffle_window, whose 0 is the uniform order of
before): it enters the hash only when on, so the ids of earlier runs stay valid. The model enters as written (name, size, overrides), not as the
resolved model Config.

Settings that moved home after run ids were in use (issue #23) hash in their old place and form, so
every earlier id still names the same run (`_hash_moved_settings_as_before`): resources.devices,
.nodes and .accelerator as train.devices, .num_nodes and .accelerator (they decide the global batch
and the numerics); train.request_level, when on, as model.overrides.request_level. Execution
switches (train.attention, .precision, .compile, .recompute, .request_level, .deterministic) are
part of the id: they can change a run's numbers in the last bits (bf16, kernel order, the summation
order of the shared S side), and a run is only resumed from a checkpoint it wrote itself.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model.suggest import did_you_mean

SCHEMA = 1


# how inf and nan are spelled on a command line (YAML reads them as strings; `.inf` is a float)
NON_FINITE_WORDS = ("inf", "infinity", "nan")


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the file, the key and the fix."""


# ---- type checking against annotations ------------------------------------------------------


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `hint`; return it in canonical form (lists -> tuples,
    ints -> floats where a float is expected). Raises ConfigError naming the key."""
    # the plain scalars (most fields) first, before the typing introspection below: a config is
    # coerced field by field thousands of times when a big sweep is planned
    if type(value) is hint and hint in (int, str, bool):
        return value
    if hint is float and type(value) is float and math.isfinite(value):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{where}: {key} = {value!r} ({type(value).__name__}); expected {expected}."
        )

    if hint is Any:
        return value
    if isinstance(hint, type) and issubclass(hint, _Section):
        if not isinstance(value, hint):
            raise bad(f"a {hint.__name__}")
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {key} = {value!r}; choose one of {list(args)}."
                + (did_you_mean(value, args) if isinstance(value, str) else "")
            )
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                pass
        raise bad(" or ".join(getattr(a, "__name__", str(a)) for a in args))
    if hint is type(None):
        if value is not None:
            raise bad("null")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        # inf and nan pass every `> 0` range check (nan fails it with a puzzling message) and
        # would train a run to nan; no float field of a config has a use for them. "inf"/"nan"
        # typed on the command line arrive as strings and get the same message.
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in NON_FINITE_WORDS:
            value = float(value.strip().lower().replace("infinity", "inf"))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range (e.g. 1 followed by 400 zeros)
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(
                f"{where}: {key} = {value!r} is not a finite number; give a finite one "
                f"(inf and nan are refused for every numeric field)."
            )
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"config field {key}: unsupported annotation {hint!r}")  # programming error


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # typing.get_type_hints re-evaluates every string annotation (`from __future__ import
    # annotations`) on each call: ~10 ms per RunConfig, which made planning a 10,000-point sweep take
    # minutes. A section's annotations never change, so they are read once per class.
    return typing.get_type_hints(cls)


class _Section:
    """Shared behaviour of every config section: type-checked fields, dict in/out."""

    # old key of this section -> the dotted key that is its one home now (an error names it)
    MOVED: dict[str, str] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _coerce(getattr(self, f.name), hints[f.name], f.name, type(self).__name__)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Range checks beyond the types (overridden per section)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _Section):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "<config>", prefix: str = ""):
        d = {} if d is None else d
        if not isinstance(d, Mapping):
            raise ConfigError(
                f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(d).__name__}."
            )
        hints = _hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in cls.MOVED:
                raise ConfigError(
                    f"{where}: '{prefix}{key}' is no longer a key here: write {cls.MOVED[key]} "
                    f"instead (one home per setting, docs/training.md)."
                )
            if key not in names:
                raise ConfigError(
                    f"{where}: unknown key '{prefix}{key}'.{did_you_mean(key, names)} "
                    f"Valid keys here: {names}."
                )
            hint = hints[key]
            if isinstance(hint, type) and issubclass(hint, _Section):
                kwargs[key] = hint.from_dict(value, where, f"{prefix}{key}.")
            else:
                kwargs[key] = _coerce(value, hint, f"{prefix}{key}", where)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ---- the sections ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Section):
    # a dataset folder (docs/data-contract.md) or "synthetic:<preset>" (harness.data.synth presets;
    # generated once into cache_dir by ensure_synthetic(preset, seed, cache_dir))
    dataset: str = "synthetic:ci"
    data_seed: int = 0  # seed of the synthetic world (not the training seed)
    seq_len: int = 64  # behaviour events per impression (L)
    n_gap_buckets: int = 32  # log-bucketed time-gap ids
    batch_size: int = 256  # impressions per training batch, per device
    eval_batch_size: int = 1024  # impressions per evaluation batch
    shuffle: bool = False  # False: chronological streaming, as the paper trains
    num_workers: int = 0  # DataLoader workers (not part of the run id)
    cache_dir: str = "data_cache"  # where synthetic worlds are written (not part of the run id)
    # "memory": the data module holds the prepared dataset in RAM (fast set-up, about 1.3 KB per
    # log row); "mapped": built once under cache_dir/prepared and memory-mapped, for logs larger
    # than memory (harness/data/mapped.py). Same batches either way: not part of the run id.
    storage: str = "memory"
    # shuffled train order with locality (harness/data/datamodule.py `block_shuffle`): blocks of
    # this many consecutive requests in random order, `shuffle_window` blocks shuffled together.
    # 0 (default): uniform. For mapped arrays larger than the page cache, where a uniform order
    # reads the disk at random (docs/data-module.md, "An epoch order with locality").
    shuffle_block: int = 0
    shuffle_window: int = 16

    def validate(self) -> None:
        _require(
            bool(self.dataset), "data.dataset is empty; give a folder or 'synthetic:<preset>'."
        )
        _require(self.seq_len >= 1, f"data.seq_len must be >= 1, got {self.seq_len}.")
        _require(
            self.n_gap_buckets >= 2, f"data.n_gap_buckets must be >= 2, got {self.n_gap_buckets}."
        )
        _require(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}.")
        _require(
            self.eval_batch_size >= 1,
            f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}.",
        )
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}.")
        _require(
            self.storage in ("memory", "mapped"),
            f"data.storage must be 'memory' or 'mapped', got {self.storage!r}.",
        )
        _require(
            self.shuffle_block >= 0,
            f"data.shuffle_block must be >= 0 (0: uniform order), got {self.shuffle_block}.",
        )
        _require(
            self.shuffle_window >= 1,
            f"data.shuffle_window must be >= 1, got {self.shuffle_window}.",
        )
        _require(
            self.shuffle_block == 0 or self.shuffle,
            f"data.shuffle_block = {self.shuffle_block} orders a shuffled epoch, but data.shuffle "
            f"is false (chronological order, already sequential on disk). Set data.shuffle: true, "
            f"or data.shuffle_block: 0.",
        )

    @property
    def synthetic_preset(self) -> str | None:
        """The preset name for "synthetic:<preset>", else None (a folder path)."""
        return self.dataset.split(":", 1)[1] if self.dataset.startswith("synthetic:") else None


# Execution switches (how a run computes, never what) have one home, the train section; the model
# receives them from harness/resolved.py (`resolve`). Their old spellings as model options are refused.
MOVED_TO_TRAIN = {
    "attention": "attention",
    "recompute": "recompute",
    "compile_blocks": "compile",
    "attn_impl": "attention",  # the baselines' own switch until issue #23: one vocabulary now
    "request_level": "request_level",  # a OneTrans Config field until issue #23
}
# how an old value reads in the new key's vocabulary, where the spelling changed
RENAMED_VALUES = {"attn_impl": "'plain' is now 'reference', 'sdpa' stays 'sdpa'"}


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    name: str = "onetrans"  # a key of model.registry.MODELS
    size: str = "onetrans-s"  # a key of that model's SIZES
    overrides: dict[str, Any] = field(default_factory=dict)  # fields of the model's Config

    def validate(self) -> None:
        from model.registry import MODELS  # a plain dict: no model code (or torch model) imported

        if self.name not in MODELS:  # the suggestion (difflib) only when needed: it is slow
            raise ConfigError(
                f"model.name = {self.name!r} is not a known model; known: "
                f"{sorted(MODELS)}.{did_you_mean(self.name, MODELS)}"
            )
        for key in self.overrides:
            _require(
                key not in MOVED_TO_TRAIN,
                f"model.overrides.{key} is no longer a model option: execution switches live in the run "
                f"config; write train.{MOVED_TO_TRAIN.get(key)} instead (docs/training.md)."
                + (f" Values: {RENAMED_VALUES[key]}." if key in RENAMED_VALUES else ""),
            )

    def resolve(self) -> Any:
        """The model's Config (size + overrides), validated by model.registry.resolve_config."""
        # the models pull torch: on use only, planning stays torch-free
        from model import registry

        base = registry.resolve_config(self.name, self.size)
        fixed = {}
        for key, value in self.overrides.items():
            default = getattr(base, key, None)
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)  # YAML has no tuples
            if default is not None and not _same_kind(value, default):
                raise ConfigError(
                    f"model.overrides.{key} = {value!r} ({type(value).__name__}) but "
                    f"{self.name} size {self.size!r} has {key} = {default!r} "
                    f"({type(default).__name__}); give a value of that type."
                )
            fixed[key] = value
        return registry.resolve_config(self.name, self.size, fixed)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


# train.* keys that duplicated the scheduler request until issue #23; `resources` is their one home
MOVED_TO_RESOURCES = {
    "devices": "resources.devices",
    "num_nodes": "resources.nodes",
    "accelerator": "resources.accelerator",
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    MOVED = MOVED_TO_RESOURCES
    max_epochs: int = 1  # passes over the training split
    max_steps: int = -1  # optimizer steps; -1: no step limit (max_epochs decides)
    optimizer: Literal["adamw", "paper"] = "adamw"
    lr: float = 1e-3  # AdamW learning rate (all parameters)
    weight_decay: float = 0.0  # AdamW; 0 keeps embedding rows of rare ids from decaying
    # AdamW: the embedding tables' rate is lr x this (1.0: one rate for all, as before); the
    # paper's pair gives the tables their own optimiser and rate (sparse_lr) for the same reason
    emb_lr_scale: float = 1.0
    warmup_steps: int = 0  # linear LR warm-up (AdamW only); the paper states none
    # AdamW: "none" (a constant rate after the warm-up, as before), or "linear" / "cosine": the
    # rate decays to 0 at the run's last step (Lightning's estimated_stepping_batches). The
    # paper states no schedule. In the run id only when not "none".
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    # the paper's pair (spec §1.6, Monolith semantics): Adagrad on embeddings, RMSPropV2 on the rest
    sparse_lr: float = 0.1  # Adagrad lr ("beta1 = 0.1")
    sparse_init_acc: float = 1.0  # Adagrad initial accumulator ("beta2 = 1.0")
    dense_lr: float = 0.005  # RMSPropV2 lr
    dense_beta: float = 0.99999  # RMSPropV2: v <- beta * v + g^2 (no (1 - beta))
    dense_eps: float = 1e-8
    # global-norm gradient clipping per parameter group (both optimisers); 0 disables
    clip_dense: float = 90.0
    clip_sparse: float = 120.0
    # losses
    # CVR BCE on clicked impressions (mean over clicks, the paper's), the same summed per
    # impression ("clicked_per_impression"; harness/system.py says why), or CTCVR on all
    cvr_loss: Literal["clicked", "clicked_per_impression", "ctcvr"] = "clicked"
    ctr_weight: float = 1.0
    cvr_weight: float = 1.0
    protocol: Literal["holdout", "next_batch"] = "holdout"
    next_batch_warmup_days: int = 0  # next_batch: days left out of the macro average (cold model)
    # execution (decisions and reasons recorded in provenance.json); the one home of these switches:
    # harness/resolved.py (`resolve`) hands attention / recompute / compile to the model's build()
    precision: Literal["auto", "32-true", "bf16-mixed"] = (
        "auto"  # auto: bf16-mixed on a bf16 GPU, else 32-true
    )
    attention: Literal["auto", "reference", "sdpa", "flash", "sdpa_causal"] = (
        "auto"  # model/attention.py backends
    )
    compile: bool = False  # torch.compile each block (OneTrans), else the whole model
    recompute: bool = False  # activation recomputation (when the model supports it)
    # OneTrans: the S side once per request, shared by the request's impressions (exact; needs
    # model.overrides.causal true). The baselines have no such switch (harness/train.py says why)
    request_level: bool = False
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU)
    # (the Trainer's accelerator, devices and nodes are the run's resources.accelerator, .devices and
    # .nodes: one value each, which SLURM and Lightning both read)
    # cadences (not part of the run id)
    log_every_n_steps: int = 10
    eval_every_n_steps: int = 0  # holdout: validate every N steps; 0: at the end of each epoch
    ckpt_every_n_steps: int = 100  # checkpoints/last.ckpt every N steps (and at the end)

    def validate(self) -> None:
        _require(self.max_epochs >= 1, f"train.max_epochs must be >= 1, got {self.max_epochs}.")
        _require(
            self.max_steps == -1 or self.max_steps >= 1,
            f"train.max_steps must be -1 (no limit) or >= 1, got {self.max_steps}.",
        )
        for name in ("lr", "emb_lr_scale", "sparse_lr", "dense_lr", "dense_eps", "sparse_init_acc"):
            _require(
                getattr(self, name) > 0,
                f"train.{name} must be > 0, got {getattr(self, name)}; give a positive value "
                f"(default {getattr(type(self), name)}).",
            )
        _require(
            0 < self.dense_beta <= 1, f"train.dense_beta must be in (0, 1], got {self.dense_beta}."
        )
        for name in ("weight_decay", "clip_dense", "clip_sparse", "ctr_weight", "cvr_weight"):
            _require(
                getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}."
            )
        _require(
            self.lr_decay in ("none", "linear", "cosine"),
            f"train.lr_decay must be 'none', 'linear' or 'cosine', got {self.lr_decay!r}.",
        )
        _require(
            self.lr_decay == "none" or self.optimizer == "adamw",
            f"train.lr_decay={self.lr_decay!r} applies to AdamW only (train.optimizer: adamw); "
            f"the paper's optimiser pair keeps its rates.",
        )
        for name in ("warmup_steps", "next_batch_warmup_days", "eval_every_n_steps"):
            _require(
                getattr(self, name) >= 0, f"train.{name} must be >= 0, got {getattr(self, name)}."
            )
        for name in ("log_every_n_steps", "ckpt_every_n_steps"):
            _require(
                getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)}."
            )


@dataclass(frozen=True, kw_only=True)
class LoggingConfig(_Section):
    # auto: online when W&B credentials are configured, else offline; decided before wandb.init
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "onetrans-scaling"
    entity: str = ""  # "" = the default entity of the credentials
    group: str = ""  # "" = the run's sweep
    job_type: str = ""  # "" = the run's axis
    tags: tuple[str, ...] = ()
    progress_bar: bool = True


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_Section):
    """The val/test passes of the holdout protocol (docs/training.md, "Evaluation at scale")."""

    # a progress line (batches done, elapsed, ETA) every N evaluation batches; 0: none. A cadence,
    # not part of the run id
    progress_every_n_batches: int = 200
    # 0: every user of the split. 0 < x < 1: that fraction of the split's users; >= 1: that many
    # users (all when fewer). A seeded subsample: the metrics then carry a bootstrap CI over users
    sample_users: float = 0.0
    sample_seed: int = 0  # which users (independent of the training seed)
    bootstrap: int = 200  # replicates of the CI (resampling the sampled users with replacement)
    ci_level: float = 0.95

    def validate(self) -> None:
        _require(
            self.progress_every_n_batches >= 0,
            f"eval.progress_every_n_batches must be >= 0, got {self.progress_every_n_batches}.",
        )
        _require(
            self.sample_users == 0
            or 0 < self.sample_users < 1
            or (self.sample_users >= 1 and self.sample_users == int(self.sample_users)),
            f"eval.sample_users = {self.sample_users}: give 0 (every user), a fraction in (0, 1) "
            f"or a whole number of users >= 1.",
        )
        _require(self.sample_seed >= 0, f"eval.sample_seed must be >= 0, got {self.sample_seed}.")
        _require(self.bootstrap >= 10, f"eval.bootstrap must be >= 10, got {self.bootstrap}.")
        _require(0 < self.ci_level < 1, f"eval.ci_level must be in (0, 1), got {self.ci_level}.")

    @property
    def sampled(self) -> bool:
        return self.sample_users > 0


# auto: Lightning picks (a GPU when one is visible) and the scheduler is asked for none: a lone
# run's default. A sweep file's resource class says gpu or cpu (harness/sweepfile.py).
ACCELERATORS = ("gpu", "cpu", "auto")


@dataclass(frozen=True, kw_only=True)
class Resources(_Section):
    """What one run asks the scheduler for: the one resources type. A sweep file's resource classes
    are Resources, each run's config carries its class as its `resources` section, and
    harness.executors.submitit_parameters turns it into the SLURM request.

    `devices`, `nodes` and `accelerator` have this one home: SLURM tasks per node = Trainer(devices)
    = GPUs per node (when accelerator is gpu), so ranks are srun-launched one per device and
    Lightning never spawns; Trainer(num_nodes) = nodes, Trainer(accelerator) = accelerator. These
    three enter the run id (config.py docstring); the rest of the section does not.
    These defaults describe a lone run on this machine (accelerator auto: the Trainer picks); a
    sweep file's classes default to a GPU job instead (harness.sweepfile.CLASS_DEFAULTS).
    """

    devices: int = 1  # per node
    accelerator: str = "auto"  # gpu | cpu | auto (checked in validate: the sweep file's message)
    nodes: int = 1
    cpus_per_task: int = 2
    mem_gb: float = 8
    time_min: int = 60
    partition: str | None = None  # None: the cluster's default
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 64  # SLURM: at most this many jobs of one class at once
    signal_delay_s: int = 120  # >= time to save a checkpoint
    max_num_timeout: int = 5  # requeues after timeouts (preemptions are always requeued)
    # Only for the plan's cost column: sustained TFLOP/s one device is assumed to reach
    # (None: 100 on a GPU, 0.02 on a CPU core set, a rough figure for this kind of model).
    assumed_tflops_per_device: float | None = None

    def validate(self) -> None:
        _require(
            self.accelerator in ACCELERATORS,
            f"accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}",
        )
        for name in ("devices", "nodes", "cpus_per_task", "time_min", "array_parallelism"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)!r}")
        _require(self.mem_gb > 0, f"mem_gb must be > 0, got {self.mem_gb!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "<config>", prefix: str = ""):
        """As every section, but errors name the section once, before the field ("run.yaml:
        resources: devices must be >= 1", "sweep.yaml: resources.big: ..."), since the same fields
        are a run config's section and a sweep file's class."""
        where = f"{where}: {prefix.rstrip('.')}" if prefix else where
        if isinstance(d, Mapping) and "gpus_per_node" in d:
            d = _legacy_gpus_per_node(dict(d), where)
        return super().from_dict(d, where, "")

    @property
    def assumed_tflops(self) -> float:
        if self.assumed_tflops_per_device is not None:
            return float(self.assumed_tflops_per_device)
        return 100.0 if self.accelerator == "gpu" else 0.02

    @property
    def tasks_per_node(self) -> int:
        return self.devices

    @property
    def gpus_per_node(self) -> int:
        return self.devices if self.accelerator == "gpu" else 0


def _legacy_gpus_per_node(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Run configs written before Resources was the run config's section said `gpus_per_node`
    (0: no GPU); read it as devices + accelerator so that their run folders stay usable."""
    g = d.pop("gpus_per_node")
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise ConfigError(f"{where}: gpus_per_node = {g!r}; expected an integer >= 0.")
    for key, value in (
        {"accelerator": "gpu", "devices": g} if g else {"accelerator": "cpu"}
    ).items():
        if d.setdefault(key, value) != value:
            raise ConfigError(
                f"{where}: gpus_per_node = {g} contradicts {key} = {d[key]!r}; "
                "give devices and accelerator only."
            )
    return d


@dataclass(frozen=True, kw_only=True)
class RunConfig(_Section):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    resources: Resources = field(default_factory=Resources)
    seed: int = 0
    # labels (not part of the run id)
    sweep: str = "adhoc"
    axis: str = ""
    name: str = ""  # "" = run_name(cfg) derives one

    def validate(self) -> None:
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}.")
        _require(
            bool(self.sweep) and "/" not in self.sweep and self.sweep not in (".", ".."),
            f"sweep = {self.sweep!r} must be a non-empty name without '/', and not '.' or '..' "
            f"(it names the folder under the runs directory), e.g. sweep=my-sweep.",
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any] | None,
        where: str = "<config>",
        prefix: str = "",
        check_model: bool = True,
    ) -> RunConfig:
        """Build and validate; with check_model the size and overrides are resolved against the
        model's registry entry too (this imports the model module)."""
        cfg = super().from_dict(d, where, prefix)
        if check_model:
            check_model_config(cfg.model, where)
        return cfg

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


# ---- files, overrides, identity --------------------------------------------------------------


def check_model_config(model: ModelConfig, where: str = "<config>") -> Any:
    """Resolve model.size + model.overrides (errors name the key and the closest valid name)."""
    try:
        return model.resolve()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except ImportError as e:
        raise ConfigError(
            f"{where}: model {model.name!r} is registered but its module cannot be "
            f"imported ({e}); reinstall the project (bash scripts/setup_env.sh)."
        ) from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: model: {e}") from None


def load_config(path: str | Path, check_model: bool = True, *, stored: bool = False) -> RunConfig:
    """Read a YAML run config; every key is validated (errors name the file and the key).

    stored=True: the file is a run folder's own config.yaml, written by the harness, maybe by an
    earlier version: settings that have since moved are read from their old place
    (`upgrade_stored`), so that the run is still found and resumed. A config a person writes
    (stored=False) gets an error naming the new key instead."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file.")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if stored and isinstance(d, Mapping):
        d = upgrade_stored(d)
    return RunConfig.from_dict(d or {}, where=str(path), check_model=check_model)


def upgrade_stored(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run config (config.yaml, result.json's "config") with every moved setting in its
    current home (issue #23): model.overrides.request_level -> train.request_level, and
    train.devices / .num_nodes / .accelerator -> resources.devices / .nodes / .accelerator. The
    train values win over the old resources section: they are what the Trainer ran with and what
    the id hashed, so the run id is unchanged (run_id hashes moved settings in their old form)."""
    d = copy.deepcopy(dict(d))
    model = d.get("model")
    train = d["train"] = dict(d["train"]) if isinstance(d.get("train"), dict) else {}
    overrides = model.get("overrides") if isinstance(model, dict) else None
    if isinstance(overrides, dict) and "request_level" in overrides:
        train.setdefault("request_level", overrides.pop("request_level"))
    moved = {k: train.pop(k) for k in MOVED_TO_RESOURCES if k in train}
    if moved:
        res = dict(d["resources"]) if isinstance(d.get("resources"), Mapping) else {}
        if "gpus_per_node" in res:  # an even older spelling, read first so that train's win
            res = _legacy_gpus_per_node(res, "stored config: resources")
        for old, value in moved.items():
            res[MOVED_TO_RESOURCES[old].split(".", 1)[1]] = value
        d["resources"] = res
    return d


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003): the value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.max_steps=10.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    # YAML 1.1 reads "3e-4" as a string; accept it as the number it plainly is
    if isinstance(value, str):
        try:
            value = (
                float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
            )
        except ValueError:
            pass
    return key.strip(), value


def apply_overrides(
    cfg: RunConfig,
    overrides: Mapping[str, Any] | typing.Iterable[str],
    where: str = "overrides",
    check_model: bool = True,
) -> RunConfig:
    """Dotted overrides: {"train.max_steps": 10, "model.overrides.n_layers": 8} or ["k=v", ...]."""
    items = (
        list(overrides.items())
        if isinstance(overrides, Mapping)
        else [parse_override(s) for s in overrides]
    )
    d = cfg.to_dict()
    for key, value in items:
        parts = key.split(".")
        node = d
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                raise ConfigError(
                    f"{where}: unknown key '{'.'.join(parts[: i + 1])}' in '{key}'."
                    f"{did_you_mean(part, options)}"
                )
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{key}' does not name a config field.")
        node[parts[-1]] = value
    return RunConfig.from_dict(d, where=where, check_model=check_model)


# (section, field) pairs left out of run_id; a section alone means the whole section.
RUN_ID_EXCLUDED: tuple[tuple[str, ...], ...] = (
    ("sweep",),
    ("axis",),
    ("name",),
    ("data", "num_workers"),
    ("data", "cache_dir"),
    ("data", "storage"),
    ("train", "log_every_n_steps"),
    ("train", "eval_every_n_steps"),
    ("train", "ckpt_every_n_steps"),
    ("eval", "progress_every_n_batches"),
    ("logging",),
    ("resources",),
)


# Sections and fields added after run ids were in use, left out of run_id while they are off (so
# every run id from before they existed still names the same run): path -> "is it on?".
RUN_ID_WHEN_ON: dict[tuple[str, ...], Any] = {
    ("eval",): lambda cfg: cfg.eval.sampled,
    ("train", "emb_lr_scale"): lambda cfg: cfg.train.emb_lr_scale != 1.0,
    ("train", "lr_decay"): lambda cfg: cfg.train.lr_decay != "none",
    ("data", "shuffle_block"): lambda cfg: cfg.data.shuffle_block > 0,
    ("data", "shuffle_window"): lambda cfg: cfg.data.shuffle_block > 0,
}


def _drop(d: dict[str, Any], path: tuple[str, ...]) -> None:
    for part in path[:-1]:
        d = d[part]
    d.pop(path[-1], None)


def semantic_dict(cfg: RunConfig) -> dict[str, Any]:
    """The part of the config that defines what a run computes (what run_id hashes), in the
    canonical form: a setting that moved after run ids were in use hashes where it used to live."""
    d = cfg.to_dict()
    for path in RUN_ID_EXCLUDED:
        _drop(d, path)
    for path, on in RUN_ID_WHEN_ON.items():
        if not on(cfg):
            _drop(d, path)
    _hash_moved_settings_as_before(d, cfg)
    return d


def _hash_moved_settings_as_before(d: dict[str, Any], cfg: RunConfig) -> None:
    """Settings that moved home (issue #23) still enter the id, in their old place and form, so
    that every run id from before the move names the same run (docs/training.md, "Run identity").

    train.request_level was model.overrides.request_level: on, it hashes as that override; off,
    as its absence (the field did not exist in a config that left it off). resources.devices,
    .nodes and .accelerator were copied into train.devices, .num_nodes and .accelerator (by the
    sweep file parser; a lone run had train.accelerator auto), which the id hashed."""
    if d["train"].pop("request_level"):
        d["model"]["overrides"]["request_level"] = True
    r = cfg.resources
    d["train"] |= {"devices": r.devices, "num_nodes": r.nodes, "accelerator": r.accelerator}


def run_id(cfg: RunConfig) -> str:
    blob = json.dumps(
        {"schema": SCHEMA, **semantic_dict(cfg)}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# short forms of common model fields in readable run names
_ABBREV = {"n_layers": "d", "d_model": "w", "n_heads": "h", "seq_len": "len"}


def run_name(cfg: RunConfig) -> str:
    """cfg.name if given, else e.g. 'onetrans-s-len1024-d6-w256-s0' (size, seq_len, overrides, seed)."""
    if cfg.name:
        return cfg.name
    m = cfg.model
    parts = [
        m.size if m.size.startswith(m.name) else f"{m.name}-{m.size}",
        f"len{cfg.data.seq_len}",
    ]
    for key in sorted(m.overrides):
        v = m.overrides[key]
        v = "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v).lower()
        parts.append(f"{_ABBREV.get(key, key)}{v}")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts).replace(" ", "")
