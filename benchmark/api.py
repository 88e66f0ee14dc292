"""The Python API beside the CLI: run a matrix, load results, make tables and comparisons."""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.registry import ensure_method_registered, split_names
from .running.matrix import Matrix, MatrixError, expand, load_matrix_file

if TYPE_CHECKING:
    from .running.scheduler import MatrixSummary


def run(
    methods: str | Iterable[str | type] | None = None,
    pairs: str | Iterable[str] | None = None,
    seeds: str | Iterable[int] | None = None,
    results_dir: str | os.PathLike = "results/default",
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    executor: str = "inline",
    *,
    matrix: str | os.PathLike | Matrix | None = None,
    sweep: dict[str, Any] | None = None,
    trials: int | None = None,
    sweep_seed: int | None = None,
    max_trials: int | None = None,
    rerun: str | Iterable[str] = (),
    wait_limit: float | None = None,
    **executor_options: Any,
) -> MatrixSummary:
    """Run a matrix as ``dabench run`` does, into the same results folder, and return what it did.

    Parameters (each the Python form of a ``dabench run`` flag, checked as the CLI checks it,
    before anything runs):

    methods
        Registered names, globs or groups (``"dann"``, ``["dann", "source-only"]``, ``"da*"``,
        ``"uda"``; a string is a comma list, as ``--methods``), or Method classes (registered on
        the fly under their ``name``), so a method under development needs no plugin packaging.
        Default: the matrix file's, else ``source-only, dan, dann, coral, linear-probe, fine-tune``.
    pairs
        Pair names or globs (``"digits-offline"``; a string is a comma list, ``folder:...`` kept
        whole). Default: the matrix file's, else ``digits-offline``.
    seeds
        Non-negative integers (``[0, 1]``, ``range(3)``, or ``"0,1"`` as ``--seeds``).
        Default: the matrix file's, else ``0, 1, 2``.
    results_dir
        The results folder (``--results``): records, checkpoints and ``matrix.json`` (what
        ``dabench status`` counts pending runs from and ``--rerun`` loads plugins from). A second
        call with the same matrix recomputes nothing: complete runs are skipped.
    overrides
        ``--set`` as a dict: ``{"steps": 300, "dann.trade_off": 0.5}`` (schedule keys,
        ``target_shots``, ``backbone``, ``backbone.<option>``, ``<method>.<hparam>``,
        ``<hparam>``, ``save_features``); they win over the matrix file's ``[set]``.
    device
        ``auto`` / ``None`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1`` ...
    data_root
        Where datasets live (default: ``$DABENCH_DATA`` or the default data folder).
    progress
        Progress bars on stderr (off by default here, on in the CLI: a script's log stays clean).
    executor
        ``inline`` (this process), ``local``, ``ray`` or ``slurm`` (``--executor``).
    matrix
        A TOML matrix file (``--matrix``) or a :class:`~dabench.Matrix`; the arguments given
        beside it win over it, as flags beside ``--matrix`` do.
    sweep, trials, sweep_seed, max_trials
        ``--sweep`` as a dict (``{"dann.trade_off": [0.1, 1], "lr": "log_uniform(1e-3, 0.1)"}``),
        ``--trials``, ``--sweep-seed``, ``--max-trials``.
    rerun
        Run ids of ``results_dir`` to repeat from the specs in their records (``--rerun``; the old
        records move to ``DIR/previous/``, and the runs that start from their weights are repeated
        too). Takes no methods, pairs, seeds, matrix or sweep; its only override is ``save_features``.
    wait_limit
        Seconds to wait for a run another live runner holds that a run here depends on
        (``--wait-limit``; default 3600).
    executor_options
        The other fields of :class:`~dabench.running.executors.ExecutorOptions`: ``workers``,
        ``runs_per_gpu``, ``checkpoint_every``, ``compile``, ``cuda_graphs``, ``seed_batch``,
        ``plugins`` (files or module names, as ``--plugin``: imported here and by every worker
        process) ...; an unknown one is refused naming the valid ones.

    Returns a :class:`~dabench.running.scheduler.MatrixSummary`: ``ran`` (the records written),
    ``skipped_complete`` (run ids already complete), ``counts()`` (what ``dabench run`` prints).
    The leaderboard is ``dabench.leaderboard(dabench.load_results(results_dir))``.

    Raises :class:`~dabench.MatrixError` (a bad override, sweep, seed, option combination),
    :class:`~dabench.RegistryError` (an unknown method, pair or backbone, naming the valid ones),
    ``TypeError`` (a Method class that fails validation, an unknown executor option) before
    anything runs.

    A class that is not registered yet exists in this process only: the executors that run specs
    in other processes (every one but inline) re-import methods from ``plugins`` and installed
    packages, so such a class is refused before anything runs rather than recorded ``failed``
    by every worker; so is a method or pair registered in this session (``@register_method`` in
    a notebook cell or the script itself) that no plugin file or installed package provides.
    """
    # late: the executors import the engine (torch); reading results through this module must not
    from .core.domain import default_data_root
    from .core.registry import METHODS
    from .running.executors import ExecutorOptions
    from .running.plan import check_wait_limit, matrix_for, open_executor, rerun_specs
    from .running.scheduler import WAIT_LIMIT_S, run_matrix

    _check_arguments(
        results_dir=results_dir,
        data_root=data_root,
        matrix=matrix,
        overrides=overrides,
        sweep=sweep,
        device=device,
        progress=progress,
    )  # trials, sweep_seed, max_trials: running.plan.matrix_for checks them, for the CLI's flags too
    valid_options = [f.name for f in dataclasses.fields(ExecutorOptions) if f.init]
    unknown = sorted(set(executor_options) - set(valid_options))
    taken = {"device", "data_root", "progress"}  # named parameters of run() itself
    if unknown or set(executor_options) & taken:
        raise TypeError(
            f"dabench.run: unknown executor option(s) {', '.join(unknown or sorted(set(executor_options) & taken))}; "
            f"valid: {', '.join(o for o in valid_options if o not in taken)}"
        )
    _check_executor_options(executor_options)
    if executor_options.get("workers") is not None and executor == "inline":
        raise MatrixError(
            f"dabench.run: workers={executor_options['workers']}: the inline executor runs one run at a time in "
            "this process; use executor='local' (or 'ray') to run several at once"
        )
    if wait_limit is not None:
        check_wait_limit(wait_limit, "dabench.run: wait_limit")
    extra_plugins = _names("plugins", executor_options.get("plugins", ()))
    rerun_ids = _names("rerun", rerun)
    given = dict(overrides or {})
    if rerun_ids:
        beside = {
            "methods": methods,
            "pairs": pairs,
            "seeds": seeds,
            "matrix": matrix,
            "sweep": sweep,
            "trials": trials,
        }
        asked = {k: v for k, v in beside.items() if v is not None}
        if asked:
            raise MatrixError(
                f"dabench.run: rerun repeats runs exactly as recorded; it takes no {', '.join(asked)} "
                "(its only override is save_features)"
            )
        specs, plugins = rerun_specs(results_dir, rerun_ids, given, extra_plugins=extra_plugins, set_name="overrides")
        swept: dict[str, Any] = {}
    else:
        method_list = _methods(methods, METHODS, executor) if methods is not None else None
        built = matrix_for(
            matrix if isinstance(matrix, Matrix) or matrix is None else load_matrix_file(Path(matrix)),
            methods=method_list,
            pairs=_names("pairs", pairs, split=split_names) if pairs is not None else None,
            seeds=_seeds(seeds) if seeds is not None else None,
            overrides=given,
            sweep=sweep,
            trials=trials,
            sweep_seed=sweep_seed,
            max_trials=max_trials,
            plugins=extra_plugins,
            set_name="overrides",
            sweep_name="sweep",
        )
        specs = expand(built)  # loads the plugins here before the matrix is read
        plugins, swept = built.plugins, built.sweep
    if executor != "inline":
        _check_reachable(specs, plugins, executor)
    root = Path(data_root) if data_root is not None else default_data_root()
    options = ExecutorOptions(
        device=device, data_root=root, progress=progress, **{**executor_options, "plugins": tuple(plugins)}
    )
    ex = open_executor(executor, Path(results_dir), options, specs, plugins=plugins, sweep=swept, rerun=bool(rerun_ids))
    limit = WAIT_LIMIT_S if wait_limit is None else float(wait_limit)
    return run_matrix(specs, results_dir, options, executor=ex, wait_limit_s=limit)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(**given: Any) -> None:
    """The types the CLI's parser guarantees its flags, checked for the keywords: a wrong one failed
    deep inside (``expected str, bytes or os.PathLike object, not int``, ``dictionary update
    sequence element #0``), or was taken (``trials=0``: a random sweep of no run at all)."""
    paths = {"results_dir": False, "data_root": True, "matrix": True}  # name -> None allowed
    for name, none_ok in paths.items():
        v = given[name]
        if not (
            (v is None and none_ok) or isinstance(v, (str, os.PathLike)) or (name == "matrix" and isinstance(v, Matrix))
        ):
            valid = "a dabench.Matrix or a TOML file's path" if name == "matrix" else "a folder's path (str or Path)"
            raise MatrixError(f"dabench.run: {name}={v!r}: expected {valid}")
    for name, example in (("overrides", '{"steps": 300}'), ("sweep", '{"dann.trade_off": [0.1, 1]}')):
        v = given[name]
        if v is not None and not isinstance(v, Mapping):
            raise MatrixError(f"dabench.run: {name}={v!r}: expected a dict of keys and values, such as {example}")
    if given["device"] is not None and not isinstance(given["device"], str):
        raise MatrixError(
            f"dabench.run: device={given['device']!r}: expected a name: auto, cpu, cuda or cuda:N (a str)"
        )
    if not isinstance(given["progress"], bool):
        raise MatrixError(f"dabench.run: progress={given['progress']!r}: expected True or False")


def _check_executor_options(options: dict[str, Any]) -> None:
    """Each executor option of the type its ``dabench run`` flag parses to: ``workers="2"`` failed as
    ``'<' not supported between instances of 'str' and 'int'``, ``seed_batch="no"`` batched."""
    from .running.executors import ExecutorOptions

    hints = typing.get_type_hints(ExecutorOptions)
    for name, value in options.items():
        if name == "plugins":  # checked by _names
            continue
        hint = hints.get(name)
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        ok = any(
            (t is type(None) and value is None)
            or (t is bool and isinstance(value, bool))
            or (t is int and _is_int(value))
            or (t is float and isinstance(value, numbers.Real) and not isinstance(value, bool))
            or (t is str and isinstance(value, str))
            for t in allowed
        )
        if not ok and hint is not None and all(t in (bool, int, float, str, type(None)) for t in allowed):
            valid = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise MatrixError(f"dabench.run: {name}={value!r}: expected {valid}")


def _names(what: str, value: str | Iterable[Any], split=None) -> tuple[str, ...]:
    """A str is a comma list (as the CLI flag); an iterable of strings is taken as it is."""
    if not isinstance(value, (str, Iterable)):  # methods=3: "'int' object is not iterable"
        raise MatrixError(f"dabench.run: {what}={value!r}: expected a name, a comma list ('a,b') or a list of names")
    if isinstance(value, str):
        values = tuple(split(value) if split else (v.strip() for v in value.split(",") if v.strip()))
    else:
        values = tuple(value)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise MatrixError(f"dabench.run: {what}: expected names (strings), got {bad[0]!r} in {list(values)!r}")
    if what != "plugins" and what != "rerun" and not values:
        raise MatrixError(f"dabench.run: {what}: expected at least one name, got {value!r}")
    return values


def _methods(methods: str | Iterable[str | type], registry: Any, executor: str) -> list[str]:
    """Method names for the matrix; classes registered on the fly (refused for worker executors)."""
    items = list(
        _names("methods", methods) if isinstance(methods, str) or not isinstance(methods, Iterable) else methods
    )  # read twice below: a generator would be empty the second time
    if not items:
        raise MatrixError("dabench.run: methods: expected at least one method name or Method class, got none")
    for m in items:
        if not isinstance(m, (str, type)):
            raise MatrixError(
                f"dabench.run: methods: expected names (strings) or Method classes, got {m!r} of type {type(m).__name__}"
            )
    if executor != "inline":
        for m in items:
            if not isinstance(m, type):
                continue
            name = m.__dict__.get("name") or m.__name__.lower()  # as ensure_method_registered names it
            if not (name in registry and registry.get(name) is m):
                raise ValueError(
                    f"dabench.run: method class {m.__qualname__} (module {m.__module__}) is not registered, "
                    f"so it lives in this process only and the {executor!r} executor's worker processes "
                    "cannot import it; put it in a file with @register_method and pass "
                    "plugins=['path/to/file.py'] (or install it as a package), or use executor='inline'"
                )
    return [ensure_method_registered(m) if isinstance(m, type) else m for m in items]


def _seeds(seeds: str | Iterable[Any]) -> tuple[int, ...]:
    """Seeds as ``--seeds`` takes them; a bare int (``seeds=3``: seed 3, or seeds 0..2?) is refused."""
    if isinstance(seeds, str):
        items: list[Any] = [s.strip() for s in seeds.split(",") if s.strip()]
        items = [int(s) if s.lstrip("-").isdigit() else s for s in items]
    elif isinstance(seeds, Iterable):
        items = list(seeds)
    else:
        raise MatrixError(
            f"dabench.run: seeds: expected an iterable of non-negative integers such as [0, 1, 2] or range(3), "
            f"got {seeds!r}"
        )
    bad = [s for s in items if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0]
    if bad or not items:
        raise MatrixError(
            f"dabench.run: seeds: expected non-negative integers such as [0, 1, 2], got {seeds!r}"
            + (f" ({bad[0]!r} is not one)" if bad else " (none)")
        )
    return tuple(int(s) for s in items)


def load_results(*dirs: str | os.PathLike, planned: bool = True):
    """All run records of the given folders as one tidy DataFrame (one row per run); ``planned``
    adds a ``pending`` row for each run of a folder's ``matrix.json`` that has no record yet
    (:func:`dabench.analysis.results.load_results`)."""
    # late: ``import dabench`` (every plugin does it) must not pay for pandas/scipy until results are read
    from .analysis.results import load_results as _load

    if not isinstance(planned, bool):
        raise MatrixError(f"load_results(planned={planned!r}): expected True or False")
    return _load(*dirs, planned=planned)


def leaderboard(df, rule: str = "last", where=None, select_config: bool = False):
    """Configurations × pairs table (mean ± std over seeds) under a model-selection rule: the
    table ``dabench report`` prints, made by the same function from the same runs.

    Each keyword is the Python form of a ``dabench report`` flag (tests/test_api_parity.py):

    rule
        ``--rule``: last, source-val, entropy, im, snd, dev (needs runs with
        ``save_features``), oracle.
    where
        ``--where``: ``["steps=2000"]``, ``"steps=2000"`` or ``{"steps": 2000}`` keeps matching
        configurations (ValueError if none matches, naming the values there are).
    select_config
        ``--select-config``: for sweeps, the rule (not ``last``) also picks each method's
        configuration per pair and seed (argmax of its score over trials × evaluations); one row
        per method.
    """
    from .analysis.report import prepare_runs, report_leaderboard  # late: as in load_results

    _check_runs("leaderboard", df)
    _check_bool("leaderboard", "select_config", select_config)
    # filtered there, so that a bad filter is named as this function's keyword, not the CLI's --where
    return report_leaderboard(prepare_runs(df, rule, where, flag="where"), rule, select_config)


def compare(df, rule: str = "last", where=None, select_config: bool = False, **kwargs: Any):
    """Statistical comparison of the methods (exact Friedman/Nemenyi, exact Wilcoxon–Holm, mean
    t-intervals, P(improvement), per-pair t-tests): :func:`dabench.analysis.stats.compare` of the
    runs ``dabench report`` compares (its report.html), with ``rule``, ``where`` and
    ``select_config`` as in :func:`leaderboard`; ``kwargs`` (``alpha``, ``reps`` ...) go to
    :func:`~dabench.analysis.stats.compare`."""
    from .analysis.report import prepare_runs, selected_runs  # late: as in load_results
    from .analysis.stats import compare as _cmp

    _check_runs("compare", df)  # alpha is checked by analysis.stats.compare
    _check_bool("compare", "select_config", select_config)
    runs = selected_runs(prepare_runs(df, rule, where, flag="where"), rule, select_config)
    return _cmp(runs, rule=rule, **kwargs)


def report(
    *dirs: str | os.PathLike,
    rule: str = "last",
    where=None,
    select_config: bool = False,
    formats: str | Iterable[str] = "md,csv",
    out: str | os.PathLike | None = None,
    tsne: str | None = None,
) -> tuple[str, dict[str, Path]]:
    """``dabench report DIR...`` from Python, through the function the CLI calls: writes the
    leaderboard exports (``leaderboard.<fmt>``), figures and ``report.html`` and returns
    ``(text, paths)``: the Markdown the CLI prints and name → path of what was written.

    ``rule``, ``where``, ``select_config``: as in :func:`leaderboard`. ``formats``: ``--format``
    (``"md,csv,tex,html"`` or a list). ``out``: ``--out`` (default: the first folder). ``tsne``:
    ``--tsne RUN_ID``, a t-SNE of its features beside the source-only run's (both saved features).
    """
    from .analysis.report import make_report  # late: as in load_results

    if not dirs or any(not isinstance(d, (str, os.PathLike)) for d in dirs):
        raise TypeError(f"dabench.report: expected one or more results folders (str or Path), got {dirs!r}")
    _check_bool("report", "select_config", select_config)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"dabench.report: out={out!r}: expected a folder's path (str or Path) or None")
    if tsne is not None and not isinstance(tsne, str):
        raise TypeError(f"dabench.report: tsne={tsne!r}: expected a run id (str) or None")
    return make_report(
        [Path(d) for d in dirs],
        rule=rule,
        formats=formats,
        out=out,
        where=where,
        select_config=select_config,
        tsne=tsne,
        flag="",
    )


def status(results_dir: str | os.PathLike) -> str:
    """``dabench status DIR``: the counts of complete/running/failed/diverged/pending runs of a
    results folder, as the text the CLI prints (the same function makes it);
    :func:`dabench.running.status.folder_status` gives them as numbers."""
    from .running.status import status_text

    if not isinstance(results_dir, (str, os.PathLike)):
        raise TypeError(f"dabench.status: results_dir={results_dir!r}: expected a folder's path (str or Path)")
    return status_text(results_dir)


def _check_bool(what: str, name: str, value: Any) -> None:
    """A flag's Python form takes True or False only: ``select_config="no"`` is truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"dabench.{what}: {name}={value!r}: expected True or False")


def _check_runs(what: str, df: Any) -> None:
    """``df`` must be :func:`load_results`' table: a folder or a list of records failed deep inside
    the tables (``'str' object has no attribute 'empty'``)."""
    import pandas as pd  # late: as in load_results

    if isinstance(df, pd.DataFrame) and "run_id" in df.columns:
        return
    got = "a DataFrame without a run_id column" if isinstance(df, pd.DataFrame) else repr(df)
    hint = f"; e.g. dabench.{what}(dabench.load_results({str(df)!r}))" if isinstance(df, (str, os.PathLike)) else ""
    raise TypeError(f"dabench.{what}: expected the runs table of dabench.load_results(DIR, ...), got {got}{hint}")


def _check_reachable(specs: Iterable[Any], plugins: Iterable[str], executor: str) -> None:
    """Refuse a method or pair registered in this process only (``@register_method`` in a notebook
    cell or the script itself) for an executor whose worker processes import methods and pairs
    afresh: built-ins, installed plugins and ``plugins`` only. Each of its runs was recorded
    ``failed: unknown method`` by a worker."""
    import sys

    from .core.registry import METHODS, PAIRS

    folders: list[Path] = []  # where the plugins' code lies: what is registered from there is reachable
    for ref in plugins:
        if ref.endswith(".py") or "/" in ref:
            folders.append(Path(ref).resolve())
        elif (file_name := getattr(sys.modules.get(ref), "__file__", None)) is not None:
            file = Path(file_name).resolve()
            folders.append(file.parent if file.name == "__init__.py" else file)
    for kind, registry, names in (
        ("method", METHODS, {s.method for s in specs}),
        ("pair", PAIRS, {s.pair for s in specs}),
    ):
        for name in sorted(names):
            # the registry's own account of the entry's code: None for a built-in, factory-made or
            # unknown name; "package" for an installed plugin (its workers import it too)
            code = registry.code(name) if name in registry else None
            if code is None or "package" in code:
                continue
            source = registry.source(name)
            if source.startswith("entry point "):
                continue
            path = Path(code["file"])
            if path.is_file() and any(path.resolve() == f or path.resolve().is_relative_to(f) for f in folders):
                continue
            raise ValueError(
                f"dabench.run: {kind} {name!r} is registered in this process only (at {source}), so the "
                f"{executor!r} executor's worker processes cannot import it and would record each of its runs "
                "failed; put it in a file with @register_method/register_pair and pass "
                "plugins=['path/to/file.py'] (or install it as a package), or use executor='inline'"
            )
