#!/usr/bin/env bash
# Quick start (README command 1): install the pack into .venv, then train hyresr_tiny x2 on CPU
# through BasicSR's real train pipeline on scikit-image's bundled photos, report PSNR vs bicubic,
# fuse, save .safetensors and upscale a sample.   Usage: scripts/quickstart.sh [hyresr demo options]
#   e.g. scripts/quickstart.sh --out my_demo --iters 2000      (see: scripts/quickstart.sh --help)
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  case "$arg" in
    -h|--help)
      # help without installing anything: demo.py needs only the standard library to describe itself
      "${PYTHON:-python3}" - "$@" <<'PY'
import argparse, importlib.util
spec = importlib.util.spec_from_file_location("hyresr_demo", "hyresr_arch/demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
parser = argparse.ArgumentParser(
    prog="bash scripts/quickstart.sh",
    description="Install the pack into .venv (torch first), then run `hyresr demo`: train hyresr_tiny x2 "
                "on CPU through BasicSR, report PSNR vs bicubic, fuse, save .safetensors, upscale a sample.",
    epilog="Environment: PYTHON (interpreter that creates .venv, default python3); TORCH_SPEC / "
           "TORCHVISION_SPEC (default torch==2.14.1 / torchvision==0.29.1, which on Linux is the CUDA build "
           "with several GB of NVIDIA libraries; e.g. TORCH_SPEC='torch==2.14.1+cpu' "
           "TORCHVISION_SPEC='torchvision==0.29.1+cpu' with PIP_EXTRA_INDEX_URL set to your package "
           "index's CPU wheel index for a CPU-only install). A rerun replaces the previous run in --out.")
demo.configure(parser)
parser.print_help()
PY
      exit 0 ;;
  esac
done
. scripts/_venv.sh
python -m pip install --quiet -e ".[all]"
echo "[quickstart] running: hyresr demo $*"
exec hyresr demo "$@"
