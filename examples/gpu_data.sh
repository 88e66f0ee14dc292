#!/usr/bin/env bash
# Copy the small real datasets from ../shared/data into .devdata/ (git-ignored), so they travel with
# the working tree to a machine that receives only plain files (e.g. the GPU machine).
# The MNIST/USPS loaders read <data_root>/mnist.npz and <data_root>/usps.npz directly
# (keys x_train, y_train, x_test, y_test), so afterwards run for example:
#   dabench run --pairs mnist-usps --methods source-only,dann --seeds 0 --data-root .devdata
# cifar10_subset.npz is a 4k/1k CIFAR-10 subset for tests and demos only (no pair reads it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-$here/../shared/data}"
dst="$here/.devdata"
mkdir -p "$dst"
for f in mnist.npz usps.npz cifar10_subset.npz; do
    if [[ -f "$src/$f" ]]; then
        install -m 644 "$src/$f" "$dst/$f"  # shared/ is read-only; the copies need not be
        echo "copied $src/$f -> $dst/$f"
    else
        echo "missing: $src/$f (expected ../shared/data beside the clone)" >&2
        exit 1
    fi
done
