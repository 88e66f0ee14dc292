"""Optional ``torch.compile`` of a method's networks (``dabench run --compile``, ``dabench bench --compile``).

Compilation is an engine option, not part of a run's spec: it changes speed, not the
computation, so it does not enter the run id. Modules are compiled *in place* with
``nn.Module.compile`` so that ``state_dict`` keys, checkpoints and ``method.net`` stay as
they are (``torch.compile(module)`` would wrap them in an ``OptimizedModule``).
"""

from __future__ import annotations

import torch
from torch import nn


def compile_method(method: nn.Module, mode: str | None = None) -> nn.Module:
    """Compile each direct sub-network of ``method`` (``net``, a discriminator, ...) in place.

    The method's own ``loss`` stays eager: it is cheap Python glue around the networks, and
    custom autograd functions (gradient reversal) and data-dependent branches there would
    only cause graph breaks. Returns ``method`` for chaining.
    """
    if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2.0
        raise RuntimeError(f"torch {torch.__version__} has no torch.compile; drop --compile")
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile(mode=mode)
    return method
