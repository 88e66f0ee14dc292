"""The run record: what one run left behind, ``DIR/runs/<run_id>.json`` (docs/architecture.md,
"The run record"). Defined once here; written and read through :class:`~dabench.core.store.RunStore`
(or :func:`read_record` for a bare file), never as a loose dict.

This module imports only the standard library: the analysis side reads records without torch.

Schema versions (``format``): 1 is every record dabench has written so far. The JSON keeps the
field names below whatever the Python side does, so reports over old folders keep working; a
change of shape bumps :data:`FORMAT` and adds the old number to :data:`READABLE_FORMATS` (with
its conversion in :meth:`RunRecord.from_dict`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import pathlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .jsonio import dump_json, load_json

#: the record format this dabench writes
FORMAT = 1
#: the record formats this dabench reads
READABLE_FORMATS: tuple[int, ...] = (1,)


def utc_now() -> str:
    """The current time as records, claims and job lists store it (UTC, ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Status(str, Enum):
    """A run's status. Every status but ``running`` is terminal (the run is over).

    ``running``: in progress, or killed mid-run (the next ``dabench run`` reruns it). What
    ``dabench status`` calls *pending* / *interrupted* and the analysis calls *pending* (a planned
    run with no record yet) are states of a folder, never a record's status.
    """

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    DIVERGED = "diverged"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self is not Status.RUNNING

    def __str__(self) -> str:  # "complete", not "Status.COMPLETE", in messages and f-strings
        return self.value

    def __format__(self, format_spec: str) -> str:  # f"{status:>8}" formats the value, as str would
        return format(self.value, format_spec)


#: the statuses a run never leaves (the record is final)
TERMINAL: frozenset[Status] = frozenset(s for s in Status if s.terminal)
#: every status name, for messages ("expected one of ...")
STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in Status)


def commit_label(versions: Any) -> str | None:
    """The dabench commit of a record's ``versions`` as notes name it: 7 characters, ``+dirty``
    when the record marks uncommitted changes (that code exists in no commit); None without one."""
    v = versions if isinstance(versions, dict) else {}
    commit = v.get("git_commit")
    return None if commit is None else str(commit)[:7] + ("+dirty" if v.get("git_dirty") else "")


def first_line(text: Any) -> str:
    """The first non-blank line of ``text``, stripped ("" for None/blank): what one-line reports show
    of an error message whose first line may be empty."""
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


class RecordError(ValueError):
    """A file is not a run record this dabench can read. ``kind`` says why:

    ``corrupt`` (not JSON, not UTF-8: a torn write; the run is rerun), ``foreign`` (JSON, but not a
    dabench run record), ``format`` (a record format this dabench does not read) or ``malformed``
    (a field of the wrong type). The message starts with the file's path.
    """

    def __init__(self, source: str | pathlib.Path, kind: str, why: str) -> None:
        super().__init__(f"{source}: {why}")
        self.source, self.kind, self.why = str(source), kind, why


@dataclass
class RunError:
    """Why a run is ``failed``, ``diverged`` or ``skipped``: the exception's ``type`` name
    (``MissingDataError``, ``WorkerDied``, ``DependencyNotComplete``, ``Diverged`` ...), its
    ``message`` and the ``traceback`` (empty when there is none)."""

    type: str
    message: str
    traceback: str = ""

    def headline(self) -> str:
        """``Type: first line of the message`` (just ``Type`` when the message is blank)."""
        line = first_line(self.message)
        return f"{self.type}: {line}" if line else self.type


@dataclass
class RunResult:
    """What a finished run adds to its record (returned by ``engine.train.execute``)."""

    curve: list[dict[str, Any]]
    final: dict[str, Any]
    target_labels: int | None
    eval_size: int | None
    validators: dict[str, Any] | None
    resumed_from_step: int | None
    timings: dict[str, Any]
    data: dict[str, Any] | None = None
    resume_note: str | None = None
    #: a dependant: the fingerprint of the source weights it loaded (``engine.train.start_method``);
    #: the record keeps it as ``source_weights["weights_sha256"]``, not as a field of its own
    source_sha256: str | None = None


@dataclass(eq=True)
class RunRecord(Mapping):
    """One run's record. Its JSON (:meth:`to_dict`) has exactly these field names.

    It is also a read-only mapping of that JSON (``rec["status"] == "complete"``,
    ``rec["error"]["message"]``), so code written against the plain dicts of format 1 (scripts,
    ``summary.ran[i]["spec"]["method"]``) keeps working; dabench itself uses the attributes.
    """

    run_id: str  #: hash of the spec (core/spec.py); the file name
    status: Status
    spec: dict[str, Any]  #: RunSpec.to_dict(): kept as JSON, so records of unloaded plugins still read
    format: int = FORMAT
    target_labels: int | None = None  #: target labels the run used (few-shot: k x classes)
    curve: list[dict[str, Any]] = field(default_factory=list)  #: one point per evaluation
    final: dict[str, Any] | None = None  #: the last evaluation point
    error: RunError | None = None  #: failed / diverged / skipped: why
    diverged_at_step: int | None = None  #: diverged: the step whose loss was not finite
    resumed_from_step: int | None = None  #: the mid-run checkpoint step a resumed run started from
    #: a mid-run checkpoint that was there but not resumed from, and why (damaged; a dependant's
    #: trained from other source weights than its source-only run holds now); null otherwise
    resume_note: str | None = None
    timings: dict[str, Any] | None = None  #: wall_s, total_s, steps, steps_per_s, images_per_s, compiled
    device: str | None = None
    versions: dict[str, Any] | None = None  #: dabench, torch ..., git_commit, git_dirty
    host: str | None = None
    torch_threads: int | None = None  #: CPU results depend on it (reduction order)
    pid: int | None = None  #: the process that ran it (a worker's, under the local pool)
    started_at: str | None = None  #: UTC, ISO 8601
    finished_at: str | None = None
    eval_size: int | None = None  #: size of the evaluation set
    validators: dict[str, Any] | None = None  #: split/samples/overlaps_evaluation of the label-free scores
    #: the data the run saw: the pair's description (a folder pair names what it left out) and split sizes
    data: dict[str, Any] | None = None
    #: a source-only run: :func:`~dabench.core.store.weights_fingerprint` of the checkpoint it left
    #: (``checkpoints/<run_id>.pt``), the weights its dependants start from
    weights_sha256: str | None = None
    #: a dependant (``spec.depends_on``): the source weights it was trained from, ``run_id``,
    #: ``weights_sha256`` (the fingerprint of the weights it loaded, the function that gives the
    #: source record's ``weights_sha256``) and the source record's ``finished_at``; null in records
    #: of older dabench (then not known). ``weights_sha256`` is absent while the run has not
    #: loaded them (a ``running`` record) and in a ``failed`` record of a run that never did
    source_weights: dict[str, Any] | None = None
    #: the plugin code that made the run, per kind (``method``, ``pair``) that is not built-in:
    #: ``{"file", "sha256", "package"}`` (:meth:`~dabench.core.registry.Registry.code`); null when
    #: both are dabench's own (then ``versions`` says which code) and in records of older dabench
    plugin_code: dict[str, Any] | None = None
    #: top-level fields this version does not know, kept so that a read + write loses nothing
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    # --- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (``format`` first, then the fields in declaration order)."""
        out: dict[str, Any] = {"format": self.format}
        for f in dataclasses.fields(self):
            if f.name in ("format", "extra"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, Status):
                v = v.value
            elif isinstance(v, RunError):
                v = dataclasses.asdict(v)
            out[f.name] = v
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        # standard JSON: a NaN/infinite score is a string, never a bare word (core/jsonio.py)
        return dump_json(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_dict(cls, data: Any, source: str | pathlib.Path = "<record>") -> RunRecord:
        """Check ``data`` (a decoded JSON object) against the schema; :class:`RecordError` naming
        ``source``, the field, its value and what is valid when it does not fit."""
        if not isinstance(data, dict):
            raise RecordError(
                source,
                "foreign",
                f"not a run record of dabench (a JSON {type(data).__name__}, "
                "expected an object with run_id, status and spec)",
            )
        missing = [k for k in ("run_id", "status", "spec") if k not in data]
        if missing:
            raise RecordError(
                source,
                "foreign",
                f"not a run record of dabench (missing {', '.join(missing)}; a record has run_id, status and spec)",
            )
        # format 1 records have always carried the field; one without it is taken as format 1
        fmt = data.get("format", 1)
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt not in READABLE_FORMATS:
            lo, hi = min(READABLE_FORMATS), max(READABLE_FORMATS)
            reads = f"format {lo}" if lo == hi else f"formats {lo}-{hi}"
            raise RecordError(
                source,
                "format",
                f"written by record format {fmt!r}; this dabench reads {reads}"
                + (
                    " (a newer dabench wrote it)"
                    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > hi
                    else ""
                ),
            )
        status = data["status"]
        if status not in STATUS_NAMES:
            raise RecordError(
                source, "malformed", f"field 'status' is {status!r}; expected one of {', '.join(STATUS_NAMES)}"
            )
        kwargs: dict[str, Any] = {"status": Status(status), "format": fmt}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("status", "format"):
                continue
            kind = _FIELD_TYPES.get(key)
            if kind is None:
                extra[key] = value
                continue
            # no field is a boolean, and JSON true/false must not pass for the integer 1/0
            fits = (value is None and key not in _REQUIRED) or (isinstance(value, kind) and not isinstance(value, bool))
            if not fits:
                names = " or ".join(_JSON_NAMES[k] for k in kind)
                raise RecordError(
                    source,
                    "malformed",
                    f"field {key!r} is {value!r:.60} ({_json_name(value)}); "
                    f"expected {names}{'' if key in _REQUIRED else ' or null'}",
                )
            kwargs[key] = value
        if kwargs["run_id"] == "":
            raise RecordError(source, "malformed", "field 'run_id' is empty; expected the run's id")
        if not all(isinstance(c, dict) for c in kwargs.get("curve") or []):
            raise RecordError(source, "malformed", "field 'curve' must be a list of evaluation objects")
        err = kwargs.get("error")
        if err is not None:
            if not isinstance(err.get("type"), str) or not isinstance(err.get("message", ""), str):
                raise RecordError(
                    source,
                    "malformed",
                    f"field 'error' is {err!r:.60}; expected an object with a 'type' and a 'message' string",
                )
            kwargs["error"] = RunError(err["type"], err.get("message", ""), str(err.get("traceback") or ""))
        if kwargs.get("curve") is None:
            kwargs["curve"] = []
        return cls(**kwargs, extra=extra)

    # --- a finished run ----------------------------------------------------------------
    def apply(self, result: RunResult) -> None:
        """Take over what a finished run measured (its curve, final point, timings ...)."""
        for f in dataclasses.fields(result):
            if f.name != "source_sha256":
                setattr(self, f.name, getattr(result, f.name))
        self.name_source_weights(result.source_sha256)

    def name_source_weights(self, sha256: str | None) -> None:
        """A dependant: record the fingerprint of the source weights it loaded (``None``: it
        loaded none, or it is not known) in ``source_weights``, beside the source run's id."""
        if sha256 is not None:
            self.source_weights = {**(self.source_weights or {}), "weights_sha256": sha256}

    def fail(
        self, status: Status, error_type: str, message: str, traceback: str = "", finished_at: str | None = None
    ) -> None:
        """Mark the run ``status`` (failed / diverged / skipped) because of ``error_type: message``."""
        self.status = status
        self.error = RunError(error_type, message, traceback)
        if finished_at is not None:
            self.finished_at = finished_at

    # --- read-only mapping of the JSON (compatibility with format-1 dict readers) ---------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    __hash__ = None  # type: ignore[assignment]  # mutable


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list"}


def _json_name(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "a list",
    }.get(type(value), type(value).__name__)


#: JSON type(s) of each field (a field not listed is kept in ``extra``); null allowed unless required
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "spec": (dict,),
    "target_labels": (int,),
    "curve": (list,),
    "final": (dict,),
    "error": (dict,),
    "diverged_at_step": (int,),
    "resumed_from_step": (int,),
    "resume_note": (str,),
    "timings": (dict,),
    "device": (str,),
    "versions": (dict,),
    "host": (str,),
    "torch_threads": (int,),
    "pid": (int,),
    "started_at": (str,),
    "finished_at": (str,),
    "eval_size": (int,),
    "validators": (dict,),
    "data": (dict,),
    "weights_sha256": (str,),
    "source_weights": (dict,),
    "plugin_code": (dict,),
}
_REQUIRED = ("run_id", "spec")


def parse_record(text: str | bytes, source: str | pathlib.Path = "<record>") -> RunRecord:
    """A record from its JSON text; :class:`RecordError` (kind ``corrupt`` for text that is not
    UTF-8 JSON) naming ``source`` otherwise."""
    try:
        data = load_json(text.decode("utf-8") if isinstance(text, bytes) else text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RecordError(source, "corrupt", f"corrupt ({exc})") from exc
    return RunRecord.from_dict(data, source)


def read_record(path: str | pathlib.Path) -> RunRecord:
    """The record in the file ``path``; :class:`RecordError` naming it when it is not one
    (``OSError`` when it cannot be opened)."""
    path = pathlib.Path(path)
    return parse_record(path.read_bytes(), path)


__all__ = [
    "commit_label",
    "FORMAT",
    "READABLE_FORMATS",
    "Status",
    "TERMINAL",
    "STATUS_NAMES",
    "RunRecord",
    "RunError",
    "RunResult",
    "RecordError",
    "parse_record",
    "read_record",
    "first_line",
]
