#!/usr/bin/env bash
# Issue 30: the output commands at paper scale on the GPU. A short paper-settings training run through the CLI
# (full-size random-weight priors, the same models as gpu_paper_schedule.sh; STEPS='invert static dynamic
# refine' steps, default '30 300 300 100'), then every output command at its defaults, each through
# benchmarks/capped_cli.py --record on the allocator capped at CAP_GIB (default 22.35 GiB = 24 x 10^9 bytes, a
# 24 GB card): render --orbit; render --views 4 --depth --normal; render --stills; export --flipbook (every
# frame's mesh and the flipbook glb); export (one mesh fitted through time: the animated glb); evaluate (full-size random-weight CLIP ViT-L/14); report. Each record holds seconds (the
# whole command, model loading included), peak allocated / reserved GPU GiB and peak host GiB; they are gathered
# into OUTDIR/r/outputs_gpu.json (benchmarks/outputs_gpu.py, which also loads the glb with trimesh). The orbit
# video and the normal video of view 0 come back beside results.tgz for looking at (the glb is over the device
# tool's 16 MB a file). Resumable like gpu_paper_schedule.sh: training stops with
# SIGINT before LIMIT seconds, and the same command in the next call (machine still warm) goes on; an output
# command already recorded is not run again.
# Usage (repository root, on the CUDA machine): LIMIT=570 bash benchmarks/gpu_outputs.sh OUTDIR
set -uo pipefail
FINAL="${1:-outputs-out}"
. benchmarks/gpu_common.sh
left() { echo $(( ${LIMIT:-570} - ($(date +%s) - T0) )); }
ROOT=$PWD; CAP="${CAP_GIB:-22.35}"; A124="python3 $ROOT/benchmarks/capped_cli.py --gib $CAP"
D=$W/outs; P=$D/runs/toy; mkdir -p $D/rec
random_models
[ -f $W/models/clip/model.safetensors ] || python3 benchmarks/make_random_models.py --configs .device/hf-configs \
  --out $W/models --roles clip 2>&1 | tail -1
read -r S_INV S_STA S_DYN S_REF <<< "${STEPS:-30 300 300 100}"
SETS="$MODEL_SETS --set models.clip=$W/models/clip --set invert.steps=$S_INV --set static.iters=$S_STA
      --set dynamic.iters=$S_DYN --set refine.iters=$S_REF"
if [ ! -f $D/.trained ]; then
  el "training: $S_INV / $S_STA / $S_DYN / $S_REF steps at paper settings; $(left) s left"
  (cd $D && timeout -s INT $(( $(left) - 20 )) $A124 --record $D/rec/train.json run-all "$ROOT/examples/toy.png" \
     "a panda is dancing" --until refine $SETS -q > "$OUT/train.log" 2>&1) && touch $D/.trained
  tail -3 "$OUT/train.log"
fi
cp $P/manifest.json "$OUT/manifest_trained.json" 2>/dev/null
run_out() {  # name, then the command's arguments
  local name=$1; shift
  [ -f $D/rec/$name.json ] && return 0
  [ -f $D/.trained ] || return 0
  [ "$(left)" -gt 60 ] || { el "$name: not started, $(left) s left"; return 0; }
  el "$name: animate124 $*"
  (cd $D && timeout $(( $(left) - 10 )) $A124 --record $D/rec/$name.json.part "$@" -p $P > "$OUT/$name.log" 2>&1)
  local rc=$?; tail -2 "$OUT/$name.log"
  [ $rc -eq 0 ] && mv $D/rec/$name.json.part $D/rec/$name.json
}
run_out render_orbit render --orbit
run_out render_views render --views 4 --depth --normal
run_out render_stills render --stills
run_out export_flipbook export --flipbook
run_out export export
run_out evaluate evaluate --set models.clip=$W/models/clip
run_out report report
cp $D/rec/*.json "$OUT/" 2>/dev/null
cp $P/manifest.json "$OUT/manifest.json" 2>/dev/null
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 benchmarks/outputs_gpu.py --records $D/rec --project $P --card "$CARD" --out "$OUT/outputs_gpu.json"
find $P/renders $P/export -maxdepth 3 -type f -printf '%s %p\n' 2>/dev/null | sort -k2 > "$OUT/files.txt"
cp $P/renders/refine/orbit.mp4 "$FINAL/" 2>/dev/null
cp "$(ls $P/renders/refine/*normal*.mp4 2>/dev/null | head -1)" "$FINAL/normal.mp4" 2>/dev/null
el "done"
