#!/usr/bin/env bash
# One GPU call for issue 26 (the NeRF side of a step): the equivalence tests of the fused normals and the z-merge
# on the GPU, then bench_field_step.py --issue26 (the path before issue 26 as `before`, KernelOptions(
# fused_normals=True), z_merge=True alone and with the fused normals, on the fresh paper field and a trained-like
# scene, and refine's NeRF side), which writes field_step.json with card, dynamic_ms, dynamic_trained_ms,
# refine_ms, peak_gib, the same keys under `before`, and every variant's under `by_variant`.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_field_step.sh OUTDIR
# Budget: the tests ~1 min with the kernels' compile; the benchmark compiles the stencil kernels on its first
# fused step, then 4 variants x (3 + ITERS) steps fresh, the fit of the trained-like scene (TRAINED_STEPS steps of
# 2^18 points), 4 variants x (3 + ITERS) steps with the frozen render: 93 s in all on an H100 with ITERS=5
# TRAINED_STEPS=200 (2026-12-07). PARTS picks the parts (default "tests bench"), LIMIT (default 570 s) bounds the
# call: each part gets what is left ("fresh": the fresh field only, FRESH_VARIANTS; "trace": torch.profiler tables of TRACE_VARIANTS, default
# defaults = today's KernelOptions(), to $OUT/trace; "stencil": benchmarks/bench_stencil_linear.py, the first-layer kernel
# against cuBLAS). ITERS (8), TRAINED_STEPS (600), ROUNDS (2: the variant list twice, the second time reversed;
# medians pooled) and VARIANTS (default: --issue26's list; else the fresh and trained tables of these, with
# fused_tv and defaults for field_step.json's before/after). Expects .device/wheels (as the others).
# TESTS overrides the test files.
# Measured 2026-12-07 (BENCHMARKS.md §15.14): PARTS="tests stencil trace bench" ITERS=4
#   VARIANTS=fused_tv,march_tv,blas,skip0,blas_skip0 bash benchmarks/gpu_field_step.sh OUT (blas_skip0 = the
#   defaults since). The next: PARTS="tests trace bench" ITERS=4 VARIANTS=fused_tv,march_tv,defaults
set -uo pipefail
FINAL="${1:-field-step-out}"
. benchmarks/gpu_common.sh
PARTS=" ${PARTS:-tests bench} "
LIMIT_AT=$(( T0 + ${LIMIT:-570} ))
left() { echo $(( LIMIT_AT - $(date +%s) )); }

if [[ $PARTS == *" tests "* ]]; then
  el "GPU tests: fused normals, grid kernels, z-merge"
  timeout $(( $(left) < 300 ? $(left) : 300 )) python3 -m pytest -q -m gpu ${TESTS:-tests/test_scene_stencil.py \
    tests/test_scene_triton.py tests/test_scene_zmerge.py tests/test_render_march_kernel.py tests/test_scene_timetv.py \
    tests/test_scene_timeruns.py} \
    -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"
fi
if [[ $PARTS == *" stencil "* ]]; then
  el "bench_stencil_linear: the fused normals' first-layer backward, kernel launches against cuBLAS"
  timeout $(( $(left) < 120 ? $(left) : 120 )) python3 benchmarks/bench_stencil_linear.py \
    --out "$OUT/stencil_linear.json" > "$OUT/stencil_linear.log" 2>&1; tail -20 "$OUT/stencil_linear.log"
fi
if [[ $PARTS == *" bench "* ]]; then
  if [ -n "${VARIANTS:-}" ]; then SEL="--trained --variants $VARIANTS"; else SEL="--issue26"; fi
  el "bench_field_step $SEL"
  timeout "$(left)" python3 benchmarks/bench_field_step.py $SEL --rounds "${ROUNDS:-2}" --iters "${ITERS:-8}" \
    --trained-steps "${TRAINED_STEPS:-600}" --out "$OUT/field_step.json" 2>&1 | tee "$OUT/field_step.log" | tail -8
  python3 -c "
import json; r = json.load(open('$OUT/field_step.json'))
keys = ('card', 'dynamic_ms', 'dynamic_trained_ms', 'refine_ms', 'peak_gib')
print({k: r.get(k) for k in keys}); print('before', r.get('before'))
for name, v in r.get('by_variant', {}).items(): print(name, v)
" 2>&1 | tail -6
fi
if [[ $PARTS == *" fresh "* ]]; then
  FRESH_VARIANTS="${FRESH_VARIANTS:-march_tv,defaults}"
  el "bench_field_step on the fresh field only: $FRESH_VARIANTS"
  timeout "$(left)" python3 benchmarks/bench_field_step.py --variants "$FRESH_VARIANTS" --iters "${ITERS:-8}" \
    --out "$OUT/field_step_fresh.json" 2>&1 | tee "$OUT/field_step_fresh.log" | tail -8
fi
if [[ $PARTS == *" trace "* ]]; then
  el "bench_field_step --trace: where a fused-normals step's device time goes (torch.profiler tables)"
  timeout "$(left)" python3 benchmarks/bench_field_step.py --variants "${TRACE_VARIANTS:-defaults}" \
    --iters 3 --trace "$OUT/trace" --out "$OUT/field_step_trace.json" 2>&1 | tail -4
  for f in "$OUT"/trace/*.txt; do head -30 "$f"; grep -A20 "by origin" "$f"; done
fi
el "done"
