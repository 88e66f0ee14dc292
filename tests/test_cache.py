"""The decoded-tensor cache verifies what it reads: same-size damage to a cache file is caught.

Data: the real UCI optical digits (scikit-learn), decoded to uint8 1x28x28 as digits-offline does.
"""

from __future__ import annotations

import pathlib
import warnings

import pytest
import torch

from dabench.datasets import cache
from dabench.datasets.digits_offline import optdigits


@pytest.fixture(scope="module")
def decoded() -> dict[str, torch.Tensor]:
    d = optdigits()
    return {"images": d.images, "labels": d.labels}


def _cached(root: pathlib.Path, source: pathlib.Path, decoded: dict[str, torch.Tensor], calls: list[int]):
    def decode() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {k: v.clone() for k, v in decoded.items()}

    return cache.cached(root, "optdigits", "all", 28, [source], decode, base=source.parent)


def test_same_size_corruption_is_detected_and_rebuilt(tmp_path: pathlib.Path, decoded, monkeypatch) -> None:
    monkeypatch.delenv("DABENCH_NO_CACHE", raising=False)
    source = tmp_path / "src" / "digits.bin"
    source.parent.mkdir()
    source.write_bytes(b"stand-in for the distribution file")
    calls: list[int] = []
    _cached(tmp_path, source, decoded, calls)  # decode + write
    (path,) = (tmp_path / "cache").glob("optdigits-*.pt")

    # flip bytes inside the stored image data (located by content), keeping the file's size
    blob = bytearray(path.read_bytes())
    raw = decoded["images"].numpy().tobytes()
    probe = raw[len(raw) // 2 : len(raw) // 2 + 512]
    at = blob.find(probe)
    assert at > 0 and probe.strip(b"\0"), "image bytes not found in the cache file"
    size = len(blob)
    for i in range(at, at + 512, 37):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert path.stat().st_size == size

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _cached(tmp_path, source, decoded, calls)
    messages = [str(w.message) for w in caught]
    assert any(str(path) in m and "corrupt cache file" in m for m in messages), messages
    assert calls == [1, 1]  # decoded again
    assert torch.equal(got["images"], decoded["images"]) and torch.equal(got["labels"], decoded["labels"])

    # the rewritten file verifies: read back without a warning or a decode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _cached(tmp_path, source, decoded, calls)
    assert calls == [1, 1] and torch.equal(again["images"], decoded["images"])


def test_checksum_covers_bytes_dtype_and_shape(decoded) -> None:
    x = decoded["images"]
    assert cache.checksum(x) == cache.checksum(x.clone())
    y = x.clone()
    y.view(-1)[12345] ^= 1  # one bit
    assert cache.checksum(y) != cache.checksum(x)
    assert cache.checksum(x.view(-1, 28 * 28)) != cache.checksum(x)
    assert cache.checksum(torch.zeros(4, dtype=torch.int32)) != cache.checksum(torch.zeros(16, dtype=torch.uint8))
    assert cache.checksum(torch.zeros(3, dtype=torch.bfloat16))  # any dtype hashes
