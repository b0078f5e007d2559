#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its test tools.
# CPU machines: the CPU wheel of torch is installed FIRST so that `torch>=2.3` in pyproject is
# already satisfied and pip never pulls a multi-GB CUDA build. On a GPU cluster, install the CUDA
# torch you want before running this (or set TORCH_SPEC), then `pip install -e '.[gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c 'import torch' >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "${TORCH_SPEC:-torch>=2.3}"
  else
    # The CPU wheel this machine kind keeps on disk; falls back to PyPI's CPU index name if absent.
    pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
pip install -q -e '.[dev]'
python - <<'PY'
import torch
print(f"torch {torch.__version__}  cuda={torch.cuda.is_available()}")
PY
