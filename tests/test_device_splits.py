"""One device copy of a pair's splits per seed-batched group (``dabench.engine.data.DeviceSplits``).

The seeds of a ``--seed-batch`` group read the same images: their :class:`DeviceData` share the
split tensors (same storage), while the shots, the evaluation subset, the generator and the
streams stay per seed. A run of its own uploads its own, and on a transductive pair (evaluation
images inside the adaptation split, as Office-31) its evaluation split is a view of the target
split, not a second copy. Batches and labels are the ones the per-run copies gave.
"""

from __future__ import annotations

import pytest
import torch

from dabench import PAIRS
from dabench.engine import seed_batch
from dabench.engine.data import DeviceData, DeviceSplits, device_bytes, eval_indices
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import load_pair_data
from dabench.speed.bench import synthetic_pair

CPU = torch.device("cpu")
SPLITS = ("source", "source_val", "target", "target_eval")


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _group(pair, pair_data, seeds, shots: int, splits: DeviceSplits | None = None) -> list[DeviceData]:
    """One DeviceData per seed, as :func:`seed_batch.execute_seeds` builds them (``splits`` shared)."""
    return [DeviceData(pair, pair_data, CPU, s, shots, pair.target_shots, splits) for s in seeds]


def _old_eval(pair_data, d: DeviceData, seed: int, shots: int, eval_shots: int) -> torch.Tensor:
    """The seed's evaluation indices into the target domain, as the per-run copy gathered them."""
    from dabench.engine.data import draw_shots

    labels, pool = pair_data.target.labels, pair_data.target_adapt
    removed = torch.cat([draw_shots(labels, pool, shots, seed), draw_shots(labels, pool, eval_shots, seed)]).unique()
    return eval_indices(pair_data, removed)


def test_the_seeds_of_a_batched_group_share_one_copy_of_the_splits(one_thread, monkeypatch):
    """The real path: ``execute_seeds`` trains two seeds; their DeviceData hold the same split
    tensors (one storage each), their own shots and generator, and both complete."""
    pair, pair_data = PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)
    specs = expand(
        Matrix(methods=("source-only",), pairs=("digits-offline",), seeds=(0, 1),
               overrides={"steps": 4, "eval_every": 4, "log_every": 2, "batch_size": 16})
    )  # fmt: skip
    seen: list = []
    real = seed_batch.train_batched

    def spy(methods, ctxs, *args, **kwargs):
        seen.extend(ctx._data for ctx in ctxs)  # the engine's DeviceData (ctx.data is the method's label-free view)
        return real(methods, ctxs, *args, **kwargs)

    monkeypatch.setattr(seed_batch, "train_batched", spy)
    results = seed_batch.execute_seeds(specs, pair, pair_data, CPU)
    assert all(r.timings["seed_batch"] == "2 seeds" for r in results), results  # type: ignore[union-attr]
    a, b = seen
    for name in SPLITS:
        sa, sb = getattr(a, name), getattr(b, name)
        assert _ptr(sa.base) == _ptr(sb.base), name
        assert _ptr(sa.labels) == _ptr(sb.labels), name
    assert a.generator is not b.generator
    assert not torch.equal(a.shot_indices, b.shot_indices) or len(a.shot_indices) == 0


def test_a_group_costs_one_copy_plus_each_seeds_own_small_parts():
    """Bytes held: five seeds of a photo-like pair (transductive, stored 73 px, cropped to 64)
    cost one run's data plus four seeds' shots and evaluation rows, not five copies."""
    pair, pair_data = synthetic_pair(200, image_size=64, num_classes=10, backbone="resnet18")
    n_seeds, shots = 5, 3
    one = device_bytes(*_group(pair, pair_data, [0], shots))
    group = _group(pair, pair_data, range(n_seeds), shots, DeviceSplits(pair_data, CPU))
    shared = device_bytes(*group)
    image_bytes = lambda d: d.target.images[0].numel() * d.target.images.element_size()  # noqa: E731
    per_seed = max(len(d.shots) * image_bytes(d) + 3 * 8 * len(d.target) for d in group)  # shots + rows/labels
    assert shared <= one + (n_seeds - 1) * per_seed
    images = sum(t.images.numel() for t in (pair_data.source, pair_data.target))  # the pair's uint8 images
    assert one < 1.1 * images  # one copy of each domain: the evaluation split is a view of the target
    assert shared < 0.5 * n_seeds * one


def test_views_give_the_batches_and_labels_the_own_copies_gave():
    """Transductive pair, shots removed from evaluation: the evaluation split is ``rows`` into the
    shared target split, and gathers the images and labels the old per-run copy held."""
    pair, pair_data = synthetic_pair(100, image_size=28, channels=1, num_classes=10, backbone="lenet")
    splits = DeviceSplits(pair_data, CPU)
    for seed in (0, 1):
        d = DeviceData(pair, pair_data, CPU, seed, 3, 3, splits)
        evaluation = _old_eval(pair_data, d, seed, 3, 3)
        assert 0 < len(evaluation) < len(pair_data.target_eval)  # the shots were removed
        assert d.target_eval.rows is not None and _ptr(d.target_eval.base) == _ptr(d.target.base)
        idx = torch.arange(len(evaluation))
        assert torch.equal(d.target_eval.gather(idx), pair_data.target.images[evaluation])
        assert torch.equal(d.target_eval.labels, pair_data.target.labels[evaluation])
        assert torch.equal(d.target_eval.images, pair_data.target.images[evaluation])  # the split's own, as before
        x, y = d.batch_from(d.target_eval, idx[:7], train=False)
        old = d.preprocess(pair_data.target.images[evaluation[:7]], train=False)
        assert torch.equal(x, old) and torch.equal(y, pair_data.target.labels[evaluation[:7]])
        assert torch.equal(d.shots.labels, pair_data.target.labels[d.shot_indices])
        assert torch.equal(d.source.gather(torch.arange(5)), pair_data.source.images[pair_data.source_train[:5]])


def test_a_run_replacing_its_split_leaves_the_other_seeds_alone():
    """Split objects are per DeviceData (tensors shared): a test or tool that swaps one run's
    ``split.images`` changes that run only."""
    pair, pair_data = PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)
    a, b = _group(pair, pair_data, (0, 1), 0, DeviceSplits(pair_data, CPU))
    before = b.target_eval.base
    a.target_eval.images = a.target_eval.images.flip(-1)
    assert b.target_eval.base is before and a.target_eval.base is not before


def test_splits_of_another_pair_or_device_are_refused():
    pair, pair_data = PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)
    _, other = synthetic_pair(100, image_size=28, channels=1, num_classes=10, backbone="lenet")
    with pytest.raises(ValueError, match="another pair data or device"):
        DeviceData(pair, pair_data, CPU, 0, 0, 0, DeviceSplits(other, CPU))
    with pytest.raises(ValueError, match="another pair data or device"):
        DeviceData(pair, pair_data, CPU, 0, 0, 0, DeviceSplits(pair_data, "meta"))
    with pytest.raises(ValueError, match="'validation' is not one of"):
        DeviceSplits(pair_data, CPU).view("validation", torch.arange(3))
