#!/usr/bin/env bash
# One short GPU check for a lent H100 (or any CUDA machine): efficiency on CUDA in fp32 / bf16 / fp16 /
# channels_last fp16 / torch.compile fp16, then a short equal-budget quality run. Everything lands in $OUT.
# Total wall time is capped at ~8 minutes by per-stage timeouts; CSVs are written incrementally, so a
# stage cut by its timeout still leaves what it finished.
#
# The GPU host's python3 has torch + CUDA, numpy, Pillow (via scikit-image) but no spandrel / einops /
# basicsr: they travel as wheels in benchmarks/wheels_tmp (pip download spandrel==0.4.2 einops --no-deps -d
# benchmarks/wheels_tmp; basicsr 1.4.2 is an sdist: pip wheel basicsr==1.4.2 --no-deps
# --no-build-isolation -w benchmarks/wheels_tmp) and are installed offline. spandrel's registry needs
# torchvision/safetensors; benchmarks/zoo.py imports the arch files without the registry when those are
# missing. quality.py takes its bicubic LR and metrics from basicsr (torchvision, cv2, scipy).
# Optional: carry benchmarks/results/cache (LR images made on CPU) to skip ~1 min of bicubic downscaling.
#
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels_tmp", "benchmarks/results/data"], timeout_s=560)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
WHEELS=${WHEELS:-benchmarks/wheels_tmp}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }

for pkg in spandrel einops basicsr; do
  if ! $PY -c "import $pkg" 2>/dev/null; then
    $PY -m pip install --no-index --no-deps --quiet "$WHEELS"/$pkg-*.whl >> "$OUT/gpu_check.log" 2>&1 \
      || $PY -m pip install --no-index --no-deps --quiet --target "$OUT/.pylib" "$WHEELS"/$pkg-*.whl >> "$OUT/gpu_check.log" 2>&1
  fi
done
export PYTHONPATH="$PWD:$OUT/.pylib${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c "import torch, spandrel; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'spandrel', spandrel.__version__ if hasattr(spandrel, '__version__') else '?')"; \
} 2>&1 | tee "$OUT/machine.txt"

# Cache LR / noisy images first on the host CPU (quick, and shared by every quality model)
mkdir -p "$OUT/quality"
[ -d benchmarks/results/cache ] && cp -r benchmarks/results/cache "$OUT/quality/cache" 2>/dev/null

stamp "precision: fp16/bf16 inference vs fp32, AMP training (bf16, fp16 + GradScaler), channels_last"
timeout 120 $PY benchmarks/gpu_precision.py --out "$OUT" --steps 100 > "$OUT/gpu_precision.log" 2>&1
stamp "precision rc=$?"

if $PY -c "import pytest" 2>/dev/null; then
  stamp "tests/test_cuda.py (the suite's CUDA tests)"
  timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
  stamp "test_cuda rc=$?"
fi

stamp "efficiency x4 64x64: fp32,bf16,fp16,cl_fp16,compile_fp16 (compile: fused hyresr_tiny/light/hyresr + SAFMN, SwinIR-light, RealPLKSR)"
timeout 200 $PY benchmarks/efficiency.py --device cuda --size 64 --scale 4 --repeats 30 --warmup 5 \
  --modes fp32,bf16,fp16,cl_fp16,compile_fp16 --compile-models hyresr_tiny,hyresr_light,hyresr,SAFMN,SwinIR-light,RealPLKSR \
  --scaling-sizes 64,128,256 --scaling-repeats 10 --out "$OUT" --tag cuda_x4_64 > "$OUT/efficiency_x4_64.log" 2>&1
stamp "efficiency rc=$?"

stamp "efficiency x4 256x256 fp16 (GPU-sized input)"
timeout 50 $PY benchmarks/efficiency.py --device cuda --size 256 --scale 4 --repeats 10 --warmup 3 --modes fp16 \
  --scaling-sizes none --no-memory --out "$OUT" --tag cuda_x4_256 > "$OUT/efficiency_x4_256.log" 2>&1
stamp "efficiency-256 rc=$?"

stamp "quality: short full-profile run, x4 pairs then x1 (patch 64, batch 16, bf16 autocast)"
DATA_ARGS=()  # the device machine has no ../shared: carry a copy as benchmarks/results/data
if [ -d benchmarks/results/data ]; then
  DATA_ARGS=(--train benchmarks/results/data/train_B100 --no-default-val
             --val benchmarks/results/data/val_Set5 --val benchmarks/results/data/val_Set14)
fi
timeout 140 $PY benchmarks/quality.py --profile full --iters 400 --evals 4 --tasks x4 --device cuda --amp "${DATA_ARGS[@]}" \
  --out "$OUT/quality" > "$OUT/quality.log" 2>&1
stamp "quality rc=$? (124 = cut by timeout; rows finished before it are in quality.csv)"
rm -rf "$OUT/quality/cache" "$OUT/.pylib"
stamp "done"
# the device tool brings back at most 8 files: pack everything into one archive
tar czf /tmp/gpu_results.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_results.tgz "$OUT/gpu_results.tgz"
