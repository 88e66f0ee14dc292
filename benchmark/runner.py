"""The runner: takes run specs, skips what is complete, runs the rest, records every outcome.

It knows nothing of any method's losses. A failure (exception) or divergence (non-finite
loss) of one run is recorded and the matrix goes on; a run whose dependency did not
complete is recorded ``skipped`` with the reason. A run is only ever recorded ``complete``
after it has finished, so a killed run is rerun by the next ``dabench run``.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from .domain import MissingDataError, PairData, default_data_root
from .registry import PAIRS
from .spec import RunSpec
from .store import TERMINAL, RunStore, WriteFault, atomic_write_text
from .train import Diverged, execute

if TYPE_CHECKING:
    from .executors import Executor

_PAIR_CACHE: dict[tuple[str, str], PairData] = {}


def load_pair_data(pair_name: str, data_root: pathlib.Path) -> PairData:
    """Load a pair's data once per process (runs of one pair share it)."""
    key = (pair_name, str(data_root))
    if key not in _PAIR_CACHE:
        _PAIR_CACHE[key] = PAIRS.get(pair_name).load(data_root)
    return _PAIR_CACHE[key]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    """Device and versions recorded with every run (reproducibility)."""
    from . import __version__

    versions = {"dabench": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "timm", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover - optional
            pass
    versions["git_commit"] = _git_commit()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    # CPU results depend on the intra-op thread count (reduction order), so it is recorded
    return {"device": name, "versions": versions, "host": platform.node(), "torch_threads": torch.get_num_threads()}


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


def base_record(spec: RunSpec, status: str, env: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": 1,
        "run_id": spec.run_id,
        "status": status,
        "spec": spec.to_dict(),
        "target_labels": None,
        "curve": [],
        "final": None,
        "error": None,
        "diverged_at_step": None,
        "resumed_from_step": None,
        "timings": None,
        **env,
        "pid": os.getpid(),  # the process that ran it (a worker's, under the local pool)
        "started_at": _now(),
        "finished_at": None,
    }


def run_spec(
    spec: RunSpec,
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
    compile: bool = False,
) -> dict[str, Any]:
    """Run one spec and write its record (running → complete/failed/diverged/skipped). Never raises
    for a failure of the run itself; returns the final record."""
    env = environment(device)
    record = base_record(spec, "running", env)
    if spec.depends_on:
        dep = store.read(spec.depends_on)
        if not dep or dep.get("status") != "complete":
            why = dep.get("status") if dep else "not run"
            record.update(status="skipped", finished_at=_now(),
                          error={"type": "DependencyNotComplete",
                                 "message": f"source-only run {spec.depends_on} is {why}", "traceback": ""})
            store.write(record)
            return record
        ckpt = store.checkpoint_path(spec.depends_on)
        if not ckpt.exists():
            record.update(status="failed", finished_at=_now(),
                          error={"type": "MissingCheckpoint", "traceback": "",
                                 "message": f"source-only run {spec.depends_on} is complete but its checkpoint {ckpt} "
                                            f"is missing; recreate it with: dabench run --rerun {spec.depends_on} "
                                            f"--results {store.root}"})
            store.write(record)
            return record
    store.write(record)
    t0 = time.perf_counter()
    try:
        pair = PAIRS.get(spec.pair)
        pair_data = load_pair_data(spec.pair, data_root)
        result = execute(spec, pair, pair_data, device, store, on_step, checkpoint_every, compile=compile)
        record.update(result, status="complete")
        # wall time of the whole run (data loading and set-up included): what the ETA needs
        record["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    except WriteFault as exc:
        # the results folder refuses writes (read-only, full disk): mark the run if that still
        # works, then stop the matrix: every further run would hit the same wall
        record.update(status="failed", finished_at=_now(),
                      error={"type": "WriteFault", "message": str(exc), "traceback": ""})
        try:
            store.write(record)
        except WriteFault:
            pass  # left "running": the next dabench run reruns it
        raise
    except Diverged as exc:
        record.update(status="diverged", diverged_at_step=exc.step,
                      error={"type": "Diverged", "message": str(exc), "traceback": ""})
    except Exception as exc:  # noqa: BLE001 - the run failed; the matrix goes on
        record.update(status="failed", error={"type": type(exc).__name__, "message": str(exc),
                                               "traceback": traceback.format_exc()})
    record["finished_at"] = _now()
    store.write(record)
    return record


def run_claimed(
    spec: RunSpec,
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
    compile: bool = False,
) -> "Outcome":
    """Claim the run for this process, then run it; every executor's unit of work.

    The status is read again *after* the claim: another runner may have finished the run
    between our first look and the claim, and it must not be run twice.
    """
    if not store.claim(spec.run_id):
        return Outcome(spec.run_id, "busy")
    try:
        if store.status(spec.run_id) == "complete":
            return Outcome(spec.run_id, "already-complete")
        return Outcome(spec.run_id, "ran", run_spec(spec, store, device, data_root, on_step, checkpoint_every,
                                                    compile=compile))
    finally:
        store.release(spec.run_id)


@dataclass
class Outcome:
    """What became of one submitted run: ``ran`` (``record`` holds its final record), ``busy``
    (a live process elsewhere holds its claim), ``already-complete``, ``died`` (its process
    died without a terminal record; the executor has recorded it ``failed``) or ``write-fault``
    (a file of the results folder could not be written: ``error`` says which; the matrix stops)."""

    run_id: str
    kind: str
    record: dict[str, Any] | None = None
    error: str | None = None  # kind "write-fault": the one-line message naming the file


def record_failure(spec: RunSpec, store: RunStore, error_type: str, message: str, traceback_text: str = "",
                   device: str | None = None) -> dict[str, Any]:
    """Mark a run ``failed`` from outside it (its process died, or its pair's data is missing).

    Keeps what the run's own ``running`` record holds (environment, start time); never
    overwrites a terminal record: a run that wrote ``complete`` before dying is complete.
    """
    rec = store.read(spec.run_id)
    if rec is not None and rec.get("status") in TERMINAL:
        return rec
    if rec is None:
        # no torch.cuda calls here: the parent of a pool must not open a CUDA context
        rec = base_record(spec, "failed", {"device": device, "versions": None, "host": platform.node()})
    rec.update(status="failed", finished_at=_now(),
               error={"type": error_type, "message": message, "traceback": traceback_text})
    store.write(rec)
    return rec


@dataclass
class MatrixSummary:
    """What one ``dabench run`` did: the records it wrote and the runs it left alone."""

    ran: list[dict[str, Any]] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # claimed by another live process
    gave_up: list[str] = field(default_factory=list)  # dependants left after waiting WAIT_LIMIT_S for their dependency
    rerun_for_checkpoint: list[str] = field(default_factory=list)  # complete runs rerun: checkpoint lost
    corrupt: list[str] = field(default_factory=list)  # record files that did not parse (rerun)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"already complete": len(self.skipped_complete)}
        for rec in self.ran:
            out[rec["status"]] = out.get(rec["status"], 0) + 1
        if self.busy:
            out["running elsewhere"] = len(self.busy)
        if self.corrupt:
            out["corrupt records rerun"] = len(self.corrupt)
        if self.gave_up:
            out["not run (gave up waiting)"] = len(self.gave_up)
        return out


MATRIX_FILE = "matrix.json"

#: default seconds a runner waits for a run held by another live runner (fresh heartbeat) that
#: one of its runs depends on, before it gives up on the dependants (``dabench run --wait-limit``)
WAIT_LIMIT_S = 3600.0


def write_matrix_file(results_dir: str | os.PathLike, specs: list[RunSpec], plugins: Iterable[str] = (),
                      executor: str = "inline", workers: int = 1) -> pathlib.Path:
    """Store the expanded matrix in ``DIR/matrix.json``: ``dabench status`` counts pending runs
    from it and ``--rerun`` loads its plugins."""
    path = pathlib.Path(results_dir) / MATRIX_FILE
    payload = {"format": 1, "written_at": _now(), "executor": executor, "workers": int(workers),
               "plugins": list(plugins), "specs": [s.to_dict() for s in specs]}
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))
    return path


def _corrupt(store: RunStore, run_id: str) -> bool:
    """True when the record file exists but does not parse (the store warns, naming the file)."""
    return store.record_path(run_id).exists() and store.read(run_id) is None


def run_matrix(
    specs: Iterable[RunSpec],
    results_dir: str | os.PathLike,
    executor: "str | Executor" = "inline",
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
    compile: bool = False,
    plugins: Iterable[str] = (),
    workers: int | None = None,
    runs_per_gpu: int = 1,
    runs_per_process: int = 0,
    ray_address: str | None = None,
    poll_s: float = 1.0,
    wait_limit_s: float = WAIT_LIMIT_S,
) -> MatrixSummary:
    """Run specs through an executor: skip complete ones, order dependants after their
    dependency, record every outcome. The same records whatever the executor.

    A dependant is submitted only once its dependency's record is terminal (``run_spec`` then
    records it ``skipped`` if the dependency did not complete). Runs claimed by a live process
    elsewhere are left to it (``busy``); a dependant of such a run waits for it, saying what it
    waits for, at most ``wait_limit_s`` seconds (then the dependants are left, ``gave_up``). A
    stale claim (see :mod:`dabench.store`) is taken over. A complete source-only run whose
    checkpoint is lost is rerun (it is deterministic) when a dependant still needs it.

    Raises :class:`~dabench.store.WriteFault` when the results folder refuses a write: the
    run in hand is marked ``failed`` if possible and no temporary file is left.
    """
    from .executors import make_executor
    from tqdm.auto import tqdm

    specs = list(specs)
    store = RunStore(results_dir)
    root = pathlib.Path(data_root) if data_root else default_data_root()
    ex = executor if not isinstance(executor, str) else make_executor(
        executor, results_dir=store.root, device=device, data_root=root, progress=progress,
        checkpoint_every=checkpoint_every, compile=compile, plugins=tuple(plugins), workers=workers,
        runs_per_gpu=runs_per_gpu, runs_per_process=runs_per_process, ray_address=ray_address)
    summary = MatrixSummary()
    missing_pairs: dict[str, str] = {}
    bar = tqdm(total=len(specs), desc="matrix", unit="run", disable=not progress, file=sys.stderr, position=0)

    def note(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    queue: list[RunSpec] = []
    needed = {s.depends_on for s in specs if s.depends_on and store.status(s.run_id) != "complete"}
    for spec in specs:
        if store.status(spec.run_id) == "complete":
            if spec.run_id in needed and not store.checkpoint_path(spec.run_id).exists():
                # its dependants cannot start without the weights: rerun it (same spec, same seed)
                note(f"{spec.label}: complete but its checkpoint {store.checkpoint_path(spec.run_id)} is missing: "
                     f"rerunning it for its dependants (old record kept in {store.root / 'previous'})")
                _archive_record(store, spec.run_id)
                summary.rerun_for_checkpoint.append(spec.run_id)
                queue.append(spec)
                continue
            summary.skipped_complete.append(spec.run_id)
            bar.update(1)
            continue
        if _corrupt(store, spec.run_id):
            summary.corrupt.append(spec.run_id)
            note(f"corrupt record {store.record_path(spec.run_id)}: run {spec.label} will be rerun")
        queue.append(spec)
    in_matrix = {s.run_id for s in queue}
    inflight: dict[str, RunSpec] = {}
    elsewhere: dict[str, RunSpec] = {}  # claimed by another live process
    announced: set[str] = set()  # runs whose holder we said we wait for
    wait_started: float | None = None

    def dependency_ready(spec: RunSpec) -> bool:
        dep = spec.depends_on
        if not dep:
            return True
        if dep in inflight or any(s.run_id == dep for s in queue):
            return False
        if dep in elsewhere:
            return store.status(dep) in TERMINAL
        return True

    def finish(spec: RunSpec, rec: dict[str, Any]) -> None:
        summary.ran.append(rec)
        if rec["status"] == "failed" and (rec.get("error") or {}).get("type") == "MissingDataError":
            if spec.pair not in missing_pairs:
                note(f"pair {spec.pair}: {rec['error']['message']}")
            missing_pairs[spec.pair] = rec["error"]["message"]
        elif rec["status"] != "complete":
            note(f"{spec.label}: {rec['status']}: {_first_line((rec.get('error') or {}).get('message'))}")
        bar.update(1)

    try:
        while queue or inflight:
            submitted = False
            for spec in list(queue):
                if ex.free_slots() <= 0:
                    break
                if not dependency_ready(spec):
                    continue
                queue.remove(spec)
                if store.status(spec.run_id) == "complete":  # finished by another runner meanwhile
                    summary.skipped_complete.append(spec.run_id)
                    bar.update(1)
                    continue
                if store.claimed_by_live_process(spec.run_id):
                    elsewhere[spec.run_id] = spec
                    continue
                if spec.pair in missing_pairs:  # do not retry a pair whose data is known missing
                    if store.claim(spec.run_id):
                        try:
                            finish(spec, record_failure(spec, store, "MissingDataError", missing_pairs[spec.pair]))
                        finally:
                            store.release(spec.run_id)
                    else:
                        elsewhere[spec.run_id] = spec
                    continue
                ex.submit(spec)
                inflight[spec.run_id] = spec
                submitted = True
                bar.set_postfix_str(f"{len(inflight)} running")
            if inflight:
                for out in ex.wait(timeout=poll_s):
                    spec = inflight.pop(out.run_id)
                    if out.kind == "write-fault":
                        raise WriteFault(store.record_path(out.run_id), OSError(out.error), message=out.error)
                    if out.kind == "busy":
                        elsewhere[spec.run_id] = spec
                    elif out.kind == "already-complete":
                        summary.skipped_complete.append(spec.run_id)
                        bar.update(1)
                    else:
                        assert out.record is not None
                        finish(spec, out.record)
                bar.set_postfix_str(f"{len(inflight)} running")
            elif queue and not submitted:
                # everything left waits on runs held by other processes: wait for them (saying
                # so, and for at most wait_limit_s), and take over any whose claim went stale
                if wait_started is None:
                    wait_started = time.monotonic()
                for run_id, spec in list(elsewhere.items()):
                    info = store.claim_info(run_id)
                    if store.status(run_id) in TERMINAL:
                        del elsewhere[run_id]
                        bar.update(1)
                    elif (info is None or not info.live) and run_id in in_matrix:
                        del elsewhere[run_id]
                        queue.insert(0, spec)
                        wait_started = None
                    elif run_id not in announced and info is not None:
                        announced.add(run_id)
                        note(f"waiting for run {spec.label} ({run_id}) held by {info.describe()}; giving up after "
                             f"{wait_limit_s:.0f} s (--wait-limit)")
                if wait_started is not None and time.monotonic() - wait_started > wait_limit_s:
                    held = ", ".join(sorted({s.depends_on for s in queue if s.depends_on in elsewhere}))
                    note(f"gave up after waiting {wait_limit_s:.0f} s for run(s) held by another runner ({held}); "
                         f"{len(queue)} dependant run(s) not run: run the same command again once they finish")
                    summary.gave_up.extend(s.run_id for s in queue)
                    queue.clear()
                    break
                time.sleep(poll_s)
            else:
                wait_started = None
    finally:
        ex.close()
        bar.close()
    for run_id in elsewhere:
        if store.status(run_id) != "complete":
            summary.busy.append(run_id)
        else:
            summary.skipped_complete.append(run_id)
    return summary


def _archive_record(store: RunStore, run_id: str) -> pathlib.Path:
    """Move a record to ``DIR/previous/<run_id>.<time>.json`` (kept for comparison, outside ``runs/``
    so reports never count it twice)."""
    archive = store.root / "previous" / f"{run_id}.{_dt.datetime.now().strftime('%Y%m%dT%H%M%S%f')}.json"
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(store.record_path(run_id), archive)
    except OSError as exc:
        raise WriteFault(archive, exc) from exc
    return archive


def _first_line(text: Any) -> str:
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def prepare_rerun(results_dir: str | os.PathLike, run_ids: Iterable[str],
                  extra_plugins: Iterable[str] = ()) -> tuple[list[RunSpec], tuple[str, ...]]:
    """Specs to repeat runs of a results folder, read from their records (``dabench run --rerun``).

    Loads the plugins the folder's ``matrix.json`` names (plus ``extra_plugins``), moves each
    old record to ``DIR/previous/<run_id>.<time>.json`` (kept for comparison, outside ``runs/``
    so reports never count it twice) and drops any mid-run checkpoint, so the run starts afresh.
    Returns (specs, plugins).
    """
    from .matrix import MatrixError
    from .registry import load_plugin

    store = RunStore(results_dir)
    plugins: list[str] = []
    mfile = store.root / MATRIX_FILE
    if mfile.exists():
        try:
            plugins += json.loads(mfile.read_text()).get("plugins") or []
        except (OSError, ValueError):
            warnings.warn(f"corrupt {mfile}: its plugins are not loaded", stacklevel=2)
    plugins += [p for p in extra_plugins if p not in plugins]
    for plugin in plugins:
        load_plugin(plugin)
    specs: list[RunSpec] = []
    for run_id in run_ids:
        path = store.record_path(run_id)
        if not path.exists():
            known = sorted(p.stem for p in store.runs.glob("*.json"))
            raise FileNotFoundError(f"--rerun {run_id}: no record {path}; runs there: "
                                    f"{', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}")
        rec = store.read(run_id)
        if rec is None or not isinstance(rec.get("spec"), dict):
            raise MatrixError(f"--rerun {run_id}: record {path} is corrupt (no spec to repeat)")
        spec = RunSpec.from_dict(rec["spec"])
        if spec.run_id != run_id:
            raise MatrixError(f"--rerun {run_id}: the spec in {path} now hashes to {spec.run_id} "
                              "(written by another dabench version); run the matrix again instead")
        if store.claimed_by_live_process(run_id):
            raise MatrixError(f"--rerun {run_id}: the run is running now (claim {store.claims / (run_id + '.claim')})")
        _archive_record(store, run_id)
        store.checkpoint_path(run_id, partial=True).unlink(missing_ok=True)
        specs.append(spec)
    return specs, tuple(plugins)


def run_inline(
    specs: Iterable[RunSpec],
    results_dir: str | os.PathLike,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
    **executor_options: Any,
) -> MatrixSummary:
    """Run specs (dependencies ordered first); in this process unless ``executor=`` says
    otherwise (see :func:`run_matrix` for the executor options)."""
    executor_options.setdefault("executor", "inline")
    return run_matrix(specs, results_dir, device=device, data_root=data_root, progress=progress,
                      checkpoint_every=checkpoint_every, **executor_options)


__all__ = ["run_inline", "run_matrix", "run_spec", "run_claimed", "record_failure", "write_matrix_file",
           "MatrixSummary", "Outcome", "MissingDataError"]
