#!/usr/bin/env bash
# Prepares Ray for the GPU machine, which has no Ray and takes at most 64 MiB of carried files per device call,
# while the cp312 manylinux Ray wheel is about 76 MiB: downloads that wheel (the version installed here, else
# RAY_VERSION) and the packages of Ray's core that the GPU image lacks (jsonschema, jsonschema-specifications,
# referencing, rpds-py; /work/.library/device/KINDS.md lists what is there), and splits the Ray wheel into
# PARTS pieces (default 2, about 38 MiB each): .device/ray-part-a, .device/ray-part-b, ... Each folder holds
# its piece, a MANIFEST (the wheel's name, sha256 and number of pieces) and, in part a, the small wheels.
# benchmarks/gpu_batch.sh keeps each piece it is given in /tmp (kept between calls while the machine is warm),
# joins them once all are there, checks the sha256 and installs. Run here, from the repository root:
#   bash benchmarks/fetch_ray_wheel.sh            # or PARTS=3 RAY_VERSION=2.60.0 bash benchmarks/fetch_ray_wheel.sh
set -euo pipefail
PARTS="${PARTS:-2}"
V="${RAY_VERSION:-$(python3 -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null || true)}"
[ -n "$V" ] || { echo "Ray is not installed here: set RAY_VERSION" >&2; exit 2; }
DL=.device/ray-download; rm -rf "$DL" .device/ray-part-*; mkdir -p "$DL"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 -d "$DL" "ray==$V" jsonschema jsonschema-specifications referencing rpds-py
WHEEL=$(basename "$(ls "$DL"/ray-"$V"-*.whl)")
SHA=$(sha256sum "$DL/$WHEEL" | cut -d' ' -f1)
split -n "$PARTS" -d -a 2 "$DL/$WHEEL" "$DL/$WHEEL.part-"
rm "$DL/$WHEEL"
i=0
for piece in "$DL/$WHEEL".part-*; do
  dir=.device/ray-part-$(echo abcdefghij | cut -c$((i + 1)))
  mkdir -p "$dir"; mv "$piece" "$dir/"
  printf '%s %s %s\n' "$WHEEL" "$SHA" "$PARTS" > "$dir/MANIFEST"
  i=$((i + 1))
done
mv "$DL"/*.whl .device/ray-part-a/  # the small wheels Ray's core needs
rm -rf "$DL"
du -sh .device/ray-part-*
echo "carry .device/ray-part-a in one device call and .device/ray-part-b (...) in the next ones (see gpu_batch.sh)"
