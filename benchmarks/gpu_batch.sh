#!/usr/bin/env bash
# Issue 28 on the GPU: two assets at a short paper-settings schedule through `animate124 batch` (Ray, one GPU
# per task) and the same two as plain `animate124 run-all` calls; the overhead of Ray is the batch's wall time
# over the sum of the two run-alls' (target <= 5 %). Full-size random-weight priors as in gpu_outputs.sh;
# STEPS='invert static dynamic refine' steps (default '20 100 50 20'). Writes OUTDIR/r/batch_gpu.json (the
# times, the exit codes, each task's CUDA_VISIBLE_DEVICES and threads, the overhead) and the logs.
#
# Ray on the GPU machine: it has no Ray, a device call carries at most 64 MiB, and the Ray wheel is about
# 76 MiB. Here, first: `bash benchmarks/fetch_ray_wheel.sh` (from the venv that has Ray) splits it into
# .device/ray-part-a and .device/ray-part-b (about 38 MiB each; part a also holds the small wheels Ray's core
# needs that the image lacks). Then, back to back (the machine keeps /tmp only while it is warm, 30 s idle):
#   call 1: carry .device/ray-part-a                                   bash benchmarks/gpu_batch.sh OUTDIR
#   call 2: carry .device/ray-part-b (and .device/hf-configs)          bash benchmarks/gpu_batch.sh OUTDIR
#   call 3..: carry .device/wheels, .device/hf-configs as for gpu_outputs.sh, until batch_gpu.json is written
# Each call keeps the pieces it was given in /tmp/a124/ray-parts; once all are there the wheel is joined, its
# sha256 checked and installed (pip --no-deps, offline). The measurement is resumable across calls: its parts
# (an untimed warm-up run-all that fills the page cache and Triton's kernel cache, the two run-alls, the batch)
# each start only with PART_S seconds (default 240; twice that for the batch of two) left before LIMIT (default
# 570) and are recorded when they end; a part cut short is started again from scratch in the next call, so every recorded time is one whole run.
# Usage (repository root, on the CUDA machine): LIMIT=570 bash benchmarks/gpu_batch.sh OUTDIR
set -uo pipefail
FINAL="${1:-batch-out}"
. benchmarks/gpu_common.sh
left() { echo $(( ${LIMIT:-570} - ($(date +%s) - T0) )); }
ROOT=$PWD; A124="python3 -m animate124.cli.app"; PART_S="${PART_S:-240}"

# --- Ray: keep the pieces, join and install once all are here ----------------------------------------------
PARTS_DIR=$W/ray-parts; mkdir -p $PARTS_DIR
for d in .device/ray-part-*; do [ -d "$d" ] && cp -n "$d"/* $PARTS_DIR/ && el "kept $d in $PARTS_DIR"; done
if ! python3 -c "import ray" 2>/dev/null; then
  if [ ! -f $PARTS_DIR/MANIFEST ]; then el "no Ray and no piece of its wheel: carry .device/ray-part-a (see the header)"; exit 0; fi
  read -r WHEEL SHA N < $PARTS_DIR/MANIFEST
  HAVE=$(ls $PARTS_DIR/"$WHEEL".part-* 2>/dev/null | wc -l)
  if [ "$HAVE" -lt "$N" ]; then el "Ray wheel: $HAVE of $N pieces here; carry the next .device/ray-part-* in the next call"; exit 0; fi
  cat $PARTS_DIR/"$WHEEL".part-* > $W/"$WHEEL"
  [ "$(sha256sum $W/"$WHEEL" | cut -d' ' -f1)" = "$SHA" ] || { el "Ray wheel: sha256 mismatch"; rm -f $W/"$WHEEL"; exit 1; }
  python3 -m pip install -q --no-deps --no-index $PARTS_DIR/*.whl $W/"$WHEEL" 2>&1 | tail -2
  rm -f $W/"$WHEEL"
fi
python3 -c "import ray; print('ray', ray.__version__)" | tee "$OUT/ray.txt" || exit 1
python3 -c "import diffusers" 2>/dev/null || { el "animate124's dependencies are missing: carry .device/wheels"; exit 0; }

# --- the two assets, the schedule ----------------------------------------------------------------------
random_models
read -r S_INV S_STA S_DYN S_REF <<< "${STEPS:-20 100 50 20}"
SETS="$MODEL_SETS --set invert.steps=$S_INV --set static.iters=$S_STA --set dynamic.iters=$S_DYN
      --set refine.iters=$S_REF"
D=$W/batchbench; mkdir -p $D/rec $D/in
cp -n examples/toy.png $D/in/toy.png; cp -n examples/toy.png $D/in/toy2.png
printf 'image,prompt\ntoy.png,a toy is spinning\ntoy2.png,a toy is jumping\n' > $D/in/jobs.csv

part() {  # name, seconds it needs, then the command; runs it in $D once, timed, unless recorded or short of time
  local name=$1 need=$2; shift 2
  [ -f $D/rec/$name.json ] && return 0
  [ "$(left)" -gt "$need" ] || { el "$name: not started, $(left) s left (it needs $need)"; return 1; }
  rm -rf $D/$name; el "$name: $*"
  local t0 t1 rc; t0=$(date +%s.%N)
  (cd $D/in && timeout $(( $(left) - 10 )) "$@" > "$OUT/$name.log" 2>&1); rc=$?
  t1=$(date +%s.%N); tail -2 "$OUT/$name.log"
  [ $rc -eq 124 ] && { el "$name: cut short, runs again from scratch in the next call"; rm -rf $D/$name; return 1; }
  printf '{"part": "%s", "seconds": %s, "exit_code": %d}\n' "$name" "$(awk "BEGIN { print $t1 - $t0 }")" $rc > $D/rec/$name.json
}
part warmup $PART_S $A124 run-all toy.png "a toy is spinning" -p $D/warmup $MODEL_SETS --set invert.steps=2 \
  --set static.iters=2 --set dynamic.iters=2 --set refine.iters=2 -q &&
part plain_toy $PART_S $A124 run-all toy.png "a toy is spinning" -p $D/plain_toy $SETS -q &&
part plain_toy2 $PART_S $A124 run-all toy2.png "a toy is jumping" -p $D/plain_toy2 $SETS -q &&
part batch $(( 2 * PART_S )) $A124 batch jobs.csv --out $D/batch --gpus-per-run 1 $SETS --json
[ -f $D/rec/batch.json ] || { el "not finished yet: run the same call again"; exit 0; }

CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 - "$D" "$CARD" "$STEPS" "$OUT/batch_gpu.json" <<'PY'
import json, sys
from pathlib import Path
d, card, steps, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rec = {p.stem: json.loads(p.read_text()) for p in (d / "rec").glob("*.json")}
summary = json.loads((d / "batch" / "batch.json").read_text())
tasks = []
for a in summary["assets"]:
    state = json.loads((d / "batch" / ".batch" / f"{a['asset']}.json").read_text())
    tasks.append({k: state.get(k) for k in ("asset", "status", "seconds", "host", "cuda_visible_devices", "threads")})
plain = rec["plain_toy"]["seconds"] + rec["plain_toy2"]["seconds"]
batch = rec["batch"]["seconds"]
result = {
    "card": card, "steps": dict(zip(("invert", "static", "dynamic", "refine"), map(int, steps.split()))),
    "parts": rec, "plain_run_all_seconds": round(plain, 2), "batch_seconds": round(batch, 2),
    "ray_overhead_pct": round(100 * (batch / plain - 1), 2), "target_pct": 5.0,
    "batch_exit_code": rec["batch"]["exit_code"], "batch_counts": summary["counts"], "tasks": tasks,
    "task_seconds_sum": round(sum(t["seconds"] or 0 for t in tasks), 2),
}
Path(out).write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: result[k] for k in ("plain_run_all_seconds", "batch_seconds", "ray_overhead_pct", "tasks")}))
PY
el "done"
