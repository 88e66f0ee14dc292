#!/usr/bin/env bash
# One prepared GPU check of --cuda-graphs (engine/graphs.py) for a rented H100/H200 (no network;
# digits-offline is embedded). Writes everything to $OUT (default: results/bench/graphs/):
# 1. tests/test_cuda_graphs.py on CUDA (captured vs eager runs of every built-in step method,
#    the parameters after each of the first captured steps against eager ones, divergence,
#    fallback, resume, host syncs): about 60-120 s;
# 2. dabench bench, LeNet on digits-offline: steps/s with graphs off and on, against the bare
#    network with the same levers (graphs column): about 60 s.
#   bash examples/gpu_graphs_check.sh
OUT_DEFAULT=results/bench/graphs
source "$(dirname "$0")/gpu_env.sh"
LOG="$OUT/gpu_graphs_check.log"
step() { local limit=$1; shift; echo "== $*" | tee -a "$LOG"; timeout "$limit" "$@" 2>&1 | tee -a "$LOG"; echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
step 300 $PY -m pytest tests/test_cuda_graphs.py -q -p no:cacheprovider -rs --durations=8 \
  --junitxml="$OUT/test_cuda_graphs.xml"
step 120 $PY -m dabench.cli bench --device cuda --steps 200 --warmup 20 --cuda-graphs \
  --out "$OUT/gpu-lenet-digits-graphs.md"
echo "wrote $OUT" | tee -a "$LOG"
