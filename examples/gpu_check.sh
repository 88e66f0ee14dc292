#!/usr/bin/env bash
# One prepared GPU check for a rented H100/H200 (no network, no datasets beyond the embedded pair).
#   bash examples/gpu_check.sh             # tables in $OUT (default: results/bench/)
# 1. dabench bench, LeNet on digits-offline at the pair's batch (64) and at 512 per domain;
# 2. dabench bench, resnet50 (random weights; timm fallback if not registered) at 224 px on
#    synthetic 3x256x256 uint8 images through the same DeviceData/augmentation path;
# 3. the pytest-benchmark suite on CUDA against DataLoader baselines with 8 workers;
# 4. torch.compile for LeNet (source-only, dann). Each step has its own timeout; ~3-4 min total.
OUT_DEFAULT=results/bench
source "$(dirname "$0")/gpu_env.sh"
LOG="$OUT/gpu_check.log"
step() { local limit=$1; shift; echo "== $*" | tee -a "$LOG"; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
BENCH="$PY -m dabench.cli bench --device cuda"
step 60 $BENCH --steps 200 --warmup 20 --out "$OUT/gpu-lenet-digits.md"
step 60 $BENCH --steps 100 --warmup 20 --batch-size 512 --out "$OUT/gpu-lenet-digits-bs512.md"
step 90 $BENCH --synthetic 256 --backbone resnet50 --image-size 224 --batch-size 32 --steps 30 --warmup 10 \
  --out "$OUT/gpu-resnet50-224-synthetic.md"
DABENCH_BENCH_DEVICE=cuda DABENCH_BENCH_WORKERS=8 step 90 $PY -m pytest tests/benchmarks --benchmark-only -q \
  -p no:cacheprovider --benchmark-columns=median,rounds
[ -f results/bench/ratios.md ] && cp results/bench/ratios.md "$OUT/gpu-ratios.md"
step 90 $BENCH --steps 200 --warmup 20 --methods source-only,dann --compile --out "$OUT/gpu-lenet-digits-compile.md"
