#!/usr/bin/env bash
# One GPU call for the oracle check (issue 10). Usage (repository root, on the CUDA machine):
#   bash benchmarks/gpu_oracle.sh OUTDIR [oracle_stages.py args...]
# Expects the posed data in .device/data (nerf-synthetic-400/lego, dnerf-400/standup) and the wheels in
# .device/wheels. FIT_LEGO / FIT_STANDUP (minutes, default 0) also run fit_multiview.py on the same machine.
set -uo pipefail
FINAL="${1:-oracle-out}"; shift
. benchmarks/gpu_common.sh
el "oracle check: $*"
python3 benchmarks/oracle_stages.py --data-root .device/data --out "$OUT/oracle.json" \
  --work-dir "$(mktemp -d /tmp/oracle-work-XXXX)" --save-renders "$OUT" "$@" 2>&1 | tee "$OUT/oracle.log" | grep -v "^  static [0-9]*/\|^  dynamic [0-9]*/" || true
grep -E "^  (static|dynamic) " "$OUT/oracle.log" | tail -4
if [ "${FIT_LEGO:-0}" != 0 ]; then
  el "fit_multiview lego ${FIT_LEGO} min"
  python3 benchmarks/fit_multiview.py --scene lego --grid tiled --log2-table 16 --minutes "$FIT_LEGO" \
    --data-root .device/data --out "$OUT/fit_lego.json" > "$OUT/fit_lego.log" 2>&1; tail -3 "$OUT/fit_lego.log"
fi
if [ "${FIT_STANDUP:-0}" != 0 ]; then
  el "fit_multiview standup ${FIT_STANDUP} min"
  python3 benchmarks/fit_multiview.py --scene dnerf:standup --minutes "$FIT_STANDUP" --time-tv 10 \
    --data-root .device/data --out "$OUT/fit_standup.json" > "$OUT/fit_standup.log" 2>&1; tail -3 "$OUT/fit_standup.log"
fi
el "done"
