#!/usr/bin/env bash
# One GPU call for issue 12's memory questions: where refine's memory goes (per-part peaks from
# run.profile, with and without CUDA graphs; the torch.profiler trace halves, with tracebacks), the
# low-vram preset with the encoders parked, and channels-last prior calls.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_probe.sh OUTDIR
# PARTS='tests gn cap field attn trace refine lowvram fit cl' picks parts (fit needs .device/data/nerf-synthetic-400 carried, 38 MB; cl gets what is left of BUDGET=560 s); VARIANTS='profile memory nographs ops' the refine runs. Expects .device/wheels and .device/hf-configs (as gpu_stages.sh).
set -uo pipefail
FINAL="${1:-probe-out}"
. benchmarks/gpu_common.sh
A124="python3 -m animate124.cli.app"; ROOT=$PWD
PARTS="${PARTS:-refine lowvram fit cl}"
random_models
MODELS="$MODEL_SETS --set run.preview_every=0"
summary() {  # manifest -> one line per stage: rate, peaks, memory by part
  python3 - "$1" "$2" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["stages"]
for name in sys.argv[2].split(","):
    r = m.get(name, {}); mt = r.get("metrics", {})
    print(f"{name:8s} {r.get('status')!s:8s} it/s {mt.get('it_s')}  peak {mt.get('peak_allocated_gib')}/"
          f"{mt.get('peak_reserved_gib')} GiB")
    for part, v in sorted(mt.get("memory_by_part", {}).items(), key=lambda kv: -kv[1]["peak_gib"]):
        print(f"    {part:14s} peak {v['peak_gib']:7.2f}  rise {v['rise_gib']:7.2f} GiB  "
              f"{mt.get('ms_per_step', {}).get(part, '')} ms/step")
PY
}

if [[ " $PARTS " == *" tests "* ]]; then
  el "GPU tests of the kernels, attention, renderer, graphs, offload, tracer"
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_scene_triton.py tests/test_guidance_attention.py tests/test_guidance_groupnorm.py \
    tests/test_render_gpu.py tests/test_cuda_graphs.py tests/test_offload.py tests/test_engine_trainer.py \
    > "$OUT/gpu_tests.log" 2>&1; tail -3 "$OUT/gpu_tests.log"
fi

if [[ " $PARTS " == *" gn "* ]]; then
  el "fused VAE group norm: GPU tests, the encoder at each stage's shapes, prior calls as the stages run them"
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_guidance_groupnorm.py > "$OUT/gn_tests.log" 2>&1
  tail -3 "$OUT/gn_tests.log"
  timeout 200 python3 benchmarks/bench_vae_norm.py --configs .device/hf-configs --out "$OUT/vae_norm.json" 2>&1 | tail -17
  for v in ${GN_GUIDANCE-plain fused fused_cl}; do
    case $v in plain) f="" ;; fused) f="--vae-fused-norm" ;; fused_cl) f="--vae-fused-norm --vae-channels-last" ;; esac
    timeout 150 python3 benchmarks/bench_guidance.py --configs .device/hf-configs --priors sd,zero123,video,controlnet \
      --autocast --vae-checkpoint --cuda-graphs --vae-attention blocked $f --out "$OUT/guidance_autocast_$v.json" 2>&1 | tail -5
  done
fi

if [[ " $PARTS " == *" cap "* ]]; then
  el "refine on an allocator capped at CAP_GIB (default 16) GiB: does the out-of-memory retry carry the stage?"
  mkdir -p $W/c && cd $W/c
  timeout 300 $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" --until dynamic --json $MODELS \
     --set invert.steps=4 --set static.iters=20 --set dynamic.iters=${CAP_DYNAMIC_STEPS:-60} > "$OUT/c_run_all.json" 2> "$OUT/c_run_all.err"
  timeout 240 python3 "$ROOT/benchmarks/capped_cli.py" --gib ${CAP_GIB:-16} refine -p $W/c/runs/toy --force --json $MODELS \
     --set refine.iters=${CAP_REFINE_STEPS:-30} > "$OUT/c_refine.json" 2> "$OUT/c_refine.err"; echo "exit $?"
  grep -E "ran out|capped|Error" "$OUT/c_refine.err" | head -5
  python3 -c "import json,sys; m=json.load(open('$W/c/runs/toy/manifest.json'))['stages']['refine']; \
print(m.get('status'), {k: m.get('metrics', {}).get(k) for k in ('memory_saving','peak_allocated_gib','peak_reserved_gib','it_s')})"
  cd "$ROOT"
fi

if [[ " $PARTS " == *" field "* ]]; then
  el "NeRF side of a dynamic guidance step, variants (bench_field_step.py)"
  timeout 240 python3 benchmarks/bench_field_step.py --out "$OUT/field_step.json" 2>&1 | tail -8
fi

if [[ " $PARTS " == *" attn "* ]]; then
  el "SD and ControlNet calls (graphs + VAE recompute): VAE attention sdpa vs blocked"
  for a in sdpa blocked; do
    timeout 200 python3 benchmarks/bench_guidance.py --configs .device/hf-configs --priors sd,controlnet --vae-checkpoint \
      --cuda-graphs --vae-attention $a --out "$OUT/guidance_attn_$a.json" 2>&1 | tail -2
  done
fi

if [[ " $PARTS " == *" refine "* ]]; then
  el "paper: run-all to dynamic with a few steps, then refine variants"
  mkdir -p $W/p && cd $W/p
  timeout 300 $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" --until dynamic --json $MODELS \
     --set invert.steps=4 --set static.iters=5 --set static.known_iters=0 --set dynamic.iters=5 \
     > "$OUT/p_run_all.json" 2> "$OUT/p_run_all.err"; echo "exit $?"; tail -2 "$OUT/p_run_all.err"
  P=$W/p/runs/toy
  for i in ${VARIANTS:-profile memory nographs ops}; do
    case $i in
      profile) v="--set run.profile=true" ;;
      nographs) v="--set run.profile=true --set run.cuda_graphs=false" ;;
      memory) v="--set run.trace_steps=2 --set run.trace_parts=memory" ;;
      ops) v="--set run.trace_steps=2 --set run.trace_parts=ops" ;;
    esac
    el "refine $i: $v"
    timeout 240 $A124 refine -p $P --force --debug --json $MODELS --set refine.iters=12 $v \
      > "$OUT/refine_$i.json" 2> "$OUT/refine_$i.err"; echo "exit $?"; tail -3 "$OUT/refine_$i.err"
    summary $P/manifest.json refine | tee -a "$OUT/summary.txt"
    cp $P/logs/refine.profile.txt "$OUT/refine_$i.profile.txt" 2>/dev/null; rm -f $P/logs/refine.profile.txt
  done
  cd "$ROOT"
fi

if [[ " $PARTS " == *" trace "* ]]; then
  el "paper: dynamic and refine, 16 steps each, torch.profiler op tables over steps 9-14"
  mkdir -p $W/t && cd $W/t
  timeout 200 $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" --until static --json $MODELS \
     --set invert.steps=4 --set static.iters=20 --set static.known_iters=0 > "$OUT/t_run_all.json" 2> "$OUT/t_run_all.err"
  for s in dynamic refine; do
    timeout 200 $A124 $s -p $W/t/runs/toy --force --json $MODELS --set $s.iters=16 --set run.trace_steps=6 \
      --set run.trace_parts=ops > "$OUT/t_$s.json" 2> "$OUT/t_$s.err"; echo "$s exit $?"
    cp $W/t/runs/toy/logs/$s.profile.txt "$OUT/${s}_ops.profile.txt" 2>/dev/null; head -3 "$OUT/${s}_ops.profile.txt"
  done
  cd "$ROOT"
fi

if [[ " $PARTS " == *" lowvram "* ]]; then
  el "low-vram: every stage, 12 steps, per-part memory"
  mkdir -p $W/lv && cd $W/lv
  timeout 400 $A124 run-all "$ROOT/examples/toy.png" "a panda is dancing" --until refine --preset low-vram --json $MODELS \
     --set invert.steps=12 --set static.iters=12 --set static.known_iters=0 --set dynamic.iters=12 --set refine.iters=12 \
     --set run.profile=true > "$OUT/lv_run_all.json" 2> "$OUT/lv_run_all.err"; echo "exit $?"; tail -2 "$OUT/lv_run_all.err"
  summary $W/lv/runs/toy/manifest.json invert,static,dynamic,refine | tee -a "$OUT/summary_lowvram.txt"
  cd "$ROOT"
fi

if [[ " $PARTS " == *" fit "* ]]; then
  el "lego fit (2 min): the share of samples behind early termination, what raymarch.live_normals skips"
  timeout 300 python3 benchmarks/fit_multiview.py --scene lego --data-root .device/data --minutes 2 \
    --out "$OUT/fit_lego.json" 2>&1 | grep -E "PSNR|zero-weight|samples / ray|iterations" \
    || echo "no lego data: carry .device/data/nerf-synthetic-400"
fi

if [[ " $PARTS " == *" cl "* ]]; then
  el "prior calls, graphs + VAE checkpoint, channels-last"
  LEFT=$(( ${BUDGET:-560} - ($(date +%s) - T0) )); [ $LEFT -gt 60 ] || { echo "no time left"; exit 0; }
  timeout $LEFT python3 benchmarks/bench_guidance.py --configs .device/hf-configs --vae-checkpoint --cuda-graphs \
    --channels-last --out "$OUT/guidance_channels_last.json" 2>&1 | tail -6
fi
el "done"
