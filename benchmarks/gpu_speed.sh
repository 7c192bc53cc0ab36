#!/usr/bin/env bash
# One GPU call for issue 12's per-call measurements: the CUDA-graph equivalence tests, every prior's call
# (eager as in §3, + VAE checkpointing, + CUDA graphs) with FLOP counts and the card's matmul/copy rates,
# and the memory kept for backward with and without the two checkpointing options, at peak, on CUDA.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_speed.sh OUTDIR
# MODES='graphs' and MEM_CASES='render' pick parts (defaults: all).
# Expects .device/wheels (diffusers and friends) and .device/hf-configs (the real model configs).
set -uo pipefail
FINAL="${1:-speed-out}"
. benchmarks/gpu_common.sh
CFG=.device/hf-configs

el "GPU tests: CUDA graphs, VAE checkpoint"
python3 -m pytest -q -m gpu tests/test_cuda_graphs.py tests/test_render_gpu.py -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"

el "prior calls: ${MODES:=eager vaeck graphs} (eager as BENCHMARKS §3; vaeck: + VAE checkpoint; graphs: + CUDA graphs)"
for mode in $MODES; do
  case $mode in
    eager) flags="--flops" ;;
    vaeck) flags="--vae-checkpoint" ;;
    graphs) flags="--vae-checkpoint --cuda-graphs" ;;
  esac
  python3 benchmarks/bench_guidance.py --configs $CFG $flags --out "$OUT/guidance_$mode.json" 2>&1 | tail -5
done

el "memory kept for backward, CUDA peak: ${MEM_CASES:=video,controlnet,sd,render}"
timeout ${MEM_TIMEOUT:-200} python3 benchmarks/backward_memory.py --configs $CFG --device cuda --cases $MEM_CASES \
  --out "$OUT/backward_memory.json" 2>&1 | grep -v "should be kept in float32" | tail -12
el "done"
