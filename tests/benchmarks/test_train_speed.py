"""(a) Training steps/s per method: the dabench data path vs DataLoader + per-image transforms.

Same method class, seed, network, batch size and optimiser on both sides; the dabench side
is the engine's own loop (``EngineBench``: DeviceData sampling/augmentation on the device,
no per-image Python), the baseline is ``baselines.ConventionalTrainer``.
"""

from __future__ import annotations

import pytest
from baselines import ConventionalTrainer, loader

from dabench.core.registry import BACKBONES, METHODS
from dabench.speed.bench import EngineBench

STEPS_PER_ROUND = 10
ROUNDS = 3
METHOD_NAMES = ["source-only", "dann", "dan", "coral", "fine-tune"]


def _make_backbone():
    return BACKBONES.get("lenet")(in_channels=1, image_size=28)


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_train_steps_per_s(benchmark, ratios, digits, device, workers, method, impl):
    pair, data = digits
    dev = device
    bs = pair.schedule.batch_size
    bench = EngineBench(method, pair, data, dev, bs, _make_backbone)
    if impl == "dabench":
        fn = lambda: bench.run(STEPS_PER_ROUND)  # noqa: E731
    else:
        uses = METHODS.get(method).uses
        loaders = {}
        if uses.source_labels:
            loaders["source"] = loader(data.source, data.source_train, pair, bs, train=True, workers=workers)
        if uses.target_unlabeled:
            loaders["target"] = loader(data.target, data.target_adapt, pair, bs, train=True, workers=workers)
        if bench.spec.target_shots:
            shots = bench.data.shot_indices
            loaders["shots"] = loader(data.target, shots, pair, min(bs, len(shots)), train=True, workers=workers)
        trainer = ConventionalTrainer(bench.method, loaders, dev, lr=pair.schedule.lr)
        fn = lambda: trainer.run(STEPS_PER_ROUND)  # noqa: E731
    benchmark.group = f"train {method}"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(benchmark, f"(a) train steps/s, {method}", impl, STEPS_PER_ROUND, "steps/s")
