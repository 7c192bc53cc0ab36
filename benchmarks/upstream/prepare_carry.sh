#!/usr/bin/env bash
# Makes .device/upstream/ (git-ignored; carried to the GPU machine with .device) on a machine with PyPI access:
#   animate124-upstream.tar.gz  upstream Animate124 at d546941 (Apache-2.0), without its benchmark/ images and
#                               the data/ examples other than panda-dance (the one the harness runs), ~0.7 MB
#   wheels/                     what upstream needs that the GPU machine lacks, for Python 3.12, ~1.6 MB:
#                               diffusers 0.20.2 and antlr4-python3-runtime 4.9.3 (sdists on PyPI, built here
#                               into pure-Python wheels), omegaconf 2.3.0, easydict, termcolor, torch-ema
#   SOURCE.txt                  the commit and the wheel list
# Usage (repository root): bash benchmarks/upstream/prepare_carry.sh [UPSTREAM_GIT_DIR]
#   UPSTREAM_GIT_DIR: a clone or mirror of github.com/HeliosZhao/Animate124 (default: this workplace's mirror)
set -euo pipefail
GIT="${1:-/work/.mirror/HeliosZhao+Animate124/repo}"
COMMIT=d5469414eefb21525209374b4915ebf1e951ca4f
DEST=.device/upstream
grep -qx '/.device/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null \
  || echo '/.device/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf "$DEST" && mkdir -p "$DEST/wheels"
git -C "$GIT" archive "$COMMIT" -- . ':!benchmark' ':!data/astronaut-horse' ':!data/fox-game' \
  ':!data/space-shuttle' ':!data/tiger-guitar' | gzip -9 > "$DEST/animate124-upstream.tar.gz"
python3 -m pip wheel -q --no-deps -w "$DEST/wheels" diffusers==0.20.2 antlr4-python3-runtime==4.9.3
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$DEST/wheels" omegaconf==2.3.0 easydict==1.14 termcolor==3.3.0 torch-ema==0.3
{ echo "HeliosZhao/Animate124 $COMMIT (Apache-2.0)"; ls "$DEST/wheels"; } > "$DEST/SOURCE.txt"
du -sh "$DEST"
