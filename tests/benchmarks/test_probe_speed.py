"""(b) Linear probe: features computed once and cached vs a full forward pass per L-BFGS evaluation.

Both sides fit the same head with the same L-BFGS settings on the same target shots of the
same frozen network; only the feature cache differs. Each round starts both sides from the same
RNG state, so the head starts from the same weights and L-BFGS runs the same number of
evaluations on both (it stops on tolerances: from other starting weights one fit took 26 and
another 36 evaluations, and fits/s compared different amounts of work).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from baselines import probe_with_forward_passes

from dabench.core.registry import BACKBONES
from dabench.speed.bench import EngineBench

ROUNDS = 3


def _same_start() -> None:
    """pytest-benchmark's setup before every round: the head's initial weights drawn alike on both sides."""
    torch.manual_seed(0)


def _fit(impl: str, digits, device: torch.device) -> Callable[[], object]:
    """One fit of the probe: dabench's (``LinearProbe.fit``: cached features + L-BFGS) or the baseline's."""
    pair, data = digits
    bench = EngineBench(
        "linear-probe",
        pair,
        data,
        device,
        pair.schedule.batch_size,
        lambda: BACKBONES.get("lenet")(in_channels=1, image_size=28),
    )
    hp = bench.method.hp
    if impl == "dabench":
        return lambda: bench.run(1)
    idx = torch.arange(len(bench.data.shots), device=device)
    x, y = bench.data.batch_from(bench.data.shots, idx, train=False)
    return lambda: probe_with_forward_passes(bench.method, x, y, int(hp["max_iter"]), float(hp["weight_decay"]))


@pytest.mark.parametrize("impl", ["dabench", "baseline"])
def test_linear_probe_fits_per_s(benchmark, ratios, digits, device, impl):
    benchmark.group = "linear probe"
    benchmark.pedantic(_fit(impl, digits, device), setup=_same_start, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ratios.record(benchmark, "(b) linear-probe fits/s", impl, 1, "fits/s")


def test_both_sides_fit_with_the_same_number_of_lbfgs_evaluations(digits, monkeypatch) -> None:
    """The ratio times the feature cache, not luckier starting weights: from the round's seed, both
    sides' L-BFGS fits evaluate their closure equally often, round after round."""
    evaluations: list[int] = []
    step = torch.optim.LBFGS.step

    def counted(self, closure):
        calls = [0]

        def wrapped():
            calls[0] += 1
            return closure()

        out = step(self, wrapped)
        evaluations.append(calls[0])
        return out

    monkeypatch.setattr(torch.optim.LBFGS, "step", counted)
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order on both sides
    try:
        fits = {impl: _fit(impl, digits, cpu) for impl in ("dabench", "baseline")}
        for _ in range(3):  # as the benchmark's rounds run: the setup, then one fit
            for fit in fits.values():
                _same_start()
                fit()
    finally:
        torch.set_num_threads(threads)
    dabench, baseline = evaluations[0::2], evaluations[1::2]
    assert len(dabench) == 3 and dabench == baseline, f"L-BFGS evaluations: dabench {dabench}, baseline {baseline}"
