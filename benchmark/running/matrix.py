"""Experiment matrices: CLI flags or a TOML file → the list of RunSpecs to run.

Override keys (``--set key=value`` or the ``[set]`` table of a matrix file):
- a schedule field (``steps``, ``batch_size``, ``lr``, ``eval_every``, ...) → every pair's schedule;
- ``target_shots`` → labelled target images per class (few-shot methods; removed from every
  method's evaluation set);
- ``backbone`` → the backbone name; ``backbone.<option>`` → a backbone option (e.g. ``weights``);
- ``<method>.<hparam>`` → one method's hyperparameter (``<method>.target_shots`` runs a UDA
  method semi-supervised with the shots);
- ``<hparam>`` → every method of the matrix that declares it;
- ``save_features`` → runs save source/target features for t-SNE (not part of the run id).
"""
from __future__ import annotations

import ast
import dataclasses
import pathlib
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.domain import Schedule, ScheduleError, shots_error
from ..core.parsing import parse_bool
from ..core.registry import METHODS, PAIRS, load_plugin
from ..core.spec import RunSpec

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

    def where(self, key: str) -> str:
        return self.origins.get(key, "--set")


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
        if "=" not in item:
            raise MatrixError(f"{where}: expected key=value, got {item!r} (e.g. --set steps=300 --set dann.trade_off=0.5)")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


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
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{where}: not valid TOML: {exc}") from None
    if not data or not any(data.values()):
        # an empty file is most likely a mistake (wrong file, unsaved editor); running the
        # 18-run default matrix in its place would be a surprise
        raise MatrixError(
            f"{where}: empty matrix file (no [matrix] keys and no [set] overrides); to run the default matrix "
            f"({', '.join(DEFAULT_METHODS)} x {', '.join(DEFAULT_PAIRS)} x seeds 0,1,2), leave out --matrix"
        )
    unknown = sorted(set(data) - {"matrix", "set"})
    if unknown:
        raise MatrixError(f"{where}: unknown table(s) {unknown}; expected [matrix] and optionally [set]")
    m = data.get("matrix", {})
    _expect(isinstance(m, dict), where, "matrix", "a table [matrix]", m)
    bad = sorted(set(m) - {"methods", "pairs", "seeds", "plugins"})
    if bad:
        raise MatrixError(f"{where}: unknown key(s) {bad} in [matrix]; expected methods, pairs, seeds, plugins")
    kwargs: dict[str, Any] = {}
    for key in ("methods", "pairs", "plugins"):
        if key in m:
            value = m[key]
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value) and (value or key == "plugins")
            _expect(ok, where, f"matrix.{key}", "a non-empty list of strings", value)
            kwargs[key] = tuple(value)
    if "plugins" in kwargs:
        kwargs["plugins"] = tuple(
            str((path.parent / p).resolve()) if p.endswith(".py") else p for p in kwargs["plugins"]
        )
    if "seeds" in m:
        seeds = m["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
            seeds = list(range(seeds))
        ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        _expect(bool(ok), where, "matrix.seeds", "a positive integer or a non-empty list of non-negative integers", m["seeds"])
        kwargs["seeds"] = tuple(seeds)
    overrides = data.get("set", {})
    _expect(isinstance(overrides, dict), where, "set", "a table [set] of key = value", overrides)
    for k, v in overrides.items():
        _expect(not isinstance(v, dict), where, f"set.{k}", 'a value (quote dotted keys: "dann.trade_off" = 0.5)', v)
    return Matrix(**kwargs, overrides=dict(overrides), origins={k: f"{where} [set]" for k in overrides})


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
                raise MatrixError(
                    f"{matrix.where(key)} {key}: no method of this matrix has that hyperparameter; schedule keys: "
                    f"{', '.join(SCHEDULE_KEYS)}; other keys: target_shots, backbone, backbone.<option>, save_features; "
                    f"method hyperparameters: {', '.join(known)} (or <method>.<name>)"
                )
            for m in takers:
                _check_hparam(matrix, key, m, key, value)
                per_method[m][key] = value
    return schedule, backbone_opts, per_method, shots, backbone


def expand(matrix: Matrix) -> list[RunSpec]:
    """The matrix's run specs, dependencies (source-only) included and placed first."""
    for plugin in matrix.plugins:
        load_plugin(plugin)
    methods = METHODS.expand(list(matrix.methods))
    pairs = PAIRS.expand(list(matrix.pairs))
    if not matrix.seeds:
        raise MatrixError("no seeds given")
    bad_seeds = [s for s in matrix.seeds if not (isinstance(s, int) and not isinstance(s, bool) and s >= 0)]
    if bad_seeds:
        raise MatrixError(f"seeds: expected non-negative integers, got {', '.join(map(repr, bad_seeds))}")
    schedule_over, backbone_opts, per_method, shots_over, backbone_over = _split_overrides(matrix, methods)
    specs: dict[str, RunSpec] = {}
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
        for seed in matrix.seeds:
            for method_name in methods:
                for spec in _specs_for(method_name, pair, seed, k, schedule, backbone, options, per_method, matrix):
                    specs.setdefault(spec.run_id, spec)
    ordered = sorted(specs.values(), key=lambda s: s.depends_on is not None)
    if parse_bool(matrix.overrides.get("save_features", False), "--set save_features"):
        ordered = [dataclasses.replace(s, save_features=True) for s in ordered]
    return ordered


def _specs_for(method_name, pair, seed, k, schedule, backbone, options, per_method, matrix) -> list[RunSpec]:
    cls = METHODS.get(method_name)
    given = {**pair.method_overrides.get(method_name, {}), **per_method.get(method_name, {})}
    own_shots = given.pop("target_shots", None)
    try:
        hparams = cls.resolve_hparams(given)
    except (KeyError, ValueError) as exc:
        raise MatrixError(str(exc.args[0]) if exc.args else str(exc)) from None
    out: list[RunSpec] = []
    depends_on = None
    if cls.uses.init == "source-only":
        (base,) = _specs_for("source-only", pair, seed, k, schedule, backbone, options, per_method, matrix)
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
    else:
        run_shots = int(own_shots) if own_shots is not None else 0
        if pair.max_target_shots is not None and run_shots > pair.max_target_shots:
            key = f"{method_name}.target_shots"
            raise MatrixError(f"{matrix.where(key)}: {shots_error(pair.name, run_shots, pair.max_target_shots, key)}")
    out.append(
        RunSpec(
            method=method_name,
            pair=pair.name,
            seed=int(seed),
            protocol="few-shot" if run_shots > 0 else "uda",
            target_shots=run_shots,
            eval_shots=k,
            hparams=hparams,
            schedule=schedule,
            backbone=backbone,
            backbone_options=dict(options),
            depends_on=depends_on,
        )
    )
    return out
