"""Sweep files: schema, validation, presets and expansion into runs.

A sweep file is YAML with these top-level keys (only `name` and `base` are required):

    name: length                      # sweep name: runs land in <runs>/<name>/<run_id>/
    description: ...
    base: {...} | "path/to/run.yaml"  # base run config (nested dict, or a path relative to the sweep file)
    axis: seq_len                     # label stored in each run (result.json "axis")
    grid:   {data.seq_len: [768, ...]}          # cartesian product, by dotted key
    zip:    [{model.n_layers: [...], model.d_model: [...]}]   # each group: equal-length lists, zipped
            # a `model.overrides` column gives each row its own model overrides ({} for none); a
            # `set` column its own dotted settings, e.g. [{}, {train.request_level: true}] for a
            # switch that only the OneTrans rows of a model comparison accept
    baselines:                        # extra runs alongside the grid (one model each)
      - {label: rankmixer, model: rankmixer_transformer, size: mini, set: {...}, follow: [data.seq_len]}
    include_base: true                # run the base model over the grid (false: only baselines)
    seeds: [0]
    resources:                        # resource classes; one SLURM job array per class
      default: {devices: 1, accelerator: gpu, cpus_per_task: 8, mem_gb: 64, time_min: 240, partition: ...}
    resource_rules: [{when: {model.size: onetrans-l}, class: large}]
    analysis: {x: data.seq_len, metrics: [test.ctr_uauc], fit: powerlaw}   # hints for analysis.report
              # trick: [model.overrides.match_init]: switches crossed with a size or length axis whose
              # gain per doubling of FLOPs the report tests (analysis/tricks.py; check_tricks below)
    tune: {train.lr: [3e-4, 1e-3, 3e-3], by: val.ctr_auc}   # an inner search per grid point: every
            # candidate is an ordinary run; analysis/tuning.py keeps the best by the val metric
    budget: {train_flops: 1.0e+15}    # matched compute: each run's train.max_steps is derived from
            # its model's training FLOPs per step (harness.resolved) so that it spends this
    presets:                          # shrink for CI / a laptop WITHOUT changing the grid's shape
      ci: {set: {...}, grid: {data.seq_len: [8, ...]}, zip: [...], baselines: {label: {size: tiny}}, resources: {...},
           tune: {...}, budget: {...}}     # a preset's tune/budget replaces the file's

Expansion is pure (no torch, no files written) and deterministic: the same file and preset give the
same runs in the same order. Run ids come from `harness.config.run_id` of the resolved RunConfig.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import config
from harness.config import ConfigError, Resources, RunConfig
from harness.resolved import ResolvedConfig, describe_key, samples_per_step
from harness.resolved import resolve as resolve_run
from model.suggest import did_you_mean

TOP_KEYS = (
    "name",
    "description",
    "base",
    "axis",
    "grid",
    "zip",
    "baselines",
    "include_base",
    "seeds",
    "resources",
    "resource_rules",
    "analysis",
    "presets",
    "datasets",
    "tune",
    "budget",
)
PRESET_KEYS = (
    "set",
    "grid",
    "zip",
    "baselines",
    "resources",
    "seeds",
    "description",
    "tune",
    "budget",
)
# `tune.by`: the metric that chooses a grid point's candidate; val split only (choosing on test
# would leak the split the law is reported on)
TUNE_BY_METRICS = ("ctr_auc", "ctr_uauc", "ctr_logloss", "cvr_auc", "cvr_uauc", "cvr_logloss")
BUDGET_KEYS = ("train_flops",)
BASELINE_KEYS = ("label", "model", "size", "set", "follow", "resource_class")
ANALYSIS_KEYS = ("x", "metrics", "fit", "baseline", "trick")
DATASET_KEYS = ("convert", "raw", "opt")
CONVERTER_SOURCES = ("movielens", "taobao", "tmall")  # harness.data.converters (not imported here)
NAME_KEY = "_name"  # zip column that names rows (not a config key)
# zip column of per-row settings: each row a mapping of dotted run-config keys ({} for none), e.g.
# train.request_level on for the OneTrans rows of a model comparison only (the baselines refuse it)
SET_KEY = "set"
# analysis.fit: each accepted spelling -> the fit form's one name (analysis/fit.py `form`). "powerlaw" is
# the saturating law y = E + A·x^-α; "saturating" and "power" are its documented aliases.
FIT_FORMS = {
    "loglinear": "loglinear",
    "powerlaw": "powerlaw",
    "saturating": "powerlaw",
    "power": "powerlaw",
    "none": "none",
}


class SweepFileError(ValueError):
    """A sweep file is invalid; the message names the file, the key and the fix."""


def _check_keys(where: str, data: Mapping, allowed: tuple[str, ...], path: Path | None) -> None:
    for key in data:
        if key not in allowed:
            raise SweepFileError(
                f"{path or '<sweep>'}: unknown key '{where}{key}'."
                f"{did_you_mean(key, allowed, list_valid=True)}"
            )


# A sweep file's resource class is a harness.config.Resources; unlike a lone run config
# (accelerator auto: whatever this machine has, no GPU asked of a scheduler), a class the file
# leaves unsaid asks for a GPU job.
CLASS_DEFAULTS: dict[str, Any] = {
    "accelerator": "gpu",
    "cpus_per_task": 8,
    "mem_gb": 64,
    "time_min": 240,
}
RESOURCE_KEYS = tuple(f.name for f in dataclasses.fields(Resources))
CLASS_ACCELERATORS = ("gpu", "cpu")


@dataclass(frozen=True, kw_only=True)
class Baseline:
    label: str
    model: str
    size: str
    set: dict[str, Any] = field(default_factory=dict)  # dotted run-config overrides
    follow: tuple[str, ...] = ()  # grid/zip axes this baseline is swept along
    resource_class: str | None = None


@dataclass(frozen=True, kw_only=True)
class AnalysisHints:
    """The `analysis:` block of a sweep file (how the analysis should read the sweep)."""

    x: str
    metrics: tuple[str, ...] = ("test.ctr_uauc",)
    fit: str = "none"  # a canonical form: FIT_FORMS' values
    baseline: str | None = None  # label of the reference run for deltas (paper: DCNv2+DIN)
    trick: tuple[str, ...] = ()  # switch keys crossed with a size/length axis (analysis/tricks.py)


@dataclass(frozen=True, kw_only=True)
class DatasetRecipe:
    """How the driver makes a dataset folder a run needs, on first use: `python -m harness.data
    convert <convert> <raw> --out <folder>` (the `datasets:` block of a sweep file)."""

    folder: str  # as runs write it in data.dataset (relative to the current directory)
    convert: str  # converter source: movielens | taobao | tmall
    # raw files, relative to the current directory; $VAR and ${VAR:-default} are expanded, so a
    # file can honour ONETRANS_SHARED_DATA (where the licensed samples live) with a default
    raw: str
    opt: dict[str, Any] = field(default_factory=dict)  # converter keyword arguments

    def raw_path(self) -> Path:
        import os
        import re

        text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1]) or m[2], self.raw)
        return Path(os.path.expandvars(text))

    def command(self, raw: str | None = None) -> str:
        opts = "".join(f" --opt {k}={v}" for k, v in self.opt.items())
        raw = self.raw_path() if raw is None else raw
        return f"python -m harness.data convert {self.convert} {raw} --out {self.folder}{opts}"


@dataclass(frozen=True, kw_only=True)
class TuneSpec:
    """The `tune:` block: one run-config key searched at every grid point (docs/sweeps.md).

    Each value is a candidate run of its own; the analysis keeps, per point, the candidate with the
    best mean `by` metric over seeds (analysis/tuning.py). The search is a label of the plan only,
    not of the run config, so a candidate's run id is that of the same run planned without it."""

    key: str  # dotted run-config key, e.g. train.lr
    values: tuple[Any, ...]  # candidates, in the file's order (the order breaks ties)
    by: str  # val.<metric>

    @property
    def metric(self) -> str:
        return self.by.split(".", 1)[1]


@dataclass(frozen=True, kw_only=True)
class Sweep:
    name: str
    path: Path | None
    preset: str | None
    description: str
    base: dict[str, Any]
    axis: str
    grid: dict[str, list[Any]]
    zip: list[dict[str, list[Any]]]
    baselines: list[Baseline]
    include_base: bool
    seeds: list[int]
    resources: dict[str, Resources]
    resource_rules: list[dict[str, Any]]
    analysis: AnalysisHints | None
    set: dict[str, Any]  # preset's dotted overrides for every run
    presets: tuple[str, ...]
    datasets: dict[str, DatasetRecipe] = field(default_factory=dict)  # folder -> recipe
    tune: TuneSpec | None = None
    budget: float | None = None  # training FLOPs per run (matched compute); None: steps as set


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One expanded run: the overrides that make it, its labels and its resource class."""

    index: int
    name: str  # readable, unique within the sweep
    label: str  # "base" or the baseline's label
    axes: dict[str, Any]  # axis key -> value for this run
    seed: int
    overrides: dict[str, Any]  # dotted keys applied on the base config, in order
    resource_class: str
    # a tuned sweep's candidate: {"key", "value", "by", "point"} (point: the run's name without the
    # candidate and the seed; the candidates of one point share it). None for an untuned sweep.
    tune: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------- loading


def load_sweep(path: str | Path, preset: str | None = None) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"{path}: sweep file not found (pass a path like sweeps/length.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepFileError(f"{path}: not valid YAML: {err}") from None
    sweep = parse_sweep(data, path=path, preset=preset)
    check_presets(data, path, skip=preset)
    return sweep


def check_presets(data: Any, path: Path | None, skip: str | None = None) -> None:
    """Every preset of the file parses and resolves (a typo inside `presets.laptop` is reported
    whichever preset, or none, is selected). Pure: no model is built, nothing is written."""
    presets = (data or {}).get("presets") if isinstance(data, Mapping) else None
    if not isinstance(presets, Mapping):
        return
    for name in presets:
        if name == skip:
            continue
        try:
            resolve(parse_sweep(data, path=path, preset=name), check_model=False, cover_only=True)
        except SweepFileError as err:
            text = str(err)
            raise SweepFileError(
                text
                if f"presets.{name}" in text
                else f"{text}\n  (in preset {name!r}: "
                f"python -m harness.sweep plan {path or 'FILE'} --preset {name} shows it)"
            ) from None


def parse_sweep(data: Any, *, path: Path | None = None, preset: str | None = None) -> Sweep:
    """The validated Sweep of a sweep file's data with `preset` applied. Each step below checks one
    part of the file; the order of the steps is the order in which a file's errors are reported."""
    where = path or "<sweep>"
    _check_top_level(data, where, path)
    name = _parse_name(data["name"], where)
    base = _read_base(data["base"], where, path)
    presets_raw = _parse_presets_block(data, preset, where)
    _refuse_empty_grid(data.get("grid"), where)
    grid = _parse_grid(data.get("grid") or {}, "grid", where)
    zips = [_parse_zip(g, f"zip[{i}]", where) for i, g in enumerate(data.get("zip") or [])]
    baselines = [
        _parse_baseline(b, i, where, path) for i, b in enumerate(data.get("baselines") or [])
    ]
    resources = _parse_resources(data.get("resources") or {"default": {}}, where, path)
    sets: dict[str, Any] = {}
    if preset is not None:
        p = _preset_body(presets_raw, preset, where, path)
        sets = dict(p.get("set") or {})
        at = f"presets.{preset}"
        grid = _apply_preset_grid(grid, p.get("grid") or {}, at, where)
        zips = _apply_preset_zips(zips, p.get("zip") or [], at, where)
        baselines = _apply_preset_baselines(baselines, p.get("baselines") or {}, at, where, path)
        resources = _apply_preset_resources(resources, p.get("resources") or {}, at, where, path)

    rules = _parse_resource_rules(data.get("resource_rules") or [], resources, where)
    _check_baseline_refs(baselines, resources, grid, zips, where)
    all_axes = _axes_used_once(grid, zips, where)
    seeds = _parse_seeds(_preset_or_file(data, presets_raw, preset, "seeds", [0]), where)
    if "default" not in resources:
        raise SweepFileError(
            f"{where}: 'resources' must define a 'default' class (used when no rule matches)"
        )

    analysis = parse_analysis(data.get("analysis"), where, path)
    tune = parse_tune(data.get("tune"), "tune", where)
    budget = parse_budget(data.get("budget"), "budget", where, path)
    if preset is not None:
        tune = _preset_tune(tune, presets_raw[preset] or {}, preset, where)
        if "budget" in (presets_raw[preset] or {}):
            at = f"presets.{preset}.budget"
            budget = parse_budget(presets_raw[preset]["budget"], at, where, path)
    if tune is not None and tune.key in all_axes:
        raise SweepFileError(
            f"{where}: tune.{tune.key} is also a grid/zip axis; a key is either swept (an axis of "
            "the law) or searched per point (tune), not both"
        )
    check_tricks(analysis, grid, zips, where)
    include_base = _parse_include_base(data.get("include_base", True), baselines, where)
    return Sweep(
        name=name,
        path=path,
        preset=preset,
        description=str(data.get("description", "")),
        base=copy.deepcopy(dict(base)),
        axis=str(data.get("axis", next(iter(all_axes), "none")).split(".")[-1]),
        grid=grid,
        zip=zips,
        baselines=baselines,
        include_base=include_base,
        seeds=list(seeds),
        resources=resources,
        resource_rules=rules,
        analysis=analysis,
        set=sets,
        presets=tuple(presets_raw),
        datasets=_parse_datasets(data.get("datasets"), where, path),
        tune=tune,
        budget=budget,
    )


# ---- the steps of parse_sweep (each checks one part of the file; errors name the file and key)


def _check_top_level(data: Any, where: Any, path: Path | None) -> None:
    """A mapping of known top-level keys with the required `name` and `base`."""
    if not isinstance(data, Mapping):
        raise SweepFileError(
            f"{where}: the top level must be a mapping with at least 'name' and 'base'"
        )
    _check_keys("", data, TOP_KEYS, path)
    for req in ("name", "base"):
        if req not in data:
            raise SweepFileError(f"{where}: missing required key {req!r}")


def _parse_name(raw: Any, where: Any) -> str:
    """The sweep name, which names its folder under the runs directory."""
    name = str(raw)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise SweepFileError(
            f"{where}: 'name' must be letters, digits, '-' or '_' (it names a folder), got {name!r}"
        )
    return name


def _read_base(base: Any, where: Any, path: Path | None) -> Mapping:
    """`base`: a run config inline, or a path to one relative to the sweep file."""
    if isinstance(base, str):
        base_path = (path.parent if path else Path.cwd()) / base
        if not base_path.is_file():
            raise SweepFileError(f"{where}: 'base' points at {base_path}, which does not exist")
        base = yaml.safe_load(base_path.read_text()) or {}
    if not isinstance(base, Mapping):
        raise SweepFileError(
            f"{where}: 'base' must be a mapping (a run config) or a path to a run-config YAML"
        )
    return base


def _parse_presets_block(data: Mapping, preset: str | None, where: Any) -> Mapping:
    """The `presets` mapping; the selected preset must be one of them."""
    presets_raw = data.get("presets") or {}
    if not isinstance(presets_raw, Mapping):
        raise SweepFileError(f"{where}: 'presets' must map a preset name to its changes")
    if preset is not None and preset not in presets_raw:
        hint = (
            did_you_mean(preset, presets_raw, list_valid=True)
            if presets_raw
            else " This file has no presets."
        )
        raise SweepFileError(f"{where}: no preset {preset!r} in 'presets'.{hint}")
    return presets_raw


def _refuse_empty_grid(raw: Any, where: Any) -> None:
    """`grid: {}` is a mistake more often than a plan of the base config alone."""
    if isinstance(raw, Mapping) and not raw:
        raise SweepFileError(
            f"{where}: 'grid' is empty ({{}}): it would plan the base config alone. Give it an "
            "axis (e.g. grid: {data.seq_len: [768, 1024]}), or remove 'grid' to run the base "
            "config once per seed on purpose"
        )


def _preset_body(presets_raw: Mapping, preset: str, where: Any, path: Path | None) -> Mapping:
    """The selected preset's mapping of known keys ({} when the file leaves it empty)."""
    p = presets_raw[preset] or {}
    if not isinstance(p, Mapping):
        raise SweepFileError(f"{where}: presets.{preset} must be a mapping")
    _check_keys(f"presets.{preset}.", p, PRESET_KEYS, path)
    return p


def _apply_preset_grid(
    grid: dict[str, list[Any]], raw: Any, at: str, where: Any
) -> dict[str, list[Any]]:
    """A preset may change a grid axis' values, never the shape: same axes, same number of points."""
    for key, values in _parse_grid(raw, f"{at}.grid", where).items():
        if key not in grid:
            raise SweepFileError(
                f"{where}: {at}.grid.{key} is not a grid axis."
                f"{did_you_mean(key, grid, list_valid=True)}"
            )
        if len(values) != len(grid[key]):
            raise SweepFileError(
                f"{where}: {at}.grid.{key} has {len(values)} values but the grid has "
                f"{len(grid[key])}; a preset may change values, not the grid's shape"
            )
        grid[key] = values
    return grid


def _apply_preset_zips(
    zips: list[dict[str, list[Any]]], pz: list[Any], at: str, where: Any
) -> list[dict[str, list[Any]]]:
    """A preset may change a zip column's values (same columns, same rows); rows stay distinct."""
    if pz and len(pz) != len(zips):
        raise SweepFileError(f"{where}: {at}.zip has {len(pz)} groups, the sweep has {len(zips)}")
    for i, group in enumerate(pz):
        group = _parse_grid(group, f"{at}.zip[{i}]", where, unique=False)
        for key, values in group.items():
            if key not in zips[i]:
                raise SweepFileError(
                    f"{where}: {at}.zip[{i}].{key} is not in zip[{i}]."
                    f"{did_you_mean(key, zips[i], list_valid=True)}"
                )
            if len(values) != len(zips[i][key]):
                raise SweepFileError(
                    f"{where}: {at}.zip[{i}].{key} has {len(values)} values, zip[{i}] "
                    f"has {len(zips[i][key])}; a preset may not change the grid's shape"
                )
            zips[i][key] = values
        _parse_zip(zips[i], f"zip[{i}] after {at}", where)  # rows still distinct
    return zips


def _apply_preset_baselines(
    baselines: list[Baseline], raw: Mapping, at: str, where: Any, path: Path | None
) -> list[Baseline]:
    """A preset may change a baseline's size and add to its `set` (by label)."""
    labels = {b.label: b for b in baselines}
    for label, change in raw.items():
        if label not in labels:
            raise SweepFileError(
                f"{where}: {at}.baselines.{label}: no baseline with that label."
                f"{did_you_mean(label, labels, list_valid=True)}"
            )
        if not isinstance(change, Mapping):
            raise SweepFileError(
                f"{where}: {at}.baselines.{label} must be a mapping like {{size: tiny}}"
            )
        _check_keys(f"{at}.baselines.{label}.", change, ("size", "set"), path)
        old = labels[label]
        labels[label] = dataclasses.replace(
            old,
            size=str(change.get("size", old.size)),
            set={**old.set, **(change.get("set") or {})},
        )
    return [labels[b.label] for b in baselines]


def _apply_preset_resources(
    resources: dict[str, Resources], raw: Mapping, at: str, where: Any, path: Path | None
) -> dict[str, Resources]:
    """A preset may change fields of the file's resource classes (not add classes)."""
    for cls, change in raw.items():
        if cls not in resources:
            raise SweepFileError(
                f"{where}: {at}.resources.{cls}: no such resource class."
                f"{did_you_mean(cls, resources, list_valid=True)}"
            )
        _check_keys(f"{at}.resources.{cls}.", change, RESOURCE_KEYS, path)
        resources[cls] = _resource(
            f"{at}.resources.{cls}", {**resources[cls].to_dict(), **change}, where
        )
    return resources


def _parse_resource_rules(
    rules: Any, resources: dict[str, Resources], where: Any
) -> list[dict[str, Any]]:
    """`resource_rules`: [{when: {dotted.key: value}, class: <a defined class>}, ...]."""
    rules = list(rules)
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or set(rule) != {"when", "class"}:
            raise SweepFileError(
                f"{where}: resource_rules[{i}] must be {{when: {{dotted.key: value}}, class: <name>}}"
            )
        if rule["class"] not in resources:
            raise SweepFileError(
                f"{where}: resource_rules[{i}].class {rule['class']!r} is not a resource class."
                f"{did_you_mean(rule['class'], resources, list_valid=True)}"
            )
    return rules


def _check_baseline_refs(
    baselines: list[Baseline],
    resources: dict[str, Resources],
    grid: dict[str, list[Any]],
    zips: list[dict[str, list[Any]]],
    where: Any,
) -> None:
    """A baseline's resource_class is defined and the axes it follows exist."""
    axes = list(grid) + [k for g in zips for k in g]
    for b in baselines:
        if b.resource_class is not None and b.resource_class not in resources:
            raise SweepFileError(
                f"{where}: baselines.{b.label}.resource_class {b.resource_class!r} is not defined."
                f"{did_you_mean(b.resource_class, resources, list_valid=True)}"
            )
        for k in b.follow:
            if k not in axes:
                raise SweepFileError(
                    f"{where}: baselines.{b.label}.follow: {k!r} is not a grid or zip axis."
                    f"{did_you_mean(k, axes, list_valid=True)}"
                )


def _axes_used_once(
    grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]], where: Any
) -> list[str]:
    """Every axis key, in file order (grid, then zip columns); none may appear twice."""
    all_axes = list(grid) + [k for g in zips for k in g]
    if len(set(all_axes)) != len(all_axes):
        raise SweepFileError(f"{where}: an axis appears twice across 'grid' and 'zip': {all_axes}")
    return all_axes


def _preset_or_file(
    data: Mapping, presets_raw: Mapping, preset: str | None, key: str, default: Any
) -> Any:
    """The preset's value of a top-level key when it sets one, else the file's (else default)."""
    if preset is not None and key in (presets_raw[preset] or {}):
        return presets_raw[preset][key]
    return data.get(key, default)


def _parse_seeds(seeds: Any, where: Any) -> list[int]:
    """A non-empty list of distinct integer seeds (a preset may change them, e.g. 2 to measure
    seed noise)."""
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SweepFileError(
            f"{where}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}"
        )
    return seeds


def _preset_tune(tune: TuneSpec | None, p: Mapping, preset: str, where: Any) -> TuneSpec | None:
    """The preset's `tune` replaces the file's: like a grid axis, a preset may change the
    candidates' values, not the search's key or their count."""
    if "tune" not in p:
        return tune
    ptune = parse_tune(p["tune"], f"presets.{preset}.tune", where)
    if (
        tune is not None
        and ptune is not None
        and (ptune.key != tune.key or len(ptune.values) != len(tune.values))
    ):
        raise SweepFileError(
            f"{where}: presets.{preset}.tune searches {ptune.key} over "
            f"{len(ptune.values)} values but the file's tune searches {tune.key} over "
            f"{len(tune.values)}; a preset may change the values, not the key or their count"
        )
    return ptune


def _parse_include_base(include_base: Any, baselines: list[Baseline], where: Any) -> bool:
    """Whether the base model runs over the grid; false needs baselines (else nothing runs)."""
    if not isinstance(include_base, bool):
        raise SweepFileError(f"{where}: 'include_base' must be true or false")
    if not include_base and not baselines:
        raise SweepFileError(
            f"{where}: include_base is false and there are no baselines: the sweep would be empty"
        )
    return include_base


def _config_key_problem(key: str) -> str | None:
    """Why a dotted key names no run-config field (None when it does). Keys under model.overrides
    are the model's own and are checked when the runs resolve against the model."""
    if key.startswith("model.overrides.") and len(key.split(".")) > 2:
        return None
    node: Any = RunConfig().to_dict()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            options = [".".join([*parts[:i], k]) for k in node] if isinstance(node, dict) else []
            return f"not a run-config key.{did_you_mean(key, options)}"
        node = node[part]
    if isinstance(node, dict):
        return "names a config section, not a field"
    return None


def parse_tune(raw: Any, where_key: str, where: Any) -> TuneSpec | None:
    """`tune: {train.lr: [3e-4, 1e-3, 3e-3], by: val.ctr_auc}` (None when absent)."""
    if raw is None:
        return None
    example = "e.g. tune: {train.lr: [3.0e-4, 1.0e-3, 3.0e-3], by: val.ctr_auc}"
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where}: '{where_key}' must be a mapping, {example}")
    searched = [k for k in raw if k != "by"]
    if "by" not in raw:
        raise SweepFileError(
            f"{where}: {where_key}.by is missing: name the val metric that chooses each point's "
            f"candidate, {example}"
        )
    by = str(raw["by"])
    split, _, metric = by.partition(".")
    if split != "val" or metric not in TUNE_BY_METRICS:
        why = (
            "the test split never chooses anything (the law is reported on it)"
            if split == "test"
            else f"it must be val.<metric> with a metric among {', '.join(TUNE_BY_METRICS)}"
        )
        hint = did_you_mean(metric, TUNE_BY_METRICS) if split in ("val", "test") else ""
        raise SweepFileError(
            f"{where}: {where_key}.by = {by!r} is not a val metric: {why}.{hint} "
            f"Write e.g. by: val.{metric if metric in TUNE_BY_METRICS else 'ctr_auc'}"
        )
    if len(searched) != 1:
        raise SweepFileError(
            f"{where}: '{where_key}' must search exactly one run-config key besides 'by', got "
            f"{searched or 'none'}; {example}"
        )
    key = str(searched[0])
    problem = _config_key_problem(key)
    if problem:
        raise SweepFileError(f"{where}: {where_key}.{key}: {problem}")
    values = raw[key]
    if not isinstance(values, list) or not values:
        raise SweepFileError(
            f"{where}: {where_key}.{key} must be a non-empty list of candidate values, got "
            f"{values!r}; {example}"
        )
    _check_distinct(values, f"{where_key}.{key}", where)
    return TuneSpec(key=key, values=tuple(values), by=by)


def parse_budget(raw: Any, where_key: str, where: Any, path: Path | None) -> float | None:
    """`budget: {train_flops: 1.0e+15}`: the training FLOPs every run spends (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "train_flops" not in raw:
        raise SweepFileError(
            f"{where}: '{where_key}' must be {{train_flops: FLOPS}}, e.g. budget: {{train_flops: 1.0e+12}}"
        )
    _check_keys(f"{where_key}.", raw, BUDGET_KEYS, path)
    value = raw["train_flops"]
    try:  # YAML reads 1e12 (no dot, no sign) as a string; accept it as the number it spells
        flops = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        flops = float("nan")
    if not math.isfinite(flops) or flops <= 0:
        raise SweepFileError(
            f"{where}: {where_key}.train_flops = {value!r} must be a positive number of training "
            "FLOPs per run, e.g. 1.0e+12"
        )
    return flops


def _parse_datasets(raw: Any, where: Any, path: Path | None) -> dict[str, DatasetRecipe]:
    """`datasets: {data_cache/taobao: {convert: taobao, raw: ../shared/data/...}}`: folders the
    driver converts from raw logs on first use (a run whose data.dataset is one of them)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SweepFileError(
            f"{where}: 'datasets' must map a dataset folder to {{convert: SOURCE, raw: RAW_DIR}}"
        )
    out = {}
    for folder, spec in raw.items():
        key = f"datasets.{folder}"
        if not isinstance(spec, Mapping) or not {"convert", "raw"} <= set(spec):
            raise SweepFileError(
                f"{where}: {key} must be {{convert: SOURCE, raw: RAW_DIR}}, e.g. "
                "{convert: taobao, raw: ../shared/data/taobao-userbehavior-prefix}"
            )
        _check_keys(f"{key}.", spec, DATASET_KEYS, path)
        if spec["convert"] not in CONVERTER_SOURCES:
            raise SweepFileError(
                f"{where}: {key}.convert {spec['convert']!r} is not a converter."
                f"{did_you_mean(str(spec['convert']), CONVERTER_SOURCES, list_valid=True)}"
            )
        opt = spec.get("opt") or {}
        if not isinstance(opt, Mapping):
            raise SweepFileError(f"{where}: {key}.opt must map converter options to values")
        out[str(folder)] = DatasetRecipe(
            folder=str(folder), convert=str(spec["convert"]), raw=str(spec["raw"]), opt=dict(opt)
        )
    return out


def parse_analysis(a: Any, where: Any, path: Path | None) -> AnalysisHints | None:
    """The `analysis:` hints of a sweep file (None when absent; `fit` canonical); read by analysis/hints.py too."""
    if a is None:
        return None
    if not isinstance(a, Mapping):
        raise SweepFileError(f"{where}: 'analysis' must be a mapping with x, metrics, fit")
    _check_keys("analysis.", a, ANALYSIS_KEYS, path)
    if "x" not in a:
        raise SweepFileError(
            f"{where}: analysis.x is required (a dotted config key, or 'flops' / 'params')"
        )
    fit = str(a.get("fit", "none"))
    if fit not in FIT_FORMS:
        raise SweepFileError(
            f"{where}: analysis.fit {fit!r} is not a fit form."
            f"{did_you_mean(fit, FIT_FORMS, list_valid=True)}"
        )
    metrics = a.get("metrics", ["test.ctr_uauc"])
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    return AnalysisHints(
        x=str(a["x"]),
        metrics=tuple(metrics),
        fit=FIT_FORMS[fit],
        baseline=a.get("baseline"),
        trick=_parse_trick(a.get("trick"), where),
    )


def _parse_trick(raw: Any, where: Any) -> tuple[str, ...]:
    """analysis.trick: one dotted run-config key or a list of them (the switches of a trick sweep)."""
    if raw is None:
        return ()
    keys = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(keys, list)
        or not keys
        or not all(isinstance(k, str) and "." in k for k in keys)
    ):
        raise SweepFileError(
            f"{where}: analysis.trick must be a dotted run-config key or a list of them, e.g. "
            f"trick: [model.overrides.match_init, model.overrides.mixed_params]; got {raw!r}"
        )
    if len(set(keys)) != len(keys):
        raise SweepFileError(f"{where}: analysis.trick repeats a key: {keys!r}")
    return tuple(keys)


def check_tricks(
    hints: AnalysisHints | None, grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]], where
) -> None:
    """A trick sweep must cross each switch with a size or length axis: every analysis.trick key is a
    grid or zip axis taking >= 2 values, and some axis outside the switches' own zip rows varies too."""
    if hints is None or not hints.trick:
        return
    columns = {**grid, **{k: v for g in zips for k, v in g.items()}}
    for key in hints.trick:
        if key not in columns:
            raise SweepFileError(
                f"{where}: analysis.trick {key!r} is not a grid or zip axis of this sweep; a trick "
                f"is measured by crossing it with a size or length axis, e.g. grid: {{{key}: "
                "[false, true], model.overrides.n_layers: [1, 2, 3]}."
                f"{did_you_mean(key, columns, list_valid=True)}"
            )
        if len({_fmt(v) for v in columns[key]}) < 2:
            raise SweepFileError(
                f"{where}: analysis.trick {key!r} takes one value only ({columns[key]!r}); give it "
                "the values to compare, e.g. [false, true]"
            )
    # the axes that are not the switches (nor in the zip groups that carry them) are the scale
    trick_groups = [g for g in zips if any(k in g for k in hints.trick)]
    scale = [k for k, v in grid.items() if k not in hints.trick and len(v) > 1] + [
        k for g in zips if g not in trick_groups for k, v in g.items() if len(v) > 1
    ]
    if not scale:
        raise SweepFileError(
            f"{where}: analysis.trick needs a size or length axis beside the switches (a grid "
            "axis, or a separate zip group, with >= 2 values, e.g. model.overrides.n_layers: "
            "[1, 2, 3]); without one there is no trend across scale to measure"
        )


def _parse_grid(raw: Any, where_key: str, where: Any, unique: bool = True) -> dict[str, list[Any]]:
    if not isinstance(raw, Mapping):
        raise SweepFileError(
            f"{where}: '{where_key}' must map dotted config keys to lists of values"
        )
    out: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise SweepFileError(
                f"{where}: {where_key}.{key} must be a non-empty list of values, got {values!r}"
            )
        if unique:
            _check_distinct(values, f"{where_key}.{key}", where)
        out[str(key)] = list(values)
    return out


def _check_distinct(values: list[Any], key: str, where: Any) -> None:
    """Grid values must be distinct as runs see them: 8 and "8" (a quoted YAML string) are one
    point written twice; they would name the same run (and only one of them is an int)."""
    seen: dict[Any, Any] = {}
    for v in values:
        k = _hashable(v) if isinstance(v, (list, dict)) else _fmt(v)
        if k in seen:
            first = seen[k]
            how = (
                f" ({type(first).__name__} and {type(v).__name__}: quotes make YAML read a string)"
                if type(first) is not type(v)
                else ""
            )
            raise SweepFileError(
                f"{where}: {key} repeats a value: {first!r} and {v!r} are duplicates{how}; "
                f"remove one from {values!r}"
            )
        seen[k] = v


def _parse_zip(raw: Any, where_key: str, where: Any) -> dict[str, list[Any]]:
    # a column may repeat values (ablation rows); the zipped rows must be distinct
    group = _parse_grid(raw, where_key, where, unique=False)
    if SET_KEY in group:
        _check_set_column(group[SET_KEY], f"{where_key}.{SET_KEY}", where)
    lengths = {len(v) for v in group.values()}
    if len(lengths) > 1:
        raise SweepFileError(
            f"{where}: {where_key}: zipped axes need lists of equal length, got "
            f"{ {k: len(v) for k, v in group.items()} }"
        )
    rows = list(zip(*(map(_hashable, v) for v in group.values())))
    if len(set(rows)) != len(rows):
        raise SweepFileError(
            f"{where}: {where_key}: two zipped rows are identical; remove the duplicate"
        )
    return group


def _check_set_column(rows: list[Any], where_key: str, where: Any) -> None:
    """A zip `set` column: one mapping of dotted run-config keys per row ({} for none)."""
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SweepFileError(
                f"{where}: {where_key}[{i}] = {row!r}: each row of a `set` column is a mapping of "
                "dotted run-config keys ({} for none), e.g. {train.request_level: true}"
            )
        for key in row:
            problem = _config_key_problem(str(key))
            if problem:
                raise SweepFileError(f"{where}: {where_key}[{i}].{key}: {problem}")


def _parse_baseline(raw: Any, i: int, where: Any, path: Path | None) -> Baseline:
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where}: baselines[{i}] must be a mapping with model and size")
    _check_keys(f"baselines[{i}].", raw, BASELINE_KEYS, path)
    for req in ("model", "size"):
        if req not in raw:
            raise SweepFileError(f"{where}: baselines[{i}] is missing {req!r}")
    follow = raw.get("follow") or []
    return Baseline(
        label=str(raw.get("label", raw["model"])),
        model=str(raw["model"]),
        size=str(raw["size"]),
        set=dict(raw.get("set") or {}),
        follow=tuple(follow),
        resource_class=raw.get("resource_class"),
    )


def _resource(where_key: str, raw: Mapping, where: Any) -> Resources:
    try:
        rc = Resources.from_dict(
            {**CLASS_DEFAULTS, **raw}, where=str(where), prefix=f"{where_key}."
        )
    except ConfigError as err:
        raise SweepFileError(str(err)) from None
    if rc.accelerator not in CLASS_ACCELERATORS:
        # a class is a scheduler request: it asks for GPUs or not ("auto" is a lone run's default)
        raise SweepFileError(
            f"{where}: {where_key}: accelerator must be one of {CLASS_ACCELERATORS}, got "
            f"{rc.accelerator!r}"
        )
    return rc


def _parse_resources(raw: Any, where: Any, path: Path | None) -> dict[str, Resources]:
    if not isinstance(raw, Mapping):
        raise SweepFileError(f"{where}: 'resources' must map a class name to its resources")
    out = {}
    for cls, spec in raw.items():
        spec = spec or {}
        _check_keys(f"resources.{cls}.", spec, RESOURCE_KEYS, path)
        out[str(cls)] = _resource(f"resources.{cls}", spec, where)
    return out


def _hashable(v: Any) -> Any:
    return yaml.safe_dump(v, sort_keys=True) if isinstance(v, (list, dict)) else v


# --------------------------------------------------------------------------------------- expansion


def _short(key: str) -> str:
    """Readable abbreviation of a dotted axis key for run names (data.seq_len -> len)."""
    leaf = key.split(".")[-1]
    return {
        "seq_len": "len",
        "n_layers": "d",
        "d_model": "w",
        "size": "",
        "name": "",
        "overrides": "",
    }.get(leaf, leaf)


def _fmt(v: Any) -> str:
    # a per-row `model.overrides` or `set` column: {} adds nothing, {k: v} adds "k-v" (the last
    # part of a dotted key: {train.request_level: true} adds "request_level-on")
    if isinstance(v, Mapping):
        return "-".join(f"{str(k).split('.')[-1]}-{_fmt(x)}" for k, x in sorted(v.items()))
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("/", "_").replace(":", "_")


def expand(sweep: Sweep) -> list[PlannedRun]:
    """All runs of the sweep, in a stable order: grid points (file order) x seeds, then baselines."""
    axis_lists: list[list[dict[str, Any]]] = []
    for key, values in sweep.grid.items():
        axis_lists.append([{key: v} for v in values])
    for group in sweep.zip:
        n = len(next(iter(group.values())))
        axis_lists.append([{k: vals[i] for k, vals in group.items()} for i in range(n)])
    points = [
        dict(kv for part in combo for kv in part.items())
        for combo in itertools.product(*axis_lists)
    ]
    # a zip group's `_name` column labels its rows (ablation variants): it names runs, sets nothing
    named_group = next((set(g) for g in sweep.zip if NAME_KEY in g), set())

    def settable(axes: dict[str, Any]) -> dict[str, Any]:
        """The run-config settings of a point: `_name` sets nothing, a `set` row its own keys."""
        out: dict[str, Any] = {}
        for k, v in axes.items():
            if k == SET_KEY:
                out.update(v)
            elif k != NAME_KEY:
                out[k] = v
        return out

    runs: list[PlannedRun] = []

    def add_one(
        label: str,
        axes: dict[str, Any],
        seed: int,
        overrides: dict[str, Any],
        cls: str | None,
        candidate: Any,
    ) -> None:
        # a zip group's `_name` names that group's rows; the other axes (a size axis crossed with
        # named variants, as in a trick sweep) still name themselves
        shown = []
        for k, v in axes.items():
            if NAME_KEY in axes and k in named_group and k != NAME_KEY:
                continue
            shown.append(_fmt(v) if k in (NAME_KEY, SET_KEY) else f"{_short(k)}{_fmt(v)}")
        shown = [part for part in shown if part]  # an empty per-row override dict names nothing
        if label == "base" and not shown:  # no axes: name the base run by its model size
            shown = [_fmt(_lookup(sweep.base, {**sweep.set, **overrides}, "model.size") or "base")]
        parts = ([] if label == "base" else [label]) + shown
        tune = None
        if sweep.tune is not None:
            # the candidate is the last setting: it overrides a preset's `set` of the same key
            overrides = {**overrides, sweep.tune.key: candidate}
            tune = {
                "key": sweep.tune.key,
                "value": candidate,
                "by": sweep.tune.by,
                "point": "-".join(parts),
            }
            parts = parts + [f"{_short(sweep.tune.key)}{_fmt(candidate)}"]
        parts = parts + [f"s{seed}"]
        full = {**sweep.set, **overrides, "seed": seed}
        # a per-row override dict sets the row up; it is not an axis the analysis groups by
        axes = {k: v for k, v in axes.items() if not isinstance(v, Mapping)}
        runs.append(
            PlannedRun(
                index=len(runs),
                name="-".join(parts),
                label=label,
                axes=axes,
                seed=seed,
                overrides=full,
                resource_class=cls or _resource_class(sweep, full),
                tune=tune,
            )
        )

    # a tuned sweep's candidates of one point come together, each over the seeds
    if sweep.include_base:
        for point in points:
            for candidate_seed in _candidate_seeds(sweep):
                add_one("base", point, candidate_seed[1], settable(point), None, candidate_seed[0])
    for b in sweep.baselines:
        followed = []
        seen = set()
        for point in points:
            sub = {k: point[k] for k in b.follow}
            key = tuple(_hashable(v) for v in sub.values())
            if key not in seen:
                seen.add(key)
                followed.append(sub)
        for sub in followed:
            for candidate, seed in _candidate_seeds(sweep):
                # a baseline starts from the base config but never inherits the base model's overrides
                ov = {
                    **settable(sub),
                    "model.name": b.model,
                    "model.size": b.size,
                    "model.overrides": {},
                    **b.set,
                }
                add_one(b.label, sub, seed, ov, b.resource_class, candidate)
    # counted once (list.count per run was quadratic: seconds at 10,000 runs)
    dup = sorted(n for n, k in Counter(r.name for r in runs).items() if k > 1)
    if dup:
        where = sweep.path or "<sweep>"
        # grid values are distinct (checked when parsed): names collide through labels or through
        # a zip `_name` column
        raise SweepFileError(
            f"{where}: two runs would get the same name {dup[:3]}; give baselines distinct labels "
            f"(and zip `_name` rows distinct names)"
        )
    return runs


def _candidate_seeds(sweep: Sweep) -> list[tuple[Any, int]]:
    """(candidate, seed) pairs of one point: the seeds alone (candidate None) when untuned."""
    candidates = sweep.tune.values if sweep.tune else (None,)
    return [(c, seed) for c in candidates for seed in sweep.seeds]


def _resource_class(sweep: Sweep, overrides: dict[str, Any]) -> str:
    for rule in sweep.resource_rules:
        if all(_lookup(sweep.base, overrides, k) == v for k, v in rule["when"].items()):
            return str(rule["class"])
    return "default"


def lookup(config: Mapping, dotted: str, default: Any = None) -> Any:
    """config["a"]["b"] for "a.b"; `default` when a part is missing or a node on the way is not a
    mapping. The one reader of a dotted key in a nested config: the sweep planner here and
    analysis.tuning (which reads run configs without torch, so it lives in this torch-free module)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _lookup(base: Mapping, overrides: Mapping, dotted: str) -> Any:
    """A flat override ("a.b": value) wins over the nested base config."""
    return overrides[dotted] if dotted in overrides else lookup(base, dotted)


def n_points(sweep: Sweep) -> int:
    return math.prod(
        [len(v) for v in sweep.grid.values()] + [len(next(iter(g.values()))) for g in sweep.zip]
    )


# ------------------------------------------------------------------------ resolution to RunConfigs


@dataclass(frozen=True, kw_only=True)
class ResolvedRun:
    plan: PlannedRun
    cfg: Any  # harness.config.RunConfig
    run_id: str

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def resources(self) -> Resources:
        """The run's resource class, as its config carries it."""
        return self.cfg.resources

    def resolved(self) -> ResolvedConfig:
        """The run config resolved once (harness/resolved.py): model, execution, dataset, axes."""
        return resolve_run(self.cfg)


def sweep_dir_name(sweep: Sweep) -> str:
    """Folder of the sweep under the runs dir; a preset gets its own so CI runs never mix with real ones."""
    return sweep.name if sweep.preset is None else f"{sweep.name}-{sweep.preset}"


def resource_overrides(rc: Resources) -> dict[str, Any]:
    """The run-config keys that one resource class decides: the run's `resources` section, the one
    home of the Trainer's devices, nodes and accelerator too."""
    return {"resources": rc.to_dict()}


# check_presets resolves every run of a preset that is not selected only up to this many runs; a
# bigger one is checked on a covering subset (see _covering), so that a 10,000-point grid with two
# presets is not resolved three times over before its plan prints.
CHECK_ALL_UP_TO = 256


def _covering(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Runs that, together, use every value of every axis and every seed of each label (baseline)
    at least once: each bad value, preset key or baseline setting still fails one of them."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in runs:
        keys = {(r.label, k, _hashable(v)) for k, v in r.axes.items()} | {(r.label, "seed", r.seed)}
        if r.tune:  # every candidate of a search is checked too (a bad value fails one run)
            keys.add((r.label, "tune", _hashable(r.tune["value"])))
        if not keys <= seen:
            seen |= keys
            out.append(r)
    return out


def resolve(sweep: Sweep, check_model: bool = True, cover_only: bool = False) -> list[ResolvedRun]:
    """Expand the sweep and build each run's validated RunConfig and run id. `cover_only` (a
    check, not a plan): above CHECK_ALL_UP_TO runs, only a subset using every axis value once."""
    where = str(sweep.path or "<sweep>")
    try:
        base = config.RunConfig.from_dict(sweep.base, where=f"{where}: base", check_model=False)
    except ConfigError as err:
        raise SweepFileError(str(err)) from None
    planned = expand(sweep)
    flops_per_example: dict[str, float] = {}  # one model build per distinct model (describe_key)
    if cover_only and len(planned) > CHECK_ALL_UP_TO:
        planned = _covering(planned)
    out = []
    for run in planned:
        rc = sweep.resources[run.resource_class]
        ov = {
            **resource_overrides(rc),
            **run.overrides,
            "sweep": sweep_dir_name(sweep),
            "axis": sweep.axis,
            "name": run.name,
        }
        try:
            cfg = config.apply_overrides(
                base, ov, where=f"{where}: run {run.name}", check_model=check_model
            )
        except ConfigError as err:
            raise SweepFileError(str(err)) from None
        if sweep.budget is not None and not cover_only:
            cfg = _budget_steps(cfg, sweep.budget, flops_per_example, f"{where}: run {run.name}")
        out.append(ResolvedRun(plan=run, cfg=cfg, run_id=config.run_id(cfg)))
    ids = Counter(r.run_id for r in out)
    if len(ids) != len(out):
        dup = sorted({r.name for r in out if ids[r.run_id] > 1})
        raise SweepFileError(
            f"{where}: runs {dup} resolve to the same config (same run id); an axis has no "
            "effect on the run config — check its dotted key"
        )
    return out


# ------------------------------------------------------------------------------- matched compute


def _budget_steps(cfg: Any, budget: float, cache: dict[str, float], where: str) -> Any:
    """The run with train.max_steps = the steps its model can take within `budget` training FLOPs:
    floor(budget / (training FLOPs per example x samples per step)), the per-example count being
    the model's own analytic accounting (model/flops.py through harness.resolved)."""
    key = describe_key(cfg)
    if key not in cache:
        try:  # builds the model on the meta device (imports torch): only for a budget
            cache[key] = float(resolve_run(cfg).description["flops"]["train_per_example"])
        except Exception as err:  # a model that cannot be described cannot be budgeted
            raise SweepFileError(
                f"{where}: budget: cannot count the model's training FLOPs ({type(err).__name__}: "
                f"{err})"
            ) from None
    per_step = cache[key] * samples_per_step(cfg)
    steps = int(budget // per_step)
    if steps < 1:
        raise SweepFileError(
            f"{where}: budget.train_flops = {budget:.3g} buys no step of this model (one step of "
            f"{samples_per_step(cfg)} samples costs {per_step:.3g} training FLOPs); raise the "
            "budget or shrink the model or the batch"
        )
    return config.apply_overrides(cfg, {"train.max_steps": steps}, where=where, check_model=False)
