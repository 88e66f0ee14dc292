"""Shared fixtures: one small real matrix on the embedded pair, trained once per test session."""

from __future__ import annotations

import contextlib
import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"

#: small but real: every method trains on the embedded MNIST→optdigits pair
QUICK_STEPS = 300


@pytest.fixture
def one_thread():
    """In-process runs: one torch thread (the machine's cores are shared; more only oversubscribe),
    so results match worker processes, which run with one thread each."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    try:
        yield
    finally:
        for reg, items, sources, groups in saved:
            reg._items, reg._sources, reg._groups = items, sources, groups


@pytest.fixture
def restore_registries():
    """:func:`restored_registries` around one test."""
    with restored_registries():
        yield


@pytest.fixture(scope="session")
def quick_matrix(tmp_path_factory):
    """All six built-in methods × digits-offline × seed 0 at 300 steps; returns (results dir, summary)."""
    from dabench.running.executors import ExecutorOptions
    from dabench.running.matrix import Matrix, expand
    from dabench.running.scheduler import run_matrix

    out = tmp_path_factory.mktemp("quick")
    specs = expand(Matrix(seeds=(0,), overrides={"steps": QUICK_STEPS, "eval_every": 100}))
    summary = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False))
    return out, summary, specs
