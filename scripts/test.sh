#!/usr/bin/env bash
# The test command (README, .ci/run): sets up the environment, starts a one-node SLURM cluster
# when running as root on Debian (so the dispatch integration tests run for real), runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
if [ -z "${CI:-}" ] || [ "${CI:-}" = "true" ]; then
  # On the CPU CI machine a CUDA torch would mean a wrong resolve: fail loudly.
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    python -c 'import torch,sys; v=torch.__version__; sys.exit(0 if "+cpu" in v or not torch.version.cuda else f"CUDA torch {v} on a CPU machine")'
  fi
fi
# A cluster this script starts is stopped again however the run ends (tests pass or fail, Ctrl-C,
# or slurm_up.sh failing half-way with some daemons up): every daemon by its pid file, and the run
# checks that no controller answers afterwards. The packages stay installed (other users of the
# machine may need them); the harness treats an installed SLURM without a controller as "no
# cluster" without noise (harness/cluster.py, harness/train.py quiet_libraries).
stop_slurm() {
  bash scripts/slurm_down.sh
  if timeout 20 sinfo -h >/dev/null 2>&1; then echo "WARNING: a SLURM controller still answers after slurm_down.sh" >&2
  else echo "stopped the local SLURM cluster started for the tests"; fi
}
if [ "${SKIP_SLURM:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! sinfo >/dev/null 2>&1; then
    trap stop_slurm EXIT
    trap 'exit 130' INT TERM
    WITH_DBD=1 FAKE_GPUS=2 bash scripts/slurm_up.sh \
      || echo "WARNING: could not start a local SLURM cluster; slurm-marked tests will be skipped" >&2
  fi
fi
# Lint and format first (ruff, configured in pyproject.toml): a failure stops the run before the tests.
ruff check --quiet . || { echo "ruff check failed: fix the findings above (ruff check --fix . fixes many)" >&2; exit 1; }
ruff format --check --quiet . || { echo "ruff format: files above need formatting (run: ruff format .)" >&2; exit 1; }
export WANDB_MODE=offline WANDB_SILENT=true
set +e
# every test of a second or more with its time, slowest first: where the suite's minutes go.
# Every test, the slow-marked ones too (plain pytest leaves them out: pyproject.toml addopts); a -m
# given to this script comes later and wins.
python -m pytest -q -p no:cacheprovider --durations=0 --durations-min=1.0 -m "slow or not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; rc=1; fi
exit "$rc"
