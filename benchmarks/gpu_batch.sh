#!/usr/bin/env bash
# Issue 28 on one GPU: two assets at a short paper-settings schedule through `animate124 batch` (Ray, one GPU
# per task) against the same two as plain `animate124 run-all` calls. Ray's overhead is the batch's wall time
# over the two run-alls' sum, minus one (target <= 5 %). Full-size random-weight priors as in gpu_outputs.sh;
# both sides run --until refine (render and report need imageio-ffmpeg, 27 MB, which does not fit in the two
# calls' carry; they would add the same seconds to both sides) and 8 CPU threads (OMP_NUM_THREADS of
# gpu_common.sh; the batch asks Ray for 8 CPUs a run). STEPS='invert static dynamic refine' (default
# '10 60 30 10': the two calls' 10 minutes must hold four runs). Order: run-all toy, the batch (toy, toy2),
# run-all toy2, so that a drift of the machine falls on both sides.
#
# The GPU machine has no Ray and cannot download it; one call carries at most 64 MiB, the Ray wheel is 76 MiB.
# Here, once, from the root of the checkout the device calls send (the venv with Ray, or RAY_VERSION=2.60.0):
#   bash benchmarks/fetch_ray_wheel.sh      # -> .device/ray/call1 (part 1 of the wheel, diffusers & co.)
#                                           #    .device/ray/call2 (part 2, MANIFEST, Ray's dependencies)
# Then two device calls, the second AT ONCE after the first (the machine keeps /tmp only while it is warm,
# 30 s after a call):
#   call 1: run(command="CALL=1 bash benchmarks/gpu_batch.sh $OUT",
#               carry=[".device/ray/call1", ".device/hf-configs"], timeout_s=600)
#           keeps part 1 in /tmp/a124/ray, installs diffusers & co., builds the random-weight models, runs an
#           untimed warm-up run-all (2 steps a stage: CUDA, Triton's kernel cache, the page cache);
#           estimated 3-5 min
#   call 2: run(command="CALL=2 LIMIT=570 bash benchmarks/gpu_batch.sh $OUT", carry=[".device/ray/call2"],
#               timeout_s=600)
#           joins the wheel (sha256 checked), installs Ray (pip, offline: only the missing dependencies), runs
#           and times the three parts and writes r/batch_gpu.json (in results.tgz); estimated 6-9 min
# A part that did not fit is started again from scratch by the same call 2 command (no carry needed then,
# while the machine is warm); a machine that went back needs both calls again. Parts already recorded
# ($D/rec/<part>.json) are skipped; the summary is written once every part is recorded, else the log names
# the missing parts.
#
# Rounds: one sample of each side cannot tell Ray's fixed cost (about 10-12 s a batch) from the machine's
# noise, so ROUNDS=N (default 1) repeats the three parts N times in the same order, each part in a fresh
# folder: round 1 keeps the names plain_toy, batch, plain_toy2; round r >= 2 is plain_toy.rR, batch.rR,
# plain_toy2.rR. The summary gives each round's overhead and the median, min and max over the rounds, and the
# batch's extra seconds outside the stages (the fixed cost) paired round by round, with their median.
# At the default STEPS on an H100 a run-all takes about 60-75 s and the batch about 130-165 s (BENCHMARKS §13),
# so a round is about 250-310 s and one 570-s call holds about 2 rounds (less the first call 2's Ray install;
# a part starts only if PART_S s are left, 2 * PART_S for the batch). For more, repeat the same call 2 command
# while the machine is warm, each one resuming where the last stopped (no carry needed once Ray is installed):
#   run(command="CALL=2 LIMIT=570 ROUNDS=3 bash benchmarks/gpu_batch.sh $OUT", carry=[".device/ray/call2"],
#       timeout_s=600)                                               # rounds 1 and (mostly) 2
#   run(command="CALL=2 LIMIT=570 ROUNDS=3 bash benchmarks/gpu_batch.sh $OUT", timeout_s=600)   # the rest
# ROUNDS=3 thus takes two call 2 commands, at times three; with call 1 that is about 20-25 minutes of device
# time. With longer STEPS fewer rounds fit a call: raise PART_S to the seconds one run-all takes. Report from
# the LAST call's results.tgz: it holds every part's record and log, from all call 2 commands.
# Back here:
#   python benchmarks/batch_gpu.py report <files_at>/results.tgz     # -> benchmarks/results/batch_gpu.json,
#                                                                    #    raw files, BENCHMARKS.md §13
# A rehearsal on a CPU (the tiny preset, no installs; the wheel joined and checked but not installed):
#   for c in 1 2; do CALL=$c DRY_CPU=/tmp/dry STEPS='2 4 2 2' bash benchmarks/gpu_batch.sh /tmp/dry/out$c; done
# (ROUNDS=2 in front of it rehearses two rounds.)
set -uo pipefail
FINAL="${1:-batch-out}"
. benchmarks/gpu_common.sh
left() { echo $(( ${LIMIT:-570} - ($(date +%s) - T0) )); }
A124="python3 -m animate124.cli.app"; RUN_ARGS="--gpus-per-run 1 --cpus-per-run 8"; PIP="python3 -m pip"
if [ -n "${DRY_CPU:-}" ]; then  # the rehearsal: tiny random models, CPU runs, pip only says what it would do
  W=$DRY_CPU; MODEL_SETS="--preset tiny --device cpu"; RUN_ARGS="--gpus-per-run 0 --cpus-per-run 1"
  export OMP_NUM_THREADS=1 ANIMATE124_STATE_DIR=$DRY_CPU/state
  random_models() { mkdir -p $W/models && touch $W/models/.done; }
  PIP="echo would run: pip"
fi
R=$W/ray; D=$W/batchbench; mkdir -p $R $D/rec $D/log $D/in
read -r S_INV S_STA S_DYN S_REF <<< "${STEPS:-10 60 30 10}"
cp -n examples/toy.png $D/in/toy.png; cp -n examples/toy.png $D/in/toy2.png
printf 'image,prompt\ntoy.png,a toy is spinning\ntoy2.png,a toy is jumping\n' > $D/in/jobs.csv

# --- call 1: keep part 1, install what animate124 needs, build the models, warm up ------------------------
case "${CALL:-}" in 1|2) ;; *) el "CALL=1 or CALL=2: see the header"; exit 2 ;; esac
if [ "$CALL" = 1 ]; then
  [ -d .device/ray/call1 ] || { el "call 1 carries .device/ray/call1 (bash benchmarks/fetch_ray_wheel.sh makes it)"; exit 1; }
  cp .device/ray/call1/*.part1 $R/ && el "kept $(ls .device/ray/call1/*.part1) in $R"
  $PIP install -q --no-deps .device/ray/call1/wheels/*.whl 2>&1 | tail -2
  random_models
  [ -f $D/.warm ] || (cd $D/in && $A124 run-all toy.png "a toy is spinning" -p $D/warmup --until refine $MODEL_SETS \
     --set invert.steps=2 --set static.iters=2 --set dynamic.iters=2 --set refine.iters=2 -q > "$OUT/warmup.log" 2>&1 &&
     touch $D/.warm)
  el "warm-up run-all: $([ -f $D/.warm ] && echo done || echo FAILED); $(tail -1 "$OUT/warmup.log" 2>/dev/null)"
  el "call 1 done: make call 2 now (carry .device/ray/call2), within 30 s"
  exit 0
fi

# --- call 2: join the wheel, install Ray -------------------------------------------------------------------
if ! python3 -c "import ray" 2>/dev/null || [ -n "${DRY_CPU:-}" ]; then
  [ -f .device/ray/call2/MANIFEST ] || { el "no Ray here and no .device/ray/call2 carried: see the header"; exit 1; }
  read -r WHEEL SIZE SHA < .device/ray/call2/MANIFEST
  [ -f "$R/$WHEEL.part1" ] || { el "part 1 of $WHEEL is not on this machine (it went back?): call 1, then call 2 at once"; exit 1; }
  cat "$R/$WHEEL.part1" .device/ray/call2/"$WHEEL.part2" > "$R/$WHEEL"
  [ "$(sha256sum "$R/$WHEEL" | cut -d' ' -f1)" = "$SHA" ] || { el "$WHEEL: sha256 mismatch"; exit 1; }
  el "joined $WHEEL (sha256 checked)"
  $PIP install -q --no-index --find-links .device/ray/call2/wheels "$R/$WHEEL" 2>&1 | tail -3
fi
python3 -c "import ray; print('ray', ray.__version__)" | tee "$OUT/ray.txt" || exit 1
python3 -c "import diffusers" 2>/dev/null && [ -f $W/models/.done ] || { el "call 1 has not run on this machine"; exit 1; }

# --- the three parts, each timed as a whole command -------------------------------------------------------
SETS="$MODEL_SETS --set invert.steps=$S_INV --set static.iters=$S_STA --set dynamic.iters=$S_DYN
      --set refine.iters=$S_REF"
part() {  # name, seconds it needs, then the command; runs it once in $D/in, timed, unless already recorded;
          # its project/out folder $D/<name> is made afresh (nothing resumes from an earlier, cut-short try)
  local name=$1 need=$2; shift 2
  [ -f $D/rec/$name.json ] && return 0
  [ "$(left)" -gt "$need" ] || { el "$name: not started, $(left) s left (it needs $need)"; return 1; }
  rm -rf $D/$name; el "$name: $*"
  local t0 t1 rc; t0=$(date +%s.%N)
  (cd $D/in && timeout $(( $(left) - 10 )) "$@" > "$D/log/$name.log" 2>&1); rc=$?
  t1=$(date +%s.%N); tail -2 "$D/log/$name.log"
  [ $rc -eq 124 ] && { el "$name: cut short; the same call 2 command starts it again"; rm -rf $D/$name; return 1; }
  printf '{"part": "%s", "seconds": %s, "exit_code": %d, "start": %s, "end": %s}\n' "$name" \
    "$(awk "BEGIN { print $t1 - $t0 }")" $rc "$t0" "$t1" > $D/rec/$name.json
}
PART_S="${PART_S:-100}"
ROUNDS="${ROUNDS:-1}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { el "ROUNDS=$ROUNDS: a whole number, 1 or more"; exit 2; }
names() { local s; [ "$1" = 1 ] && s= || s=.r$1; echo "plain_toy$s batch$s plain_toy2$s"; }  # round 1: no suffix
for r in $(seq 1 "$ROUNDS"); do
  read -r P1 B P2 <<< "$(names "$r")"
  part $P1 $PART_S $A124 run-all toy.png "a toy is spinning" -p $D/$P1 --until refine $SETS -q &&
  part $B $(( 2 * PART_S )) $A124 batch jobs.csv --out $D/$B --until refine $RUN_ARGS $SETS --json &&  # not -q: its log keeps "Ray: ... (started in N s, while the rows were checked)"
  part $P2 $PART_S $A124 run-all toy2.png "a toy is jumping" -p $D/$P2 --until refine $SETS -q || break
done
cp $D/rec/*.json $D/log/*.log "$OUT/" 2>/dev/null  # the parts of earlier call 2 commands too
MISSING=$(for r in $(seq 1 "$ROUNDS"); do for n in $(names "$r"); do [ -f $D/rec/$n.json ] || echo -n "$n "; done; done)
[ -z "$MISSING" ] || { el "not finished, missing: ${MISSING% }; run the same call 2 command again"; exit 0; }

for r in $(seq 1 "$ROUNDS"); do
  read -r _ B _ <<< "$(names "$r")"
  mkdir -p "$OUT/$B"; cp $D/$B/batch.json $D/$B/.batch/*.json "$OUT/$B/" 2>/dev/null
done
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1); CARD=${CARD:-cpu (rehearsal)}
python3 benchmarks/batch_gpu.py summarize $D --card "$CARD" --steps "$S_INV $S_STA $S_DYN $S_REF" \
  --rounds "$ROUNDS" --out "$OUT/batch_gpu.json"
el "done"
