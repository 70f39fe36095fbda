#!/usr/bin/env bash
# Quick start (README command 2): install the pack with its test extras into .venv and run the
# default test suite (slow checks are kept out; run them with: scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
python -m pip install --quiet -e ".[test]"
exec python -m pytest "$@"
