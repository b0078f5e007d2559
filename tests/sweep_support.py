"""Helpers of the sweep tests (not part of the package). Imported as `from tests.sweep_support import ...`."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_sweep(
    tmp_path: Path,
    dataset: str,
    seeds=(0, 1),
    *,
    name: str = "runs_test",
    max_steps: int = 4,
    max_epochs: int | None = None,
) -> Path:
    """A sweep file of tiny OneTrans runs (4 steps unless told) on `dataset` (CPU, W&B off), one run
    per seed. `max_epochs` unset: the config's default (1), which ends a run after one pass over
    the world whatever `max_steps` says."""
    data = {
        "name": name,
        "base": {
            "data": {"dataset": dataset, "seq_len": 8, "batch_size": 32, "eval_batch_size": 256},
            "model": {"name": "onetrans", "size": "onetrans-tiny"},
            "train": {
                "max_steps": max_steps,
                "optimizer": "adamw",
                "precision": "32-true",
                "ckpt_every_n_steps": 2,
                **({"max_epochs": max_epochs} if max_epochs is not None else {}),
            },
            "logging": {"wandb": "disabled", "progress_bar": False},
        },
        "seeds": list(seeds),
        "resources": {
            "default": {
                "devices": 1,
                "accelerator": "cpu",
                "cpus_per_task": 1,
                "mem_gb": 2,
                "time_min": 10,
            }
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
