"""Shared fixtures: one small real matrix on the embedded pair, trained once per test session."""

from __future__ import annotations

import pathlib

import pytest

from registry_helpers import restored_registries

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
