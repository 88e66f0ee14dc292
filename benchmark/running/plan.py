"""What one ``dabench run`` will run, for both front ends: the CLI (``cli.py``) and ``dabench.run``.

Each front end turns its own inputs (flags, keyword arguments) into names and dicts; from there
one path decides the specs and prepares the folder, so the two cannot drift apart:

- :func:`matrix_for`: a base matrix (a TOML file's, or the default) with the caller's methods,
  pairs, seeds, overrides and sweep laid over it; what the caller gives wins, as flags beside
  ``--matrix`` do, and each key remembers where it was given for the errors.
- :func:`rerun_specs`: the specs of ``--rerun`` (and of the runs that start from their weights),
  its only override ``save_features`` checked before any record moves.
- :func:`open_executor`: the executor built (a bad option fails here, before anything is
  written), then ``matrix.json`` written (not for a rerun: it must not replace the folder's
  matrix).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable
from typing import Any

from ..core.parsing import parse_bool
from ..core.spec import RunSpec
from .executors import ExecutorOptions, make_executor
from .executors.base import Executor
from .matrix import Matrix, MatrixError
from .scheduler import prepare_rerun, write_matrix_file
from .sweep import is_distribution


def matrix_for(
    base: Matrix | None,
    *,
    methods: Iterable[str] | None = None,
    pairs: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    overrides: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    trials: int | None = None,
    sweep_seed: int | None = None,
    max_trials: int | None = None,
    plugins: Iterable[str] = (),
    set_name: str = "--set",
    sweep_name: str = "--sweep",
) -> Matrix:
    """``base`` (default: :class:`Matrix`'s defaults) with what the caller gave laid over it.

    ``None`` keeps the base's value; ``overrides`` and ``sweep`` are merged key by key (the
    caller's win); ``plugins`` are added after the base's. ``set_name``/``sweep_name`` are how
    errors name where the caller's keys came from (``--set``, or ``overrides`` in Python).
    """
    # as a matrix file's [sweep.random] trials / sweep_seed and [matrix] max_trials are checked:
    # --trials 0 ran a random sweep of no trial at all ("0 runs"), and said nothing
    cli = sweep_name.startswith("-")
    for key, value, least in (("trials", trials, 1), ("sweep_seed", sweep_seed, 0), ("max_trials", max_trials, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            name = f"--{key.replace('_', '-')} {value}" if cli else f"{key}={value!r}"
            raise MatrixError(f"{name}: expected an integer >= {least}")
    base = base or Matrix()
    given, swept = dict(overrides or {}), dict(sweep or {})
    built = Matrix(
        methods=tuple(methods) if methods is not None else base.methods,
        pairs=tuple(pairs) if pairs is not None else base.pairs,
        seeds=tuple(seeds) if seeds is not None else base.seeds,
        overrides={**base.overrides, **given},
        plugins=(*base.plugins, *(p for p in plugins if p not in base.plugins)),
        origins={
            **{k: w for k, w in base.origins.items() if k not in given and k not in swept},
            **dict.fromkeys(given, set_name),
            **dict.fromkeys(swept, sweep_name),
        },
        sweep={**{k: v for k, v in base.sweep.items() if k not in swept}, **swept},
        trials=trials if trials is not None else base.trials,
        sweep_seed=sweep_seed if sweep_seed is not None else base.sweep_seed,
        max_trials=max_trials if max_trials is not None else base.max_trials,
    )
    # as --trials without a random sweep is refused (matrix.sweep_trials): --sweep-seed 3 with only a
    # grid, or no sweep, was taken and seeded nothing, so the user believed the draws reseeded
    if sweep_seed is not None and not any(is_distribution(v) for v in built.sweep.values()):
        name = f"--sweep-seed {sweep_seed}" if cli else f"sweep_seed={sweep_seed!r}"
        how = f"{sweep_name} KEY='uniform(a,b)' with {'--trials N' if cli else 'trials=N'}"
        raise MatrixError(
            f"{name}: there is no random sweep to seed (the seed only draws {sweep_name} distributions); "
            f"add {how}, or drop {'--sweep-seed' if cli else 'sweep_seed'}"
        )
    return built


def rerun_specs(
    results_dir: str | os.PathLike,
    run_ids: Iterable[str],
    overrides: dict[str, Any] | None = None,
    *,
    extra_plugins: Iterable[str] = (),
    archive: bool = True,
    set_name: str = "--set",
) -> tuple[list[RunSpec], tuple[str, ...]]:
    """The specs ``--rerun`` repeats and the plugins they need (:func:`~.scheduler.prepare_rerun`).

    A rerun repeats runs exactly as recorded: its only override is ``save_features`` (not part of
    the run id). Anything else is refused *before* :func:`prepare_rerun` moves a record aside, so
    a refused rerun leaves the folder as it was.
    """
    given = dict(overrides or {})
    other = sorted(set(given) - {"save_features"})
    if other:
        raise MatrixError(
            f"a rerun repeats runs exactly as recorded; the only {set_name} it takes is save_features "
            f"(given: {', '.join(other)})"
        )
    specs, plugins = prepare_rerun(results_dir, run_ids, extra_plugins=extra_plugins, archive=archive)
    if "save_features" in given:
        keep = parse_bool(given["save_features"], f"{set_name} save_features")
        specs = [dataclasses.replace(s, save_features=keep) for s in specs]
    return specs, plugins


def open_executor(
    name: str,
    results_dir: str | os.PathLike,
    options: ExecutorOptions,
    specs: list[RunSpec],
    *,
    plugins: Iterable[str] = (),
    sweep: dict[str, Any] | None = None,
    rerun: bool = False,
) -> Executor:
    """Build executor ``name``, then write ``results_dir/matrix.json`` unless this is a rerun.

    Built first so that a bad option (``--workers 0``, Ray or submitit missing, no cluster at an
    address) stops the command before the folder's matrix is replaced; such errors become one
    :class:`MatrixError` line.
    """
    check_device(options.device, local=name in ("inline", "local"))
    try:
        ex = make_executor(name, pathlib.Path(results_dir), options)
    except (
        ValueError,
        ImportError,
        ConnectionError,
    ) as exc:  # unknown name, bad --workers, no Ray/submitit, no cluster
        raise MatrixError(str(exc)) from None
    if not rerun:
        write_matrix_file(results_dir, specs, plugins=plugins, executor=name, workers=ex.workers, sweep=sweep)
    return ex


def check_device(name: str | None, local: bool = True) -> None:
    """Refuse a device that is no device (``gpu``), or, for runs on this machine (``local``), a
    CUDA device it does not have: otherwise every run of the matrix fails the same way, each
    recorded ``failed`` with torch's message. Ray and SLURM run on other machines: only the
    name is checked for them (a login node without a GPU may well submit ``cuda`` runs)."""
    if name in (None, "auto"):
        return
    from ..engine.train import device_problem  # late: building the plan must not import torch

    problem = device_problem(name, local)
    if problem:
        raise MatrixError(problem)


def check_wait_limit(seconds: object, name: str = "wait_limit") -> None:
    """``--wait-limit`` / ``dabench.run(wait_limit=)``: seconds >= 0 (``inf``: wait as long as it
    takes). ``-1`` and ``nan`` were taken by the CLI: each wait then ended at once, as ``0``."""
    import math

    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and not math.isnan(seconds)
    if not (ok and seconds >= 0):  # type: ignore[operator]
        shown = f"{name} {seconds}" if name.startswith("-") else f"{name}={seconds!r}"
        raise MatrixError(f"{shown}: expected a number of seconds >= 0 (0: do not wait)")


def check_executor_options(name: str, options: ExecutorOptions) -> None:
    """The executors' own option checks (:func:`~dabench.running.executors.base.check_executor_options`)
    without building one, as one :class:`MatrixError`: ``dabench run --dry-run`` calls it."""
    from .executors import check_executor_options as check  # late: the registry imports every executor

    try:
        check(name, options)
    except ValueError as exc:
        raise MatrixError(str(exc)) from None


__all__ = ["matrix_for", "rerun_specs", "open_executor", "check_device", "check_executor_options", "check_wait_limit"]
