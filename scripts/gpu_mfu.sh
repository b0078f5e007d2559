#!/usr/bin/env bash
# Issue #25 step 2: before/after figures of the MFU and serving changes, in at most ~300 s on one H200.
#   pytest_gpu      pytest -m gpu (flash / SDPA / sdpa_causal vs reference in bf16, the CUDA-graph scorer)
#   eager_matrix    benchmarks/mfu_matrix.py, onetrans-l (and -s) eager, one process: before (today's
#                   settings: sdpa + explicit mask, reference tokenizer/RMSNorm, bf16 autocast), each
#                   change alone, all together, bf16 weights, bigger batches (OOM recorded, not fatal),
#                   the paper's 2048 per GPU with per-block recomputation
#   serving         benchmarks/serving.py onetrans-l L=1484 C=100: before settings and after settings,
#                   cache on / off / CUDA graph, p50/p99 and the |dp| parity of every path
#   compile_after_l model_step.py --compile onetrans-l with every change on (fresh process)
#   profile_after   benchmarks/profile_step.py: top kernels of the after step (eager, onetrans-l)
#   compile_before_l model_step.py --compile onetrans-l with today's settings (if time is left)
# Every figure goes to OUT/gpu_mfu.json, a summary to OUT/gpu_mfu.md, raw outputs/logs to OUT/raw,
# OUT/logs; --bundle packs raw/ and logs/ into OUT/gpu_mfu_raw.tar.gz (and removes them), leaving 3 files.
#
#   scripts/gpu_mfu.sh OUT [--bundle]          # on the GPU machine (python: $PYTHON, else .venv, else python3)
#   scripts/gpu_mfu.sh OUT --dry [--bundle]    # CPU dry mode: tiny sizes, ~1-2 min (tests/test_gpu_mfu.py)
#
# Environment: GPU_MFU_BUDGET_S (whole-run budget for the steps, default 285 s; each step's timeout is cut
# to what is left, a step with < 15 s left is skipped and recorded), GPU_PEAK_TFLOPS (MFU peak override).
set -uo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
OUT="" DRY=${GPU_MFU_DRY:-0} BUNDLE=0
for a in "$@"; do
  case "$a" in
    --dry) DRY=1 ;;
    --bundle) BUNDLE=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_mfu: unknown option $a" >&2; usage >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "gpu_mfu: one output folder only" >&2; exit 2; }; OUT=$a ;;
  esac
done
[ "$DRY" = 1 ] || DRY=0
[ -n "$OUT" ] || { usage >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/raw" "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw
rm -f "$RAW"/* "$OUT"/logs/*.log "$OUT/gpu_mfu.json" "$OUT/gpu_mfu.md" "$OUT/gpu_mfu_raw.tar.gz"
cd "$REPO" || exit 2
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  BUDGET=${GPU_MFU_BUDGET_S:-240}
else
  BUDGET=${GPU_MFU_BUDGET_S:-285}
fi
MIN_STEP=15
T0=$(date +%s.%N)
STEPS=()

STEP_TAG=gpu_mfu KILL_AFTER=5
. "$REPO/scripts/gpu_steps.sh"  # now, since, say, record, skip, run_step

say "mode: $([ "$DRY" = 1 ] && echo 'dry (CPU, tiny sizes)' || echo GPU), output: $OUT, python: $PYTHON, budget ${BUDGET} s"
"$PYTHON" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' > "$OUT/logs/env.log" 2>&1
cat "$OUT/logs/env.log"
GPU_TESTS=$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')

# The variants: BEFORE = today's settings (SDPA with the explicit (B,1,Tq,Tk) mask, the scatter tokenizer
# and composite RMSNorm, bf16 autocast over fp32 weights); AFTER = every change (sdpa_causal, fused_ops,
# bf16 weights). One change at a time in between, so each one's share is measured.
if [ "$DRY" = 1 ]; then
  L=onetrans-mini; S=onetrans-tiny; LB=8; SB=8; BIG=16; HUGE=32; PAPER=64; SEQ=seq_len=16
  AC=fp32; AT=bf16-true   # CPU: fp32 stands for autocast (CPU bf16 autocast is ~50x slower)
  COMMON=(--device cpu --warmup 1 --steps 2 --threads 1 --peak-tflops 1)
  MS=(benchmarks/model_step.py --device cpu --batch 8 --seq-len 16 --warmup 1 --steps 2 --threads 1 --no-mixed
      --peak-tflops 1 --compile-backend eager)
  SERVE=(benchmarks/serving.py --device cpu --spec tiny --size onetrans-tiny --lengths 32 --candidates 10 --no-train
         --warmup 1 --reps 3 --budget-s 1 --threads 1 --graph)
  PROF=(benchmarks/profile_step.py --device cpu --size onetrans-tiny --seq-len 16 --batch 8 --precision fp32 --warmup 1 --threads 1)
else
  L=onetrans-l; S=onetrans-s; LB=128; SB=256; BIG=512; HUGE=1024; PAPER=2048; SEQ=seq_len=0
  AC=bf16; AT=bf16-true
  COMMON=(--device cuda --warmup 3 --steps 10)
  MS=(benchmarks/model_step.py --warmup 3 --steps 8 --no-mixed)
  SERVE=(benchmarks/serving.py --device cuda --spec paper --size onetrans-l --lengths 1484 --candidates 100
         --max-batch 100 --no-train --warmup 10 --reps 200 --budget-s 2.5 --graph)
  PROF=(benchmarks/profile_step.py --size onetrans-l --warmup 3 --steps 1)
fi
V() { echo "--variant" "$1:size=$2,batch=$3,attention=$4,fused=$5,precision=$6,$SEQ"; }

run_step pytest_gpu 75 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$RAW/pytest_gpu.xml" $GPU_TESTS
# shellcheck disable=SC2046
run_step eager_matrix 110 "$PYTHON" benchmarks/mfu_matrix.py "${COMMON[@]}" --out "$RAW/eager_matrix.json" \
  $(V l_before "$L" $LB sdpa 0 $AC) \
  $(V l_fused_ops "$L" $LB sdpa 1 $AC) \
  $(V l_sdpa_causal "$L" $LB sdpa_causal 0 $AC) \
  $(V l_after_autocast "$L" $LB sdpa_causal 1 $AC) \
  $(V l_after "$L" $LB sdpa_causal 1 $AT) \
  $(V l_after_b$BIG "$L" $BIG sdpa_causal 1 $AT) \
  $(V l_after_b$HUGE "$L" $HUGE sdpa_causal 1 $AT) \
  --variant "l_after_b${PAPER}_recompute:size=$L,batch=$PAPER,attention=sdpa_causal,fused=1,precision=$AT,recompute=1,warmup=1,steps=2,$SEQ" \
  $(V s_before "$S" $SB sdpa 0 $AC) \
  $(V s_after "$S" $SB sdpa_causal 1 $AT)
if [ "$DRY" = 1 ]; then
  run_step serving_before 45 "$PYTHON" "${SERVE[@]}" --attention sdpa --precision bf16 --out "$RAW/serving_before.json"
  run_step serving_after 45 "$PYTHON" "${SERVE[@]}" --attention sdpa_causal --precision bf16-true --out "$RAW/serving_after.json"
else
  run_step serving_before 45 "$PYTHON" "${SERVE[@]}" --attention auto --precision bf16 --out "$RAW/serving_before.json"
  run_step serving_after 45 "$PYTHON" "${SERVE[@]}" --attention sdpa_causal --precision bf16-true --out "$RAW/serving_after.json"
fi
run_step compile_after_l 120 "$PYTHON" "${MS[@]}" --sizes "$L" --compile --attention sdpa_causal --precision $AT \
  --out "$RAW/compile_after_l.json"
run_step profile_after 40 "$PYTHON" "${PROF[@]}" --attention sdpa_causal --precision $AT --out "$RAW/profile_after.json"
# a compilation cut short measures nothing: run only with time for it (the first GPU run measured it)
NEED=$([ "$DRY" = 1 ] && echo 15 || echo 95) run_step compile_before_l 120 "$PYTHON" "${MS[@]}" --sizes "$L" --compile --attention sdpa --no-fused-ops --precision $AC \
  --out "$RAW/compile_before_l.json"

say "report"
EXPECT=$(IFS=,; echo "${STEPS[*]}")
DRY_ARG=()
[ "$DRY" = 0 ] || DRY_ARG=(--dry)
"$PYTHON" benchmarks/gpu_mfu.py --out-dir "$OUT" --expect "$EXPECT" "${DRY_ARG[@]}" > "$OUT/logs/report.log" 2>&1
RC=$?
cat "$OUT/logs/report.log"
[ -s "$OUT/gpu_mfu.json" ] || { say "ERROR: the report was not written"; RC=1; }
if [ "$BUNDLE" = 1 ]; then
  tar -C "$OUT" -czf "$OUT/gpu_mfu_raw.tar.gz" raw logs && rm -rf "$OUT/raw" "$OUT/logs"
fi
say "done in $(since "$T0") s; exit status $RC"
exit "$RC"
