"""The decoded-tensor cache verifies what it reads: same-size damage to a cache file is caught.

Data: the real UCI optical digits (scikit-learn), decoded to uint8 1x28x28 as digits-offline does.
"""

from __future__ import annotations

import multiprocessing
import os
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


def test_same_size_replacement_with_old_mtime_is_not_read_stale(tmp_path: pathlib.Path, monkeypatch) -> None:
    """``tar x``/``cp -p``/``rsync -t`` put the old mtime back on a replaced file; a same-size
    replacement must still decode afresh (the key has the ctime, which only the kernel sets)."""
    monkeypatch.delenv("DABENCH_NO_CACHE", raising=False)
    source = tmp_path / "src" / "batch.bin"
    source.parent.mkdir()
    source.write_bytes(bytes(range(64)))

    def decode() -> dict[str, torch.Tensor]:
        return {"images": torch.frombuffer(bytearray(source.read_bytes()), dtype=torch.uint8).clone()}

    first = cache.cached(tmp_path, "t", "all", 1, [source], decode, base=source.parent)
    old = source.stat()
    source.write_bytes(bytes(range(64, 128)))  # same size, other content
    os.utime(source, ns=(old.st_atime_ns, old.st_mtime_ns))  # as tar/cp -p/rsync -t do
    assert source.stat().st_mtime_ns == old.st_mtime_ns and source.stat().st_size == old.st_size
    second = cache.cached(tmp_path, "t", "all", 1, [source], decode, base=source.parent)
    assert torch.equal(first["images"], torch.arange(64, dtype=torch.uint8))
    assert torch.equal(second["images"], torch.arange(64, 128, dtype=torch.uint8))


def test_changed_decoder_gets_a_new_key(tmp_path: pathlib.Path, decoded, monkeypatch) -> None:
    """Tensors cached by another decoder (edited dabench.datasets code, another torch/torchvision/Pillow,
    a plugin's bumped ``version``) are not read back as if this code had decoded them."""
    monkeypatch.delenv("DABENCH_NO_CACHE", raising=False)
    source = tmp_path / "src" / "digits.bin"
    source.parent.mkdir()
    source.write_bytes(b"stand-in")
    calls: list[int] = []
    _cached(tmp_path, source, decoded, calls)
    _cached(tmp_path, source, decoded, calls)
    assert calls == [1]  # unchanged decoder: read back
    monkeypatch.setattr(cache, "_library_sources", lambda: "another decoder")
    _cached(tmp_path, source, decoded, calls)
    assert calls == [1, 1]
    cache.cached(tmp_path, "optdigits", "all", 28, [source], lambda: calls.append(1) or decoded, source.parent, "2")
    assert calls == [1, 1, 1]
    assert len(list((tmp_path / "cache").glob("optdigits-*.pt"))) == 3


def _race_writer(root: str, source: str, rounds: int) -> None:
    torch.set_num_threads(1)
    os.environ.pop("DABENCH_NO_CACHE", None)
    images = torch.arange(200_000, dtype=torch.int64).to(torch.uint8)
    for _ in range(rounds):
        cache.cached(pathlib.Path(root), "race", "all", 1, [pathlib.Path(source)], lambda: {"images": images.clone()})
        # a forced rewrite each round: drop the file so both processes keep writing the same key
        for f in (pathlib.Path(root) / "cache").glob("race-*.pt"):
            f.unlink(missing_ok=True)


def test_concurrent_writers_never_leave_a_torn_file(tmp_path: pathlib.Path, monkeypatch) -> None:
    """Two processes writing the same key while a third reads: every read either misses or verifies
    (temporary file + rename), and no temporary file is left behind."""
    monkeypatch.delenv("DABENCH_NO_CACHE", raising=False)
    source = tmp_path / "src.bin"
    source.write_bytes(b"x")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_race_writer, args=(str(tmp_path), str(source), 15)) for _ in range(2)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        for f in (tmp_path / "cache").glob("race-*.pt") if (tmp_path / "cache").is_dir() else ():
            try:
                payload = torch.load(f, map_location="cpu", weights_only=True)
            except FileNotFoundError:  # removed by a writer between glob and open
                continue
            got = cache._verified(payload, f)  # raises on a torn or mixed file
            assert got["images"].numel() == 200_000
            reads += 1
    assert all(p.exitcode == 0 for p in procs)
    assert not list((tmp_path / "cache").glob("*.tmp"))
