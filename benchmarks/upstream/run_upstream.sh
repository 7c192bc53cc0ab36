#!/usr/bin/env bash
# Upstream Animate124's four stages, each run through its own published script (README, scripts/run_data/
# run_panda.sh: the panda-dance example) and stopped after a fixed number of steps. Used by
# run_side_by_side.sh on the GPU machine and by cpu_check.py (a CPU dry run on tiny models).
# Usage: bash benchmarks/upstream/run_upstream.sh SRC OUT
#   SRC  upstream's tree, offline.patch applied, checkpoints/ = model_views.py's folder
#   OUT  per stage: <stage>.log (the run's output), <stage>.rc (its exit code), steps_<stage>.jsonl (per-step
#        times and peak memory from pyhooks/a124_steps.py)
# Environment: WARMUP (default 8) and STEPS (default 24): each stage runs WARMUP + STEPS steps (the static stage
# 100 more: its first 100 steps are reference-view steps, SPEC 4, as in the project's static stage);
# PY (python3); UPSTREAM_SITE (a folder of carried packages put first on PYTHONPATH); LIMIT_AT (epoch seconds
# by which every stage must have ended; a stage that would start with under 60 s left is left for a later call);
# TI_EXTRA_ARGS (appended to the textual-inversion script's arguments); A124_DRY_RUN=1 (NeRF stages stop at
# their first step, after writing the checkpoint the next stage loads). A stage with an exit code recorded is not
# run again (a failure such as running out of memory is the measurement), unless the time limit cut it (124, 137).
set -uo pipefail
SRC=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python3}
N=$(( ${WARMUP:-8} + ${STEPS:-24} )); N_STATIC=$(( N + 100 ))
mkdir -p "$OUT/bin"
# upstream's scripts call `python` and `accelerate`; make both the interpreter that holds the packages
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" > "$OUT/bin/python"
printf '#!/bin/sh\nexec %s -m accelerate.commands.accelerate_cli "$@"\n' "$(command -v "$PY")" > "$OUT/bin/accelerate"
chmod +x "$OUT/bin/python" "$OUT/bin/accelerate"
export PATH="$OUT/bin:$PATH" PYTHONPATH="$HERE/pyhooks${UPSTREAM_SITE:+:$UPSTREAM_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 PYTHONUNBUFFERED=1
WS=outputs-animate124/grid4d-magic123-run
STATIC_CKPT=$WS/static-panda-dance/checkpoints/static-panda-dance.pth
DYN_CKPT=$WS/ms-dynamic-image-panda-dancerun/checkpoints/ms-dynamic-image-panda-dancerun.pth
cd "$SRC" || exit 1

INCOMPLETE=0  # set when a stage was left for a later call (time)
left() { if [ -n "${LIMIT_AT:-}" ]; then echo $(( LIMIT_AT - $(date +%s) )); else echo 100000; fi; }
stage() {  # name, steps, workspace to start afresh, then the script and its arguments
  local name=$1 steps=$2 ws=$3; shift 3
  local was; was=$(cat "$OUT/$name.rc" 2>/dev/null)
  case "$was" in  # a recorded exit is the measurement (0, or out of memory...); one cut by our time limit is not
    ""|124|137) ;;
    *) echo "upstream $name: recorded before (exit $was)"; return "$was" ;;
  esac
  [ "$(left)" -gt 60 ] || { echo "upstream $name: not started, $(left) s left"; INCOMPLETE=1; return 1; }
  rm -rf "$ws" "$OUT/steps_$name.jsonl"
  echo "upstream $name: bash $* ($steps steps; $(left) s left)"
  local t0; t0=$(date +%s)
  A124_STEPS_LOG="$OUT/steps_$name.jsonl" A124_STOP_AFTER=$steps timeout -k 10 $(( $(left) - 15 )) \
    bash "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo $rc > "$OUT/$name.rc"
  case $rc in 124|137) INCOMPLETE=1 ;; esac
  echo "upstream $name: exit $rc after $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || tail -5 "$OUT/$name.log"
  return $rc
}
rebase() {  # checkpoint, step, epoch: where the paper's schedule leaves the next stage (prep.py)
  [ -f "$1" ] || { echo "missing $1"; return 1; }
  "$PY" "$HERE/prep.py" rebase "$1" --step "$2" --epoch "$3"
}

# shellcheck disable=SC2086  # TI_EXTRA_ARGS is a list of arguments
stage invert "$N" outputs-textual-run/panda-dance \
  scripts/textual_inversion/textual_inversion_sd.sh 0 panda-dance _panda_ panda ${TI_EXTRA_ARGS:-}
if stage static "$N_STATIC" "$WS/static-panda-dance" \
     scripts/animate124/run-static.sh 0 run panda-dance "a high-resolution DSLR image of a panda" \
   && rebase "$STATIC_CKPT" 5000 50; then
  if stage dynamic "$N" "$WS/ms-dynamic-image-panda-dancerun" \
       scripts/animate124/run-dynamic.sh 0 run run panda-dance "a panda is dancing" \
     && rebase "$DYN_CKPT" 15000 150; then
    stage refine "$N" "$WS/ms-cn-dynamic-image-panda-dancerun" \
      scripts/animate124/run-cn.sh 0 run run run panda-dance "a panda is dancing" "a <token> is dancing"
  else
    echo "upstream refine: not run (needs the dynamic stage's checkpoint)"
  fi
else
  echo "upstream dynamic, refine: not run (need the static stage's checkpoint)"
fi
if [ $INCOMPLETE = 0 ]; then echo "upstream: every stage recorded"; exit 0; fi
echo "upstream: stages left for a later call (time limit)"; exit 3
