"""(c) Evaluation throughput: ``dabench.engine.evaluate`` vs a DataLoader loop over the same images.

Both sides forward the same images: the seed's target evaluation split, the source validation
split and the label-free validators' sample images that are not in the evaluation split (both
reuse the evaluation split's logits for the others), and both compute the label-free scores on that
sample; dabench's also adds per-class accuracy. The rate counts those images on both sides
(``eval_work``; tests/benchmarks/test_eval_work.py checks the counts without timing anything).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from baselines import conventional_evaluate, loader

from dabench.core.registry import BACKBONES
from dabench.engine.evaluate import evaluate
from dabench.speed.bench import EngineBench

ROUNDS = 3
EVAL_BATCH = 512  # dabench's predict_split batch


def eval_bench(pair, data, device: torch.device) -> EngineBench:
    return EngineBench(
        "source-only",
        pair,
        data,
        device,
        pair.schedule.batch_size,
        lambda: BACKBONES.get("lenet")(in_channels=1, image_size=28),
    )


def eval_work(bench: EngineBench, data, impl: str, workers: int = 0) -> tuple[Callable[[], object], int]:
    """(one evaluation of ``impl``, the images it forwards): the same images on both sides."""
    dev = bench.device
    n_images = len(bench.data.target_eval) + len(bench.data.source_val) + len(bench.data.validator_forward)
    if impl == "dabench":
        return (lambda: evaluate(bench.method, bench.data)), n_images
    # the same images: the seed's evaluation split (eval shots removed), source validation, and the
    # validator sample's images outside the evaluation split (domain indices from adaptation positions)
    validator_images = data.target_adapt[bench.data.validator_forward.cpu()]
    loaders = [
        loader(data.target, _eval_indices(bench, data), bench.pair, EVAL_BATCH, train=False, workers=workers),
        loader(data.source, data.source_val, bench.pair, EVAL_BATCH, train=False, workers=workers),
    ]
    extra = loader(data.target, validator_images, bench.pair, EVAL_BATCH, train=False, workers=workers)
    validator = (extra, bench.data.validator_from_eval.cpu())
    return (lambda: conventional_evaluate(bench.method, loaders, dev, validator)), n_images


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
def test_eval_images_per_s(benchmark, ratios, digits, device, workers, impl):
    pair, data = digits
    fn, n_images = eval_work(eval_bench(pair, data, device), data, impl, workers)
    benchmark.group = "evaluation"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(benchmark, "(c) evaluation images/s", impl, n_images, "images/s")


def _eval_indices(bench: EngineBench, data) -> torch.Tensor:
    """Indices into the target domain of DeviceData's evaluation split (same seed, same shots removed)."""
    from dabench.engine.data import draw_shots, eval_indices

    removed = draw_shots(data.target.labels, data.target_adapt, bench.pair.target_shots, bench.spec.seed)
    return eval_indices(data, removed)
