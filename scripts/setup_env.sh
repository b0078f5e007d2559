#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its test tools.
# CPU machines: the CPU wheel of torch is installed FIRST so that `torch>=2.3` in pyproject is
# already satisfied and pip never pulls a multi-GB CUDA build. On a GPU cluster, install the CUDA
# torch you want before running this (or set TORCH_SPEC), then `pip install -e '.[gpu]'`.
# Reruns are silent no-ops while pyproject.toml is unchanged: the install is stamped with its hash
# (.venv/.onetrans-install); FORCE_INSTALL=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
STAMP=.venv/.onetrans-install
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "${FORCE_INSTALL:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && python -c 'import harness, model, analysis, torch' >/dev/null 2>&1; then
  exit 0
fi
# pip's and setuptools' own chatter goes to a log, shown only when the install fails
LOG=.venv/install.log
echo "installing the project into .venv (first run or pyproject.toml changed; log: $LOG)"
run() { "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; echo "setup_env.sh: '$*' failed (log above: $LOG)" >&2; exit 1; }; }
: > "$LOG"
python -m pip install -q --upgrade pip >>"$LOG" 2>&1 || true
if ! python -c 'import torch' >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    run pip install -q "${TORCH_SPEC:-torch>=2.3}"
  else
    # The CPU wheel this machine kind keeps on disk; falls back to PyPI's CPU index name if absent.
    run pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
run pip install -q -e '.[dev]'
echo "$want" > "$STAMP"
python - <<'PY'
import torch
print(f"installed (torch {torch.__version__}, cuda={torch.cuda.is_available()})")
PY
