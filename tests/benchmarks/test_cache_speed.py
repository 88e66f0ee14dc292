"""Decoded cache vs decoding: reading ``<root>/cache/*.pt`` against decoding the JPEGs (target ≥ 10x).

Run with ``pytest tests/benchmarks --benchmark-only`` (skipped in the default run). Both are timed
the same way (pytest-benchmark rounds after a warm-up round, median) in the same run on the same
Office-31-shaped folder of real JPEG photos (crops of scikit-learn's sample images at 480x640, a
typical Office-31 Amazon/Webcam size range): the cached ``load_domain`` against ``decode_files``
of the same files, the work the cache replaces (not the first load, which also writes the cache
and was one cold sample). The ratio is reported, never asserted: a timed assertion fails on a
loaded machine, not on a slow cache.

Every cached read verifies the CRC-32 of each tensor. Its cost is measured on an MNIST-sized
split (60,000 x 1x28x28 uint8, 47 MB): the verified read against torchvision's own MNIST decode
of the same images from idx files (the baseline the cache replaces) and against an unverified
``torch.load`` of the same file (the cache's speed before verification).
"""

from __future__ import annotations

import pathlib
import struct
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from dabench.datasets import cache, office31
from office31_fixture import write_office31

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
def test_cache_read_vs_decode(tmp_path, benchmark, ratios, impl) -> None:
    n = write_office31(tmp_path, domains=("webcam",), per_class=3, size=(400, 500))
    files, _ = office31.domain_files(tmp_path, "webcam")
    first = office31.load_domain(tmp_path, "webcam")  # decode + write the cache, untimed
    fn = {
        "dabench": lambda: office31.load_domain(tmp_path, "webcam").images,
        "baseline": lambda: office31.decode_files(files),
    }[impl]
    benchmark.group = "office-31 domain: cached read vs JPEG decode"
    images = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert len(images) == n and torch.equal(images, first.images)  # the same images on both sides
    ratios.record(benchmark, "cache read vs JPEG decode (office-31 webcam-sized, target ≥ 10x)", impl, n, "images/s")


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
