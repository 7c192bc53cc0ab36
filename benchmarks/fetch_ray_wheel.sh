#!/usr/bin/env bash
# Prepares .device/ray/ for benchmarks/gpu_batch.sh, whose header has the two device calls that use it.
#
# The GPU machine cannot download anything and one device call carries at most 64 MiB (the working tree
# included), while the cp312 manylinux Ray wheel is about 76 MiB. So the wheel is cut in two byte ranges:
#   .device/ray/call1/   ray-<ver>-...whl.part1, and wheels/ with what animate124 needs there besides Ray
#                        (the versions of .device/wheels that ran there: diffusers 0.42.1, platformdirs,
#                        importlib_metadata; /work/shared/notes/device.md), installed with --no-deps
#   .device/ray/call2/   ray-<ver>-...whl.part2, MANIFEST (the wheel's name, size, sha256), and wheels/ with
#                        Ray's own dependencies (the Requires-Dist of its METADATA, no extras, and theirs);
#                        the device has most of them: pip installs only what is missing (--no-index)
# The cut is placed so that both calls carry about the same (call 1 also carries .device/hf-configs, for
# the random-weight models); the script prints what each call carries and stops if one is over 60 MiB.
# Run here, from the repository root, with the Ray version to carry (default: the one installed here):
#   bash benchmarks/fetch_ray_wheel.sh            # or: RAY_VERSION=2.60.0 bash benchmarks/fetch_ray_wheel.sh
set -euo pipefail
V="${RAY_VERSION:-$(python3 -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null || true)}"
[ -n "$V" ] || { echo "Ray is not installed here: set RAY_VERSION" >&2; exit 2; }
HF="${HF_CONFIGS:-.device/hf-configs}"
PIP="python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64"
D=.device/ray; DL=$(mktemp -d); trap 'rm -rf "$DL"' EXIT
rm -rf "$D"; mkdir -p "$D/call1/wheels" "$D/call2/wheels"
git check-ignore -q "$D" || { echo "$D is not ignored by git: add /.device/ to .git/info/exclude" >&2; exit 2; }

$PIP --no-deps -d "$DL" "ray==$V"
WHEEL=$(basename "$(ls "$DL"/ray-"$V"-*.whl)")
mapfile -t REQS < <(unzip -p "$DL/$WHEEL" "ray-$V.dist-info/METADATA" | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==')
echo "Ray $V needs: ${REQS[*]}"
$PIP -d "$D/call2/wheels" "${REQS[@]}"
$PIP --no-deps -d "$D/call1/wheels" diffusers==0.42.1 platformdirs==4.14.9 importlib_metadata==8.7.0

size() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
TREE=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
TOTAL=$(stat -c %s "$DL/$WHEEL")
[ -d "$HF" ] || echo "warning: $HF is not here (call 1 carries it: the lead's checkout has it); counted as 9 MB" >&2
EXTRA1=$(( $(size "$D/call1/wheels") + $([ -d "$HF" ] && size "$HF" || echo 9000000) ))
EXTRA2=$(size "$D/call2/wheels")
CUT=$(( (TOTAL + EXTRA2 - EXTRA1) / 2 ))  # part 1 = bytes [0, CUT): both calls carry about the same
head -c "$CUT" "$DL/$WHEEL" > "$D/call1/$WHEEL.part1"
tail -c +"$(( CUT + 1 ))" "$DL/$WHEEL" > "$D/call2/$WHEEL.part2"
printf '%s %s %s\n' "$WHEEL" "$TOTAL" "$(sha256sum "$DL/$WHEEL" | cut -d' ' -f1)" > "$D/call2/MANIFEST"
cat "$D/call1/$WHEEL.part1" "$D/call2/$WHEEL.part2" | cmp -s - "$DL/$WHEEL" || { echo "the parts do not join" >&2; exit 1; }

LIMIT=$(( 60 * 1024 * 1024 ))
C1=$(( TREE + $(size "$D/call1") + $([ -d "$HF" ] && size "$HF" || echo 9000000) ))
C2=$(( TREE + $(size "$D/call2") ))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "call 1 carries $(mib "$C1") MiB (working tree $(mib "$TREE"), $D/call1, $HF)"
echo "call 2 carries $(mib "$C2") MiB (working tree $(mib "$TREE"), $D/call2)"
[ "$C1" -lt "$LIMIT" ] && [ "$C2" -lt "$LIMIT" ] || { echo "a call is over 60 MiB: carry less" >&2; exit 1; }
ls -l "$D"/call1 "$D"/call2
