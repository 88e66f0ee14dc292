"""The unit of work: run one spec and record its outcome (every executor's body).

:func:`run_claimed` claims a run, :func:`run_spec` runs it through the engine and writes its record
(running → complete/failed/diverged/skipped), :func:`record_failure` marks a run ``failed`` from outside
it. It knows nothing of any method's losses, nor of the matrix: the scheduler
(:mod:`dabench.running.scheduler`) decides what runs when, executors decide where.
"""

from __future__ import annotations

import functools
import os
import pathlib
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.domain import PairData, check_pair_data
from ..core.record import RunRecord, RunResult, Status, utc_now
from ..core.registry import METHODS, PAIRS
from ..core.spec import RunSpec
from ..core.store import RunStore, WriteFault, checkpoint_problem, weights_fingerprint
from ..core.version import __version__
from ..engine.options import EngineOptions
from ..engine.seed_batch import execute_seeds
from ..engine.train import Diverged, execute

#: (pair name, data root) -> (the DomainPair that loaded it, its data)
_PAIR_CACHE: dict[tuple[str, str], tuple[object, PairData]] = {}


def load_pair_data(pair_name: str, data_root: pathlib.Path) -> PairData:
    """Load a pair's data once per process (runs of one pair share it).

    Kept per registered pair *object*: a pair registered anew under its name in this process (a
    notebook cell re-run after a fix of its loader) loads anew, never the old loader's data."""
    key = (pair_name, str(data_root))
    pair = PAIRS.get(pair_name)
    cached = _PAIR_CACHE.get(key)
    if cached is None or cached[0] is not pair:
        data = pair.load(data_root)
        check_pair_data(pair, data)  # a plugin pair's mistakes named here, not deep inside a run
        _PAIR_CACHE[key] = cached = (pair, data)
    return cached[1]


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | bool | None]:
    # once per process: the versions cannot change while it runs (a copy is handed out each time)
    versions: dict[str, str | bool | None] = {
        "dabench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for mod in ("torchvision", "timm", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover - optional
            pass
    versions["git_commit"] = _git_commit()
    if versions["git_commit"] is not None:
        # uncommitted changes: the code that made the numbers exists in no commit (reports name it)
        versions["git_dirty"] = _git_dirty()
    return versions


def versions() -> dict[str, str | bool | None]:
    """The versions recorded with every run: dabench, python, torch, torchvision, timm, numpy, the
    git commit of the dabench checkout (None outside one) and, in a checkout, ``git_dirty``
    (uncommitted changes to tracked files). Needs no device (no CUDA context)."""
    return dict(_versions())


def environment(device: torch.device) -> dict[str, Any]:
    """Device and versions recorded with every run (reproducibility)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    # CPU results depend on the intra-op thread count (reduction order), so it is recorded
    return {"device": name, "versions": versions(), "host": platform.node(), "torch_threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty() -> bool | None:
    """Whether the dabench checkout has uncommitted changes to tracked files (None: git could not tell)."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def base_record(spec: RunSpec, status: Status | str, env: dict[str, Any]) -> RunRecord:
    """A new record of ``spec`` with ``status``, the environment ``env`` (:func:`environment`:
    device, versions, host, torch_threads) and this process and time; no results yet."""
    return RunRecord(
        run_id=spec.run_id,
        status=Status(status),
        spec=spec.to_dict(),
        device=env.get("device"),
        versions=env.get("versions"),
        host=env.get("host"),
        torch_threads=env.get("torch_threads"),
        pid=os.getpid(),  # the process that ran it (a worker's, under the local pool)
        started_at=utc_now(),
        plugin_code=plugin_code(spec),
    )


def plugin_code(spec: RunSpec) -> dict[str, Any] | None:
    """The record's ``plugin_code``: :meth:`Registry.code` of the spec's method and pair where they
    are plugins (None when both are built-in). A resume compares it with the code loaded now
    (``scheduler.plugin_code_note``), so two versions of a plugin are never mixed unannounced."""
    out = {}
    for kind, registry, name in (("method", METHODS, spec.method), ("pair", PAIRS, spec.pair)):
        try:
            code = registry.code(name)
        except Exception:  # noqa: BLE001 - provenance must never fail a run (a failure record included)
            code = None
        if code:
            out[kind] = code
    return out or None


def run_spec(
    spec: RunSpec,
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
) -> RunRecord:
    """Run one spec and write its record (running → complete/failed/diverged/skipped). Never raises
    for a failure of the run itself; returns the final record."""
    env = environment(device)
    record = base_record(spec, Status.RUNNING, env)
    if not _dependency_ready(spec, store, record):
        return record
    store.write(record)
    t0 = time.perf_counter()
    try:
        pair = PAIRS.get(spec.pair)
        pair_data = load_pair_data(spec.pair, data_root)
        result: RunResult | BaseException = execute(spec, pair, pair_data, device, store, on_step, engine)
    except Exception as exc:  # noqa: BLE001 - the run failed (a WriteFault stops the matrix below)
        result = exc
    _record_outcome(record, result, store, time.perf_counter() - t0)
    return record


def _dependency_ready(spec: RunSpec, store: RunStore, record: RunRecord) -> bool:
    """Whether ``spec``'s source-only dependency (if any) is complete with its checkpoint; if not,
    ``record`` is written ``skipped`` or ``failed`` saying why."""
    if spec.depends_on:
        dep = store.read(spec.depends_on)
        if dep is None or dep.status is not Status.COMPLETE:
            record.fail(
                Status.SKIPPED,
                "DependencyNotComplete",
                f"source-only run {spec.depends_on} is {dep.status if dep else 'not run'}",
                finished_at=utc_now(),
            )
            store.write(record)
            return False
        ckpt = store.checkpoint_path(spec.depends_on)
        # the cheap, torch-free look at the file; damage inside it fails the engine's load, naming
        # the same fix. The weights are fingerprinted there, once, from what was loaded
        # (engine.train.start_method): the record names them when the run ends (RunRecord.apply),
        # so a resume finds it stale when the source-only run is recreated with other weights
        # (scheduler: stale_source), and a source recreated between this look and the load
        # cannot leave a record naming weights the run never saw
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            record.fail(
                Status.FAILED,
                "MissingCheckpoint" if problem == "missing" else "CorruptCheckpoint",
                f"source-only run {spec.depends_on} is complete but its checkpoint {ckpt} is {problem}; "
                f"recreate it with: dabench run --rerun {spec.depends_on} --results {store.root}",
                finished_at=utc_now(),
            )
            store.write(record)
            return False
        record.source_weights = {"run_id": spec.depends_on, "finished_at": dep.finished_at}
    return True


def _record_outcome(record: RunRecord, result: RunResult | BaseException, store: RunStore, total_s: float) -> None:
    """Apply the engine's result (or the exception that ended the run) to ``record`` and write it."""
    if isinstance(result, WriteFault):
        # the results folder refuses writes (read-only, full disk): mark the run if that still
        # works, then stop the matrix: every further run would hit the same wall
        record.fail(Status.FAILED, "WriteFault", str(result), finished_at=utc_now())
        try:
            store.write(record)
        except WriteFault:
            pass  # left "running": the next dabench run reruns it
        raise result
    if isinstance(result, Diverged):
        record.fail(Status.DIVERGED, "Diverged", str(result))
        record.diverged_at_step = result.step
        record.name_source_weights(result.source_sha256)  # a kept record: it names its weights too
    elif isinstance(result, BaseException):
        tb = "".join(traceback.format_exception(type(result), result, result.__traceback__))
        record.fail(Status.FAILED, type(result).__name__, str(result), tb)
    else:
        record.apply(result)
        record.status = Status.COMPLETE
        # wall time of the whole run (data loading and set-up included): what the ETA needs
        record.timings = {**result.timings, "total_s": round(total_s, 3)}
        ckpt = store.checkpoint_path(record.run_id)
        if ckpt.exists():  # a source-only run: the weights its dependants will name (source_weights)
            try:
                record.weights_sha256 = weights_fingerprint(ckpt)
            except Exception:  # noqa: BLE001 - not loadable: its dependants say so when they start
                record.weights_sha256 = None
    record.finished_at = utc_now()
    store.write(record)
    if record.status in KEPT:
        # only now: the engine leaves the mid-run checkpoint in place until the run is recorded,
        # so a kill between its last step and this write resumes from it instead of step 0
        try:
            store.checkpoint_path(record.run_id, partial=True).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: a leftover mid-run checkpoint of a kept run is never read


def run_group(
    specs: list[RunSpec],
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
) -> list[RunRecord]:
    """Run the seeds ``specs`` of one configuration seed-batched (:mod:`dabench.engine.seed_batch`)
    and write each seed's record, as :func:`run_spec` writes one run's; returns the final records.

    Each seed's record is written as soon as its outcome is known (``execute_seeds``'s
    ``on_outcome``), not once the whole group is done: where the seeds train one after another (a
    method that cannot be vmapped, ``--compile``, a resume), a kill during a later seed must not
    lose the earlier ones, finished but not yet recorded (they would be trained again)."""
    env = environment(device)
    records: dict[str, RunRecord] = {}
    ready: list[RunSpec] = []
    for spec in specs:
        record = records[spec.run_id] = base_record(spec, Status.RUNNING, env)
        if _dependency_ready(spec, store, record):
            store.write(record)
            ready.append(spec)
    t0 = time.perf_counter()
    recorded: set[str] = set()

    def record_now(spec: RunSpec, result: RunResult | BaseException) -> None:
        if spec.run_id in recorded:
            return
        recorded.add(spec.run_id)  # first: a WriteFault raised below must not record it again
        _record_outcome(records[spec.run_id], result, store, time.perf_counter() - t0)

    if ready:
        try:
            pair = PAIRS.get(ready[0].pair)
            pair_data = load_pair_data(ready[0].pair, data_root)
            results: list[RunResult | BaseException] = list(
                execute_seeds(ready, pair, pair_data, device, store, on_step, engine, on_outcome=record_now)
            )
        except WriteFault:
            raise  # a record could not be written (raised by record_now): the matrix stops
        except Exception as exc:  # noqa: BLE001 - e.g. the pair's data is missing: every seed failed
            results = [exc] * len(ready)
        for spec, result in zip(ready, results):
            record_now(spec, result)  # the seeds execute_seeds did not report (it failed as a whole)
    return [records[s.run_id] for s in specs]


#: the outcomes a run keeps: no later ``dabench run`` of the matrix runs it again (``--rerun`` does).
#: A divergence is a result of its configuration and seed, not an accident to retry: rerunning it
#: on every resume would recompute it, and on a GPU (not bitwise deterministic) re-roll it until
#: it happened to complete, hiding that it diverged. ``failed`` and ``skipped`` runs are retried.
KEPT = (Status.COMPLETE, Status.DIVERGED)


def _already_done(spec: RunSpec, store: RunStore) -> Outcome | None:
    """The outcome of a run whose record another runner made :data:`KEPT` (read after the claim), or None."""
    rec = store.read(spec.run_id)
    if rec is None or rec.status not in KEPT:
        return None
    if rec.status is Status.COMPLETE:
        return Outcome(spec.run_id, "already-complete")
    return Outcome(spec.run_id, "already-diverged", rec)


def run_claimed(
    spec: RunSpec,
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
) -> Outcome:
    """Claim the run for this process, then run it; every executor's unit of work.

    The status is read again *after* the claim: another runner may have finished the run
    between our first look and the claim, and it must not be run twice.
    """
    if not store.claim(spec.run_id):
        return Outcome(spec.run_id, "busy")
    try:
        done = _already_done(spec, store)
        if done is not None:
            return done
        return Outcome(spec.run_id, "ran", run_spec(spec, store, device, data_root, on_step, engine))
    finally:
        store.release(spec.run_id)


def run_group_claimed(
    specs: list[RunSpec],
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
) -> list[Outcome]:
    """:func:`run_claimed` for a seed-batched group: claims each seed's run, leaves the ones held
    elsewhere (``busy``) or complete by now (``already-complete``), runs the rest as one
    :func:`run_group` and releases every claim. One outcome per spec, in order."""
    outcomes: dict[str, Outcome] = {}
    claimed: list[RunSpec] = []
    try:
        for spec in specs:
            if not store.claim(spec.run_id):
                outcomes[spec.run_id] = Outcome(spec.run_id, "busy")
                continue
            claimed.append(spec)
            done = _already_done(spec, store)
            if done is not None:
                outcomes[spec.run_id] = done
        todo = [s for s in claimed if s.run_id not in outcomes]
        if todo:
            for rec in run_group(todo, store, device, data_root, on_step, engine):
                outcomes[rec.run_id] = Outcome(rec.run_id, "ran", rec)
    finally:
        for spec in claimed:
            store.release(spec.run_id)
    return [outcomes[s.run_id] for s in specs]


@dataclass
class Outcome:
    """What became of one submitted run: ``ran`` (``record`` holds its final record), ``busy``
    (a live process elsewhere holds its claim), ``already-complete``, ``already-diverged`` (``record``:
    the kept record, see :data:`KEPT`), ``died`` (its process
    died without a terminal record; the executor has recorded it ``failed``) or ``write-fault``
    (a file of the results folder could not be written: ``error`` says which; the matrix stops)."""

    run_id: str
    kind: str
    record: RunRecord | None = None
    error: str | None = None  # kind "write-fault": the one-line message naming the file

    def to_message(self) -> dict[str, Any]:
        """The outcome as JSON (a worker's answer to its parent; the record as on disk)."""
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "record": self.record.to_dict() if self.record is not None else None,
            "error": self.error,
        }

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Outcome:
        """The outcome a worker sent (:meth:`to_message`); its record is checked against the schema."""
        rec = msg.get("record")
        return cls(
            msg["run_id"],
            msg["kind"],
            RunRecord.from_dict(rec, f"record of run {msg['run_id']} sent by a worker") if rec else None,
            msg.get("error"),
        )


def earlier_attempt(rec: RunRecord, pid: int | None = None) -> bool:
    """Whether ``rec`` is the ``failed``/``skipped`` record of an earlier attempt of the run: not a
    result (:data:`KEPT`) and written by another process than ``pid`` (default: this one), which
    the run is being retried by."""
    return rec.status.terminal and rec.status not in KEPT and rec.pid != (pid if pid is not None else os.getpid())


def record_failure(
    spec: RunSpec,
    store: RunStore,
    error_type: str,
    message: str,
    traceback_text: str = "",
    device: str | None = None,
    pid: int | None = None,
    torch_threads: int | None = None,
) -> RunRecord:
    """Mark a run ``failed`` from outside it (its process died, or its pair's data is missing).

    Keeps what the run's own ``running`` record holds (environment, start time); never
    overwrites a result (``complete``, ``diverged``: a run that wrote ``complete`` before dying is
    complete) nor the ``failed``/``skipped`` record the failing process itself wrote (``pid``;
    default: this one). A ``failed``/``skipped`` record of an *earlier* attempt (another process)
    is replaced: the retried run's own failure is the one to report, not the old one's. Without one (the run never started) the record gets what the caller knows: ``device`` (the
    device it assigned), this process's :func:`versions` (the worker is the same installation),
    ``pid`` (the process that was to run it; default: this one) and ``torch_threads``.
    """
    rec = store.read(spec.run_id)
    if rec is not None and rec.status.terminal:
        if not earlier_attempt(rec, pid):
            return rec
        rec = None  # an earlier attempt's failure: this attempt never wrote a record of its own
    if rec is None:
        # no torch.cuda calls here: the parent of a pool must not open a CUDA context
        env = {"device": device, "versions": versions(), "host": platform.node(), "torch_threads": torch_threads}
        rec = base_record(spec, Status.FAILED, env)
        if pid is not None:
            rec.pid = pid
    rec.fail(Status.FAILED, error_type, message, traceback_text, finished_at=utc_now())
    store.write(rec)
    return rec


__all__ = [
    "run_spec",
    "run_claimed",
    "run_group",
    "run_group_claimed",
    "record_failure",
    "base_record",
    "environment",
    "versions",
    "load_pair_data",
    "Outcome",
    "KEPT",
]
