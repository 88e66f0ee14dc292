#!/usr/bin/env bash
# One prepared GPU session (H100/H200, no network): the digits benchmark on the full data.
#   bash examples/gpu_data.sh          # on your machine: copies mnist/usps .npz into .devdata/
#   bash examples/gpu_matrix.sh        # on the GPU machine, with .devdata carried along
# 1. six methods x mnist-usps x 3 seeds, packed 6 runs per GPU (local executor);
# 2. the quick matrix (six methods x digits-offline x 3 seeds) packed (--runs-per-gpu 4)
#    versus one at a time (--runs-per-gpu 1) and in-process (--executor inline).
# Results and timings go to $OUT (default results/gpu/).
OUT_DEFAULT=results/gpu
source "$(dirname "$0")/gpu_env.sh"
DAB="$PY -m dabench.cli"
LOG="$OUT/gpu_matrix.log"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$LOG"
timed() {  # timed NAME LIMIT CMD...: wall time into $OUT/times.txt
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  timeout "$limit" "$@" >>"$LOG" 2>&1; local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%d.%03d s\trc=%s\n' "$name" $((ms / 1000)) $((ms % 1000)) "$rc" | tee -a "$OUT/times.txt"
}
R=/tmp/gpu_results
timed mnist-usps-6x3-packed6 170 $DAB run --pairs mnist-usps --data-root .devdata --executor local \
  --runs-per-gpu 6 --results $R/mnist-usps --no-progress
$DAB report $R/mnist-usps --format md --out /tmp/report-mnist-usps >"$OUT/mnist-usps.md" 2>>"$LOG"
timed digits-offline-6x3-packed4 70 $DAB run --executor local --runs-per-gpu 4 --results $R/packed --no-progress
timed digits-offline-6x3-rpg1 90 $DAB run --executor local --runs-per-gpu 1 --results $R/rpg1 --no-progress
timed digits-offline-6x3-inline 70 $DAB run --executor inline --results $R/inline --no-progress
$DAB report $R/packed --format md --out /tmp/report-digits >"$OUT/digits-offline.md" 2>>"$LOG"
tar czf "$OUT/records.tgz" --exclude=checkpoints --exclude=claims -C $R . 2>>"$LOG"
cat "$OUT/times.txt" "$OUT/mnist-usps.md"
