#!/usr/bin/env bash
# Quick start (README command 1): install the pack into .venv, then train hyresr_tiny x2 on CPU
# through BasicSR's real train pipeline on scikit-image's bundled photos, report PSNR vs bicubic,
# fuse, save .safetensors and upscale a sample.   Usage: scripts/quickstart.sh [hyresr demo options]
#   e.g. scripts/quickstart.sh --out my_demo --iters 2000      (see: hyresr demo --help)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
python -m pip install --quiet -e ".[all]"
echo "[quickstart] running: hyresr demo $*"
exec hyresr demo "$@"
