"""The Python API beside the CLI: run a matrix, load results, make tables and comparisons."""
from __future__ import annotations

import os
from typing import Any, Iterable

from .core.registry import METHODS, register_method
from .running.executors import ExecutorOptions
from .running.matrix import DEFAULT_METHODS, DEFAULT_PAIRS, DEFAULT_SEEDS, Matrix, expand
from .running.scheduler import run_matrix


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
    ``executor`` names the executor (inline, local, ray); ``executor_options`` are the other
    fields of :class:`~dabench.running.executors.ExecutorOptions` (``workers``, ``compile`` ...).
    """
    names = []
    for m in methods:
        if isinstance(m, type):
            # only a name set on the class itself: a subclass of a registered method inherits the
            # parent's ``name`` and would otherwise claim (and collide with) the parent's entry
            name = m.__dict__.get("name") or m.__name__.lower()
            if name not in METHODS or METHODS.get(name) is not m:
                # a different class under a taken name is refused naming both sources,
                # never silently replaced by (or run as) the registered one
                register_method(name)(m)
            names.append(name)
        else:
            names.append(m)
    matrix = Matrix(tuple(names), tuple(pairs), tuple(int(s) for s in seeds), dict(overrides or {}))
    options = ExecutorOptions(device=device, data_root=data_root, progress=progress, **executor_options)
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
