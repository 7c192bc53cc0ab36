# Sourced by the one-call GPU scripts (gpu_probe.sh, gpu_speed.sh, gpu_stages.sh, gpu_oracle.sh), with FINAL
# set to the output folder: results go to $OUT = $FINAL/r and are packed into $FINAL/results.tgz on exit (the
# device tool returns at most 8 files); installs .device/wheels, records the card in $OUT/gpu.txt and defines
# el() (a message with the seconds since the start), and random_models (the full-size random-weight priors under
# $W/models, built once per machine) with MODEL_SETS, the --set flags that point the CLI at them.
OUT="$FINAL/r"; mkdir -p "$OUT"
trap 'tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$OUT"' EXIT
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps .device/wheels/*.whl >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
W=/tmp/a124; mkdir -p $W; export ANIMATE124_STATE_DIR=$W/state
MODEL_SETS="--set models.sd=$W/models/sd --set models.zero123=$W/models/zero123 --set models.video=$W/models/video
            --set models.controlnet=$W/models/controlnet --set models.depth=$W/models/depth"
random_models() {
  [ -f $W/models/.done ] && return 0
  el "full-size random-weight priors"
  python3 benchmarks/make_random_models.py --configs .device/hf-configs --out $W/models 2>&1 | tail -2
  python3 -c "from animate124.models.tiny import build_tiny_repo; build_tiny_repo('depth', '$W/models/depth')"
  touch $W/models/.done
}
