# Sourced by quickstart.sh and test.sh (from the repo root): create .venv once with $PYTHON,
# activate it and install torch/torchvision (TORCH_SPEC / TORCHVISION_SPEC pick other versions or
# builds; pip's own PIP_INDEX_URL / PIP_EXTRA_INDEX_URL pick the index they come from).
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[hyresr] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.29.1}"
echo "[hyresr] installing $TORCH_SPEC, $TORCHVISION_SPEC and the pack (the default torch wheel on Linux is" \
     "the CUDA build, several GB; see README for a CPU-only one)"
python -m pip install --quiet "$TORCH_SPEC" "$TORCHVISION_SPEC"
