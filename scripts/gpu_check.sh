#!/usr/bin/env bash
# Every GPU check of issue #16 in one go, under 8 minutes on one H100/H200-class GPU:
#   env              GPU, torch/CUDA/cuDNN, driver, flash-attn (a wheel install is tried; else SDPA), MFU peak
#   pytest_gpu       pytest -m gpu (flash / SDPA vs reference parity in bf16: pruned queries, padding)
#   model_step_eager benchmarks/model_step.py, onetrans-s and onetrans-l at the paper lengths, bf16,
#                    attention="auto": tokens/s, TFLOP/s, MFU
#   serving          benchmarks/serving.py: p50/p99 of one request, onetrans-l, 100 candidates, L=1484, bf16
#   profile          benchmarks/profile_step.py: top kernels of one onetrans-l training step
#   model_step_compile_l  the same as model_step_eager with torch.compile, onetrans-l
#   efficiency       benchmarks/efficiency.py: Table 5 rows as ratios at the paper's OneTrans-S shape
#   model_step_compile_s  torch.compile, onetrans-s
# Every figure goes to OUT/gpu_check.json, a summary to OUT/gpu_check.md; raw outputs in OUT/raw,
# one log per step in OUT/logs. A failing step is recorded with its error and the script goes on;
# the exit status is non-zero when any step failed, timed out or was skipped.
#
#   scripts/gpu_check.sh OUT_DIR            # on the GPU machine (python: $PYTHON, else .venv, else python3)
#   scripts/gpu_check.sh OUT_DIR --dry      # CPU dry mode: tiny sizes, seconds (also GPU_CHECK_DRY=1)
#
# Environment: GPU_PEAK_TFLOPS (MFU peak override), GPU_CHECK_BUDGET_S (whole-run budget, default 455 s:
# each step's timeout is cut to what is left, steps past it are skipped and recorded),
# GPU_CHECK_NO_INSTALL=1 (no flash-attn install attempt), FLASH_ATTN_WHEEL (a wheel file to try).
# Steps run most important first; see docs/performance.md "GPU check".
set -uo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
OUT="" DRY=${GPU_CHECK_DRY:-0}
for a in "$@"; do
  case "$a" in
    --dry) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option $a" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "gpu_check: one output folder only" >&2; exit 2; }; OUT=$a ;;
  esac
done
[ "$DRY" = 1 ] || DRY=0
[ -n "$OUT" ] || { usage >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/raw" "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw
rm -f "$RAW"/* "$OUT"/logs/*.log "$OUT/gpu_check.json" "$OUT/gpu_check.md"
cd "$REPO" || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""          # the dry mode is the CPU path, even on a GPU machine
  BUDGET=${GPU_CHECK_BUDGET_S:-300}
else
  BUDGET=${GPU_CHECK_BUDGET_S:-455}       # for the steps; + at most 10 s to kill a timed-out step + the report < 8 min
fi
MIN_STEP=15                               # a step is not started with less than this left
T0=$(date +%s.%N)
STEPS=()

STEP_TAG=gpu_check KILL_AFTER=10
. "$REPO/scripts/gpu_steps.sh"  # now, since, say, record, skip, run_step

say "mode: $([ "$DRY" = 1 ] && echo 'dry (CPU, tiny sizes)' || echo GPU), output: $OUT, python: $PYTHON, budget ${BUDGET} s"

# ---- 1. environment (and the MFU peak the model_step runs use)
if [ "$DRY" = 1 ]; then
  run_step env 60 "$PYTHON" benchmarks/gpu_check.py env --dry --out "$RAW/env.json"
else
  run_step env 75 "$PYTHON" benchmarks/gpu_check.py env --install-timeout 35 --out "$RAW/env.json"
fi
NO_CUDA=0
if [ "$DRY" = 0 ]; then
  if [ -s "$RAW/env.json" ]; then
    grep -q '"cuda_available": true' "$RAW/env.json" || NO_CUDA=1
  else   # the env step itself failed: ask torch directly
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1 || NO_CUDA=1
  fi
fi
GPU_TESTS=$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')

if [ "$DRY" = 1 ]; then
  # tiny sizes on CPU: onetrans-tiny plays onetrans-s, onetrans-mini plays onetrans-l; fp32 (CPU bf16
  # matmuls are ~50x slower) except the serving cell, whose bf16 autocast path is cheap at this size;
  # torch.compile with the "eager" backend (graph capture only: inductor takes ~70 s on this CPU)
  # MFU against the nominal dry-mode peak the env step wrote (the GPU runs look the peak up by name)
  PEAK=$(cat "$RAW/peak_tflops.txt" 2>/dev/null | tr -d '[:space:]')
  MS=(benchmarks/model_step.py --device cpu --batch 8 --seq-len 16 --precision fp32 --warmup 1 --steps 2
      --threads 1 --no-mixed --peak-tflops "${PEAK:-1}")
  run_step pytest_gpu 90 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$RAW/pytest_gpu.xml" $GPU_TESTS
  run_step model_step_eager 60 "$PYTHON" "${MS[@]}" --sizes onetrans-tiny,onetrans-mini --out "$RAW/model_step_eager.json"
  run_step serving 60 "$PYTHON" benchmarks/serving.py --device cpu --precision bf16 --spec tiny --size onetrans-tiny \
    --lengths 32 --candidates 10 --no-train --warmup 1 --reps 3 --budget-s 1 --threads 1 --out "$RAW/serving.json"
  run_step profile 60 "$PYTHON" benchmarks/profile_step.py --device cpu --size onetrans-tiny --seq-len 16 --batch 8 \
    --precision fp32 --warmup 1 --threads 1 --out "$RAW/profile.json"
  run_step model_step_compile_l 60 "$PYTHON" "${MS[@]}" --sizes onetrans-mini --compile --compile-backend eager \
    --out "$RAW/model_step_compile_l.json"
  run_step efficiency 90 "$PYTHON" benchmarks/efficiency.py --device cpu --quick --variants baseline kv_cache \
    --inline --threads 1 --out "$RAW/efficiency.json"
  run_step model_step_compile_s 60 "$PYTHON" "${MS[@]}" --sizes onetrans-tiny --compile --compile-backend eager \
    --out "$RAW/model_step_compile_s.json"
elif [ "$NO_CUDA" = 1 ]; then
  for s in pytest_gpu model_step_eager serving profile model_step_compile_l efficiency model_step_compile_s; do
    skip "$s" "no CUDA device (see the env step)"
  done
else
  # paper lengths (onetrans-s 1178, onetrans-l 1484 events), model_step.py's GPU batches (256 / 128)
  # MFU peak: the GPU's dense bf16 peak by name (model_step.dense_bf16_peak), or GPU_PEAK_TFLOPS
  MS=(benchmarks/model_step.py --precision bf16 --attention auto --warmup 3 --steps 10 --no-mixed)
  run_step pytest_gpu 90 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$RAW/pytest_gpu.xml" $GPU_TESTS
  run_step model_step_eager 75 "$PYTHON" "${MS[@]}" --sizes onetrans-s,onetrans-l --out "$RAW/model_step_eager.json"
  run_step serving 60 "$PYTHON" benchmarks/serving.py --device cuda --precision bf16 --spec paper --size onetrans-l \
    --attention auto --lengths 1484 --candidates 100 --max-batch 100 --no-train \
    --warmup 10 --reps 300 --budget-s 8 --out "$RAW/serving.json"
  run_step profile 60 "$PYTHON" benchmarks/profile_step.py --size onetrans-l --precision bf16 --attention auto \
    --warmup 3 --steps 1 --out "$RAW/profile.json"
  # torch.compile: one process per size (a fresh dynamo cache; onetrans-l, the MFU goal's size, first)
  run_step model_step_compile_l 150 "$PYTHON" "${MS[@]}" --sizes onetrans-l --compile --out "$RAW/model_step_compile_l.json"
  # Table 5 at the paper's OneTrans-S length; 8 requests x 8 candidates keeps the un-optimised fp32
  # reference-attention baseline (full 1190x1190 score matrices, no pyramid) within an 80 GB H100
  run_step efficiency 150 "$PYTHON" benchmarks/efficiency.py --device cuda --size onetrans-s --seq-len 1178 \
    --requests 8 --cands 8 --serve-cands 100 --reps 10 --serve-reps 50 --budget-s 4 --out "$RAW/efficiency.json"
  run_step model_step_compile_s 120 "$PYTHON" "${MS[@]}" --sizes onetrans-s --compile --out "$RAW/model_step_compile_s.json"
fi

# ---- report: every figure in one JSON + a Markdown summary
say "report"
EXPECT=$(IFS=,; echo "${STEPS[*]}")
DRY_ARG=()
[ "$DRY" = 0 ] || DRY_ARG=(--dry)
"$PYTHON" benchmarks/gpu_check.py report --out-dir "$OUT" --expect "$EXPECT" "${DRY_ARG[@]}" > "$OUT/logs/report.log" 2>&1
RC=$?
cat "$OUT/logs/report.log"
if [ ! -s "$OUT/gpu_check.json" ]; then
  say "ERROR: the report was not written (see $OUT/logs/report.log)"
  RC=1
fi
say "done in $(since "$T0") s; exit status $RC ($([ "$RC" = 0 ] && echo 'every step ok' || echo 'some step failed: see gpu_check.md'))"
exit "$RC"
