"""Data on the device: shot drawing, evaluation sets, sampling and batched augmentation."""

from __future__ import annotations

import pytest
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


def test_shot_draws_of_a_seed_are_nested():
    """The matrix relies on it: removing the largest draw removes every smaller one of the seed."""
    data = _transductive_pair_data()
    small = draw_shots(data.target.labels, data.target_adapt, 2, seed=5)
    large = draw_shots(data.target.labels, data.target_adapt, 6, seed=5)
    assert torch.isin(small, large).all()


def test_a_method_with_more_own_shots_is_scored_on_the_same_images_as_the_others():
    """``dann.target_shots=6`` beside the pair's 3 on a transductive pair (Office-31): dann's run
    removed its 6 shots per class from its evaluation set, the other methods only 3, so the
    seed's methods were scored on different images (the old matrix gave every run eval_shots=k)."""
    from dabench.running.matrix import Matrix, expand

    specs = expand(
        Matrix(
            methods=("source-only", "dann", "linear-probe"),
            pairs=("office31-A-W",),
            seeds=(0,),
            overrides={"dann.target_shots": 6},
        )
    )
    assert {s.method: s.target_shots for s in specs} == {"source-only": 0, "dann": 6, "linear-probe": 3}
    pair = PAIRS.get("office31-A-W")
    data = _transductive_pair_data(n=31 * 10, classes=31)
    data = PairData(
        data.source,
        Domain("toy31", data.target.images, data.target.labels, tuple(f"c{i}" for i in range(31))),
        data.source_train,
        data.source_val,
        data.target_adapt,
        data.target_eval,
    )
    evals = [
        DeviceData(pair, data, torch.device("cpu"), s.seed, s.target_shots, s.eval_shots).target_eval for s in specs
    ]
    for e in evals[1:]:
        assert torch.equal(e.rows, evals[0].rows)
    assert len(evals[0]) == 31 * (10 - 6)  # dann's 6 shots per class are out of everyone's evaluation set
    # without a per-method override the run ids (and so existing results) are unchanged: eval_shots = k
    plain = expand(Matrix(methods=("source-only", "dann"), pairs=("office31-A-W",), seeds=(0,)))
    assert {s.eval_shots for s in plain} == {3}


def test_a_class_without_evaluation_images_has_no_per_class_accuracy_and_every_image_counts_once():
    """Transductive pair, class 2 holds exactly k=3 images: all are shots, none is left to score.
    Its per-class accuracy was recorded as 0 % (0 hits / max(0, 1)), as if the model missed it."""
    from dabench.engine.evaluate import evaluate
    from dabench.engine.train import build_method
    from dabench.running.matrix import Matrix, expand

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 300 + [1] * 300 + [2] * 3 + [3] * 300)  # 903: batches of 512 + a partial one
    imgs = torch.randint(0, 255, (len(labels), 1, 28, 28), dtype=torch.uint8, generator=g)
    dom = Domain("toy", imgs, labels, tuple("abcd"))
    idx = torch.arange(len(labels))
    data = PairData(dom, dom, idx[:800], idx[800:], idx, idx)
    pair = PAIRS.get("digits-offline")
    dd = DeviceData(pair, data, torch.device("cpu"), seed=0, train_shots=3, eval_shots=3)
    assert dd.eval_size == len(labels) - 4 * 3
    torch.manual_seed(0)
    spec = expand(Matrix(methods=("source-only",), pairs=("digits-offline",), seeds=(0,)))[0]
    method = build_method(spec, pair).train()
    point = evaluate(method, dd)
    assert method.training  # restored after the evaluation's eval mode
    per_class = point["target_per_class"]
    # the network has 10 outputs (digits-offline's LeNet): classes 4..9 have no images at all either
    assert [i for i, v in enumerate(per_class) if v is None] == [2, 4, 5, 6, 7, 8, 9]
    # per image over all 891 evaluation images, the partial last batch included, each once
    method.eval()
    with torch.no_grad():
        x, y = dd.batch_from(dd.target_eval, torch.arange(dd.eval_size), train=False)
        pred = method.predict(x).argmax(1)
    assert abs(point["target_acc"] - 100 * float((pred == y).float().mean())) < 1e-4
    for c in (0, 1, 3):
        assert abs(per_class[c] - 100 * float((pred[y == c] == c).float().mean())) < 1e-3


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.float32, torch.bool])
def test_a_domain_refuses_labels_that_are_not_int64(dtype):
    """Before, such a Domain was accepted and its runs failed inside torch naming neither pair nor
    field: int32 in the cross-entropy, uint8 in index_add_, float and bool in the shot draw's bincount."""
    labels = (torch.arange(6) % 2).to(dtype)
    with pytest.raises(ValueError, match=rf"domain 'mine': labels must be int64 class indices \[N\], got {dtype}"):
        Domain("mine", torch.zeros(6, 1, 8, 8, dtype=torch.uint8), labels, ("a", "b"))
