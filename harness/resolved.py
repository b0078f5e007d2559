"""One run config, resolved once: `resolve(cfg) -> ResolvedConfig`.

Everything the harness derives from a RunConfig before it trains lives here, decided in one
place: the checked model config (size + overrides), the execution switches handed to the
model's build() with the decisions and reasons provenance.json records, the dataset name ->
folder decision, the planning manifest and feature spec, the run's axes (result.json "axes")
and, on request, the model's parameters and analytic FLOPs. The trainer (`harness/train.py`),
`python -m harness.train --describe`, the sweep plan's cost column (`harness/sweep.py`) and the
matched-compute budget (`harness/sweepfile.py`) all read it instead of resolving the config
again each in its own way.

Cheap for planning: resolving reads no data and generates nothing (a synthetic world's folder is
where it would lie; its manifest is computed from the preset). What needs more is computed on
first use and kept: the manifest (a folder's manifest.json is read), the parameters and FLOPs
(the model is built on the meta device: torch is imported only then). What depends on the
machine rather than the config (precision, threads, W&B mode, the device) is decided by the
trainer at run time (harness/provenance.py, harness/tracking.py), not here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.config import ConfigError, RunConfig, check_model_config, run_id

# the model-config fields a run reports as its axes (result.json "axes", beside data.seq_len)
AXIS_FIELDS = ("n_layers", "d_model", "n_heads")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetPlan:
    """Where a run's dataset lies and what is known of it without reading or generating data.
    `data.dataset` is a folder path or "synthetic:<preset>" (harness/data/resolve.py)."""

    name: str
    data_seed: int
    cache_dir: str

    @cached_property
    def folder(self) -> Path:
        """The folder on this machine (a synthetic world's: where it is or will be generated).
        Raises ContractError for an unknown synthetic preset."""
        from harness.data.resolve import dataset_folder  # the generator (numpy): on use only

        return dataset_folder(self.name, self.data_seed, self.cache_dir)

    def ensure(self, progress: bool = False) -> Path:
        """The folder, a synthetic world generated into the cache first when absent (the one
        step of a run that may write data; planning never calls it)."""
        from harness.data.resolve import ensure_dataset  # the generator (numpy): on use only

        return ensure_dataset(self.name, self.data_seed, self.cache_dir, progress=progress)

    @cached_property
    def manifest(self) -> Any:
        """The manifest (harness.data.contract.Manifest) without generating or reading data: a
        synthetic world's computed from its preset, a folder's loaded."""
        from harness.data.resolve import planning_manifest  # the generator (numpy): on use only

        return planning_manifest(self.name, self.data_seed)

    @cached_property
    def train_impressions(self) -> int | None:
        """Training impressions in one epoch, for planning: the manifest's statistics when the
        folder exists (a cached synthetic world included), else a synthetic world's expectation;
        None when unknown."""
        from harness.data.resolve import (
            train_impressions_estimate,  # the generator (numpy): on use only
        )

        return train_impressions_estimate(self.name, self.data_seed, self.cache_dir)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedConfig:
    """A run config with every derived setting decided. Frozen: read it, do not patch it; the
    mappings are read-only views (`execution_kwargs()` / `execution_decisions()` give copies to
    hand on)."""

    cfg: RunConfig
    run_id: str
    model_config: Any  # the model module's Config: size + overrides, checked
    execution_kw: Mapping[str, Any]  # keywords for the model's build() (its EXECUTION switches)
    decisions: Mapping[str, Any]  # compile / recompute / request_level: value + reason
    dataset: DatasetPlan
    axes: Mapping[str, Any]  # result.json "axes": data.seq_len and the model's size fields

    def execution_kwargs(self) -> dict[str, Any]:
        return dict(self.execution_kw)

    def execution_decisions(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.decisions.items()}

    @cached_property
    def feature_spec(self) -> Any:
        """The model's input description, from the planning manifest (no data read); the data
        module derives the same spec from the folder it loads."""
        d = self.cfg.data
        return self.dataset.manifest.feature_spec(d.seq_len, n_gap_buckets=d.n_gap_buckets)

    @cached_property
    def description(self) -> dict[str, Any]:
        """Parameters and analytic FLOPs per example of the run's model, built on the meta device
        (no data, no memory). Imports torch and the model: asked for by describe and the plan's
        cost column only."""
        import torch  # a description builds the model: the only step here that needs torch

        # the models pull torch: on use only, planning stays torch-free
        from model.registry import build_model

        kw = self.execution_kwargs()
        kw.pop("compile_blocks", None)  # compiling is irrelevant to a meta-device count
        m = self.cfg.model
        with torch.device("meta"):
            model = build_model(m.name, self.feature_spec, m.size, m.overrides, kw)
        fl = model.flops_per_example()
        return {
            "params": model.param_counts(),
            "flops": {
                "forward_per_example": float(fl["forward"]),
                "train_per_example": float(fl["train"]),
            },
        }

    def describe(self) -> dict[str, Any]:
        """`description`, a fresh copy the caller may extend (e.g. with run id and name)."""
        d = self.description
        return {"params": d["params"], "flops": dict(d["flops"])}

    def planned_train_samples(self) -> int | None:
        """Impressions the run will train on, for its cost: max_steps x samples per step when
        step-bounded, else epochs x the train split's impressions (`DatasetPlan.train_impressions`);
        None when neither is known."""
        t = self.cfg.train
        if t.max_steps > 0:
            return t.max_steps * samples_per_step(self.cfg)
        if t.max_epochs > 0 and self.dataset.train_impressions:
            return self.dataset.train_impressions * t.max_epochs
        return None


def resolve(cfg: RunConfig) -> ResolvedConfig:
    """The one resolution of a run config (see the module docstring). Raises ConfigError for a
    model config or an execution switch the model cannot take; reads no data."""
    model_cfg = check_model_config(cfg.model)
    kw, decisions = _execution(cfg, model_cfg)
    d = cfg.data
    return ResolvedConfig(
        cfg=cfg,
        run_id=run_id(cfg),
        model_config=model_cfg,
        execution_kw=MappingProxyType(kw),
        decisions=MappingProxyType(decisions),
        dataset=DatasetPlan(name=str(d.dataset), data_seed=d.data_seed, cache_dir=str(d.cache_dir)),
        axes=MappingProxyType(_axes(cfg, model_cfg)),
    )


def describe_key(cfg: RunConfig) -> str:
    """Everything `ResolvedConfig.description` reads of a run config: runs that share it share its
    answer (a 10,000-point grid over lr x seq_len builds 100 models, not 10,000)."""
    c = cfg
    return json.dumps(
        [
            [c.data.dataset, c.data.data_seed, c.data.seq_len, c.data.n_gap_buckets],
            c.model.to_dict(),
            [c.train.attention, c.train.recompute, c.train.compile, c.train.request_level],
        ],
        sort_keys=True,
        default=str,
    )


def samples_per_step(cfg: RunConfig) -> int:
    """Impressions one optimizer step trains on: the per-device batch x devices x nodes (the
    plan's cost column and the matched-compute budget both count them so)."""
    r = cfg.resources
    return int(cfg.data.batch_size * r.devices * r.nodes)


def execution(cfg: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's execution keywords for the model's build() and the decisions with reasons, as
    `resolve(cfg)` decides them (copies: the caller may extend them)."""
    r = resolve(cfg)
    return r.execution_kwargs(), r.execution_decisions()


def _axes(cfg: RunConfig, model_cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"seq_len": cfg.data.seq_len}
    for f in AXIS_FIELDS:
        if hasattr(model_cfg, f):
            out[f] = getattr(model_cfg, f)
    return out


def _execution(cfg: RunConfig, model_cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The execution switches (train.attention, train.recompute, train.compile,
    train.request_level: their one home) as keywords for the model's build(), and the decisions
    with reasons. The one place they are applied; a switch the model lacks is an error, not a
    silent no-op."""
    from model.registry import execution_switches  # model.registry imports torch (model.base)

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
