#!/usr/bin/env bash
# Issue 12's acceptance run: FRACTION (default 0.1) of every stage's paper steps through the CLI with full-size
# random-weight priors at paper settings, a low-vram run of every stage, then paper_schedule.json
# (benchmarks/paper_schedule.py). At the 2026-11-30 rates the paper part needs about 23 GPU minutes, more than
# one device call: the run is stopped with SIGINT before LIMIT seconds (the trainer writes a checkpoint) and
# the same command in the next call resumes it, as long as the machine is still warm (the projects live in
# /tmp/a124). Run it again until it prints "paper_schedule.json written".
# Usage (repository root, on the CUDA machine): LIMIT=540 bash benchmarks/gpu_paper_schedule.sh OUTDIR
# PRE_PARTS='gn' runs those gpu_probe.sh parts once first (into OUTDIR/pre). CAP_GIB=24 runs every stage on
# the CUDA allocator capped at 24 GiB (a 24 GB card; benchmarks/capped_cli.py).
# Expects .device/wheels and .device/hf-configs (as gpu_stages.sh).
set -uo pipefail
FINAL="${1:-schedule-out}"; OUT="$FINAL/r"; mkdir -p "$OUT"
trap 'tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$OUT"' EXIT  # the device tool returns <= 8 files
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps .device/wheels/*.whl >/dev/null 2>&1
T0=$(date +%s); left() { echo $(( ${LIMIT:-540} - ($(date +%s) - T0) )); }
A124="python3 -m animate124.cli.app"; ROOT=$PWD; W=/tmp/a124; mkdir -p $W/sched $W/sched-lv
# CAP_GIB=24: the paper run on the allocator capped to a 24 GiB card (benchmarks/capped_cli.py)
[ -n "${CAP_GIB:-}" ] && A124="python3 $ROOT/benchmarks/capped_cli.py --gib $CAP_GIB"
export ANIMATE124_STATE_DIR=$W/state
if [ ! -f $W/models/.done ]; then
  python3 benchmarks/make_random_models.py --configs .device/hf-configs --out $W/models 2>&1 | tail -1
  python3 -c "from animate124.models.tiny import build_tiny_repo; build_tiny_repo('depth', '$W/models/depth')"
  touch $W/models/.done
fi
if [ -n "${PRE_PARTS:-}" ] && [ ! -f $W/pre.done ]; then  # gpu_probe.sh parts first (e.g. PRE_PARTS=gn GN_GUIDANCE=)
  PARTS="$PRE_PARTS" bash benchmarks/gpu_probe.sh "$FINAL/pre"; touch $W/pre.done
fi
F="${FRACTION:-0.1}"
steps() { python3 -c "import math; print(math.ceil($1 * $F))"; }
MODELS="--set models.sd=$W/models/sd --set models.zero123=$W/models/zero123 --set models.video=$W/models/video
        --set models.controlnet=$W/models/controlnet --set models.depth=$W/models/depth"
SETS="$MODELS --set invert.steps=$(steps 3000) --set static.iters=$(steps 5000) --set dynamic.iters=$(steps 10000)
      --set refine.iters=$(steps 5000)"
CMD="animate124 run-all examples/toy.png 'a panda is dancing' --until refine $SETS"
if [ ! -f $W/sched-lv/.done ] && [ "$(left)" -gt 200 ]; then
  echo "[low-vram] every stage, 12 steps"
  (cd $W/sched-lv && timeout -s INT $(( $(left) - 30 )) $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" \
     --until refine --preset low-vram $MODELS --set invert.steps=12 --set static.iters=12 --set dynamic.iters=12 \
     --set refine.iters=12 -q > "$OUT/lowvram.log" 2>&1) && touch $W/sched-lv/.done
  tail -2 "$OUT/lowvram.log"
fi
echo "[paper] $F of the paper steps; $(left) s left in this call"
(cd $W/sched && timeout -s INT $(( $(left) - 20 )) $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" \
   --until refine $SETS -q > "$OUT/paper.log" 2>&1); rc=$?
tail -3 "$OUT/paper.log"
P=$W/sched/runs/toy
cp $P/manifest.json "$OUT/manifest.json" 2>/dev/null
for s in invert static dynamic refine; do cp $P/logs/$s.jsonl "$OUT/log_$s.jsonl" 2>/dev/null; done
if [ $rc -eq 0 ]; then
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  python3 benchmarks/paper_schedule.py --project $P --card "$CARD" --low-vram $W/sched-lv/runs/toy \
    --command "$CMD" --out "$OUT/paper_schedule.json" && echo "paper_schedule.json written"
else
  echo "stopped (exit $rc): run the same command again while the machine is warm to resume"
fi
