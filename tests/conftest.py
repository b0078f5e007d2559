"""Shared test set-up: CPU determinism, W&B never online, markers that skip what cannot run here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ONETRANS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except Exception:
        return False


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    slurm_ok, cuda_ok, data_ok = None, None, SHARED_DATA.is_dir()
    for item in items:
        if "slurm" in item.keywords:
            slurm_ok = _slurm_up() if slurm_ok is None else slurm_ok
            if not slurm_ok:
                item.add_marker(
                    pytest.mark.skip(
                        reason="no SLURM cluster answers `sinfo` (start one: scripts/slurm_up.sh)"
                    )
                )
        if "gpu" in item.keywords:
            cuda_ok = _cuda() if cuda_ok is None else cuda_ok
            if not cuda_ok:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "realdata" in item.keywords and not data_ok:
            item.add_marker(pytest.mark.skip(reason=f"{SHARED_DATA} not present"))


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Every test starts from fp32 defaults and a fixed seed (tests set their own where it matters)."""
    try:
        import torch
    except Exception:
        yield
        return
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    yield


# ---- shared fixtures (plain helpers live in tests/<topic>_support.py, imported as tests.<module>) ----


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The data tests' small synthetic world (tests/data_support.py SMALL_WORLD), once per module."""
    from harness.data import synth
    from tests.data_support import SMALL_WORLD

    return synth.generate(
        SMALL_WORLD, tmp_path_factory.mktemp("small") / "clean", seed=0, progress=False
    )


@pytest.fixture
def folder(clean, tmp_path) -> Path:
    """A fresh copy of `clean` for one test to damage."""
    dst = tmp_path / "ds"
    shutil.copytree(clean, dst)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small synthetic world in the data contract (tests/train_support.py), generated once per module."""
    from tests.train_support import tiny_world

    return tiny_world(tmp_path_factory.mktemp("world") / "tiny")


@pytest.fixture
def stand_in(monkeypatch) -> None:
    """The training tests' stand-in model (tests/train_support.py) registered in model.registry."""
    from tests.train_support import register_tiny_model

    register_tiny_model(monkeypatch)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny shapes run faster on one torch thread, and never oversubscribe a shared 2-core machine
    (OpenMP threads spin at barriers: ~6x slower here when the other core is busy). Opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def probe_pool():
    """Two probe worker processes, one torch thread each (harness.probe.Pool): the planted-rule
    tests' trainings run two at a time, the way a 2-core machine can run tiny shapes in parallel."""
    from harness.probe import Pool

    with Pool(workers=2, threads=1) as pool:
        yield pool
