#!/usr/bin/env bash
# One GPU call for issue 26 (the NeRF side of a step): the fused normals' and the z-merge's equivalence tests on
# the GPU, then bench_field_step.py --issue26 (today's defaults as `before` and KernelOptions(fused_normals=True),
# then z_merge=True alone and with the fused normals, on the fresh paper field and a trained-like scene, and
# refine's NeRF side), which writes field_step.json with card, dynamic_ms, dynamic_trained_ms, refine_ms,
# peak_gib, the same keys under `before`, and every variant's under `by_variant`.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_field_step.sh OUTDIR
# Budget (about 7-9 minutes): the tests ~1 min with the kernels' compile; the benchmark compiles the stencil
# kernels on its first fused step (~1 min), then 4 variants (today, fused_normals, z_merge, both) x (3 + 8) steps
# fresh, the fit of the trained-like scene (600 steps of 2^18 points), 4 variants x (3 + 8) steps with the frozen
# render. SKIP_TESTS=1 skips the tests; ITERS (8) and TRAINED_STEPS (600) shorten the benchmark. Expects
# .device/wheels (as the others).
set -uo pipefail
FINAL="${1:-field-step-out}"
. benchmarks/gpu_common.sh

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  el "GPU tests: fused normals, grid kernels, z-merge"
  timeout 240 python3 -m pytest -q -m gpu tests/test_scene_stencil.py tests/test_scene_triton.py tests/test_scene_zmerge.py \
    -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"
fi
el "bench_field_step --issue26"
timeout ${BENCH_TIMEOUT:-480} python3 benchmarks/bench_field_step.py --issue26 --iters "${ITERS:-8}" \
  --trained-steps "${TRAINED_STEPS:-600}" --out "$OUT/field_step.json" 2>&1 | tee "$OUT/field_step.log" | tail -12
python3 -c "
import json; r = json.load(open('$OUT/field_step.json'))
keys = ('card', 'dynamic_ms', 'dynamic_trained_ms', 'refine_ms', 'peak_gib')
print({k: r.get(k) for k in keys}); print('before', r.get('before'))
for name, v in r.get('by_variant', {}).items(): print(name, v)
" 2>&1 | tail -6
el "done"
