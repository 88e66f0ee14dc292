"""A dabench plugin for the runner tests: a tiny synthetic pair that loads instantly and a
``slow`` method whose steps take a set time (so a test can kill a run mid-way).

Loaded with ``--plugin tests/tiny_plugin.py`` (or ``Matrix(plugins=...)``): worker processes
load it too, which is part of what the tests check.

``tiny``: 4 classes, 1x28x28. Each class is a bright bar in its own place; the target domain
draws the same bars dimmer, thicker and shifted by three pixels, with more noise, so source-only
is good but not perfect there. 240 source and 160 target images; fixed seed.
"""

from __future__ import annotations

import os
import time

import torch

from dabench import Batch, Domain, DomainPair, Loss, Method, PairData, Schedule, Uses, register_method, register_pair
from dabench.core.splits import stratified_split

CLASSES = ("top", "bottom", "left", "right")


def _domain(name: str, n: int, shift: int, gain: float, noise: float, seed: int) -> Domain:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    x = torch.rand(n, 1, 28, 28, generator=g) * noise
    for i, c in enumerate(labels.tolist()):
        a, b = 6 + shift, 10 + shift + (1 if gain < 1 else 0)
        if c == 0:
            x[i, 0, a:b, 4:24] += gain
        elif c == 1:
            x[i, 0, 28 - b : 28 - a, 4:24] += gain
        elif c == 2:
            x[i, 0, 4:24, a:b] += gain
        else:
            x[i, 0, 4:24, 28 - b : 28 - a] += gain
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Domain(name, images, labels.to(torch.int64), CLASSES)


def load(_root) -> PairData:
    source = _domain("tiny-src", 240, 0, 1.0, 0.3, 0)
    target = _domain("tiny-tgt", 160, 3, 0.35, 0.7, 1)
    s_train, s_val = stratified_split(source.labels, 0.1, seed=0)
    t_adapt, t_eval = stratified_split(target.labels, 0.5, seed=0)
    return PairData(source, target, s_train, s_val, t_adapt, t_eval)


register_pair(
    DomainPair(
        name="tiny",
        description="synthetic 4-class bars, for the runner tests",
        load=load,
        num_classes=4,
        backbone="lenet",
        channels=1,
        image_size=28,
        mean=(0.5,),
        std=(0.5,),
        schedule=Schedule(steps=20, batch_size=16, lr=0.01, eval_every=10, log_every=5),
        target_shots=2,
    )
)


@register_method("slow")
class Slow(Method):
    """Source-only cross-entropy whose every step also sleeps ``sleep`` seconds (tests kill it mid-run)."""

    protocol = "uda"
    uses = Uses(source_labels=True)
    defaults = {"sleep": 0.05}

    def fit(self, ctx) -> None:
        # $DABENCH_TEST_TRACE: append this run's id, so a test can count how often each run started
        trace = os.environ.get("DABENCH_TEST_TRACE")
        if trace:
            with open(trace, "a") as fh:
                fh.write(f"{ctx.spec.run_id} {os.getpid()}\n")
        super().fit(ctx)

    def loss(self, batch: Batch, progress: float) -> Loss:
        time.sleep(float(self.hp["sleep"]))
        logits, _ = self.net(batch.x_source)
        return self.combine(self.supervised_loss(batch, logits))
