#!/usr/bin/env bash
# One GPU call for the training stages (issues 8 and 9): GPU tests, the grid encoder before/after the
# package split, then every stage through the CLI with FULL-SIZE random-weight priors at paper settings.
# Usage (repository root, on the CUDA machine): bash benchmarks/gpu_stages.sh OUTDIR [STEPS]
# EXTRA_SETS='--set run.vae_checkpoint=false ...' adds config overrides to every stage (memory options, issue 12);
# PRESET=low-vram picks a preset; RUN=name a separate run folder (two runs in one call); SMOKE=0 skips the
# tiny-preset smoke run; the random models are built once per machine.
# Expects .device/wheels (diffusers, platformdirs, importlib_metadata, zipp), .device/hf-configs and, for
# the before/after grid timing, the old tree in .device/old (git archive fd850a6 animate124 benchmarks ...).
set -uo pipefail
FINAL="${1:-bench-out}"; STEPS="${2:-100}"
. benchmarks/gpu_common.sh  # PYTHONPATH has the tree: pip install -e may fail offline (build deps)
A124="python3 -m animate124.cli.app"
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1

el "gpu tests"
[ "${SKIP_TESTS:-0}" = 1 ] || python3 -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; tail -4 "$OUT/gpu_tests.log"

el "grid encoder: old (fd850a6) and new, twice each, alternating"
for i in $(seq 1 "${GRID_REPS:-2}"); do
  (cd .device/old && PYTHONPATH=$PWD python3 benchmarks/bench_encoding.py --no-sweep --out "$OUT/enc_old_$i.json" > "$OUT/enc_old_$i.log" 2>&1)
  grep -E "triton tiled fwd\+bwd" "$OUT/enc_old_$i.log" | head -1 | sed 's/^/old: /'
  python3 benchmarks/bench_encoding.py --no-sweep --out "$OUT/enc_new_$i.json" > "$OUT/enc_new_$i.log" 2>&1
  grep -E "triton tiled fwd\+bwd" "$OUT/enc_new_$i.log" | head -1 | sed 's/^/new: /'; tail -3 "$OUT/enc_new_$i.log"
done

el "tiny preset on CUDA (smoke)"
RUN="${RUN:-run}"; mkdir -p $W/smoke $W/$RUN
[ "${SMOKE:-1}" = 0 ] || (cd $W/smoke && timeout 240 $A124 run-all "$OLDPWD/examples/toy.png" "a toy is spinning" --preset tiny \
   --device cuda --set run.precision=fp16 --until refine -q 2>&1 | tail -5) | tee "$OUT/smoke.log"

random_models

el "stages through the CLI, paper settings, $STEPS steps each"
SETS="$MODEL_SETS
      --set invert.steps=20 --set static.iters=$STEPS --set static.known_iters=0
      --set dynamic.iters=$STEPS --set refine.iters=$STEPS --set run.profile=true --set run.preview_every=0
      ${EXTRA_SETS:-}"
(cd $W/$RUN && timeout ${STAGE_TIMEOUT:-400} $A124 run-all "$OLDPWD/examples/toy.png" "a panda is dancing" \
   --until refine --preset ${PRESET:-paper} --json $SETS > "$OUT/run_all.json" 2> "$OUT/run_all.err"); echo "exit $?"
tail -5 "$OUT/run_all.err"
P=$W/$RUN/runs/toy
cp $P/manifest.json "$OUT/manifest.json" 2>/dev/null
for s in invert static dynamic refine; do cp $P/logs/$s.jsonl "$OUT/log_$s.jsonl" 2>/dev/null;
  cp $P/logs/$s.profile.txt "$OUT/profile_$s.txt" 2>/dev/null; done  # with EXTRA_SETS='--set run.trace_steps=N'

python3 - "$P/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["stages"]
for name in ("invert", "static", "dynamic", "refine"):
    r = m.get(name, {}); mt = r.get("metrics", {})
    print(f"{name:8s} {r.get('status')!s:8s} {r.get('seconds')!s:>8s} s  it/s {mt.get('it_s')}  "
          f"peak {mt.get('peak_allocated_gib')}/{mt.get('peak_reserved_gib')} GiB  {mt.get('ms_per_step', '')}")
PY
el "done"
