"""Decoded cache vs decoding: reading ``<root>/cache/*.pt`` must be ≥10x faster than decoding the JPEGs.

Run with ``pytest tests/benchmarks --benchmark-only`` (skipped in the default run). Both are timed
in the same run on the same Office-31-shaped folder of real JPEG photos (crops of scikit-learn's
sample images at 480x640, a typical Office-31 Amazon/Webcam size range), and the ratio is reported
in the benchmark's ``extra_info`` and printed.

Every cached read verifies the CRC-32 of each tensor. Its cost is measured on an MNIST-sized
split (60,000 x 1x28x28 uint8, 47 MB): the verified read against torchvision's own MNIST decode
of the same images from idx files (the baseline the cache replaces) and against an unverified
``torch.load`` of the same file (the cache's speed before verification).
"""

from __future__ import annotations

import pathlib
import struct
import sys
import time

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dabench.datasets import cache, office31
from office31_fixture import write_office31

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_cache_read_is_10x_faster_than_decode(tmp_path, benchmark) -> None:
    n = write_office31(tmp_path, domains=("webcam",), per_class=3, size=(400, 500))
    _files, _ = office31.domain_files(tmp_path, "webcam")

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


MNIST_N = 60_000


def _write_idx(root: pathlib.Path, images: torch.Tensor, labels: torch.Tensor) -> tuple[pathlib.Path, pathlib.Path]:
    """MNIST's idx3/idx1 files (big-endian header + raw uint8), as torchvision reads them."""
    img, lab = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    n, h, w = images.shape
    img.write_bytes(struct.pack(">iiii", 2051, n, h, w) + images.numpy().tobytes())
    lab.write_bytes(struct.pack(">ii", 2049, n) + labels.to(torch.uint8).numpy().tobytes())
    return img, lab


@pytest.mark.parametrize("impl", ["dabench", "baseline", "unverified"])
def test_verified_cache_read_mnist_size(tmp_path, benchmark, ratios, impl) -> None:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (MNIST_N, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (MNIST_N,), generator=g)
    img, lab = _write_idx(tmp_path, images, labels)

    def decode() -> dict[str, torch.Tensor]:
        return {"images": read_image_file(str(img)).unsqueeze(1), "labels": read_label_file(str(lab))}

    first = cache.cached(tmp_path, "mnist", "train", "native", [img, lab], decode, base=tmp_path)
    (path,) = (tmp_path / "cache").glob("mnist-*.pt")
    fn = {
        "dabench": lambda: cache.cached(tmp_path, "mnist", "train", "native", [img, lab], decode, base=tmp_path),
        "baseline": decode,
        "unverified": lambda: torch.load(path, map_location="cpu", weights_only=True)["tensors"],
    }[impl]
    benchmark.group = "cache read, 60k x 1x28x28 uint8"
    out = benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)
    assert torch.equal(out["images"], first["images"])
    # dabench/baseline: verified read vs idx decode; the unverified read is the cache's speed
    # before verification, recorded as the baseline of a second group (verify overhead)
    if impl == "unverified":
        ratios.record(
            benchmark, "cache verify: verified / unverified read (60k 28x28)", "baseline", MNIST_N, "images/s"
        )
    else:
        ratios.record(benchmark, "cache read vs decode (60k 28x28, verified)", impl, MNIST_N, "images/s")
        if impl == "dabench":
            ratios.record(
                benchmark, "cache verify: verified / unverified read (60k 28x28)", "dabench", MNIST_N, "images/s"
            )
