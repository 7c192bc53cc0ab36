#!/usr/bin/env bash
# Issue 25: the static stage's gradient balance at static.sds_grad_scale=upstream and =nominal, with the
# full-size random-weight priors at paper settings: STEPS (default 500) steps each, the record every EVERY (10)
# steps (benchmarks/grad_balance.py). At about 9 it/s (H200, BENCHMARKS.md §8) both runs fit one device call.
# Usage (repository root, on the CUDA machine): STEPS=500 EVERY=10 bash benchmarks/gpu_grad_balance.sh OUTDIR
# Writes OUTDIR/results.tgz with grad_balance.json, the two static logs and the table (grad_balance.txt).
# Expects .device/wheels and .device/hf-configs (as gpu_stages.sh).
set -uo pipefail
FINAL="${1:-grad-balance-out}"
. benchmarks/gpu_common.sh
random_models
SETS=(); for s in $MODEL_SETS; do [ "$s" != "--set" ] && SETS+=(--set "$s"); done
el "static at upstream and nominal, ${STEPS:-500} steps each"
python3 benchmarks/grad_balance.py --work $W/grad-balance --steps "${STEPS:-500}" --every "${EVERY:-10}" \
  --prompt "a panda" "${SETS[@]}" --out "$OUT/grad_balance.json" 2>&1 | tee "$OUT/grad_balance.txt" | tail -40
for m in upstream nominal; do cp $W/grad-balance/$m/logs/static.jsonl "$OUT/static_$m.jsonl" 2>/dev/null; done
el "done"
