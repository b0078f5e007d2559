#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine: set up the environment, then run the
# sequence-length sweep on the built-in synthetic world through the laptop preset (CPU, no cluster),
# then write the analysis report. Extra arguments go to the sweep command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export WANDB_MODE=${WANDB_MODE:-offline}
python -m harness.sweep sweeps/length.yaml --preset laptop --max-parallel 2 --runs-dir runs "$@"
python -m analysis.report runs/length-laptop --out runs/length-laptop/report
echo "report: runs/length-laptop/report/report.html"
