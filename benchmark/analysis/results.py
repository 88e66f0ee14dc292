"""Read run records (``DIR/runs/<run_id>.json``) into one tidy pandas table.

Records are the only source of truth (see docs/architecture.md, "Principles"): this module never
writes them. One row per run; the evaluation ``curve`` stays a list of dicts in its cell so
that a selection rule (:mod:`dabench.analysis.selection`) can be applied after the fact.

Bad input is reported, never fatal: a corrupt or truncated JSON file, or a record with a
malformed field (``"timings": "abc"``, ``"curve": "x"`` …), is named in a ``warnings.warn``
and skipped.

One run, one row. A run id is its spec, so a run id found in two folders (``dabench report A B``
over folders that both ran it) is one computation: it is one row (never pooled as two seeds),
read from the first file (directories in the order given, files sorted by name; a complete
record before one that is not), with a warning naming both files. Its ``folders`` column lists
every folder holding it, each with its ``sweep_trial``: the run may be a trial of folder A's
sweep and a plain run of folder B at once, and configuration selection
(:func:`dabench.analysis.sweeps.select_config`) counts it in both roles.

Configurations. A row of a table is a *configuration*, never a pool of settings: the
``config`` column is a canonical key of the record's spec minus ``seed``, ``pair``,
``depends_on`` (the run id of the seed's own source-only run) and ``save_features`` (changes
no result); ``settings`` holds the same spec flattened to the names ``--set``/``--where`` use
(``steps``, ``lr`` …, ``backbone``, ``backbone.<option>``, ``target_shots``,
``<method>.<hyperparameter>``).

Sweeps. ``sweep_trial`` says whether the run is a trial of a sweep its folder's ``matrix.json``
lists (``swept_runs``): True / False, or None when the folder does not say (no matrix file, or
one an older dabench wrote). :func:`dabench.analysis.sweeps.has_sweeps` reads it.

Planned runs. When a folder holds ``matrix.json`` (written by ``dabench run``), its specs
that have no record yet are added as rows with status ``pending``, so that a seed never
vanishes from the tables without a trace.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.jsonio import load_json
from ..core.record import STATUS_NAMES, RecordError, first_line, read_record
from ..core.spec import RunSpec

#: Columns of :func:`load_results`, in order (an empty folder still gives these columns).
COLUMNS: tuple[str, ...] = (
    "run_id",
    "method",
    "pair",
    "seed",
    "protocol",
    "target_shots",
    "target_labels",
    "status",
    "error",
    "diverged_at_step",
    "wall_s",
    "steps_per_s",
    "images_per_s",
    "device",
    "versions",
    "backbone",
    "source_dir",
    "record_path",
    "hparams",
    "curve",
    "final",
    "config",
    "settings",
    "validators",
    "depends_on",
    "weights_sha256",
    "source_sha256",
    "plugin_code",
    "finished_at",
    "sweep_trial",
    "folders",
)

#: A row's ``status``: a record's status (core/record.py, ``Status``), or ``pending`` for a run
#: planned in ``matrix.json`` that has no record yet (a row state, never a record status).
PENDING = "pending"
STATUSES = (*STATUS_NAMES, PENDING)

#: Spec fields that do not make a configuration: the seed and the pair index the runs of one
#: configuration; ``depends_on`` names the seed's own source-only run; ``save_features`` only
#: decides what is kept beside the record.
NOT_CONFIG = ("seed", "pair", "depends_on", "save_features")
MATRIX_FILE = "matrix.json"


class RecordWarning(UserWarning):
    """A run record could not be used as it is (corrupt, duplicated, incomplete)."""


def _runs_folder(d: Path) -> Path:
    """``d/runs`` when it exists, else ``d`` itself when it holds ``*.json`` records.

    Accepting a bare folder of records lets users point at ``DIR/runs`` directly.
    """
    if not d.exists():
        raise FileNotFoundError(
            f"results folder {str(d)!r} does not exist; expected a folder holding runs/<run_id>.json "
            "(the --results folder of 'dabench run')"
        )
    if not d.is_dir():
        # a ValueError (not NotADirectoryError, an OSError): one line, as the folder that does not exist
        raise ValueError(
            f"results folder {str(d)!r} is a file, not a folder; expected the --results folder of 'dabench run'"
        )
    runs = d / "runs"
    if runs.is_dir() or (d / "matrix.json").is_file():
        # a results folder whose matrix has no record yet: none to read (its matrix.json is no record)
        return runs
    if any(d.glob("*.json")):
        return d
    raise FileNotFoundError(
        f"results folder {str(d)!r} has no runs/ subfolder (and no *.json records); expected DIR/runs/<run_id>.json"
    )


def _first_line(error: dict[str, Any] | None) -> str | None:
    """``Type: first line of the message`` of a record's ``error`` (the report shows just that)."""
    if not error:
        return None
    line = first_line(error.get("message"))
    return f"{error.get('type')}: {line}" if line else str(error.get("type"))


class _Malformed(ValueError):
    """A record field has the wrong shape; the record is skipped with a warning."""


def _field(rec: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``rec[key]`` when it is None or a ``kind``; :class:`_Malformed` naming the field otherwise."""
    v = rec.get(key)
    if v is not None and not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _Malformed(f"field {key!r} is {v!r:.60} ({type(v).__name__}); expected {names} or null")
    return v


def spec_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec flattened to the names of ``--set``/``--where``, without :data:`NOT_CONFIG`.

    Schedule fields keep their bare names (``steps``, ``lr`` …), hyperparameters become
    ``<method>.<name>``, backbone options ``backbone.<option>``; other fields keep their name.
    """
    method = str(spec.get("method"))
    out: dict[str, Any] = {}
    for k, v in spec.items():
        if k in NOT_CONFIG:
            continue
        if k == "schedule":
            out.update(_field(spec, k, dict) or {})
        elif k == "hparams":
            out.update({f"{method}.{h}": hv for h, hv in (_field(spec, k, dict) or {}).items()})
        elif k == "backbone_options":
            out.update({f"backbone.{o}": ov for o, ov in (_field(spec, k, dict) or {}).items()})
        else:
            out[k] = v
    return out


def config_key(settings: dict[str, Any]) -> str:
    """Canonical, hashable key of one configuration (sorted JSON of its settings)."""
    return json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))


def _row(rec: dict[str, Any], path: Path, source_dir: Path) -> dict[str, Any]:
    spec = rec.get("spec") or {}
    timings = _field(rec, "timings", dict) or {}
    curve = _field(rec, "curve", list) or []
    final = _field(rec, "final", dict)
    _field(rec, "versions", dict)
    if not all(isinstance(c, dict) for c in curve):
        raise _Malformed("field 'curve' must be a list of evaluation objects")
    settings = spec_settings(spec)
    validators = rec.get("validators") if isinstance(rec.get("validators"), dict) else None
    # A record with a final evaluation but no logged curve still has one point to select from.
    if not curve and isinstance(final, dict):
        curve = [final]
    shots = spec.get("target_shots") or 0
    return {
        "run_id": str(rec.get("run_id") or path.stem),
        "method": spec.get("method"),
        "pair": spec.get("pair"),
        "seed": spec.get("seed"),
        "protocol": spec.get("protocol") or ("few-shot" if shots else "uda"),
        "target_shots": int(shots),
        "target_labels": int(rec.get("target_labels") or 0),
        "status": rec.get("status") or "unknown",
        "error": _first_line(rec.get("error")),
        "diverged_at_step": rec.get("diverged_at_step"),
        "wall_s": timings.get("wall_s"),
        "steps_per_s": timings.get("steps_per_s"),
        "images_per_s": timings.get("images_per_s"),
        "device": rec.get("device"),
        "versions": rec.get("versions") or {},
        "backbone": spec.get("backbone"),
        "source_dir": str(source_dir),
        "record_path": str(path),
        "hparams": spec.get("hparams") or {},
        "curve": list(curve),
        "final": final,
        "config": config_key(settings),
        "settings": settings,
        "validators": validators,
        # which weights a dependant was trained from, and which a source-only run left (their
        # pairing is checked by tables.source_weight_notes)
        "depends_on": spec.get("depends_on"),
        "weights_sha256": rec.get("weights_sha256"),
        "source_sha256": (rec.get("source_weights") or {}).get("weights_sha256")
        if isinstance(rec.get("source_weights"), dict)
        else None,
        # which version of a plugin method's/pair's code made it (tables.plugin_code_notes names a mix)
        "plugin_code": rec.get("plugin_code") if isinstance(rec.get("plugin_code"), dict) else None,
        "finished_at": rec.get("finished_at"),
    }


def _matrix_path(d: Path) -> Path | None:
    for cand in (d / MATRIX_FILE, d.parent / MATRIX_FILE if d.name == "runs" else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def _planned_rows(d: Path) -> list[dict[str, Any]]:
    """Rows (status ``pending``) for the specs of ``d``'s ``matrix.json``; [] when it has none.

    A corrupt matrix file is reported and ignored: planned seeds then come from the records.
    """
    path = _matrix_path(d)
    if path is None:
        return []
    try:
        specs = load_json(path.read_text(encoding="utf-8")).get("specs")
        if not isinstance(specs, list):
            raise ValueError("no 'specs' list")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, ValueError, AttributeError) as exc:
        warnings.warn(f"ignoring matrix file {path}: {exc}", RecordWarning, stacklevel=3)
        return []
    rows = []
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        try:
            row = _row({"spec": spec, "status": PENDING}, path, d)
        except (_Malformed, AttributeError, TypeError, ValueError):
            continue
        row.update(run_id=_spec_run_id(spec), record_path="", curve=[], final=None)
        rows.append(row)
    return rows


def _swept_runs(d: Path) -> set[str] | None:
    """The run ids ``d``'s ``matrix.json`` lists as trials of a sweep (``swept_runs``, written by
    ``dabench run``); None when the folder does not say (no matrix file, or an older one)."""
    path = _matrix_path(d)
    if path is None:
        return None
    try:
        swept = load_json(path.read_text(encoding="utf-8")).get("swept_runs")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError):
        return None  # _planned_rows names the corrupt file
    return {str(r) for r in swept} if isinstance(swept, list) else None


def _spec_run_id(spec: dict[str, Any]) -> str:
    """The run id a spec of ``matrix.json`` will record under ("" if it no longer parses)."""
    try:
        return RunSpec.from_dict(spec).run_id
    except Exception:  # noqa: BLE001 - a matrix of another dabench version: the id is only informative here
        return ""


def load_results(*dirs: str | os.PathLike | Iterable[str | os.PathLike], planned: bool = True) -> pd.DataFrame:
    """Load every ``DIR/runs/*.json`` of the given folders into one DataFrame.

    Args:
        dirs: one or more results folders (a list of folders is accepted too).
        planned: add a ``pending`` row for each spec of a folder's ``matrix.json`` that no
            record (of any folder) holds yet, matched by pair, seed and configuration.

    Returns:
        One row per run with the columns in :data:`COLUMNS`; ``error`` is the first line of
        the recorded error, ``curve`` the list of logged evaluations.

    Raises:
        FileNotFoundError: a folder does not exist or holds no records folder.
    """
    flat: list[Path] = []
    for d in dirs:
        if isinstance(d, (str, os.PathLike)):  # any path-like is one folder, not an iterable of them
            flat.append(Path(d))
        else:
            flat.extend(Path(x) for x in d)
    if not flat:
        raise ValueError("load_results needs at least one results folder")

    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}  # run id -> its row in rows
    swept = {d: _swept_runs(d) for d in flat}
    for d in flat:
        folder = _runs_folder(d)
        for path in sorted(folder.glob("*.json")):
            try:  # the schema's checks: corrupt, foreign, another format, a malformed field
                rec = read_record(path)
            except (RecordError, OSError) as exc:
                warnings.warn(f"skipping run record {exc}", RecordWarning, stacklevel=2)
                continue
            try:
                row = _row(rec.to_dict(), path, d)
            except (_Malformed, AttributeError, TypeError, ValueError) as exc:
                warnings.warn(f"skipping run record {path}: {exc}", RecordWarning, stacklevel=2)
                continue
            rid = row["run_id"]
            trials = swept[d]
            role = (str(d), None if trials is None else rid in trials)
            if rid in seen:
                # the same spec, hence the same computation, in two folders: one row (pooling it twice
                # would count one run as two seeds), which serves each folder's role (folders)
                kept = rows[seen[rid]]
                use = row["status"] == "complete" and kept["status"] != "complete"
                warnings.warn(
                    f"run {rid} is recorded twice: {kept['record_path']} and {path}; one run, counted once "
                    f"(the record of {path if use else kept['record_path']})",
                    RecordWarning,
                    stacklevel=2,
                )
                if role[0] not in {f for f, _ in kept["folders"]}:
                    kept["folders"].append(role)
                if use:  # a complete record of the run before a failed or interrupted one (its folder's
                    # source_dir: its features and checkpoints lie beside it)
                    row.update(sweep_trial=role[1], folders=kept["folders"])
                    rows[seen[rid]] = row
                continue
            seen[rid] = len(rows)
            row["sweep_trial"], row["folders"] = role[1], [role]
            rows.append(row)
    if planned:
        have = {(r["pair"], r["seed"], r["config"]) for r in rows}
        for d in flat:
            trials = swept[d]
            for row in _planned_rows(d):
                rid = row["run_id"]
                role = (str(d), None if trials is None else rid in trials)
                if rid in seen:
                    # planned here, recorded in another folder: the same run, in this folder's role too
                    kept = rows[seen[rid]]
                    if role[0] not in {f for f, _ in kept["folders"]}:
                        kept["folders"].append(role)
                    continue
                key = (row["pair"], row["seed"], row["config"])
                if key not in have:
                    have.add(key)
                    row["sweep_trial"], row["folders"] = role[1], [role]
                    rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(df):
        df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
        df["pair"] = _short_pair_names(df["pair"])
    return df


def _short_pair_names(pairs: pd.Series) -> pd.Series:
    """Parametric pair names as their short label (``folder:name=x,source=/abs/...`` → ``x``).

    Tables, figures and ``--where pair=`` then use the label; the full name stays in each
    record's spec. A label two different pairs would share (or that is another pair's full
    name) is not used: those pairs keep their full names, so no two pairs ever merge.
    """
    # the registry's labels and the folder-name grammar only: torch-free (no pair is built;
    # reading results never imports the datasets, see docs/architecture.md "Import layers")
    from ..core.pairnames import PAIRS

    full = {str(p) for p in pairs.dropna().unique()}
    label = {p: PAIRS.label(p) for p in full}
    taken = list(label.values())
    mapping = {p: v if taken.count(v) == 1 and (v == p or v not in full) else p for p, v in label.items()}
    return pairs.map(lambda p: mapping.get(str(p), p) if p is not None else p)


def label_budget(protocol: str | None, target_shots: int | None) -> str:
    """Human label of a run's target-label budget: ``"0"`` (UDA), ``"5/class"`` (k shots) or
    ``"0 (source-free)"`` (no target labels and no source data during adaptation).

    Tables show it on every row so that budgets are never mixed silently: a source-free row is
    its own budget (ranked and compared only with other source-free rows).
    """
    k = int(target_shots or 0)
    budget = f"{k}/class" if k > 0 else "0"
    return f"{budget} (source-free)" if protocol == "source-free" else budget


def _short_key(key: str, method: str, settings_keys: set[str]) -> str:
    """``dann.trade_off`` → ``trade_off`` unless that bare name is itself a setting."""
    prefix = f"{method}."
    if key.startswith(prefix) and key[len(prefix) :] not in settings_keys:
        return key[len(prefix) :]
    return key


@dataclass(frozen=True)
class Among:
    """A swept setting a rule chose per pair and seed among one folder's sweep values
    (:func:`dabench.analysis.sweeps.select_config` puts it in the chosen run's ``settings``).

    It stands for the choice, not for one value, so :func:`entry_names` shows it as
    ``trade_off∈{0.1, 1.0}``: never as the value of one trial, and never as a key the row lacks
    (a plain ``dann`` run beside the chosen row used to make it ``dann (trade_off=None)``). Two
    folders' choices over other grids are other configurations and get other rows.
    """

    values: tuple[str, ...]

    def __str__(self) -> str:
        return "{" + ", ".join(self.values) + "}"


def _show(v: object) -> str:
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


def _setting_text(key: str, v: object) -> str:
    """``key=value`` in a row name; a rule's choice among a sweep's values as ``key∈{a, b}``."""
    return f"{key}∈{v}" if isinstance(v, Among) else f"{key}={_show(v)}"


def entry_names(df: pd.DataFrame) -> list[str]:
    """The row name of every run of ``df``: its method, plus what tells its configuration apart.

    Every table that has a row per configuration names it this way (the leaderboard, the
    statistics, the selection-rule regret), so one configuration is one row everywhere.

    Runs of one method and label budget are split by the settings whose values vary among
    that method's configurations **within one pair** (varying only across pairs, as pair-
    default schedules do, does not split a row). A method with several budgets shows the
    budget. Names are made unique with ``#2``, ``#3`` … should two rows still print alike.
    """
    if df.empty:
        return []
    labels = [label_budget(p, k) for p, k in zip(df["protocol"], df["target_shots"])]
    methods = [str(m) for m in df["method"]]
    settings = list(df["settings"])
    pairs = [str(p) for p in df["pair"]]
    budgets: dict[str, set[str]] = {}
    for m, lab in zip(methods, labels):
        budgets.setdefault(m, set()).add(lab)
    varying: dict[tuple[str, str], list[str]] = {}
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for m, lab, p, st in zip(methods, labels, pairs, settings):
        groups.setdefault((m, lab, p), []).append(st)
    for (m, lab, _), sts in groups.items():
        all_keys = set().union(*sts) - {"method"}
        v = {k for k in all_keys if len({_show(st.get(k)) for st in sts}) > 1}
        varying[(m, lab)] = sorted(set(varying.get((m, lab), [])) | v)
    names: dict[tuple, str] = {}
    out = []
    for m, lab, st in zip(methods, labels, settings):
        keys = varying[(m, lab)]
        ident = (m, lab, tuple(_show(st.get(k)) for k in keys))
        if ident not in names:
            parts = [lab] if len(budgets[m]) > 1 else []
            parts += [_setting_text(_short_key(k, m, set(st)), st.get(k)) for k in keys]
            name = f"{m} ({', '.join(parts)})" if parts else m
            taken = set(names.values())
            base, i = name, 2
            while name in taken:
                name, i = f"{base} #{i}", i + 1
            names[ident] = name
        out.append(names[ident])
    return out


def settings_across_pairs(df: pd.DataFrame, entries: list[str]) -> dict[str, dict[str, dict[str, str]]]:
    """Per row name (``entries``, one per run of ``df``): the settings whose value differs between
    the row's pairs, each as pair → value (shown as text).

    :func:`entry_names` splits a row only on what varies **within** a pair, so what varies is
    between pairs: pair-default schedules, or a hyperparameter set per pair. Each cell is then
    one configuration but the row is not; the tables say so rather than let the row read as one.
    """
    out: dict[str, dict[str, dict[str, str]]] = {}
    by: dict[str, list[tuple[str, dict]]] = {}
    for e, p, st in zip(entries, df["pair"], df["settings"]):
        by.setdefault(e, []).append((str(p), st if isinstance(st, dict) else {}))
    for e, runs in by.items():
        keys = set().union(*(st for _, st in runs)) - {"method"}
        diff = {}
        for k in sorted(keys):
            vals = {p: _show(st.get(k)) for p, st in runs}
            if len(set(vals.values())) > 1:
                diff[k] = dict(sorted(vals.items()))
        if diff:
            out[e] = diff
    return out


# ---------------------------------------------------------------------------------------
# --where: select configurations
# ---------------------------------------------------------------------------------------
#: Keys every row has as a column (everything else is looked up in ``settings``).
_COLUMN_KEYS = ("method", "pair", "seed")


def _matches(actual: Any, wanted: str) -> bool:
    """True when a setting's value equals the text of ``--where`` (numbers compare as numbers)."""
    w = wanted.strip()
    if actual is None:
        return w.lower() in ("none", "null", "")
    if isinstance(actual, bool):
        return w.lower() in (("true", "1", "yes") if actual else ("false", "0", "no"))
    if isinstance(actual, (int, float)):
        try:
            return float(w) == float(actual)
        except ValueError:
            return False
    return str(actual) == w


def _spelled(flag: str, text: str) -> str:
    """A filter as its caller wrote it: ``--where steps=2000`` (the CLI), ``where='steps=2000'``
    (a Python keyword: ``dabench.leaderboard(where=...)`` has no ``--where`` flag to name)."""
    return f"{flag} {text}" if flag.startswith("-") else f"{flag}={text!r}"


def parse_where(where: Iterable[str] | dict[str, Any] | None, flag: str = "--where") -> list[tuple[str, list[str]]]:
    """``["steps=2000", "method=dann,dan"]`` or ``{"steps": 2000}`` → [(key, [values…])]; ``flag``:
    how errors name the filter (``--where``, or ``where`` for the Python API's keyword)."""
    if where is None or (isinstance(where, (dict, list, tuple)) and not where):
        return []
    if isinstance(where, str):
        # one filter, not its characters (``where="steps=300"`` was read as filters 's', 't' ...)
        where = [where]
    if isinstance(where, dict):
        # a list value is "any of", as a comma list is (it was compared as its repr, "['dann', 'dan']")
        items = [
            (str(k), [str(x) for x in v] if isinstance(v, (list, tuple, set)) else [str(v)]) for k, v in where.items()
        ]
    elif not isinstance(where, Iterable):
        raise ValueError(
            f"{flag}={where!r}: expected KEY=VALUE filters (a list such as ['steps=2000'], one "
            "string 'steps=2000' or a dict {'steps': 2000})"
        )
    else:
        items = []
        for text in where:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise ValueError(
                    f"{_spelled(flag, repr(text) if flag.startswith('-') else str(text))}: expected KEY=VALUE "
                    "(e.g. steps=2000, dann.trade_off=0.5)"
                )
            items.append((key.strip(), list(value.split(","))))
    return items


def filter_runs(df: pd.DataFrame, where: Iterable[str] | dict[str, Any] | None, flag: str = "--where") -> pd.DataFrame:
    """Rows of ``df`` whose configuration matches every ``KEY=VALUE`` (a comma list = any of).

    Keys: ``method``, ``pair``, ``seed``, any flattened spec setting (``steps``, ``lr``,
    ``backbone``, ``backbone.<option>``, ``target_shots``, ``dann.trade_off`` …) or a bare
    hyperparameter name (``trade_off``). A hyperparameter constrains only the runs of methods
    that have it, so ``--where trade_off=0.5`` keeps the source-only baseline beside them.

    Raises:
        ValueError: a malformed item, a key no run has (the message lists the valid keys), or
            filters that together match no run (the message lists each key's values). It names
            the filter as ``flag``: ``--where`` (the CLI) or ``where`` (the Python API's keyword).
    """
    items = parse_where(where, flag)
    if not items or df.empty:
        return df
    settings = list(df["settings"])
    keys = set(_COLUMN_KEYS)
    hp_bare: set[str] = set()
    for s, m in zip(settings, df["method"]):
        keys.update(s)
        hp_bare.update(k[len(str(m)) + 1 :] for k in s if k.startswith(f"{m}."))
    mask = pd.Series(True, index=df.index)
    seen: dict[str, set[str]] = {}  # each key's values in these runs, for the no-match message
    for key, values in items:
        if key not in keys and key not in hp_bare:
            raise ValueError(
                f"{_spelled(flag, key + '=' + ','.join(values))}: unknown key {key!r}; valid keys: "
                f"{', '.join(sorted(keys | hp_bare))}"
            )
        keep = []
        for (_, row), s in zip(df.iterrows(), settings):
            method = str(row["method"])
            if key in _COLUMN_KEYS:
                actual, has = row[key], True
            elif key in s:
                actual, has = s[key], True
            elif f"{method}.{key}" in s:
                actual, has = s[f"{method}.{key}"], True
            else:
                actual, has = None, False
            if not has and (key in hp_bare or ("." in key and not key.startswith("backbone."))):
                keep.append(True)  # a hyperparameter this method does not have: not constrained
                continue
            if actual is pd.NA:
                actual = None
            elif hasattr(actual, "item"):  # numpy / pandas scalars (the Int64 seed column)
                actual = actual.item()
            seen.setdefault(key, set()).add(str(actual))
            keep.append(any(_matches(actual, v) for v in values))
        mask &= pd.Series(keep, index=df.index)
    if not mask.any():
        # an empty report would read as "no complete runs": say which filter emptied it instead
        given = " ".join(f"{k}={','.join(v)}" for k, v in items)
        present = "; ".join(f"{k}: {', '.join(sorted(seen[k]))}" for k, _ in items if k in seen)
        raise ValueError(f"{_spelled(flag, given)}: no run matches; the values in these runs are {present}")
    return df[mask]
