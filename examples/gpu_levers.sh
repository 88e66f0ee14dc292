#!/usr/bin/env bash
# The two speed levers of small-model runs (CUDA graphs, seed batching), measured on one GPU in two
# prepared calls (each well under 10 minutes; H100/H200, no network; .devdata carried, see
# examples/gpu_data.sh):
#   bash examples/gpu_levers.sh bench    # GPU tests, then dabench bench: LeNet (digits-offline) and
#                                        # ResNet-50 (synthetic 224 px), graphs off/on, 5 seeds batched
#   bash examples/gpu_levers.sh matrix   # the digits matrix (6 methods x mnist-usps, usps-mnist x 5
#                                        # seeds, 5,000 steps): today's packed executor, then both levers;
#                                        # then the method zoo on mnist-usps (3 seeds) for the reference
#   bash examples/gpu_levers.sh next     # ONE call (< 9.5 min; run it with timeout_s 590): the GPU tests,
#                                        # the LeNet bench (steady-state rates, ops/step), the digits matrix
#                                        # with both levers, the packed eager executor capped at 90 s
#                                        # (dabench status projects the rest), the ResNet-50 bench, where
#                                        # the steps' time goes (--profile, separate processes: a profiler
#                                        # crash costs only its table), last a --compile bench
#   bash examples/gpu_levers.sh first    # the same work in two calls, so that a fault the first reveals
#   bash examples/gpu_levers.sh second   # can be fixed before the second: first = GPU tests, LeNet bench,
#                                        # digits matrix with both levers (timeout_s 340); second = the
#                                        # packed eager matrix, ResNet-50 bench, profiles, --compile (400)
#   bash examples/gpu_levers.sh verify   # after engine changes (~2.5 min, timeout_s 200): the GPU tests, then a
#                                        # small seed-batched, captured matrix with mid-run checkpoints, its
#                                        # records' levers and any checkpoint or temp file left behind
# DEADLINE_S (seconds from the start, default 570) caps every step, so the script ends inside the call's
# timeout and what it measured comes back. The device returns at most 8 files, so the work goes to
# /tmp/gpu_levers_out and is packed after each step into $OUT/all.tgz (times.txt beside it).
# Everything goes to $OUT (default results/gpu-levers/); wall times to $OUT/times.txt.
OUT_DEFAULT=results/gpu-levers
source "$(dirname "$0")/gpu_env.sh"
PACKED=$OUT; OUT=/tmp/gpu_levers_out; mkdir -p "$OUT"
T_START=$(date +%s); DEADLINE_S=${DEADLINE_S:-570}
pack() { tar czf "$PACKED/all.tgz" -C "$OUT" . 2>/dev/null; cp "$OUT/times.txt" "$PACKED/" 2>/dev/null; true; }
DAB="$PY -m dabench.cli"
# benches use --repeats 2 (not the default 3): the limits below were sized for two timings per length;
# since 2026-11-26 the bare network is timed like a method (steady state, repeats), and since 2026-11-27
# once more after the methods (drift), which costs more
LOG="$OUT/gpu_levers.log"
timed() {  # timed NAME LIMIT CMD...: wall time and exit status into $OUT/times.txt
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE_S - ($(date +%s) - T_START) - 10 ))
  if (( left < limit )); then limit=$left; fi
  if (( limit < 15 )); then printf '%s\tskipped: deadline\n' "$name" | tee -a "$OUT/times.txt"; return; fi
  local t0=$(date +%s%N)
  timeout "$limit" "$@" >>"$LOG" 2>&1; local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%d.%03d s\trc=%s (limit %s s)\n' "$name" $((ms / 1000)) $((ms % 1000)) "$rc" "$limit" | tee -a "$OUT/times.txt"
  pack
}
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__)" 2>&1 | tee -a "$LOG"
R=/tmp/gpu_levers
M="--pairs mnist-usps,usps-mnist --seeds 0,1,2,3,4 --data-root .devdata --executor local --no-progress"
gpu_tests() {  # gpu_tests LIMIT: the CUDA tests of both levers
  timed gpu-tests "$1" $PY -m pytest tests/test_cuda_graphs.py tests/test_seed_batch_graphs.py -q \
    -p no:cacheprovider -rfs --junitxml="$OUT/gpu-tests.xml"
  grep -E "passed|failed" "$LOG" | tail -1
}
bench_lenet() {  # bench_lenet LIMIT STEPS [NAME EXTRA...]: LeNet on digits-offline, graphs off/on, 5 seeds batched
  local limit=$1 steps=$2 name=${3:-bench-lenet}; shift 3 2>/dev/null || shift $#
  timed "$name" "$limit" $DAB bench --device cuda --repeats 2 --steps "$steps" --warmup 20 --seed-batch 5 \
    --methods source-only,dan,dann,coral,fine-tune --out "$OUT/$name-digits.md" "$@"
}
matrix_run() {  # matrix_run NAME LIMIT FLAGS...: the digits matrix, then its status and report
  local name=$1 limit=$2; shift 2
  timed "digits-matrix-$name" "$limit" $DAB run $M "$@" --results "$R/$name"
  $DAB status "$R/$name" >"$OUT/$name-status.txt" 2>&1
  $DAB report "$R/$name" --format md --out "$OUT/report-$name" >"$OUT/$name.md" 2>>"$LOG"
  pack
}
case "${1:-bench}" in
bench)
  gpu_tests 130
  bench_lenet 80 300
  timed bench-resnet50 70 $DAB bench --device cuda --repeats 2 --synthetic 256 --steps 30 --warmup 10 \
    --methods source-only,dann,fine-tune --out "$OUT/bench-resnet50-synthetic.md"
  cat "$OUT"/bench-*.md
  ;;
next)  # the optional --compile bench last: if the call runs out of time, only it is lost
  gpu_tests 130
  bench_lenet 140 150
  matrix_run levers 120 --runs-per-gpu 4 --cuda-graphs --seed-batch
  matrix_run eager 90 --runs-per-gpu 6 --no-cuda-graphs
  tar czf "$OUT/records.tgz" --exclude=checkpoints --exclude=claims --exclude='*.npz' -C $R . 2>>"$LOG"
  timed bench-resnet50 130 $DAB bench --device cuda --repeats 2 --synthetic 256 --steps 30 --warmup 10 \
    --methods source-only,dann,fine-tune --out "$OUT/bench-resnet50-synthetic.md"
  bench_lenet 60 50 bench-lenet-profile --profile --no-cuda-graphs --seed-batch 0 --methods source-only,dann,fine-tune
  timed bench-resnet50-profile 60 $DAB bench --device cuda --repeats 2 --synthetic 128 --steps 10 --warmup 5 --profile \
    --no-cuda-graphs --methods source-only,dann --out "$OUT/bench-resnet50-profile-synthetic.md"
  cat "$OUT/times.txt" "$OUT"/*-status.txt "$OUT"/bench-*.md
  bench_lenet 80 100 bench-lenet-compile --compile --seed-batch 0 --methods source-only,dann
  cat "$OUT/bench-lenet-compile-digits.md" 2>/dev/null
  ;;
first)  # GPU tests, LeNet bench, the digits matrix with both levers (run with timeout_s 340)
  gpu_tests 110
  bench_lenet 100 150
  matrix_run levers 120 --runs-per-gpu 4 --cuda-graphs --seed-batch
  tar czf "$OUT/records.tgz" --exclude=checkpoints --exclude=claims --exclude='*.npz' -C $R . 2>>"$LOG"
  cat "$OUT/times.txt" "$OUT"/*-status.txt "$OUT"/bench-*.md "$OUT/levers.md"
  grep -E "FAILED|Error" "$LOG" | sort | uniq -c | sort -rn | head -20
  ;;
second)  # the packed eager baseline, ResNet-50 bench, profiles, --compile (run with timeout_s 400)
  matrix_run eager 90 --runs-per-gpu 6 --no-cuda-graphs
  timed bench-resnet50 120 $DAB bench --device cuda --repeats 2 --synthetic 256 --steps 30 --warmup 10 \
    --methods source-only,dann,fine-tune --out "$OUT/bench-resnet50-synthetic.md"
  bench_lenet 50 50 bench-lenet-profile --profile --no-cuda-graphs --seed-batch 0 --methods source-only,dann,fine-tune
  bench_lenet 70 100 bench-lenet-compile --compile --seed-batch 0 --methods source-only,dann
  cat "$OUT/times.txt" "$OUT"/*-status.txt "$OUT"/bench-*.md
  ;;
verify)  # the GPU tests and a small captured, seed-batched matrix with mid-run checkpoints
  gpu_tests 110
  timed verify-matrix 60 $DAB run --methods source-only,dann,dan,fine-tune --pairs mnist-usps --seeds 0,1,2 \
    --set steps=1000 --set eval_every=500 --checkpoint-every 250 --data-root .devdata --executor local \
    --runs-per-gpu 4 --cuda-graphs --seed-batch --no-progress --results "$R/verify"
  $DAB status "$R/verify" 2>&1 | head -5
  grep -ho '"status": "[a-z]*"\|"cuda_graphs": "[^"]*"\|"seed_batch": "[^"]*"\|"target_acc": [0-9.]*' "$R"/verify/runs/*.json \
    | sort | uniq -c
  echo "left behind (partial checkpoints, temp files):"; find "$R/verify" -name '*partial*' -o -name '*.tmp*' | head
  grep -E "FAILED|Error" "$LOG" | sort | uniq -c | sort -rn | head -10
  ;;
matrix)
  matrix_run levers 100 --runs-per-gpu 4 --cuda-graphs --seed-batch
  matrix_run eager 120 --runs-per-gpu 6 --no-cuda-graphs
  timed zoo-mnist-usps-3seeds 100 $DAB run --methods zoo --pairs mnist-usps --seeds 0,1,2 --data-root .devdata \
    --executor local --runs-per-gpu 4 --cuda-graphs --seed-batch --no-progress --results $R/zoo
  $DAB report $R/zoo --format md --out "$OUT/report-zoo" >"$OUT/zoo.md" 2>>"$LOG"
  $DAB report $R/zoo --rule oracle --format md --out "$OUT/report-zoo-oracle" >"$OUT/zoo-oracle.md" 2>>"$LOG"
  tar czf "$OUT/records.tgz" --exclude=checkpoints --exclude=claims --exclude='*.npz' -C $R . 2>>"$LOG"
  cat "$OUT/times.txt" "$OUT"/*-status.txt
  ;;
esac
pack
