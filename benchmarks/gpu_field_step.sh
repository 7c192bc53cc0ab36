#!/usr/bin/env bash
# One GPU call for issue 26 (the NeRF side of a step): the equivalence tests of the fused normals, the fused time
# TV and the z-merge on the GPU, then bench_field_step.py --issue26 (today's defaults as `before`,
# KernelOptions(fused_normals=True), z_merge=True alone and with the fused normals, on the fresh paper field and a
# trained-like scene, and refine's NeRF side), which writes field_step.json with card, dynamic_ms,
# dynamic_trained_ms, refine_ms, peak_gib, the same keys under `before`, and every variant's under `by_variant`;
# then the time TV alone (today's node vs KernelOptions(fused_time_tv=True), paper shapes:
# bench_field_step.py --time-tv-only) into time_tv.json.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_field_step.sh OUTDIR
# Budget: the tests ~1-2 min with the kernels' compile; the benchmark compiles the stencil kernels on its first
# fused step (~1 min), then 4 variants x (3 + 8) steps fresh, the fit of the trained-like scene (600 steps of 2^18
# points), 4 variants x (3 + 8) steps with the frozen render (~6-7 min); the time TV under a minute. More than one
# device call's 600 s in all: PARTS picks the parts (default "tests bench tv"; e.g. PARTS="tv tests" then
# PARTS=bench), LIMIT (default 570 s) bounds the call: each part gets what is left. ITERS (8) and
# TRAINED_STEPS (600) shorten the benchmark. Expects .device/wheels (as the others).
set -uo pipefail
FINAL="${1:-field-step-out}"
. benchmarks/gpu_common.sh
PARTS=" ${PARTS:-tests bench tv} "
LIMIT_AT=$(( T0 + ${LIMIT:-570} ))
left() { echo $(( LIMIT_AT - $(date +%s) )); }

if [[ $PARTS == *" tv "* ]]; then
  el "bench_field_step --time-tv-only"
  timeout $(( $(left) < 180 ? $(left) : 180 )) python3 benchmarks/bench_field_step.py --time-tv-only \
    --iters "${ITERS:-8}" --out "$OUT/time_tv.json" 2>&1 | tee "$OUT/time_tv.log" | tail -3
fi
if [[ $PARTS == *" tests "* ]]; then
  el "GPU tests: fused normals, fused time TV, grid kernels, z-merge"
  timeout $(( $(left) < 300 ? $(left) : 300 )) python3 -m pytest -q -m gpu tests/test_scene_stencil.py \
    tests/test_scene_timetv_fused.py tests/test_scene_triton.py tests/test_scene_zmerge.py -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"
fi
if [[ $PARTS == *" bench "* ]]; then
  el "bench_field_step --issue26"
  timeout "$(left)" python3 benchmarks/bench_field_step.py --issue26 --iters "${ITERS:-8}" \
    --trained-steps "${TRAINED_STEPS:-600}" --out "$OUT/field_step.json" 2>&1 | tee "$OUT/field_step.log" | tail -8
  python3 -c "
import json; r = json.load(open('$OUT/field_step.json'))
keys = ('card', 'dynamic_ms', 'dynamic_trained_ms', 'refine_ms', 'peak_gib')
print({k: r.get(k) for k in keys}); print('before', r.get('before'))
for name, v in r.get('by_variant', {}).items(): print(name, v)
" 2>&1 | tail -6
fi
el "done"
