"""The step loop makes no host synchronisation except the periodic divergence check.

On the CPU nothing synchronises, but every way Python code can pull a tensor's value to
the host (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.numpy()``)
is a device sync on CUDA. We count those calls during ``train_steps`` outside evaluations:
at most one per ``log_every`` steps is allowed (the check of the first non-finite step).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from dabench.core.registry import PAIRS
from dabench.running.unit import load_pair_data
from dabench.speed.bench import EngineBench

STEPS, LOG_EVERY, EVAL_EVERY = 12, 4, 6
HOST_READS = ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


class HostReadCounter:
    """Patches ``torch.Tensor``'s host-read methods; counts calls while ``active``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.calls: list[str] = []
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.active:
                self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return counted

    @contextlib.contextmanager
    def paused(self):
        was, self.active = self.active, False
        try:
            yield
        finally:
            self.active = was


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)


@pytest.mark.parametrize("method", ["source-only", "dann", "dan", "coral", "fine-tune"])
def test_step_loop_syncs_once_per_log_every(method, digits, monkeypatch):
    pair, data = digits
    bench = EngineBench(method, pair, data, torch.device("cpu"), batch_size=16, make_backbone=_lenet)
    spec = bench.spec
    bench.spec = type(spec)(
        **{
            **spec.__dict__,
            "schedule": spec.schedule.replace(
                steps=STEPS * (2 if method == "fine-tune" else 1), log_every=LOG_EVERY, eval_every=EVAL_EVERY
            ),
        }
    )
    from dabench.engine.train import RunContext

    ctx = RunContext(bench.spec, pair, bench.data, bench.device)
    counter = HostReadCounter(monkeypatch)
    real_eval = ctx.record_eval
    evals: list[int] = []

    def record_eval(m, step, losses=None):  # evaluations sync once by design: not counted
        evals.append(step)
        with counter.paused():
            return real_eval(m, step, losses)

    ctx.record_eval = record_eval
    counter.active = True
    bench.method.fit(ctx)
    counter.active = False
    assert ctx.steps_done == STEPS
    assert evals == [EVAL_EVERY, 2 * EVAL_EVERY]  # evaluations did run (and were excluded)
    allowed = -(-STEPS // LOG_EVERY)
    assert len(counter.calls) <= allowed, f"{method}: host reads in the step loop: {counter.calls}"


def test_counter_sees_a_sync(monkeypatch):
    """The patch works: a plain ``.item()`` and ``int()`` are counted."""
    counter = HostReadCounter(monkeypatch)
    counter.active = True
    t = torch.ones(())
    t.item()
    int(t)
    float(t)
    counter.active = False
    assert counter.calls == ["item", "__int__", "__float__"]


def _lenet():
    from dabench.core.registry import BACKBONES

    return BACKBONES.get("lenet")(in_channels=1, image_size=28)
