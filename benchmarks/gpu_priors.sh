#!/usr/bin/env bash
# One GPU call for issue 27: the priors' calls and the textual inversion at the speed of the hardware.
# Each bench run measures the card's dense bf16 8192³ matmul rate, then per prior one guidance call as the stages
# make it (bench_guidance.py --stages: fp16 networks, fp32 VAE under fp16 autocast, VAE recompute, blocked
# attention, fused norms) run as VARIANT, with its exact FLOPs, achieved TFLOP/s, share of peak and the gradient
# agreement with the eager networks (cosine, norm error); then the GPU agreement tests; then textual inversion
# steps; and merges everything into $OUT/guidance_calls.json (benchmarks/guidance_calls.py).
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_priors.sh OUTDIR
#   PARTS='bench tests invert'      what to run (default all three; the merge always runs)
#   PRIORS=sd,zero123,video,controlnet   VARIANTS='graphs compile'   (a name given twice runs twice, its files
#       suffixed .2: 'graphs native graphs' shows whether the order matters; guidance_variants.py: eager graphs
#       channels_last compile compile_ma compile_cl compile_ma_cl fp8 fp8_compile native native_compile unet_norms
#       defaults = the stages' defaults, defaults_compile = them with run.compile_priors, defaults_cl = them
#       channels-last; a name ending in +keepN runs with --vae-keep-pixels N: +keep0, SD and Zero123 recompute
#       their encoder as before static.vae_keep_pixels; +keep524288, the video prior keeps 8 of its 16 frames
#       (dynamic.vae_keep_pixels, 2026-12-08: PRIORS=video VARIANTS="defaults defaults+keep524288"))
# The next calls for issue 27 (2026-12-07, BENCHMARKS.md §15.13): PARTS=bench PRIORS=sd,zero123
#   VARIANTS="defaults defaults+keep0 defaults" (about 2 min), then PARTS=bench PRIORS=video,controlnet
#   VARIANTS="defaults defaults_compile" (about 8 min: compiling)
#   PROFILE=1   also a torch.profiler table of 3 calls per prior and variant ($OUT/profile_VARIANT.PRIOR.txt):
#       where SD's and Zero123's calls (5-16 % of the matrix rate, launch- and memory-bound) spend their time
#   A124_GPU_AGREEMENT=graphs,channels_last,fp8   the variants the pytest run checks at full size
#   INVERT_RUNS='base fast'         base = the stage's defaults (fused norms); fast = + compile, channels-last, fused AdamW;
#                                   native = base + the fp16 UNet outside autocast (run.native_fp16);
#                                   unetnorm = base + the UNet's group norms fused (run.unet_fused_norm);
#                                   native_unetnorm = both of the last two (the stage's defaults since 2026-12-07);
#                                   floor = base, its gradient agreement with a second plain step (the noise floor)
#   INVERT_STEPS=12  ITERS=10  BUDGET=540 (seconds; each part gets what is left, so nothing runs past it)
# Compiling costs 1-3 minutes per network at full size (max-autotune more); Inductor's cache is kept under
# /tmp/a124/inductor for the machine's lifetime, so a later call on the same warm machine reuses it.
# Expects .device/wheels (diffusers and friends) and .device/hf-configs (the real model configs), as gpu_speed.sh.
set -uo pipefail
FINAL="${1:-priors-out}"
. benchmarks/gpu_common.sh
CFG=.device/hf-configs
PARTS="${PARTS:-bench tests invert}"
PRIORS="${PRIORS:-sd,zero123,video,controlnet}"
VARIANTS="${VARIANTS:-graphs compile}"
BUDGET="${BUDGET:-540}"
export TORCHINDUCTOR_CACHE_DIR=$W/inductor A124_HF_CONFIGS=$PWD/$CFG
mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

if [[ " $PARTS " == *" bench "* ]]; then
  declare -A SEEN  # a variant named twice (VARIANTS='graphs native graphs': the order's effect) gets .2, .3...
  for v in $VARIANTS; do
    L=$(left); [ "$L" -gt 40 ] || { el "no time left for variant $v"; continue; }
    SEEN[$v]=$(( ${SEEN[$v]:-0} + 1 )); tag=$v; [ "${SEEN[$v]}" -gt 1 ] && tag="$v.${SEEN[$v]}"
    # VARIANT+keepN: --vae-keep-pixels N (+keep0: recompute all; video+keep524288: 8 frames of 256² kept)
    base=${v%%+keep*}; keep=(); [ "$base" != "$v" ] && keep=(--vae-keep-pixels "${v##*+keep}"); tag=${tag//+/_}
    [ -n "${PROFILE:-}" ] && keep+=(--profile "$OUT/profile_$tag")  # torch.profiler tables, one per prior
    el "guidance calls, variant $v, priors $PRIORS (up to $L s)"
    timeout "$L" python3 benchmarks/bench_guidance.py --configs $CFG --priors "$PRIORS" --stages --variant "$base" "${keep[@]}" \
      --dense --agreement --iters "${ITERS:-10}" --warmup 3 --out "$OUT/guidance_$tag.json" \
      --calls-json "$OUT/calls_$tag.json" > "$OUT/guidance_$tag.log" 2>&1; echo "exit $?"
    grep -v "should be kept in float32" "$OUT/guidance_$tag.log" | tail -7
  done
fi

if [[ " $PARTS " == *" tests "* ]]; then
  L=$(left)
  if [ "$L" -gt 60 ]; then
    el "GPU tests: gradient agreement at full size (${A124_GPU_AGREEMENT:-graphs,channels_last,fp8}), FLOP counter"
    timeout "$L" python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/test_guidance_agreement.py \
      > "$OUT/agreement_tests.log" 2>&1; echo "exit $?"
    grep -E "cosine|passed|failed|skipped" "$OUT/agreement_tests.log" | tail -16
  else el "no time left for the GPU tests"; fi
fi

if [[ " $PARTS " == *" invert "* ]]; then
  for run in ${INVERT_RUNS:-base fast}; do
    case $run in
      base) f="--fused-norm" ;;
      fast) f="--fused-norm --compile --channels-last --fused-adamw --agreement" ;;
      native) f="--fused-norm --native-fp16 --agreement" ;;
      unetnorm) f="--fused-norm --fused-unet-norm --agreement" ;;
      native_unetnorm) f="--fused-norm --fused-unet-norm --native-fp16 --agreement" ;;
      floor) f="--fused-norm --agreement" ;;  # the plain step against itself: the rule's noise floor
      *) f="$run" ;;
    esac
    L=$(left); [ "$L" -gt 60 ] || { el "no time left for invert $run"; continue; }
    el "textual inversion, ${INVERT_STEPS:-12} steps, $run ($f)"
    timeout "$L" python3 benchmarks/bench_invert.py --configs $CFG --steps "${INVERT_STEPS:-12}" --dense $f \
      --out "$OUT/invert_$run.json" > "$OUT/invert_$run.log" 2>&1; echo "exit $?"
    grep -E '"(s_per_step|paper_3000_steps_min|achieved_tflop_s|share_of_peak|peak_gib|grad_cosine)"' "$OUT/invert_$run.json" 2>/dev/null
  done
fi

el "guidance_calls.json"
python3 benchmarks/guidance_calls.py "$OUT"/calls_*.json --invert "$OUT"/invert_*.json --out "$OUT/guidance_calls.json"
el "done"
