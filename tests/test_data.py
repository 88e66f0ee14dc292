"""Data on the device: shot drawing, evaluation sets, sampling and batched augmentation."""

from __future__ import annotations

import torch

from dabench import PAIRS
from dabench.core.domain import Domain, PairData
from dabench.engine.data import DeviceData, Stream, augment_affine, draw_shots


def _transductive_pair_data(n=60, classes=3):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    dom = Domain("toy", imgs, labels, tuple("abc"))
    idx = torch.arange(n)
    return PairData(dom, dom, idx[:50], idx[50:], idx, idx)  # target eval == target adapt


def test_shots_are_k_per_class_deterministic_per_seed():
    data = _transductive_pair_data()
    a = draw_shots(data.target.labels, data.target_adapt, 4, seed=1)
    b = draw_shots(data.target.labels, data.target_adapt, 4, seed=1)
    c = draw_shots(data.target.labels, data.target_adapt, 4, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(data.target.labels[a]).tolist() == [4, 4, 4]


def test_shots_are_removed_from_the_evaluation_set_for_every_method():
    data = _transductive_pair_data()
    pair = PAIRS.get("digits-offline")
    uda = DeviceData(pair, data, torch.device("cpu"), seed=3, train_shots=0, eval_shots=4)
    few = DeviceData(pair, data, torch.device("cpu"), seed=3, train_shots=4, eval_shots=4)
    assert uda.eval_size == few.eval_size == 60 - 12
    assert len(few.shots) == 12 and len(uda.shots) == 0
    assert torch.equal(uda.target_eval.images, few.target_eval.images)
    shot_imgs = few.shots.images.flatten(1)
    eval_imgs = few.target_eval.images.flatten(1)
    assert not (shot_imgs[:, None, :] == eval_imgs[None, :, :]).all(-1).any()


def test_stream_covers_an_epoch_without_repeats():
    s = Stream(10, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    seen = torch.cat([s.next(), s.next(), s.next()])[:10]
    assert sorted(seen.tolist()) == list(range(10))


def test_augmentations_keep_shape_and_eval_is_deterministic():
    x = torch.rand(6, 3, 40, 40)
    g = torch.Generator().manual_seed(0)
    for kind in ("none", "shift", "crop_flip", "resized_crop_flip"):
        out = augment_affine(x, kind, 32, g, train=True)
        assert out.shape == (6, 3, 32, 32), kind
        e1 = augment_affine(x, kind, 32, g, train=False)
        e2 = augment_affine(x, kind, 32, g, train=False)
        assert torch.equal(e1, e2), kind
    # shifting moves content but keeps it (no scaling): total mass is preserved up to the border
    digit = torch.zeros(1, 1, 28, 28)
    digit[..., 10:18, 10:18] = 1
    shifted = augment_affine(digit, "shift", 28, g, train=True)
    assert abs(shifted.sum().item() - 64) < 8


def test_embedded_pair_has_the_documented_sizes():
    data = PAIRS.get("digits-offline").load(None)
    assert len(data.source) == 5000 and len(data.target) == 1797
    assert len(data.source_train) == 4500 and len(data.source_val) == 500
    assert abs(len(data.target_adapt) - len(data.target_eval)) <= 10
    assert not set(data.target_adapt.tolist()) & set(data.target_eval.tolist())
    assert data.target.images.shape[1:] == (1, 28, 28) and data.target.images.dtype == torch.uint8
