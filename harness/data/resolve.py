"""Resolution: a dataset name as run configs write it (`data.dataset`) -> its folder and manifest.

A name is a folder path, or "synthetic:<preset>" for the built-in world of harness/data/synth.py,
generated once into the cache folder (default ./data_cache, as in run configs) and reused:
<cache_dir>/synth-<preset>-s<seed>-v<generator version>-<hash>/.

This module is the one place that turns a name into a folder: the trainer, the sweep driver, the
planner's cost column and the data command line all call `dataset_folder` (where it lies, nothing
generated) or `ensure_dataset` (generated if absent). Layer: above the schema (contract.py) and the
generator (synth.py), below the command line (docs/contracts.md, "harness/data in layers").
"""

from __future__ import annotations

from pathlib import Path

from harness.data import synth
from harness.data.contract import MANIFEST, ContractError, Manifest

SYNTHETIC = "synthetic:"


def synthetic_preset(name: str | Path) -> str | None:
    """The preset of "synthetic:<preset>" (a known one, else a ContractError listing them), or None
    for a folder path."""
    name = str(name)
    if not name.startswith(SYNTHETIC):
        return None
    preset = name.split(":", 1)[1]
    if preset not in synth.PRESETS:
        raise ContractError(
            f"{name}: no synthetic preset {preset!r}; choose one of "
            + ", ".join(f"{SYNTHETIC}{p}" for p in sorted(synth.PRESETS))
        )
    return preset


def dataset_folder(
    name: str | Path, data_seed: int = 0, cache_dir: str | Path = "data_cache"
) -> Path:
    """Where the dataset `name` lies on this machine; nothing is generated or read (the folder of a
    synthetic world may not exist yet: `ensure_dataset` makes it)."""
    preset = synthetic_preset(name)
    if preset is None:
        return Path(name)
    return synth.cached_folder(preset, data_seed, cache_dir)


def is_ready(name: str | Path, data_seed: int = 0, cache_dir: str | Path = "data_cache") -> bool:
    """Whether the dataset's folder holds a manifest (a synthetic world: generated already)."""
    return (dataset_folder(name, data_seed, cache_dir) / MANIFEST).exists()


def ensure_dataset(
    name: str | Path,
    data_seed: int = 0,
    cache_dir: str | Path = "data_cache",
    *,
    progress: bool = False,
) -> Path:
    """The dataset's folder, a synthetic world generated into the cache first if it is absent
    (synth.ensure_synthetic: atomic, and safe when several processes ask at once)."""
    preset = synthetic_preset(name)
    if preset is None:
        return Path(name)
    return synth.ensure_synthetic(preset, data_seed, cache_dir, progress=progress)


def planning_manifest(name: str | Path, data_seed: int = 0) -> Manifest:
    """The dataset's manifest without generating or reading data: a synthetic world's is computed
    from its preset (the vocabularies do not depend on the draws), a folder's is loaded."""
    preset = synthetic_preset(name)
    if preset is None:
        return Manifest.load(name)
    return synth.manifest_for(preset, data_seed)


def train_impressions_estimate(
    name: str | Path, data_seed: int = 0, cache_dir: str | Path = "data_cache"
) -> int | None:
    """Training impressions in one epoch, for planning (no data is read or generated): the
    manifest's statistics when the folder exists (a cached synthetic world included), else, for a
    synthetic world, the generator's expectation; None when unknown."""
    folder = dataset_folder(name, data_seed, cache_dir)
    if (folder / MANIFEST).exists():
        try:
            stats = Manifest.load(folder).stats or {}
        except ContractError:
            stats = {}
        n = (stats.get("splits") or {}).get("train", {}).get("impressions")
        if n:
            return int(n)
    preset = synthetic_preset(name)
    return synth.expected_train_impressions(preset) if preset is not None else None
