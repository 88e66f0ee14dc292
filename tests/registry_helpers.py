"""Temporary registrations for tests (a module of its own: ``conftest`` is ambiguous to import,
tests/benchmarks has one too)."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def restored_registries():
    """Registrations made inside the block (a plugin file loaded, a test method) are forgotten after
    it: left behind they join other tests' "every registered method" — e.g. ``dabench bench`` with
    no ``--methods`` once ran a plugin method that ends its process with ``os._exit(3)``."""
    from dabench.core.registry import BACKBONES, METHODS, PAIRS

    registries = (METHODS, PAIRS, BACKBONES)
    for reg in registries:
        reg.names()  # built-ins and entry points loaded first: the snapshot must include them
    saved = [(reg, dict(reg._items), dict(reg._sources), dict(reg._groups)) for reg in registries]
    modules = set(sys.modules)
    try:
        yield
    finally:
        # a plugin file imported inside the block is forgotten with its registrations: left in
        # sys.modules, load_plugin would take it as loaded and never register it again
        for name in set(sys.modules) - modules:
            if name.startswith("dabench_plugin_"):
                del sys.modules[name]
        for reg, items, sources, groups in saved:
            reg._items, reg._sources, reg._groups = items, sources, groups
