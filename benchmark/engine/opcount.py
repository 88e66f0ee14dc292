"""Counting the operations a training step runs: the quantity that bounds small models on a GPU.

On a GPU every ATen operation that computes something is at least one kernel, and a LeNet-sized
kernel takes a few microseconds whether launched eagerly or replayed from a CUDA graph: once the
launches are gone (``--cuda-graphs``), a step's time is about its number of kernels times that.
:class:`OpCounter` counts them on any device, the CPU included, so the engine's own share of a
step (the data path, the divergence counters, the loss sums, the optimiser) can be compared with
the bare network's without a GPU (``dabench bench``'s ``ops/step`` columns).

Counted: every operation dispatched below autograd (forward, backward, optimiser, data path)
except views and ``detach`` (metadata only: no kernel) and the profiler's record-function
markers. Not counted: kernels an operation launches internally (cuDNN's several per convolution,
a ``foreach`` op's chunks), casts autocast inserts on CUDA only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

#: operations that launch no kernel although they are not views
_NO_KERNEL = frozenset({"detach", "_record_function_enter_new", "_record_function_exit", "lift_fresh"})


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as ops: ...`` counts the operations run inside (``ops.total``, ``ops.by_name``)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _NO_KERNEL:
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


def count_ops(fn: Callable[[], Any]) -> OpCounter:
    """The operations ``fn()`` runs."""
    with OpCounter() as ops:
        fn()
    return ops
