#!/usr/bin/env bash
# Issue 31: upstream Animate124 against the project on one card, stage by stage (seconds per step after
# warm-up, peak GPU memory), then benchmarks/results/upstream_side_by_side.json and its table.
#
# Device command (the lead):
#   run(command="bash benchmarks/upstream/run_side_by_side.sh $OUT/sbs", carry=[".device"], timeout_s=600)
# .device must hold the project's wheels/ and hf-configs/ (as for gpu_paper_schedule.sh) and upstream/ (made by
# `bash benchmarks/upstream/prepare_carry.sh`: upstream's source at d546941 and its extra wheels, ~2.3 MB).
# Expected: about 11-12 GPU minutes in all, so two calls: when it prints "run again", make the same call at once
# (the machine stays warm ~30 s after a call; everything made lives in /tmp/a124 and /tmp/a124up, so a fresh
# machine starts over). What comes back: $OUT/sbs/results.tgz (r/upstream_side_by_side.json and .md, the
# upstream stages' logs and per-step JSONL, the project's manifest and logs, the extension build logs).
#
# What it does (each part is skipped when a previous call on this machine finished it):
#  1. installs upstream's packages (diffusers 0.20.2 ...) into /tmp/a124up/site, used by upstream's processes only;
#  2. unpacks upstream and applies benchmarks/upstream/offline.patch (prep.py; listed in BENCHMARKS.md §14);
#  3. builds upstream's CUDA extensions (gridencoder, raymarching: torch's JIT loader, nvcc, -std=c++17) in the
#     background, time-boxed to EXT_TIMEOUT s (default 420), while
#  4. the project's full-size random-weight priors are built (gpu_common.sh) and laid out as upstream's
#     checkpoints/ folder (model_views.py);
#  5. runs upstream's four published stage scripts, WARMUP + STEPS steps each (default 8 + 24; the static stage
#     100 more), through run_upstream.sh;
#  6. runs the project's `run-all` at `paper` for the same steps (run.log_every=1; gradient-balance records and
#     previews off: neither changes training), on upstream's panda-dance RGBA;
#  7. side_by_side.py: the record and the table (upstream ÷ project per stage, projections at paper steps).
# LIMIT (default 570 s) bounds one call.
set -uo pipefail
FINAL="${1:-side-by-side-out}"
. benchmarks/gpu_common.sh
export LIMIT_AT=$(( T0 + ${LIMIT:-570} ))
left() { echo $(( LIMIT_AT - $(date +%s) )); }
export WARMUP=${WARMUP:-8} STEPS=${STEPS:-24}
N=$(( WARMUP + STEPS )); N_STATIC=$(( N + 100 ))
ROOT=$PWD; CARRY=$ROOT/.device/upstream; HERE=$ROOT/benchmarks/upstream
U=/tmp/a124up; mkdir -p "$U" "$OUT/upstream"
export UPSTREAM_SITE=$U/site
setup_error() { echo "$*" | tee -a "$U/out/setup_error.txt"; }
mkdir -p "$U/out"

# 1-2. packages and source
if [ ! -f "$U/site/.done" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$U/site" "$CARRY"/wheels/*.whl \
    && touch "$U/site/.done" || setup_error "pip install of .device/upstream/wheels failed"
fi
if [ ! -f "$U/src/.patched" ]; then
  rm -rf "$U/src" && mkdir -p "$U/src" && tar xzf "$CARRY/animate124-upstream.tar.gz" -C "$U/src" \
    && python3 "$HERE/prep.py" apply "$U/src" "$HERE/offline.patch" > "$OUT/upstream/patch.log" 2>&1 \
    && touch "$U/src/.patched" || setup_error "upstream source: unpacking or offline.patch failed ($(tail -1 "$OUT/upstream/patch.log"))"
fi

# 3. CUDA extensions (background): the same environment for the build and for upstream's runs
export TORCH_EXTENSIONS_DIR=$U/ext MAX_JOBS=${MAX_JOBS:-8}
TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST
# the CUDA headers of the pip packages (cusparse.h, cublas_v2.h ...) that torch's CUDAContext.h includes
NV_INC=$(python3 -c "import glob, os, site; print(':'.join(sorted({p for s in site.getsitepackages()
  for p in glob.glob(os.path.join(s, 'nvidia', '*', 'include')) if os.path.isdir(p)})))")
export CPATH="${NV_INC}${CPATH:+:$CPATH}"
EXT_PID=""
if [ ! -f "$U/ext/.done" ] && [ -f "$U/src/.patched" ]; then
  rm -rf "$U/ext"; mkdir -p "$U/ext"
  el "building gridencoder and raymarching (sm_$TORCH_CUDA_ARCH_LIST, nvcc $(nvcc --version | grep -o 'release [0-9.]*'))"
  (cd "$U/src" && for m in gridencoder raymarching; do
     ( s=$(date +%s); timeout "${EXT_TIMEOUT:-420}" python3 -c "import $m, $m.backend" > "$OUT/upstream/ext_$m.log" 2>&1
       echo "$? $(( $(date +%s) - s ))" > "$U/ext/$m.rc" ) &
   done; wait) &
  EXT_PID=$!
fi

# 4. models: the project's random-weight priors, and upstream's view of them
random_models
if [ ! -f "$U/checkpoints/.done" ]; then
  el "upstream's checkpoints/ folder"
  python3 "$HERE/model_views.py" --models "$W/models" --configs .device/hf-configs --out "$U/checkpoints" \
    --device "${MODEL_DEVICE:-cuda}" 2>&1 | tail -4 && touch "$U/checkpoints/.done"
fi
[ -d "$U/src" ] && ln -sfn "$U/checkpoints" "$U/src/checkpoints"

# 5. upstream's stages
if [ -n "$EXT_PID" ]; then
  wait "$EXT_PID"
  for m in gridencoder raymarching; do el "extension $m: exit, seconds = $(cat "$U/ext/$m.rc" 2>/dev/null)"; done
  if [ "$(cut -d' ' -f1 "$U/ext/gridencoder.rc" 2>/dev/null)" = 0 ] && [ "$(cut -d' ' -f1 "$U/ext/raymarching.rc" 2>/dev/null)" = 0 ]; then
    touch "$U/ext/.done"
  else
    setup_error "CUDA extension build failed: see ext_gridencoder.log, ext_raymarching.log"
    tail -5 "$OUT/upstream/ext_gridencoder.log" "$OUT/upstream/ext_raymarching.log"
  fi
fi
UP_RC=0
if [ -f "$U/ext/.done" ] && [ -f "$U/site/.done" ] && [ -f "$U/checkpoints/.done" ]; then
  el "upstream stages: $N steps each (static $N_STATIC); $(left) s left"
  bash "$HERE/run_upstream.sh" "$U/src" "$U/out"; UP_RC=$?
else
  el "upstream not run: $(cat "$U/out/setup_error.txt" 2>/dev/null)"
fi
cp "$U"/out/*.jsonl "$U"/out/*.rc "$U"/out/*.log "$U"/out/*.txt "$OUT/upstream/" 2>/dev/null

# 6. the project's stages at paper, the same steps
S=$W/sbs; P=$S/runs/panda-dance; mkdir -p "$S"
CMD="animate124 run-all panda-dance.png 'a panda is dancing' --until refine --set invert.steps=$N
     --set static.iters=$N_STATIC --set dynamic.iters=$N --set refine.iters=$N --set run.log_every=1
     --set run.grad_stats_every=0 --set run.preview_every=0"
if [ $UP_RC -ne 3 ] && [ ! -f "$S/.done" ] && [ "$(left)" -gt 90 ]; then
  tar xzf "$CARRY/animate124-upstream.tar.gz" -O data/panda-dance/rgba.png > "$S/panda-dance.png"
  el "project: ${CMD//$'\n'/ }; $(left) s left"
  # shellcheck disable=SC2086  # MODEL_SETS is a list of --set flags
  (cd "$S" && timeout -s INT $(( $(left) - 30 )) python3 -m animate124.cli.app run-all panda-dance.png \
     "a panda is dancing" --until refine $MODEL_SETS --set invert.steps=$N --set static.iters=$N_STATIC \
     --set dynamic.iters=$N --set refine.iters=$N --set run.log_every=1 --set run.grad_stats_every=0 \
     --set run.preview_every=0 -q > "$OUT/project.log" 2>&1) && touch "$S/.done"
  tail -3 "$OUT/project.log"
fi
mkdir -p "$OUT/project"
cp "$P/manifest.json" "$OUT/project/" 2>/dev/null
cp "$P"/logs/*.jsonl "$OUT/project/" 2>/dev/null

# 7. the record
if [ -f "$S/.done" ] && [ $UP_RC -ne 3 ]; then
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  python3 "$HERE/side_by_side.py" --upstream "$U/out" --project "$P" --card "$CARD" --warmup "$WARMUP" \
    --steps "$STEPS" --command "bash benchmarks/upstream/run_side_by_side.sh; $CMD" \
    --out "$OUT/upstream_side_by_side.json" --md "$OUT/upstream_side_by_side.md" \
    && echo "upstream_side_by_side.json written"
else
  echo "not finished in this call ($(left) s left): run again (the same command) while the machine is warm"
fi
el "done"
