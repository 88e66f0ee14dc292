"""(b) Linear probe: features computed once and cached vs a full forward pass per L-BFGS evaluation.

Both sides fit the same head with the same L-BFGS settings on the same target shots of the
same frozen network; only the feature cache differs.
"""

from __future__ import annotations

import pytest
import torch
from baselines import probe_with_forward_passes

from dabench.core.registry import BACKBONES
from dabench.speed.bench import EngineBench

ROUNDS = 3


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
def test_linear_probe_fits_per_s(benchmark, ratios, digits, device, impl):
    pair, data = digits
    dev = device
    bench = EngineBench(
        "linear-probe",
        pair,
        data,
        dev,
        pair.schedule.batch_size,
        lambda: BACKBONES.get("lenet")(in_channels=1, image_size=28),
    )
    hp = bench.method.hp
    if impl == "dabench":
        fn = lambda: bench.run(1)  # noqa: E731  (LinearProbe.fit: cached features + L-BFGS)
    else:
        idx = torch.arange(len(bench.data.shots), device=dev)
        x, y = bench.data.batch_from(bench.data.shots, idx, train=False)
        fn = lambda: probe_with_forward_passes(  # noqa: E731
            bench.method, x, y, int(hp["max_iter"]), float(hp["weight_decay"])
        )
    benchmark.group = "linear probe"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(benchmark, "(b) linear-probe fits/s", impl, 1, "fits/s")
