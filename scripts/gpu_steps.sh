# The step runner shared by scripts/gpu_check.sh and scripts/gpu_mfu.sh (sourced, not run).
# The caller sets: PYTHON, OUT (with OUT/logs), RAW (steps.jsonl goes there), BUDGET (s for all
# steps), MIN_STEP (a step is not started with less left), T0 (start time, `now`), STEPS=() (the
# names run so far), STEP_TAG (the log prefix) and KILL_AFTER (timeout's -k, s).
#   run_step NAME TIMEOUT_S CMD...        runs CMD under timeout, logs to OUT/logs/NAME.log
#   NEED=S run_step NAME TIMEOUT_S CMD... the same, skipped unless S seconds of the budget are left
#   skip NAME REASON                      records NAME as skipped
# Every step, run or skipped, appends one JSON line to RAW/steps.jsonl (status, rc, seconds, error).

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "[$STEP_TAG +$(since "$T0")s] $*"; }

record() {  # name status rc seconds timeout_s reason cmd...
  local name=$1 status=$2 rc=$3 secs=$4 tmo=$5 reason=$6; shift 6
  "$PYTHON" -c 'import json, sys
n, st, rc, sec, tmo, why, *cmd = sys.argv[1:]
rec = {"name": n, "status": st, "rc": int(rc) if rc else None, "seconds": float(sec), "timeout_s": int(tmo),
       "command": " ".join(cmd)}
if why:
    rec["error"] = why
print(json.dumps(rec))' "$name" "$status" "$rc" "$secs" "$tmo" "$reason" "$@" >> "$RAW/steps.jsonl" \
    || echo "{\"name\": \"$name\", \"status\": \"$status\", \"rc\": ${rc:-null}, \"seconds\": $secs, \"timeout_s\": $tmo}" >> "$RAW/steps.jsonl"
}

skip() {  # name reason
  STEPS+=("$1")
  record "$1" skipped "" 0 0 "$2"
  say "$1: SKIPPED: $2"
}

run_step() {  # name timeout_s cmd...
  local name=$1 tmo=$2; shift 2
  STEPS+=("$name")
  local left need=${NEED:-$MIN_STEP}
  left=$(awk -v t0="$T0" -v b="$BUDGET" -v n="$(now)" 'BEGIN { printf "%d", b - (n - t0) }')
  if [ "$left" -lt "$need" ]; then
    record "$name" skipped "" 0 "$tmo" "${left} s of the ${BUDGET} s budget left, the step needs ${need} s" "$@"
    say "$name: SKIPPED (${left} s left of the ${BUDGET} s budget, needs ${need} s)"
    return
  fi
  [ "$tmo" -le "$left" ] || tmo=$left
  say "$name: start (timeout ${tmo} s): $*"
  local t1 rc status reason=""
  t1=$(now)
  timeout -k "$KILL_AFTER" "$tmo" "$@" 2>&1 | tee "$OUT/logs/$name.log" | sed -u 's/^/    | /'
  rc=${PIPESTATUS[0]}
  local secs
  secs=$(since "$t1")
  case "$rc" in
    0) status=ok ;;
    124|137) status=timeout; reason="timed out after ${tmo} s" ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$rc" "$secs" "$tmo" "$reason" "$@"
  if [ "$status" = ok ]; then
    say "$name: ok in ${secs} s"
  else
    say "$name: ${status^^} (exit $rc) after ${secs} s; last lines of $OUT/logs/$name.log:"
    tail -n 8 "$OUT/logs/$name.log" | sed 's/^/    ! /'
  fi
}
