"""(c) Evaluation throughput: ``dabench.engine.evaluate`` vs a DataLoader loop over the same images.

dabench's evaluation also computes per-class accuracy and three label-free scores (entropy,
IM, SND); the baseline only counts correct predictions, so the ratio understates dabench.
"""

from __future__ import annotations

import pytest
import torch
from baselines import conventional_evaluate, loader

from dabench.core.registry import BACKBONES
from dabench.engine.evaluate import evaluate
from dabench.speed.bench import EngineBench

ROUNDS = 3
EVAL_BATCH = 512  # dabench's predict_split batch


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
def test_eval_images_per_s(benchmark, ratios, digits, device, workers, impl):
    pair, data = digits
    dev = device
    bench = EngineBench(
        "source-only",
        pair,
        data,
        dev,
        pair.schedule.batch_size,
        lambda: BACKBONES.get("lenet")(in_channels=1, image_size=28),
    )
    n_images = len(bench.data.target_eval) + len(bench.data.source_val)
    if impl == "dabench":
        fn = lambda: evaluate(bench.method, bench.data)  # noqa: E731
    else:
        # the same images: the seed's evaluation split (eval shots removed) and source validation
        loaders = [
            loader(data.target, _eval_indices(bench, data), pair, EVAL_BATCH, train=False, workers=workers),
            loader(data.source, data.source_val, pair, EVAL_BATCH, train=False, workers=workers),
        ]
        fn = lambda: conventional_evaluate(bench.method, loaders, dev)  # noqa: E731
    benchmark.group = "evaluation"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(benchmark, "(c) evaluation images/s", impl, n_images, "images/s")


def _eval_indices(bench: EngineBench, data) -> torch.Tensor:
    """Indices into the target domain of DeviceData's evaluation split (same seed, same shots removed)."""
    from dabench.engine.data import draw_shots, eval_indices

    removed = draw_shots(data.target.labels, data.target_adapt, bench.pair.target_shots, bench.spec.seed)
    return eval_indices(data, removed)
