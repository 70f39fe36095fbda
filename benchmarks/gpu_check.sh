#!/usr/bin/env bash
# The first thing a lent GPU runs (H100-class: about 7 minutes; every stage is capped by a timeout and
# the caps add up to 7.5 minutes). Everything lands in $OUT, packed into one archive at the end.
#
#   1. The field's GPU table (benchmarks/gpu_model.py measure, budget 230 s): traiNNer-redux's published
#      inference protocol (docs/source/benchmarks.md of the-database/traiNNer-redux, written by its
#      scripts/benchmarking/benchmark_archs.py): input 1x3x480x640, x4, AMP autocast (fp16; bf16 for the
#      archs that table runs in bf16, SwinIR-light among them), channels_last and default memory format,
#      torch.inference_mode, cudnn.benchmark, 5 warm-up runs, a probe run picking 5/10/500 timed runs
#      (capped at 100 here), mean time from CUDA events, peak VRAM after a reset. In one run: SPAN (span_s),
#      SAFMN, every HyReSR variant as built (fp16), RealPLKSR (traiNNer's and spandrel's default), OmniSR,
#      SwinIR-light (swinir_s), then every HyReSR variant fused, then in bf16 (grouped-GEMM MoE on sm90+),
#      as far as the budget goes. Printed as rows of that table plus FPS (CL) ratios to SPAN and SAFMN
#      measured in the same run, next to the peers' published RTX 4090 FPS: gpu_table.md / gpu_table.json.
#      Compare with the cost model's RTX 4090 predictions in docs/BENCHMARKS.md ("GPU cost model").
#   2. tests/network/test_cuda.py (the suite's CUDA tests).
#   3. Precision: fp16/bf16 inference vs fp32, short AMP training runs (bf16, fp16 + GradScaler).
#   4. Latency at 64x64 x4 (efficiency.py): fp32, bf16, fp16, channels_last fp16, GMACs top-1 / dense.
# Left out to stay under 8 minutes (run by hand when time allows):
#   python benchmarks/efficiency.py --device cuda --modes compile_fp16 --scaling-sizes none
#   python benchmarks/quality.py --profile full --iters 400 --evals 4 --tasks x4 --device cuda --amp
#
# The GPU host's python3 has torch + CUDA and numpy but not spandrel / einops: they travel as wheels in
# benchmarks/wheels_tmp (pip download spandrel==0.4.2 einops --no-deps -d benchmarks/wheels_tmp) and are
# installed offline. spandrel's registry needs torchvision / safetensors; benchmarks/zoo.py imports the
# arch files without the registry when those are missing.
#
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels_tmp"], timeout_s=540)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
WHEELS=${WHEELS:-benchmarks/wheels_tmp}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }

for pkg in spandrel einops; do
  if ! $PY -c "import $pkg" 2>/dev/null; then
    $PY -m pip install --no-index --no-deps --quiet "$WHEELS"/$pkg-*.whl >> "$OUT/gpu_check.log" 2>&1 \
      || $PY -m pip install --no-index --no-deps --quiet --target "$OUT/.pylib" "$WHEELS"/$pkg-*.whl >> "$OUT/gpu_check.log" 2>&1
  fi
done
export PYTHONPATH="$PWD:$OUT/.pylib${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c "import torch, spandrel; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'spandrel', getattr(spandrel, '__version__', '?'))"; \
} 2>&1 | tee "$OUT/machine.txt"

stamp "1. the field's GPU table (traiNNer-redux protocol, 1x3x480x640 x4, AMP, channels_last): HyReSR + peers"
timeout 270 $PY benchmarks/gpu_model.py measure --budget-s 230 --out "$OUT" 2>&1 | tee "$OUT/gpu_table.log"
stamp "table rc=${PIPESTATUS[0]} (124 = cut by timeout; rows finished before it are in gpu_table.log)"

if $PY -c "import pytest" 2>/dev/null; then
  stamp "2. tests/network/test_cuda.py (the suite's CUDA tests)"
  timeout 50 $PY -m pytest -q -p no:cacheprovider tests/network/test_cuda.py > "$OUT/test_cuda.log" 2>&1
  stamp "test_cuda rc=$?"
fi

stamp "3. precision: fp16/bf16 inference vs fp32, AMP training (bf16, fp16 + GradScaler), channels_last"
timeout 60 $PY benchmarks/gpu_precision.py --out "$OUT" --steps 40 > "$OUT/gpu_precision.log" 2>&1
stamp "precision rc=$?"

stamp "4. efficiency x4 64x64: fp32, bf16, fp16, cl_fp16 (GMACs top-1 / dense)"
timeout 70 $PY benchmarks/efficiency.py --device cuda --size 64 --scale 4 --repeats 15 --warmup 3 \
  --modes fp32,bf16,fp16,cl_fp16 --scaling-sizes none --out "$OUT" --tag cuda_x4_64 > "$OUT/efficiency_x4_64.log" 2>&1
stamp "efficiency rc=$?"

rm -rf "$OUT/.pylib"
stamp "done"
# the device tool brings back at most 8 files: pack everything into one archive
tar czf /tmp/gpu_results.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_results.tgz "$OUT/gpu_results.tgz"
