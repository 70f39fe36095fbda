# Sourced by quickstart.sh and test.sh (from the repo root): create .venv once with $PYTHON,
# activate it and install torch/torchvision (TORCH_SPEC / TORCHVISION_SPEC pick other versions).
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[hyresr] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
echo "[hyresr] installing torch, torchvision and the pack"
python -m pip install --quiet "${TORCH_SPEC:-torch==2.14.1}" "${TORCHVISION_SPEC:-torchvision==0.29.1}"
