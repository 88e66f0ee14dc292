"""The Python API beside the CLI: run a matrix, load results, make tables and comparisons."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .core.registry import ensure_method_registered
from .running.matrix import DEFAULT_METHODS, DEFAULT_PAIRS, DEFAULT_SEEDS, Matrix, expand


def run(
    methods: Iterable[str | type] = DEFAULT_METHODS,
    pairs: Iterable[str] = DEFAULT_PAIRS,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    results_dir: str | os.PathLike = "results/default",
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    executor: str = "inline",
    **executor_options: Any,
):
    """Run a matrix and return its :class:`~dabench.running.scheduler.MatrixSummary`.

    ``methods`` may hold registered names, globs, or Method classes (registered on the fly
    under their ``name``), so a method under development needs no plugin packaging.
    ``executor`` names the executor (inline, local, ray, slurm); ``executor_options`` are the
    other fields of :class:`~dabench.running.executors.ExecutorOptions` (``workers``, ``compile``,
    ``seed_batch``, ``plugins`` ...); ``plugins`` (files or module names, as ``--plugin``) are
    imported here and by every worker process.

    A class that is not registered yet exists in this process only: the executors that run specs
    in other processes (every one but inline) re-import methods from ``plugins`` and installed
    packages, so such a class is refused before anything runs rather than recorded ``failed``
    by every worker.
    """
    # late: the executors import the engine (torch); reading results through this module must not
    from .core.registry import METHODS
    from .running.executors import ExecutorOptions
    from .running.scheduler import run_matrix

    methods = list(methods)  # read twice below: a generator would be empty the second time
    if executor != "inline":
        for m in methods:
            if not isinstance(m, type):
                continue
            name = m.__dict__.get("name") or m.__name__.lower()  # as ensure_method_registered names it
            if not (name in METHODS and METHODS.get(name) is m):
                raise ValueError(
                    f"dabench.run: method class {m.__qualname__} (module {m.__module__}) is not registered, "
                    f"so it lives in this process only and the {executor!r} executor's worker processes "
                    "cannot import it; put it in a file with @register_method and pass "
                    "plugins=['path/to/file.py'] (or install it as a package), or use executor='inline'"
                )
    names = [ensure_method_registered(m) if isinstance(m, type) else m for m in methods]
    # plugins= is an ExecutorOptions field (each worker imports them); this process must import
    # them too, before the matrix is expanded, or their methods are unknown here
    plugins = tuple(executor_options.get("plugins", ()))
    matrix = Matrix(tuple(names), tuple(pairs), tuple(int(s) for s in seeds), dict(overrides or {}), plugins)
    root = None if data_root is None else Path(data_root)
    options = ExecutorOptions(device=device, data_root=root, progress=progress, **executor_options)
    return run_matrix(expand(matrix), results_dir, options, executor=executor)


def load_results(*dirs: str | os.PathLike):
    """All run records of the given folders as one tidy DataFrame (one row per run)."""
    # late: ``import dabench`` (every plugin does it) must not pay for pandas/scipy until results are read
    from .analysis.results import load_results as _load

    return _load(*dirs)


def leaderboard(df, rule: str = "last", where=None):
    """Configurations × pairs table (mean ± std over seeds) under a model-selection rule;
    ``where`` (``["steps=2000"]``) keeps matching configurations."""
    from .analysis.tables import leaderboard as _lb  # late: as in load_results

    return _lb(df, rule=rule, where=where)


def compare(df, rule: str = "last", **kwargs: Any):
    """Statistical comparison of the methods (Friedman/Nemenyi, Wilcoxon–Holm, bootstrap)."""
    from .analysis.stats import compare as _cmp  # late: as in load_results

    return _cmp(df, rule=rule, **kwargs)
