"""A decoded-tensor cache under ``<data_root>/cache/``: decode once, then read one file.

Decoding a dataset from its distribution format (JPEG folders, LIBSVM text, torchvision
pickles) costs seconds to minutes; reading the same uint8 tensors back from one
``torch.save`` file costs a fraction of a second. Each cache file is keyed by
``(dataset, split, size)`` and a **fingerprint of the source files**: the sorted list of
``(relative path, size in bytes, mtime in ns)`` hashed with SHA-1. Hashing the contents of a
few-GB folder on every load would cost as much as decoding it, so size + mtime stands in for a
content checksum: replacing, adding or removing a source file (or touching it) changes the key
and the next load decodes afresh; a stale cache file is simply never read again.

Files are written atomically (temporary file + rename), so an interrupted first load never
leaves a half-written cache, and read with ``weights_only=True`` (plain tensors, no pickle code).
A read-only data root just skips caching (with a warning). ``DABENCH_NO_CACHE=1`` disables it.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
import warnings
from typing import Callable, Iterable

import torch

Tensors = dict[str, torch.Tensor]


def fingerprint(paths: Iterable[pathlib.Path], base: pathlib.Path | None = None) -> str:
    """SHA-1 over sorted ``(path relative to base, size, mtime_ns)`` of the given files."""
    h = hashlib.sha1()
    rows = []
    for p in paths:
        st = p.stat()
        rel = p.relative_to(base).as_posix() if base is not None else p.name
        rows.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
    for row in sorted(rows):
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_path(data_root: pathlib.Path, dataset: str, split: str, size: int | str, fp: str) -> pathlib.Path:
    """Where the decoded tensors of ``(dataset, split, size)`` with fingerprint ``fp`` live."""
    return pathlib.Path(data_root) / "cache" / f"{dataset}-{split}-{size}-{fp[:16]}.pt"


def cached(
    data_root: pathlib.Path,
    dataset: str,
    split: str,
    size: int | str,
    sources: Iterable[pathlib.Path],
    decode: Callable[[], Tensors],
    base: pathlib.Path | None = None,
) -> Tensors:
    """``decode()`` once and store the result; later calls with unchanged ``sources`` read it back.

    ``decode`` must return a dict of tensors (e.g. ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64).
    """
    if os.environ.get("DABENCH_NO_CACHE") == "1":
        return decode()
    path = cache_path(data_root, dataset, split, size, fingerprint(sources, base))
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is rebuilt, not fatal
            warnings.warn(f"unreadable cache file {path} ({type(exc).__name__}: {exc}); decoding again")
    tensors = decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data root wants it readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not write the decoded cache {path} ({exc}); the next load decodes again")
    return tensors


def download_requested() -> bool:
    """``DABENCH_DOWNLOAD=1`` lets the torchvision loaders download; the default never does."""
    return os.environ.get("DABENCH_DOWNLOAD", "0").strip().lower() in ("1", "true", "yes")
