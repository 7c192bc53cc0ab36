#!/usr/bin/env bash
# Issue 29, first two-GPU call: the GPU tests of tests/test_multi_device.py, then static, dynamic and refine at
# paper settings (full-size random-weight priors) on one GPU and with --gpus 2, the same steps and settings, and
# benchmarks/results/multi_gpu.json (per-step time of each stage with 1 and 2 GPUs, the speedup, the peak
# memory.used of every card from nvidia-smi).
#
#   run(kind="nvidia-h100-x2", command="LIMIT=560 bash benchmarks/gpu_multi.sh multi-out")
#
# Not yet run (no multi-GPU machine has been lent). The runs resume across calls while the machine stays warm
# (the projects live in /tmp/a124/multi): if it prints "stopped", make the same call again at once. STEPS (default
# 60) steps per stage; EXTRA_SETS='--set ...' adds settings to both runs; GPUS=N compares 1 against N cards.
# The projection of a whole paper schedule on two cards (issue 29's paper_schedule_2gpu.json) is the acceptance
# run with --gpus 2 added, then its record copied:
#   EXTRA_SETS='--gpus 2' LIMIT=560 bash benchmarks/gpu_paper_schedule.sh sched2   (as often as it asks)
#   cp sched2/r/paper_schedule.json benchmarks/results/paper_schedule_2gpu.json
# Expects .device/wheels and .device/hf-configs (as gpu_stages.sh).
set -uo pipefail
FINAL="${1:-multi-out}"
. benchmarks/gpu_common.sh
left() { echo $(( ${LIMIT:-560} - ($(date +%s) - T0) )); }
A124="python3 -m animate124.cli.app"; ROOT=$PWD; GPUS="${GPUS:-2}"; STEPS="${STEPS:-60}"
M=$W/multi; mkdir -p $M
python3 -c "import torch; print('cuda devices:', torch.cuda.device_count())" | tee "$OUT/devices.txt"

if [ ! -f $M/tests.done ]; then
  el "gpu tests (tests/test_multi_device.py)"
  python3 -m pytest -q -m gpu tests/test_multi_device.py -p no:cacheprovider -s > "$OUT/gpu_tests.log" 2>&1 \
    && touch $M/tests.done
  grep -E "cosine|passed|failed|skipped|Error" "$OUT/gpu_tests.log" | tail -12
fi

random_models
SETS="$MODEL_SETS --set invert.steps=20 --set static.iters=$STEPS --set dynamic.iters=$STEPS
      --set refine.iters=$STEPS --set run.log_every=5 --set run.preview_every=0 ${EXTRA_SETS:-}"

# one project per run: invert once on one GPU, copied; then the three training stages, each run timed
if [ ! -f $M/base.done ]; then
  el "preprocess + invert (20 steps), one GPU"
  (cd $M && timeout -s INT $(( $(left) - 30 )) $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" \
     --until invert -p base $SETS -q > "$OUT/base.log" 2>&1) && touch $M/base.done
  tail -2 "$OUT/base.log"
fi
for run in one several; do
  [ -f $M/base.done ] || break
  [ -d $M/$run ] || cp -r $M/base $M/$run
  [ -f $M/$run.done ] && continue
  [ "$run" = one ] && DEV="--device cuda:0" || DEV="--gpus $GPUS"
  el "$run: static, dynamic, refine, $STEPS steps each ($DEV); $(left) s left"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 >> "$OUT/smi_$run.csv" &
  SMI=$!
  ok=1
  for stage in static dynamic refine; do
    (cd $M && timeout -s INT $(( $(left) - 20 )) $A124 $stage -p $run $DEV $SETS -q >> "$OUT/$run.log" 2>&1) \
      || { ok=0; break; }
  done
  kill $SMI 2>/dev/null
  tail -3 "$OUT/$run.log"
  [ $ok = 1 ] && touch $M/$run.done || { echo "stopped: make the same call again while the machine is warm"; break; }
done
for run in one several; do cp -r $M/$run/logs "$OUT/logs_$run" 2>/dev/null; cp $M/$run/manifest.json "$OUT/manifest_$run.json" 2>/dev/null; done
if [ -f $M/one.done ] && [ -f $M/several.done ]; then
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  python3 benchmarks/multi_gpu.py --one $M/one --several $M/several --gpus $GPUS --card "$CARD" \
    --smi-one "$OUT/smi_one.csv" --smi-several "$OUT/smi_several.csv" --out "$OUT/multi_gpu.json" \
    && echo "multi_gpu.json written"
fi
