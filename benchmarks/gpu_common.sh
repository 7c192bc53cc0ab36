# Sourced by the one-call GPU scripts (gpu_probe.sh, gpu_speed.sh, gpu_stages.sh, gpu_oracle.sh), with FINAL
# set to the output folder: results go to $OUT = $FINAL/r and are packed into $FINAL/results.tgz on exit (the
# device tool returns at most 8 files); installs .device/wheels, records the card in $OUT/gpu.txt and defines
# el() (a message with the seconds since the start).
OUT="$FINAL/r"; mkdir -p "$OUT"
trap 'tar czf "$FINAL/results.tgz" -C "$FINAL" r && rm -rf "$OUT"' EXIT
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps .device/wheels/*.whl >/dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
