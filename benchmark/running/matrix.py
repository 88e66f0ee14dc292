"""Experiment matrices: CLI flags or a TOML file → the list of RunSpecs to run.

Override keys (``--set key=value`` or the ``[set]`` table of a matrix file):
- a schedule field (``steps``, ``batch_size``, ``lr``, ``eval_every``, ...) → every pair's schedule;
- ``target_shots`` → labelled target images per class (few-shot methods; removed from every
  method's evaluation set);
- ``backbone`` → the backbone name; ``backbone.<option>`` → a backbone option (e.g. ``weights``);
- ``<method>.<hparam>`` → one method's hyperparameter (``<method>.target_shots`` runs a UDA
  method semi-supervised with the shots; the most shots any method takes are removed from every
  method's evaluation set, so a seed's methods are scored on the same images);
- ``<hparam>`` → every method of the matrix that declares it;
- ``save_features`` → runs save source/target features for t-SNE (not part of the run id).

Sweeps (``--sweep key=v1,v2`` or a ``[sweep]`` table of lists: a grid; ``[sweep.random]`` with
distributions, ``trials`` and ``sweep_seed``: a seeded random search; see running/sweep.py) take
the same keys: the matrix is expanded once per trial, so each trial is its own configuration
and run id, and what a trial does not change (other methods, the source-only run of a seed and
schedule that dependants start from) is one run, shared.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import pathlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import tomllib

from ..core.domain import Schedule, ScheduleError, shots_error
from ..core.jsonio import RESERVED_STRINGS
from ..core.parsing import parse_bool
from ..core.registry import BACKBONES, METHODS, PAIRS, RegistryError, backbone_options, load_plugin
from ..core.spec import RunSpec, run_protocol
from .sweep import DEFAULT_MAX_TRIALS, Distribution, SweepError, is_distribution, parse_distribution, trials

SCHEDULE_KEYS = tuple(f.name for f in fields(Schedule))
DEFAULT_METHODS = ("source-only", "dan", "dann", "coral", "linear-probe", "fine-tune")
DEFAULT_PAIRS = ("digits-offline",)
DEFAULT_SEEDS = (0, 1, 2)


class MatrixError(ValueError):
    """A malformed matrix (file or flags); the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Matrix:
    """What to run: methods × pairs × seeds, with overrides and plugins to import first."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    pairs: tuple[str, ...] = DEFAULT_PAIRS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    overrides: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    #: override key → where it was given (``"--set"``, ``"exp.toml [set]"``), for error messages
    origins: dict[str, str] = field(default_factory=dict)
    #: swept key → a list of values (grid) or a distribution string (random search); keys as --set's
    sweep: dict[str, Any] = field(default_factory=dict)
    #: random-search trials (needed when ``sweep`` holds a distribution) and the seed of their draws
    trials: int | None = None
    sweep_seed: int = 0
    #: refuse a sweep with more trials than this (grid size x random trials)
    max_trials: int = DEFAULT_MAX_TRIALS

    def where(self, key: str) -> str:
        return self.origins.get(key, "--sweep" if key in self.sweep else "--set")


def parse_value(text: str) -> Any:
    """``"0.5"`` → 0.5, ``"true"`` → True, ``"[1,2]"`` → [1, 2], anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_overrides(items: list[str] | None, where: str = "--set") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = _key_and_text(item, where, "key=value", "--set steps=300 --set dann.trade_off=0.5")
        if key in out:
            # the later one silently won (--set steps=10 --set steps=20 ran 20 steps): as a
            # key given to two --sweep, or twice in one TOML table, a repeat is refused
            raise MatrixError(f"{where}: key {key!r} given twice ({key}={out[key]!r} and {item.strip()}); give it once")
        out[key] = parse_value(value)
    return out


def _key_and_text(item: str, where: str, expected: str, example: str) -> tuple[str, str]:
    """``"key = text"`` → ``("key", "text")``; an item without ``=`` is refused naming ``where``,
    the form ``expected`` and an ``example``."""
    if "=" not in item:
        raise MatrixError(f"{where}: expected {expected}, got {item!r} (e.g. {example})")
    key, text = item.split("=", 1)
    return key.strip(), text.strip()


def _expect(cond: bool, where: str, key: str, expected: str, got: Any) -> None:
    if not cond:
        raise MatrixError(f"{where}: key {key!r}: expected {expected}, got {got!r}")


def load_matrix_file(path: str | pathlib.Path) -> Matrix:
    """Read a TOML matrix file::

    [matrix]
    methods = ["source-only", "dann"]     # names or globs
    pairs = ["digits-offline"]
    seeds = [0, 1, 2]                      # or an integer n for seeds 0..n-1
    plugins = ["my_method.py"]             # optional, relative to the file
    [set]
    steps = 300
    "dann.trade_off" = 0.5
    """
    path = pathlib.Path(path)
    where = str(path)
    if not path.is_file():
        raise MatrixError(f"{where}: no such matrix file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:  # a binary file given by mistake: TOML is UTF-8 text
        raise MatrixError(
            f"{where}: not a TOML text file (not UTF-8 at byte {exc.start}); expected a matrix file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{where}: not valid TOML: {exc}") from None
    if not data or not any(data.values()):
        # an empty file is most likely a mistake (wrong file, unsaved editor); running the
        # 18-run default matrix in its place would be a surprise
        raise MatrixError(
            f"{where}: empty matrix file (no [matrix] keys and no [set] overrides); to run the default matrix "
            f"({', '.join(DEFAULT_METHODS)} x {', '.join(DEFAULT_PAIRS)} x seeds 0,1,2), leave out --matrix"
        )
    unknown = sorted(set(data) - {"matrix", "set", "sweep"})
    if unknown:
        raise MatrixError(f"{where}: unknown table(s) {unknown}; expected [matrix] and optionally [set], [sweep]")
    m = data.get("matrix", {})
    _expect(isinstance(m, dict), where, "matrix", "a table [matrix]", m)
    bad = sorted(set(m) - {"methods", "pairs", "seeds", "plugins", "max_trials"})
    if bad:
        raise MatrixError(
            f"{where}: unknown key(s) {bad} in [matrix]; expected methods, pairs, seeds, plugins, max_trials"
        )
    kwargs: dict[str, Any] = {}
    if "max_trials" in m:
        mt = m["max_trials"]
        _expect(
            isinstance(mt, int) and not isinstance(mt, bool) and mt >= 1,
            where,
            "matrix.max_trials",
            "a positive integer",
            mt,
        )
        kwargs["max_trials"] = mt
    for key in ("methods", "pairs", "plugins"):
        if key in m:
            value = m[key]
            ok = (
                isinstance(value, list) and all(isinstance(v, str) for v in value) and (bool(value) or key == "plugins")
            )
            _expect(ok, where, f"matrix.{key}", "a non-empty list of strings", value)
            kwargs[key] = tuple(value)
    if "plugins" in kwargs:
        kwargs["plugins"] = tuple(
            str((path.parent / p).resolve()) if p.endswith(".py") else p for p in kwargs["plugins"]
        )
    if "seeds" in m:
        seeds = m["seeds"]
        # a count n is seeds 0..n-1; a huge one would build its list for minutes before any check
        if isinstance(seeds, int) and not isinstance(seeds, bool) and 0 < seeds <= MAX_SEED_COUNT:
            seeds = list(range(seeds))
        ok = (
            isinstance(seeds, list)
            and bool(seeds)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        )
        _expect(
            bool(ok),
            where,
            "matrix.seeds",
            f"a count from 1 to {MAX_SEED_COUNT} or a non-empty list of non-negative integers",
            m["seeds"],
        )
        if problem := seeds_problem(seeds):
            raise MatrixError(f"{where}: key 'matrix.seeds': {problem}, got {m['seeds']!r}")
        kwargs["seeds"] = tuple(seeds)
    overrides = data.get("set", {})
    _expect(isinstance(overrides, dict), where, "set", "a table [set] of key = value", overrides)
    for k, v in overrides.items():
        _expect(not isinstance(v, dict), where, f"set.{k}", 'a value (quote dotted keys: "dann.trade_off" = 0.5)', v)
    origins = dict.fromkeys(overrides, f"{where} [set]")
    sweep, sweep_kw = _sweep_table(data["sweep"], where, origins) if "sweep" in data else ({}, {})
    return Matrix(**kwargs, **sweep_kw, overrides=dict(overrides), origins=origins, sweep=sweep)


def _sweep_table(table: Any, where: str, origins: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[sweep]`` (key = list) and ``[sweep.random]`` (key = "dist(..)", trials, sweep_seed)."""
    _expect(isinstance(table, dict), where, "sweep", "a table [sweep] of key = [values]", table)
    sweep: dict[str, Any] = {}
    kw: dict[str, Any] = {}
    for k, v in table.items():
        if k == "random":
            _expect(isinstance(v, dict), where, "sweep.random", 'a table [sweep.random] of key = "dist(..)"', v)
            for rk, rv in v.items():
                if rk in ("trials", "sweep_seed"):
                    ok = isinstance(rv, int) and not isinstance(rv, bool) and rv >= (1 if rk == "trials" else 0)
                    _expect(
                        ok,
                        where,
                        f"sweep.random.{rk}",
                        "a positive integer" if rk == "trials" else "a non-negative integer",
                        rv,
                    )
                    kw[rk] = rv
                    continue
                _expect(
                    isinstance(rv, str),
                    where,
                    f"sweep.random.{rk}",
                    'a distribution string such as "log_uniform(1e-3, 1)", "uniform(0, 1)" or "choice(a, b)" '
                    "(the other keys of [sweep.random]: trials, sweep_seed)",
                    rv,
                )
                sweep[rk] = rv
                origins[rk] = f"{where} [sweep.random]"
            continue
        if k in ("trials", "sweep_seed"):  # a random search's settings, written one table too high
            raise MatrixError(
                f"{where}: key 'sweep.{k}': {k} belongs to the random search: put it in [sweep.random] "
                f'beside the distributions (e.g. [sweep.random] lr = "log_uniform(1e-3, 1e-1)", {k} = 8)'
            )
        _expect(
            isinstance(v, list),
            where,
            f"sweep.{k}",
            'a list of values (quote dotted keys: "dann.trade_off" = [0.1, 1]); distributions go in [sweep.random]',
            v,
        )
        if k in sweep:
            raise MatrixError(f"{where}: sweep key {k!r} is in both [sweep] and [sweep.random]; give it once")
        sweep[k] = v
        origins[k] = f"{where} [sweep]"
    if not sweep and not kw:
        # an empty table is most likely keys lost in an edit; running the matrix unswept would hide it
        raise MatrixError(
            f'{where}: [sweep] has no keys; give key = [values] (a grid, e.g. "dann.trade_off" = [0.1, 1]) '
            'or [sweep.random] key = "log_uniform(a, b)" with trials = N, or remove the table'
        )
    return sweep, kw


def parse_sweeps(items: list[str] | None, where: str = "--sweep") -> dict[str, Any]:
    """``["dann.trade_off=0.1,1", "lr=log_uniform(1e-3, 0.1)"]`` → ``{key: [values] | "dist(..)"}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, text = _key_and_text(
            item, where, "key=v1,v2,... or key=log_uniform(a, b)", "--sweep dann.trade_off=0.1,0.3,1,3"
        )
        if key in out:
            raise MatrixError(f"{where}: key {key!r} given twice; list all its values in one --sweep")
        out[key] = text if is_distribution(text) else [parse_value(v) for v in text.split(",") if v.strip()]
    return out


def _key_defaults(key: str, methods: list[str]) -> list[Any]:
    """The default value(s) a swept key replaces (its type decides what a distribution may draw)."""
    if key in SCHEDULE_KEYS:
        return [getattr(Schedule(), key)]
    if "." in key:
        name, hp = key.split(".", 1)
        if name == "backbone":
            return []
        d = METHODS.get(name).hparam_defaults()
        return [d[hp]] if hp in d else []
    return [METHODS.get(m).hparam_defaults()[key] for m in methods if key in METHODS.get(m).hparam_defaults()]


def sweep_trials(matrix: Matrix, methods: list[str]) -> list[dict[str, Any]]:
    """The matrix's trials (``[{}]`` without a sweep), every key and value checked as ``--set`` checks them.

    Errors (:class:`MatrixError`, naming where the key was given): an empty value list, a key
    also given to ``--set``, a malformed distribution or one with its bounds in the wrong order,
    ``uniform``/``log_uniform`` on a non-numeric key, a distribution without ``trials``, more
    trials than ``max_trials``; any key or value ``--set`` would refuse.
    """
    if not matrix.sweep:
        if matrix.trials is not None:
            raise MatrixError(
                f"trials={matrix.trials} given without a random sweep; add distributions "
                '([sweep.random] key = "log_uniform(a, b)" or --sweep key="uniform(a, b)")'
            )
        return [{}]
    grid: dict[str, list[Any]] = {}
    dists: dict[str, Distribution] = {}
    integer: set[str] = set()
    for key, spec in matrix.sweep.items():
        where = matrix.where(key)
        if key in matrix.overrides:
            raise MatrixError(
                f"{where}: key {key!r} is both swept and set ({matrix.origins.get(key, '--set')}); give it once"
            )
        if key in ("save_features", "target_shots") or key.endswith(".target_shots"):
            raise MatrixError(
                f"{where}: {key!r} cannot be swept (it changes the label budget or the outputs, "
                "not a configuration); sweep schedule keys or method hyperparameters"
            )
        defaults = _key_defaults(key, methods) if key != "backbone" and not key.startswith("backbone.") else []
        if isinstance(spec, str):
            try:
                dist = parse_distribution(spec, where, key, parse_value)
            except SweepError as exc:
                raise MatrixError(str(exc)) from None
            values = list(dist.args)
            if dist.numeric:
                bad = [d for d in defaults if isinstance(d, bool) or not isinstance(d, (int, float))]
                if bad or not defaults:
                    what = f"its default is {bad[0]!r}" if bad else "it has no numeric default"
                    raise MatrixError(
                        f"{where}: sweep key {key!r}: {dist.kind} draws numbers, but {key!r} is not a "
                        f"numeric hyperparameter ({what}); sweep it with a list or choice(...)"
                    )
                if all(isinstance(d, int) and not isinstance(d, bool) for d in defaults):
                    integer.add(key)
            dists[key] = dist
        else:
            if not isinstance(spec, list) or not spec:
                raise MatrixError(
                    f"{where}: sweep key {key!r}: expected a non-empty list of values "
                    f"(e.g. {key}=0.1,0.3,1), got {spec!r}"
                )
            values = grid[key] = list(spec)
        for v in values:  # each value checked as --set checks it (unknown key, type, range)
            _split_overrides(dataclasses.replace(matrix, overrides={**matrix.overrides, key: v}), methods)
    if dists and matrix.trials is None:
        raise MatrixError(
            f"{matrix.where(next(iter(dists)))}: a random sweep needs trials = N "
            "([sweep.random] trials = 8, or --trials 8)"
        )
    if not dists and matrix.trials is not None:
        raise MatrixError(f"trials={matrix.trials} given, but the sweep has no distribution (only grid lists)")
    # (trials is set whenever there are distributions: checked just above)
    size = math.prod(len(v) for v in grid.values()) * ((matrix.trials or 1) if dists else 1)
    if size > matrix.max_trials:
        parts = [f"{k} ({len(v)} values)" for k, v in grid.items()] + (
            [f"{matrix.trials} random trials"] if dists else []
        )
        raise MatrixError(
            f"sweep of {size} trials ({' x '.join(parts)}) is larger than max_trials={matrix.max_trials}; "
            "shrink the sweep or raise max_trials ([matrix] max_trials or --max-trials)"
        )
    return trials(grid, dists, matrix.trials or 0, matrix.sweep_seed, frozenset(integer))


def _shots_value(value: Any, where: str, key: str) -> int:
    """A ``target_shots`` value as a non-negative int (``5.0`` → 5); anything else is refused by name."""
    v = int(value) if isinstance(value, float) and value.is_integer() else value
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise MatrixError(
            f"{where} {key}={value!r}: expected an integer >= 0 (labelled target images per class; 0: none)"
        )
    return v


def _check_hparam(matrix: Matrix, key: str, method: str, hp: str, value: Any) -> None:
    """Type-check one method override now, so the error names where it was given."""
    try:
        METHODS.get(method).resolve_hparams({hp: value})
    except (KeyError, ValueError) as exc:
        raise MatrixError(f"{matrix.where(key)}: {exc.args[0] if exc.args else exc}") from None


def _split_overrides(matrix: Matrix, methods: list[str]) -> tuple[dict, dict, dict[str, dict], int | None, str | None]:
    """Sort overrides into schedule, backbone options, per-method hparams, shots and backbone name.

    Every value is checked here, before any run starts: schedule values against
    ``Schedule``'s rules, shots as non-negative integers, method hyperparameters against their
    defaults' types; each error names where the key was given (``--set`` or the matrix file).
    """
    schedule: dict[str, Any] = {}
    backbone_opts: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    shots: int | None = None
    backbone: str | None = None
    for key, value in matrix.overrides.items():
        if key in SCHEDULE_KEYS:
            try:
                Schedule().replace(**{key: value})
            except ScheduleError as exc:
                raise MatrixError(f"{matrix.where(key)} {key}={value!r}: {exc}") from None
            schedule[key] = value
        elif key == "target_shots":
            shots = _shots_value(value, matrix.where(key), key)
        elif key == "save_features":
            continue  # read by expand(): an output switch, not a hyperparameter
        elif key == "backbone":
            backbone = str(value)
        elif key.startswith("backbone."):
            backbone_opts[key.split(".", 1)[1]] = value
        elif "." in key:
            name, hp = key.split(".", 1)
            METHODS.get(name)  # unknown method → error listing the valid ones
            if hp == "target_shots":
                value = _shots_value(value, matrix.where(key), key)
            else:
                _check_hparam(matrix, key, name, hp, value)
            per_method.setdefault(name, {})[hp] = value
        else:
            takers = [m for m in methods if key in METHODS.get(m).hparam_defaults()]
            if not takers:
                known = sorted({h for m in methods for h in METHODS.get(m).hparam_defaults()})
                others = ["target_shots", "backbone", "save_features"]
                near = difflib.get_close_matches(key, [*SCHEDULE_KEYS, *others, *known], n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise MatrixError(
                    f"{matrix.where(key)} {key}: no method of this matrix has that hyperparameter; {hint}schedule keys: "
                    f"{', '.join(SCHEDULE_KEYS)}; other keys: target_shots, backbone, backbone.<option>, save_features; "
                    f"method hyperparameters: {', '.join(known)} (or <method>.<name>)"
                )
            for m in takers:
                _check_hparam(matrix, key, m, key, value)
                per_method[m][key] = value
    return schedule, backbone_opts, per_method, shots, backbone


def _refuse_reserved_strings(matrix: Matrix, spec: RunSpec) -> None:
    """A string setting spelled ``NaN``, ``Infinity`` or ``-Infinity`` is refused: records store
    non-finite numbers under exactly these strings (:mod:`dabench.core.jsonio`), so it would read
    back as the float, and the run's spec (and run id) would change between writing and reading."""
    settings = {**spec.hparams, **{f"backbone.{k}": v for k, v in spec.backbone_options.items()}}
    for key, value in settings.items():
        found = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v in RESERVED_STRINGS]
        if found:
            raise MatrixError(
                f"{matrix.where(key)} {key}={value!r}: the string {found[0]!r} is reserved (records store "
                f"non-finite numbers as {', '.join(map(repr, RESERVED_STRINGS))}); give another spelling"
            )


def expand(matrix: Matrix) -> list[RunSpec]:
    """The matrix's run specs (every trial of its sweep), dependencies (source-only) included and placed first."""
    specs: dict[str, RunSpec] = {}
    for _, trial_specs in sweep_plan(matrix):
        for spec in trial_specs:
            specs.setdefault(spec.run_id, spec)
    ordered = sorted(specs.values(), key=lambda s: s.depends_on is not None)
    for spec in ordered:
        _refuse_reserved_strings(matrix, spec)
    if parse_bool(matrix.overrides.get("save_features", False), "--set save_features"):
        ordered = [dataclasses.replace(s, save_features=True) for s in ordered]
    return ordered


#: the largest seed: the engine seeds torch generators with small multiples of it (engine/data.py),
#: which must fit in 64 bits; 2**32 - 1 is also every common RNG's (numpy's) bound
MAX_SEED = 2**32 - 1
#: the most seeds a matrix file's ``seeds = N`` may ask for (each seed is one run per configuration)
MAX_SEED_COUNT = 10_000


def seeds_problem(seeds: Sequence[object]) -> str | None:
    """What is wrong with ``seeds`` (one rule for ``--seeds``, a matrix file and ``dabench.run``), or None.

    Each a non-negative integer up to :data:`MAX_SEED`, each once: a repeated seed is the same
    run id and ran once, so ``0,0`` silently gave one seed where two were asked for.
    """
    if not seeds:
        return "expected at least one seed"
    bad = [s for s in seeds if not (isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED)]
    if bad:
        return f"expected non-negative integers up to {MAX_SEED}, got {bad[0]!r}"
    ints = [int(s) for s in seeds]  # type: ignore[call-overload]  # checked above: all ints
    twice = sorted(s for s, n in Counter(ints).items() if n > 1)  # linear: up to MAX_SEED_COUNT seeds
    if twice:
        return f"seed {twice[0]} given twice; give each seed once (each seed is one run)"
    return None


def _check_seeds(matrix: Matrix) -> None:
    problem = seeds_problem(matrix.seeds)
    if problem:
        raise MatrixError(f"seeds {', '.join(map(repr, matrix.seeds))}: {problem}")


def sweep_plan(matrix: Matrix) -> list[tuple[dict[str, Any], list[RunSpec]]]:
    """``(trial, its specs)`` per trial (one trial ``{}`` without a sweep); specs repeat across trials."""
    _check_seeds(matrix)
    for plugin in matrix.plugins:
        load_plugin(plugin)
    methods = METHODS.expand(list(matrix.methods))
    pairs = PAIRS.expand(list(matrix.pairs))
    out = []
    found = sweep_trials(matrix, methods)
    _check_distinct_values(matrix, methods, pairs)
    for trial in found:
        specs: dict[str, RunSpec] = {}
        _expand_trial(dataclasses.replace(matrix, overrides={**matrix.overrides, **trial}), methods, pairs, specs)
        out.append((trial, list(specs.values())))
    return out


def _check_distinct_values(matrix: Matrix, methods: list[str], pairs: list[str]) -> None:
    """Refuse a grid list (or ``choice(...)``) that gives one configuration twice.

    Two values are the same configuration when the matrix with the key set to either makes the
    same runs: ``[0.1, 0.1]``, but also ``[1, 1.0]`` for a float hyperparameter or ``[10, 10.0]``
    for ``steps``. Left in, the trial table would list more trials than there are configurations
    and ``max_trials`` would count runs that never happen; the user most likely meant another value.
    (Random draws that happen to coincide are not refused: that is how a random search samples.)
    """
    for key, spec in matrix.sweep.items():
        if isinstance(spec, list):
            values = list(spec)
        elif isinstance(spec, str) and (m := _CHOICE.match(spec)):
            values = [parse_value(a) for a in m.group(1).split(",") if a.strip()]
        else:
            continue
        seen: dict[frozenset[str], Any] = {}
        for v in values:
            specs: dict[str, RunSpec] = {}
            _expand_trial(dataclasses.replace(matrix, overrides={**matrix.overrides, key: v}), methods, pairs, specs)
            runs = frozenset(specs)
            if runs in seen:
                same = (
                    f"{v!r} is given twice"
                    if seen[runs] == v and type(seen[runs]) is type(v)
                    else (f"{seen[runs]!r} and {v!r} are the same configuration (the same runs)")
                )
                raise MatrixError(
                    f"{matrix.where(key)}: sweep key {key!r}: {same} in {spec!r}; "
                    "list distinct values (each one configuration), each once"
                )
            seen[runs] = v


_CHOICE = re.compile(r"^\s*choice\s*\((.*)\)\s*$", re.S)


def sweep_text(matrix: Matrix) -> str:
    """The trial table and each method's budget (configurations per pair and seed), for ``--dry-run``."""
    plan = sweep_plan(matrix)
    keys = list(matrix.sweep)
    lines = [
        f"sweep: {len(plan)} trial(s)"
        + (
            f", random draws with sweep_seed={matrix.sweep_seed}"
            if any(isinstance(v, str) for v in matrix.sweep.values())
            else ""
        )
    ]
    if keys:
        rows = [["trial", *keys]] + [[str(i), *(repr(t.get(k)) for k in keys)] for i, (t, _) in enumerate(plan)]
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    per: dict[str, set[str]] = {}
    cells: dict[str, set[tuple[str, int]]] = {}
    for _, specs in plan:
        for s in specs:
            per.setdefault(s.method, set()).add(s.run_id)
            cells.setdefault(s.method, set()).add((s.pair, s.seed))
    budget = ", ".join(f"{m} {len(ids) // max(1, len(cells[m]))}" for m, ids in per.items())
    lines.append(f"budget (configurations per pair and seed): {budget}")
    return "\n".join(lines)


def _expand_trial(matrix: Matrix, methods: list[str], pairs: list[str], specs: dict[str, RunSpec]) -> None:
    """Add one trial's specs to ``specs`` (by run id: runs a trial does not change are shared)."""
    schedule_over, backbone_opts, per_method, shots_over, backbone_over = _split_overrides(matrix, methods)
    for pair_name in pairs:
        pair = PAIRS.get(pair_name)
        schedule = pair.schedule.replace(**schedule_over)  # each value was checked in _split_overrides
        k = pair.target_shots if shots_over is None else shots_over
        # k shots per class are drawn for every method (the training shots of few-shot methods and
        # the images every method's evaluation leaves out), so the pair must hold them
        if pair.max_target_shots is not None and k > pair.max_target_shots:
            where = matrix.where("target_shots") if shots_over is not None else f"pair {pair.name!r} default"
            raise MatrixError(f"{where}: {shots_error(pair.name, k, pair.max_target_shots)}")
        backbone = backbone_over or pair.backbone
        options = {**pair.backbone_options, **backbone_opts}
        _check_backbone(matrix, backbone, options, pair.name)
        k_eval = _eval_shots(pair, k, methods, per_method)
        for seed in matrix.seeds:
            for method_name in methods:
                for spec in _specs_for(
                    method_name, pair, seed, k, schedule, backbone, options, per_method, matrix, k_eval
                ):
                    specs.setdefault(spec.run_id, spec)


def _check_backbone(matrix: Matrix, name: str, options: dict[str, Any], pair_name: str) -> None:
    """Refuse an unknown backbone, or an option its factory does not take, before anything runs.

    Why here: a factory is only called when a run builds its network, so a typo
    (``backbone.weigths=PATH``) would otherwise fail every run of the matrix, or, with a factory
    that swallowed unknown options, train silently without the weights the run id names. A
    plugin factory that takes ``**options`` is trusted with any option (nothing to check against).
    """
    where = matrix.where("backbone") if "backbone" in matrix.overrides or "backbone" in matrix.sweep else None
    try:
        factory = BACKBONES.get(name)
    except RegistryError as exc:
        origin = where or f"pair {pair_name!r} default"
        raise MatrixError(f"{origin} backbone={name!r}: {exc}") from None
    accepted = backbone_options(factory)
    if accepted is None:
        return
    valid = list(accepted)
    for option in sorted(set(options) - set(valid)):
        key = f"backbone.{option}"
        origin = matrix.where(key) if key in matrix.overrides or key in matrix.sweep else f"pair {pair_name!r}"
        raise MatrixError(
            f"{origin} {key}: backbone {name!r} (pair {pair_name!r}) has no option {option!r}; "
            f"its options: {', '.join(valid) or 'none'}"
        )


def _eval_shots(pair, k: int, methods: list[str], per_method: dict[str, dict]) -> int:
    """Shots per class every method's evaluation set leaves out: the most any method of the matrix
    trains on for ``pair`` (``k``, or a UDA method's own ``<method>.target_shots``).

    The shot draws of a seed are nested (``engine/data.draw_shots``: the first k of one fixed
    permutation per class), so removing the largest draw from every run's evaluation set scores
    all methods of a seed on the same images. Removing each run's own draw, as before, gave a
    method with more shots a smaller evaluation set than the others on a transductive pair
    (Office-31, ``folder:...,eval=all``), where shots are evaluation images."""
    most = k
    for name in methods:
        cls = METHODS.get(name)
        if cls.protocol in ("few-shot", "source-free"):
            continue  # few-shot runs train on k; source-free ones on none (own shots are refused)
        own = {**pair.method_overrides.get(name, {}), **per_method.get(name, {})}.get("target_shots")
        if own is not None:
            most = max(most, int(own))
    return most


def _specs_for(
    method_name,
    pair,
    seed,
    k,
    schedule,
    backbone,
    options,
    per_method,
    matrix,
    k_eval: int | None = None,
    base_of: str | None = None,
) -> list[RunSpec]:
    """The run specs of one method on one pair and seed: its own, preceded by the source-only run it
    starts from (``uses.init``). ``base_of``: this is that starting run, for the method named."""
    cls = METHODS.get(method_name)
    k_eval = k if k_eval is None else k_eval
    given = {**pair.method_overrides.get(method_name, {}), **per_method.get(method_name, {})}
    own_shots = given.pop("target_shots", None)
    if base_of is not None:
        # the starting network of a dependant sees no target label: a source-only run given
        # source-only.target_shots (a few-shot baseline row of its own) would otherwise hand its
        # target-trained network to SHOT (source-free) or ADDA (UDA) as "the source model"
        own_shots = None
    try:
        hparams = cls.resolve_hparams(given)
    except (KeyError, ValueError) as exc:
        raise MatrixError(str(exc.args[0]) if exc.args else str(exc)) from None
    out: list[RunSpec] = []
    depends_on = None
    if cls.uses.init == "source-only":
        (base,) = _specs_for(
            "source-only", pair, seed, k, schedule, backbone, options, per_method, matrix, k_eval, base_of=method_name
        )
        out.append(base)
        depends_on = base.run_id
        # the network must be the one the checkpoint holds
        if "bottleneck_dim" in given and hparams["bottleneck_dim"] != base.hparams["bottleneck_dim"]:
            raise MatrixError(
                f"{method_name} starts from the source-only network, so its bottleneck_dim is source-only's "
                f"({base.hparams['bottleneck_dim']}); set source-only.bottleneck_dim instead"
            )
        hparams["bottleneck_dim"] = base.hparams["bottleneck_dim"]
    if cls.protocol == "few-shot":
        if k < 1:  # with 0 shots it would silently become a UDA run with nothing to train its head on
            where = matrix.where("target_shots") if "target_shots" in matrix.overrides else f"pair {pair.name!r}"
            raise MatrixError(
                f"{where}: target_shots=0, but {method_name} is a few-shot method and needs at least 1 labelled "
                f"target image per class; give target_shots >= 1 or leave {method_name} out of the matrix"
            )
        run_shots = k
    elif cls.protocol == "source-free":
        if own_shots is not None and int(own_shots) > 0:  # labelled target images would make it another protocol
            raise MatrixError(
                f"{matrix.where(f'{method_name}.target_shots')}: {method_name}.target_shots={own_shots}, but "
                f"{method_name} is a source-free method (unlabelled target data only); leave target_shots unset or 0"
            )
        run_shots = 0
    else:
        run_shots = int(own_shots) if own_shots is not None else 0
        if run_shots > 0 and not getattr(cls, "accepts_target_shots", True):
            # recorded as few-shot with k·C target labels, it would have trained on none of them
            raise MatrixError(
                f"{matrix.where(f'{method_name}.target_shots')}: {method_name}.target_shots={run_shots}, but "
                f"{method_name} never trains on target shots (its accepts_target_shots is False); "
                "leave it unset or 0, or compare with a method that uses them (dabench list methods)"
            )
        if pair.max_target_shots is not None and run_shots > pair.max_target_shots:
            key = f"{method_name}.target_shots"
            raise MatrixError(f"{matrix.where(key)}: {shots_error(pair.name, run_shots, pair.max_target_shots, key)}")
    out.append(
        RunSpec(
            method=method_name,
            pair=pair.name,
            seed=int(seed),
            protocol=run_protocol(cls.protocol, run_shots),
            target_shots=run_shots,
            eval_shots=k_eval,
            hparams=hparams,
            schedule=schedule,
            backbone=backbone,
            backbone_options=dict(options),
            depends_on=depends_on,
        )
    )
    return out
