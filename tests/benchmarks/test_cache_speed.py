"""Decoded cache vs decoding: reading ``<root>/cache/*.pt`` must be ≥10x faster than decoding the JPEGs.

Run with ``pytest tests/benchmarks --benchmark-only`` (skipped in the default run). Both are timed
in the same run on the same Office-31-shaped folder of real JPEG photos (crops of scikit-learn's
sample images at 480x640, a typical Office-31 Amazon/Webcam size range), and the ratio is reported
in the benchmark's ``extra_info`` and printed.
"""
from __future__ import annotations

import sys
import pathlib
import time

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from office31_fixture import write_office31  # noqa: E402

from dabench.datasets import office31  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_cache_read_is_10x_faster_than_decode(tmp_path, benchmark) -> None:
    n = write_office31(tmp_path, domains=("webcam",), per_class=3, size=(400, 500))
    files, _ = office31.domain_files(tmp_path, "webcam")

    t0 = time.perf_counter()
    office31.load_domain(tmp_path, "webcam")  # first load: decode + write the cache
    decode_s = time.perf_counter() - t0

    domain = benchmark.pedantic(office31.load_domain, args=(tmp_path, "webcam"), rounds=5, iterations=1)
    cached_s = benchmark.stats.stats.median
    ratio = decode_s / cached_s
    benchmark.extra_info.update(images=n, decode_s=decode_s, cached_s=cached_s, speedup=ratio)
    print(f"\n{n} JPEGs: decode {decode_s:.3f} s, cached read {cached_s:.4f} s, speed-up {ratio:.1f}x")
    assert len(domain) == n
    assert ratio >= 10, f"cache only {ratio:.1f}x faster than decoding"
