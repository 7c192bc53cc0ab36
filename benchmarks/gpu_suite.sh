#!/usr/bin/env bash
# Run the GPU measurements in one go on a CUDA machine (the team's lent H100/H200 or yours).
# Usage: bash benchmarks/gpu_suite.sh PHASE OUTDIR
#   PHASE = tests | kernels | guidance | lego | lego-tiled | dnerf | all
# Expects the project installed (pip install -e .) and, for the lent machine, data/configs under .device/
# (shared/ does not travel there): .device/data/{nerf-synthetic-400,dnerf-400}, .device/hf-configs.
set -uo pipefail
PHASE="${1:-all}"
OUT="${2:-bench-out}"
mkdir -p "$OUT"
DATA="${DATA_ROOT:-.device/data}"
CONFIGS="${HF_CONFIGS:-.device/hf-configs}"
MIN="${FIT_MINUTES:-5}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
run() { echo "=== $*"; "$@"; echo "=== exit $?"; }
case "$PHASE" in
  tests|all)
    run python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" ;;&
  kernels|all)
    run python3 benchmarks/bench_encoding.py --no-sweep --out "$OUT/encoding.json" 2>&1 | tee "$OUT/encoding.log" ;;&
  guidance|all)
    run python3 benchmarks/bench_guidance.py --configs "$CONFIGS" --out "$OUT/guidance.json" 2>&1 | tee "$OUT/guidance.log" ;;&
  lego|all)
    run python3 benchmarks/fit_multiview.py --scene lego --data-root "$DATA" --minutes "$MIN" --grid hash \
      --out "$OUT/lego_hash.json" 2>&1 | tee "$OUT/lego_hash.log" ;;&
  lego-tiled|all)
    run python3 benchmarks/fit_multiview.py --scene lego --data-root "$DATA" --minutes "$MIN" --grid tiled \
      --out "$OUT/lego_tiled.json" 2>&1 | tee "$OUT/lego_tiled.log" ;;&
  dnerf|all)
    run python3 benchmarks/fit_multiview.py --scene dnerf:standup --data-root "$DATA" --minutes "$MIN" \
      --out "$OUT/dnerf_standup.json" 2>&1 | tee "$OUT/dnerf_standup.log" ;;
esac
