"""One training step of a multi-phase method, watched update by update (for the staged methods'
tests; a module of its own: ``conftest`` is ambiguous to import, tests/benchmarks has one too)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import dabench
from dabench import Batch, Method
from dabench.engine.train import _build_optimizers, _pick

Snapshot = Callable[[torch.nn.Module], dict[str, torch.Tensor]]


def run_step(m: Method, batch: Batch, snapshot: Snapshot) -> list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]:
    """One step of ``m`` through real optimisers built the engine's way; each update's optimiser
    names and ``snapshot(m)`` (e.g. the parameters, or the full state) taken before it."""
    opts = _build_optimizers(m, dabench.Schedule(lr=0.1))
    seen = []

    def update(names, loss):
        before = snapshot(m)
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.total.backward()
        for o in _pick(opts, names, m):
            o.step()
        seen.append(((names,) if isinstance(names, str) else tuple(names), before))

    m.train()
    m.step(batch, 0.5, update)
    return seen


def random_batch(seed: int = 0, n: int = 8) -> Batch:
    """A random MNIST-shaped source batch with labels and a shifted target batch (no target labels)."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        x_source=torch.randn(n, 1, 28, 28, generator=g),
        y_source=torch.randint(0, 10, (n,), generator=g),
        x_target=torch.randn(n, 1, 28, 28, generator=g) + 1.0,
    )
