"""Name -> model. Each model module exposes the same three things:

    Config   a frozen, keyword-only dataclass of the model's hyper-parameters
    SIZES    dict[str, Config] of named sizes (paper scale, scaling-grid points, tiny CPU sizes)
    build(spec: FeatureSpec, config: Config, **execution) -> RankingModel

and optionally EXECUTION, the names of the execution switches build() takes as keywords (how the
model runs, never what it computes: "attention", "recompute", "compile_blocks", "request_level";
none by default).

so the harness can build any model from (name, size, overrides) without knowing its internals.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

from .base import RankingModel
from .features import FeatureSpec
from .suggest import did_you_mean

# model name -> module implementing it
MODELS: dict[str, str] = {
    "onetrans": "model.onetrans",
    "dcnv2_din": "model.baselines.dcnv2_din",
    "wukong_din": "model.baselines.wukong_din",
    "hiformer_din": "model.baselines.hiformer_din",
    "rankmixer_din": "model.baselines.rankmixer_din",
    "rankmixer_stackdin": "model.baselines.rankmixer_stackdin",
    "rankmixer_longer": "model.baselines.rankmixer_longer",
    "rankmixer_transformer": "model.baselines.rankmixer_transformer",
}


def model_module(name: str) -> ModuleType:
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; known models: {sorted(MODELS)}.{did_you_mean(name, list(MODELS))}"
        )
    return importlib.import_module(MODELS[name])


def sizes(name: str) -> dict[str, Any]:
    return dict(model_module(name).SIZES)


def resolve_config(name: str, size: str, overrides: dict[str, Any] | None = None) -> Any:
    """The model's Config for a named size with field overrides applied (unknown fields rejected)."""
    mod = model_module(name)
    if size not in mod.SIZES:
        raise ValueError(
            f"unknown size {size!r} for model {name!r}; known sizes: {sorted(mod.SIZES)}."
            f"{did_you_mean(size, list(mod.SIZES))}"
        )
    cfg = mod.SIZES[size]
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(cfg)}
    for key in overrides:
        if key not in fields:
            raise ValueError(
                f"unknown option {key!r} for model {name!r}; valid options: {sorted(fields)}."
                f"{did_you_mean(key, sorted(fields))}"
            )
    return dataclasses.replace(cfg, **overrides)


def execution_switches(name: str) -> tuple[str, ...]:
    """The execution switches the model's build() takes (its module's EXECUTION)."""
    return tuple(getattr(model_module(name), "EXECUTION", ()))


def build_model(
    name: str,
    spec: FeatureSpec,
    size: str,
    overrides: dict[str, Any] | None = None,
    execution: dict[str, Any] | None = None,
) -> RankingModel:
    """The model for a named size with Config overrides, built with the execution switches given."""
    execution = dict(execution or {})
    unknown = sorted(set(execution) - set(execution_switches(name)))
    if unknown:
        raise ValueError(
            f"model {name!r} has no execution switch {unknown}; it has {list(execution_switches(name))}."
        )
    return model_module(name).build(spec, resolve_config(name, size, overrides), **execution)
