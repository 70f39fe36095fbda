#!/usr/bin/env bash
# Quick start (README command 2): install the pack with its test extras into .venv and run the
# default test suite (slow checks are kept out; run them with: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[test] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
echo "[test] installing torch, torchvision and the pack with its test extras"
python -m pip install --quiet "${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}"
python -m pip install --quiet -e ".[test]"
exec python -m pytest "$@"
