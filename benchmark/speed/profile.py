"""Where a training step's time goes: ``dabench bench --profile``.

``dabench bench`` says how fast a method's step is against the bare network; this module says
*why*: the time of each ATen operation per step, for the bare network and for each method, so a
gap can be read as the operations that make it (the data path's gather and normalisation, a
bottleneck's BatchNorm, a discriminator, the loss sums) rather than guessed.

Measured with :mod:`torch.profiler` on eager steps. On CUDA the time is each operation's *device*
(kernel) time, which a captured step replays unchanged: the launches a CUDA graph removes are
not in it, so the sum over operations is about the floor of a captured step. Off CUDA it is the
operations' own CPU time. Either way it is *self* time (a composite operation's children are
counted once, under their own names) of the operations named ``aten::…``.

Like :func:`~dabench.speed.bench.steady_rate`, a profile is the difference of two profiled calls,
of ``n`` and ``2n`` steps: what a call pays once (building the loop's state) cancels, and what
remains, divided by ``n``, is per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

#: operations shown per profile in the Markdown table (the JSON keeps them all)
SHOWN = 8


@dataclass(frozen=True)
class OpTime:
    """One ATen operation's share of a step: calls and microseconds per step."""

    name: str
    calls_per_step: float
    us_per_step: float


@dataclass
class StepProfile:
    """The operations of one step of ``label``, most time first; ``clock`` is ``device`` or ``cpu``."""

    label: str
    clock: str
    ops: list[OpTime] = field(default_factory=list)
    #: operations whose per-step difference came out below zero (timing noise larger than their
    #: time): shown as 0 µs, and named in :meth:`summary` so a reader knows the column was clipped
    clipped: list[str] = field(default_factory=list)

    @property
    def us_per_step(self) -> float:
        return sum(o.us_per_step for o in self.ops)

    def summary(self, shown: int = SHOWN) -> str:
        """``name ×calls µs`` of the ``shown`` largest operations, then what the rest add up to."""
        total = self.us_per_step or 1.0
        parts = [
            f"{o.name} ×{o.calls_per_step:g} {o.us_per_step:,.0f} µs ({100 * o.us_per_step / total:.0f}%)"
            for o in self.ops[:shown]
        ]
        rest = self.ops[shown:]
        if rest:
            parts.append(f"{len(rest)} more ops {sum(o.us_per_step for o in rest):,.0f} µs")
        if self.clipped:
            parts.append(f"{len(self.clipped)} ops below zero (noise) shown as 0: {', '.join(self.clipped[:3])}")
        return " · ".join(parts)


def _op_times(run: Callable[[], None], device: torch.device) -> dict[str, tuple[int, float]]:
    """``{aten op: (calls, self µs)}`` of one call of ``run``, on the device's clock."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize(device)  # every kernel of the call inside the profile
    out: dict[str, tuple[int, float]] = {}
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):  # record_function ranges and autograd nodes: their ops are counted
            continue
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        out[ev.key.removeprefix("aten::")] = (ev.count, float(us))
    return out


def profile_steps(label: str, run: Callable[[int], int], steps: int, device: torch.device) -> StepProfile:
    """The per-step operations of ``run(n)`` (trains about ``n`` steps, returns how many it did):
    the difference of profiled calls of ``steps`` and ``2 · steps`` steps, divided by the steps between them."""
    done: list[int] = []
    short = _op_times(lambda: done.append(run(steps)), device)
    long = _op_times(lambda: done.append(run(2 * steps)), device)
    extra = max(1, done[1] - done[0])
    ops, clipped = [], []
    for name in sorted(long.keys() | short.keys()):
        calls1, us1 = short.get(name, (0, 0.0))
        calls2, us2 = long.get(name, (0, 0.0))
        calls, us = (calls2 - calls1) / extra, (us2 - us1) / extra
        if calls > 0:  # none: an operation of the call's setup only
            ops.append(OpTime(name, round(calls, 2), max(0.0, us)))  # below zero: noise larger than its time
            if us < 0:
                clipped.append(name)
    ops.sort(key=lambda o: -o.us_per_step)
    return StepProfile(label, "device" if device.type == "cuda" else "cpu", ops, clipped)


__all__ = ["OpTime", "StepProfile", "profile_steps"]
