"""A small Office-31-shaped folder of real JPEG photos (crops of scikit-learn's sample images)."""

from __future__ import annotations

import pathlib

import torch


def sample_photos() -> list[torch.Tensor]:
    from sklearn.datasets import load_sample_image

    return [torch.from_numpy(load_sample_image(n).copy()).permute(2, 0, 1) for n in ("china.jpg", "flower.jpg")]


def write_office31(
    root: pathlib.Path, domains=("amazon", "webcam", "dslr"), per_class: int = 2, size: tuple[int, int] = (60, 80)
) -> int:
    """Write ``<root>/office31/<domain>/images/<class>/frame_000k.jpg``; returns the images per domain."""
    from torchvision.io import encode_jpeg

    from dabench.datasets.office31 import OFFICE31_CLASSES

    photos = sample_photos()
    g = torch.Generator().manual_seed(0)
    h, w = size
    for d in domains:
        for c in OFFICE31_CLASSES:
            folder = root / "office31" / d / "images" / c
            folder.mkdir(parents=True)
            for k in range(per_class):
                p = photos[int(torch.randint(2, (1,), generator=g))]
                top = int(torch.randint(p.shape[1] - h, (1,), generator=g))
                left = int(torch.randint(p.shape[2] - w, (1,), generator=g))
                crop = p[:, top : top + h, left : left + w].contiguous()
                (folder / f"frame_{k:04d}.jpg").write_bytes(encode_jpeg(crop, quality=90).numpy().tobytes())
    return per_class * len(OFFICE31_CLASSES)
