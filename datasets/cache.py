"""A decoded-tensor cache under ``<data_root>/cache/``: decode once, then read one file.

Decoding a dataset from its distribution format (JPEG folders, LIBSVM text, torchvision
pickles) costs seconds to minutes; reading the same uint8 tensors back from one
``torch.save`` file costs a fraction of a second. Each cache file is keyed by
``(dataset, split, size)`` and a **fingerprint of the source files and of the decoder**: the sorted
list of ``(relative path, size in bytes, mtime in ns, ctime in ns)`` plus the decoder's identity
(:func:`decoder_identity`: a SHA-1 of the ``dabench.datasets`` sources, where every built-in decoder
lives, the torch/torchvision/Pillow versions that decode and resize, and the caller's ``version``),
hashed with SHA-1. Hashing the contents of a few-GB folder on every load would cost as much as
decoding it, so size + mtime + ctime stand in for a content checksum: replacing, adding or removing
a source file (or touching it) changes the key and the next load decodes afresh; a stale cache file
is simply never read again. The ctime is there because the mtime alone can be put back: ``tar x``,
``cp -p`` and ``rsync -t`` give a replaced file its old mtime, and a same-size replacement (a fixed
CIFAR batch, a re-exported JPEG) then read the old tensors; nothing but the kernel sets the ctime.
The price: a data root copied elsewhere (new ctimes) decodes once more. A changed decoder (a
new resize, another library version) gets new keys too, so cached tensors are always what this
code would decode now.

Files are written atomically (temporary file + rename), so an interrupted first load never
leaves a half-written cache, and read with ``weights_only=True`` (plain tensors, no pickle code).
A read-only data root just skips caching (with a warning). ``DABENCH_NO_CACHE=1`` disables it.

Each file also stores a **CRC-32 of every tensor** (its bytes, dtype and shape), checked on every
read: a cache file damaged in place (a flipped bit on disk, a partial overwrite that kept the
size) would otherwise be read silently and shift every accuracy computed from it. A mismatch
warns, naming the file, and decodes afresh (overwriting it). CRC-32 (zlib) rather than a
cryptographic hash because it guards against accidents, not adversaries, and is ~3x cheaper than
SHA-1. On 60,000x1x28x28 uint8 (MNIST-sized, 47 MB; median of 7, one CPU thread) a verified read
took 60 ms against 49 ms unverified and 98 ms for torchvision's MNIST idx decode
(``tests/benchmarks/test_cache_speed.py`` reports these ratios; JPEG and LIBSVM decodes, what the
cache is for, are 10-100x slower than either read).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pathlib
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable

import torch

from dabench.core.parsing import parse_bool

Tensors = dict[str, torch.Tensor]

#: bump when the file layout changes; part of the file name, so older files are never read
CACHE_FORMAT = 2


class CacheMismatch(ValueError):
    """A cache file whose tensors do not match the checksums stored with them."""


def checksum(t: torch.Tensor) -> str:
    """CRC-32 of a CPU tensor's bytes, prefixed by dtype and shape (a reshaped or retyped tensor differs)."""
    t = t.detach().contiguous()
    crc = zlib.crc32(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        # a flat byte view of the tensor's memory: no copy, works for every dtype (bf16 included)
        crc = zlib.crc32(t.view(-1).view(torch.uint8).numpy().data, crc)
    return f"{crc:08x}"


def _verified(payload: object, path: pathlib.Path) -> Tensors:
    """The tensors of a loaded cache payload, after checking every one against its stored CRC-32."""
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("tensors"), dict)
        and isinstance(payload.get("checksums"), dict)
    ):
        raise CacheMismatch(f"{path} is not a dabench cache file (format {CACHE_FORMAT})")
    tensors, sums = payload["tensors"], payload["checksums"]
    if set(tensors) != set(sums):
        raise CacheMismatch(f"{path}: tensors {sorted(tensors)} but checksums for {sorted(sums)}")
    for name, t in tensors.items():
        got = checksum(t)
        if got != sums[name]:
            raise CacheMismatch(f"{path}: tensor {name!r} has CRC-32 {got}, stored {sums[name]}")
    return tensors


@functools.cache
def _library_sources() -> str:
    """SHA-1 of this package's ``.py`` files (every built-in decoder and resize lives here) and the
    versions of the libraries that decode (Pillow, torchvision) and resize (torch)."""
    h = hashlib.sha1()
    for f in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    versions = [f"torch={torch.__version__}"]
    for dist in ("torchvision", "pillow"):
        try:  # the installed version, without importing the library (torchvision takes a second)
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:  # absent: it did not write the tensors
            versions.append(f"{dist}=-")
    h.update("\n".join(versions).encode())
    return h.hexdigest()


def decoder_identity(version: str = "") -> str:
    """What decoded a cache file: the ``dabench.datasets`` sources, library versions and ``version``
    (a plugin's own decoder version; its code is not among these sources)."""
    return f"{_library_sources()}|{version}"


def fingerprint(paths: Iterable[pathlib.Path], base: pathlib.Path | None = None, decoder: str = "") -> str:
    """SHA-1 over sorted ``(path relative to base, size, mtime_ns, ctime_ns)`` of the given files and ``decoder``."""
    h = hashlib.sha1(decoder.encode() + b"\n")
    rows = []
    for p in paths:
        st = p.stat()
        rel = p.relative_to(base).as_posix() if base is not None else p.name
        rows.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}")
    for row in sorted(rows):
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_path(data_root: pathlib.Path, dataset: str, split: str, size: int | str, fp: str) -> pathlib.Path:
    """Where the decoded tensors of ``(dataset, split, size)`` with fingerprint ``fp`` live."""
    return pathlib.Path(data_root) / "cache" / f"{dataset}-{split}-{size}-{fp[:16]}.v{CACHE_FORMAT}.pt"


def cached(
    data_root: pathlib.Path,
    dataset: str,
    split: str,
    size: int | str,
    sources: Iterable[pathlib.Path],
    decode: Callable[[], Tensors],
    base: pathlib.Path | None = None,
    version: str = "",
) -> Tensors:
    """``decode()`` once and store the result; later calls with unchanged ``sources`` read it back.

    ``decode`` must return a dict of tensors (e.g. ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64).
    A file that cannot be read or fails its checksums is decoded again and rewritten, with a warning
    naming it. ``version``: bump it when a decoder outside ``dabench.datasets`` (a plugin's) changes
    what it returns; the built-in decoders' sources are part of the key already.
    """
    if os.environ.get("DABENCH_NO_CACHE") == "1":
        return decode()
    path = cache_path(data_root, dataset, split, size, fingerprint(sources, base, decoder_identity(version)))
    if path.is_file():
        try:
            return _verified(torch.load(path, map_location="cpu", weights_only=True), path)
        except CacheMismatch as exc:
            warnings.warn(f"corrupt cache file {path} ({exc}); decoding again and rewriting it", stacklevel=2)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is rebuilt, not fatal
            warnings.warn(f"unreadable cache file {path} ({type(exc).__name__}: {exc}); decoding again", stacklevel=2)
    tensors = decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            flat = {k: v.contiguous() for k, v in tensors.items()}
            torch.save(
                {"format": CACHE_FORMAT, "tensors": flat, "checksums": {k: checksum(v) for k, v in flat.items()}}, tmp
            )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data root wants it readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not write the decoded cache {path} ({exc}); the next load decodes again", stacklevel=2)
    return tensors


def download_requested() -> bool:
    """``DABENCH_DOWNLOAD=1`` lets the torchvision loaders download; the default never does."""
    # an empty value counts as unset
    return parse_bool(os.environ.get("DABENCH_DOWNLOAD") or "0", "DABENCH_DOWNLOAD")
