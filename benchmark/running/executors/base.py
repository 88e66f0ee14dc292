"""Executors: where the runs of a matrix execute. The scheduler (:func:`dabench.running.scheduler.run_matrix`)
decides *what* runs when; an executor only runs what it is given, ``free_slots()`` at a time.

- ``inline``: in this process, one run after another.
- ``local``: a pool of worker processes (``python -m dabench.running.executors.worker``) on this machine, one
  per GPU or ``runs_per_gpu`` per GPU (``CUDA_VISIBLE_DEVICES`` set per worker), one on the
  CPU unless told otherwise. A run's crash, OOM or SIGKILL kills only its own process; the
  parent then records the run ``failed`` with the exit code or signal.
- ``slurm``: SLURM jobs through submitit, one job array per scheduling round,
  ``gpus_per_job × runs_per_gpu`` runs per job, requeued on preemption or at the time limit
  (runs resume from their mid-run checkpoints); see ``slurm.py``.
- ``ray``: each run a Ray task (``num_gpus=1/runs_per_gpu`` when the cluster has GPUs) on an
  existing cluster (``ray_address``) or a local one started on demand. The results folder
  must be on storage every node sees (records and checkpoints are files).

Every executor runs :func:`dabench.running.unit.run_claimed`, so the records are the same. One file
per executor (``inline.py``, ``local_pool.py``, ``ray.py``, ``slurm.py``), each registered by name with
:func:`register_executor`; ``dabench run --executor`` offers the registered names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ...core.record import Status
from ...core.registry import Registry
from ...core.spec import RunSpec
from ...core.store import RunStore
from ...engine.options import EngineOptions
from ..matrix import MatrixError
from ..unit import Outcome, earlier_attempt, record_failure

# name → Executor class, built as ``cls(results_dir, options)``; installed packages may add
# executors through the ``dabench.executors`` entry-point group, like methods and pairs
EXECUTORS: Registry = Registry("executor", "dabench.executors")


class ExecutorError(MatrixError):
    """The executor cannot run the matrix (a scheduler refused its jobs): one line saying why.
    ``dabench run`` prints it and exits 2; the runs not sent have no record and the same command
    sends them once the cause is fixed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received while running a matrix: an interrupt, as Ctrl-C is (the same unwinding,
    each executor's ``close()``, the runs in hand left ``running`` for the next runner), which
    ``dabench run`` reports in one line with exit code 143 (128 + SIGTERM, what a process killed
    by SIGTERM reports)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def install_sigterm(handler: Any) -> Any:
    """Make SIGTERM call ``handler``; returns the handler it replaced (to put back), or None off
    the main thread, where handlers cannot be set (SIGTERM then keeps its handling)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    before = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if before is None else before


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (``dabench run``:
    the same for every executor); the previous handler is put back after."""
    before = install_sigterm(_raise_terminated)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def register_executor(name: str):
    """Register an :class:`Executor` subclass under ``name`` (``dabench run --executor NAME``).

    The class is built as ``cls(results_dir, options)`` with an :class:`ExecutorOptions`."""
    return EXECUTORS.decorator(name)


class Executor(ABC):
    """Runs specs; at most ``free_slots()`` more may be submitted now."""

    @abstractmethod
    def free_slots(self) -> int: ...

    @abstractmethod
    def submit(self, spec: RunSpec) -> None: ...

    #: whether :meth:`submit_group` runs a seed group as one unit (``--seed-batch``); an executor
    #: without it gets the seeds one by one (unbatched)
    groups: bool = False

    def submit_group(self, specs: list[RunSpec]) -> None:
        """Run the seeds ``specs`` of one configuration seed-batched, in one slot; their outcomes
        come from :meth:`wait`, one per spec (:func:`dabench.running.unit.run_group_claimed`)."""
        raise NotImplementedError(f"{type(self).__name__} does not run seed groups")

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes that finished since the last call; waits up to ``timeout`` s for the first."""

    def close(self) -> None:  # noqa: B027 - a no-op default: an executor without workers has nothing to stop
        """Stop workers; records of runs still in flight stay ``running`` (rerun next time)."""

    @property
    def workers(self) -> int:
        return 1

    #: whether the executor enforces :attr:`ExecutorOptions.run_timeout_s` (it can stop a run that
    #: hangs: the local pool kills the run's worker process); others refuse the option
    stops_runs: bool = False

    #: the executor-specific :class:`ExecutorOptions` fields (:data:`EXECUTOR_FIELDS`) it reads;
    #: :func:`check_executor_options` refuses the others when given, since the executor would
    #: ignore them and the user believe them applied. Read from the class's own body only: a
    #: subclass may read more than its base. None: not declared (a plugin's executor, a subclass
    #: without its own), nothing refused
    reads: frozenset[str] | None = None


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run a matrix's specs (the ``dabench run`` flags): one object, passed whole from the
    CLI or the Python API through the scheduler to the executor. Each executor reads the fields
    it uses; none changes a run's id or its result.

    ``checkpoint_every``, ``compile`` and ``cuda_graphs`` stay flat fields (the ``dabench run``
    flags and ``dabench.run(...)``'s keywords); :attr:`engine` is them as one
    :class:`~dabench.engine.options.EngineOptions`, built and checked here once, which the
    executors pass on whole."""

    device: str | None = None  # auto (None), cpu, cuda, cuda:1 ...
    data_root: pathlib.Path | None = None  # None: $DABENCH_DATA or the default
    progress: bool = True
    checkpoint_every: int = 0  # steps between resumable mid-run checkpoints; 0: off
    compile: bool = False  # torch.compile the methods' networks
    cuda_graphs: bool | None = None  # capture the training step in a CUDA graph (None: on for CUDA)
    #: the three fields above as one value (set by __post_init__; not an argument)
    engine: EngineOptions = field(init=False, repr=False, compare=False)
    seed_batch: bool = False  # train the seeds of one configuration as one vmapped model (inline, local)
    plugins: tuple[str, ...] = ()  # imported by every process that runs a spec
    # The executor-specific fields below default to None, "not given", so that an option the
    # chosen executor does not read is refused (check_executor_options) rather than ignored;
    # :meth:`resolved` fills in the real defaults (:data:`DEFAULTS`) where an executor reads them.
    workers: int | None = None  # local/ray/slurm: runs at once (None: what the devices fit)
    runs_per_gpu: int | None = None  # local/ray/slurm: runs packed on one GPU (default 1)
    runs_per_process: int | None = None  # local: runs per worker process before a fresh one (default 0: no limit)
    ray_address: str | None = None  # ray: cluster to join (None: start a local Ray)
    slurm_partition: str | None = None  # slurm: partition to submit to (None: the cluster's default)
    # slurm: GPUs per job (0: CPU jobs; default 1); a job runs gpus_per_job x runs_per_gpu runs
    gpus_per_job: int | None = None
    slurm_time_min: int | None = None  # slurm: each job's time limit (default 240); a job that reaches it is requeued
    slurm_cluster: str | None = None  # slurm: None/"slurm", or "local" (submitit's local processes, for tests)
    #: local: a run's wall-clock limit in seconds, from when its worker is handed the run (start-up
    #: and data loading included); a run past it is killed and recorded ``failed`` (``RunTimeout``)
    #: and the matrix goes on. None: no limit (a run that hangs then holds its worker for ever)
    run_timeout_s: float | None = None

    def __post_init__(self) -> None:
        # the CLI and the API hand over lists and str paths: kept as a tuple and a Path
        object.__setattr__(self, "plugins", tuple(self.plugins))
        if self.data_root is not None:
            object.__setattr__(self, "data_root", pathlib.Path(self.data_root))
        # built here, so a bad value fails when the options are made, not in a worker later
        engine = EngineOptions(self.checkpoint_every, self.compile, self.cuda_graphs)
        object.__setattr__(self, "engine", engine)

    def resolved(self) -> ExecutorOptions:
        """These options with each executor-specific field not given (None) set to its default
        (:data:`DEFAULTS`): what an executor reads. Run ids do not depend on any of them."""
        return dataclasses.replace(self, **{k: v for k, v in DEFAULTS.items() if getattr(self, k) is None})


#: the defaults of the executor-specific fields that default to None (not given) in ExecutorOptions
DEFAULTS: dict[str, Any] = {"runs_per_gpu": 1, "runs_per_process": 0, "gpus_per_job": 1, "slurm_time_min": 240}

#: ExecutorOptions field -> its ``dabench run`` flag, for the fields that only some executors read
#: (:attr:`Executor.reads`); ``seed_batch`` and ``run_timeout_s`` are checked through
#: :attr:`Executor.groups` and :attr:`Executor.stops_runs`
EXECUTOR_FIELDS: dict[str, str] = {
    "workers": "--workers",
    "runs_per_gpu": "--runs-per-gpu",
    "runs_per_process": "--runs-per-process",
    "ray_address": "--ray-address",
    "slurm_partition": "--slurm-partition",
    "gpus_per_job": "--gpus-per-job",
    "slurm_time_min": "--slurm-time",
    "slurm_cluster": "--slurm-cluster",
}


def _absolute_plugins(plugins: Sequence[str]) -> tuple[str, ...]:
    # a worker or Ray task may start in another directory: plugin files travel as absolute paths
    return tuple(str(pathlib.Path(p).resolve()) if p.endswith(".py") or "/" in p else p for p in plugins)


def _step_bar(progress: bool, position: int):
    return tqdm(total=0, unit="step", leave=False, disable=not progress, file=sys.stderr, position=position)


#: a dead worker's record quotes this many of its log's last lines
TAIL_LINES = 30


def log_lines(path: str | pathlib.Path, start: int = 0) -> list[str]:
    """The last lines of a worker's log from byte ``start`` on ([] when it cannot be read): only
    its last 64 KiB are read, plenty for :data:`TAIL_LINES`, so a long matrix's log is not read whole."""
    try:
        with open(path, "rb") as f:
            f.seek(max(start, f.seek(0, os.SEEK_END) - 65536))
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def run_marker(pid: int) -> str:
    """The start of the line a worker writes to its log (stderr) as each run starts: the pool's
    processes of one slot, its spare included, share that log, and a dead worker's record quotes
    the log from its process's last marker on (``local_pool._death_message``), not an earlier
    run's lines."""
    return f"--- dabench worker {pid}: run "


#: appended to the WorkerDied message of a run whose process died before it wrote the run's
#: ``running`` record: the record's device and versions are then the parent's knowledge
DIED_BEFORE_START = (
    "; it died before starting the run (no 'running' record of this attempt): the record's device "
    "and versions are those the runner assigned and runs, not read by the run"
)


def record_death(
    store: RunStore,
    spec: RunSpec,
    why: str,
    detail: str,
    device: str | None,
    remote: bool = False,
    pid: int | None = None,
    torch_threads: int | None = None,
    error_type: str = "WorkerDied",
) -> Outcome:
    """The process running ``spec`` died (``error_type`` names why: ``WorkerDied``, or
    ``RunTimeout`` for a worker killed at ``--run-timeout``): record the run ``failed`` unless it wrote a terminal
    record first, or unless it never claimed the run and a live process elsewhere holds it.

    ``remote``: the dead process may have run on another host (Ray), whose claims the store
    cannot check; only a claim of a live process on this host then counts as someone else's.
    ``device``, ``pid`` (the dead process) and ``torch_threads`` fill the record of a run that
    died before its own ``running`` record (which holds the environment the run saw); the
    message then says so (:data:`DIED_BEFORE_START`).
    """
    info = store.claim_info(spec.run_id)
    busy = info is not None and info.live
    if busy and remote and info is not None:
        # a claim from another machine may be the dead task's own, still within its heartbeat
        # bound: only a live claim on this machine surely belongs to someone else
        busy = info.on_this_machine
    if busy:
        return Outcome(spec.run_id, "busy")
    prior = store.read(spec.run_id)
    # no record, or only an earlier attempt's failure (retried): the process never started the run
    if prior is None or earlier_attempt(prior, pid):
        why += DIED_BEFORE_START
    rec = record_failure(spec, store, error_type, why, detail, device, pid, torch_threads)
    # the claim names the dead process: remove it now (it is stale) rather than wait for a takeover
    store.remove_stale_claim(spec.run_id)
    return Outcome(spec.run_id, "died" if rec.status is not Status.COMPLETE else "ran", rec)


def check_executor_options(name: str, options: ExecutorOptions) -> None:
    """Refuse the options executor ``name`` cannot run with, without building it: one ValueError
    naming every flag, its value and what is valid. :func:`make_executor` calls it before building,
    and ``dabench run --dry-run`` (``running/plan.py``) calls it instead of building (that would
    start Ray or reach SLURM): one place for the checks, so a dry run refuses what the run refuses."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS.names())}")
    problems = _unread_options(name, options)
    if options.workers is not None and options.workers < 1:
        problems.append(f"--workers must be at least 1, got {options.workers}")
    if options.runs_per_gpu is not None and options.runs_per_gpu < 1:
        problems.append(f"--runs-per-gpu must be at least 1, got {options.runs_per_gpu}")
    if options.runs_per_process is not None and options.runs_per_process < 0:
        problems.append(f"--runs-per-process must be 0 (no limit) or more, got {options.runs_per_process}")
    if options.gpus_per_job is not None and options.gpus_per_job < 0:
        problems.append(f"--gpus-per-job must be 0 (CPU jobs) or more, got {options.gpus_per_job}")
    if options.slurm_time_min is not None and options.slurm_time_min < 1:
        problems.append(f"--slurm-time must be at least 1 minute, got {options.slurm_time_min}")
    if options.slurm_cluster not in (None, "slurm", "local"):
        problems.append(f"--slurm-cluster {options.slurm_cluster!r}: valid are slurm (the default) and local")
    limit = options.run_timeout_s
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            problems.append(f"--run-timeout must be a number of seconds > 0, got {limit!r}")
        elif not getattr(EXECUTORS.get(name), "stops_runs", False):
            # refused, not ignored: a limit the executor cannot enforce would promise what it does not do
            stoppers = [n for n in EXECUTORS.names() if getattr(EXECUTORS.get(n), "stops_runs", False)]
            problems.append(
                f"--run-timeout {limit:g}: the {name} executor cannot stop a run that hangs (its runs are not "
                f"processes of their own it may kill); use --executor {' or '.join(stoppers) or 'local'}"
            )
    if problems:
        raise ValueError("; ".join(problems))


def _unread_options(name: str, options: ExecutorOptions) -> list[str]:
    """One line per option given (not None; ``seed_batch`` True) that executor ``name`` would
    ignore, naming the option, the executor and the executors it applies to: ``--runs-per-gpu 2``
    with ``inline`` ran one run at a time and said nothing."""
    cls = EXECUTORS.get(name)
    problems: list[str] = []
    reads = _reads(cls)
    if reads is not None:
        for field_name, flag in EXECUTOR_FIELDS.items():
            value = getattr(options, field_name)
            if value is None or field_name in reads:
                continue
            users = [n for n in EXECUTORS.names() if field_name in (_reads(EXECUTORS.get(n)) or ())]
            problems.append(
                f"{flag} {value}: the {name} executor does not use it (it applies to the {_listed(users)} "
                f"executor{'s' if len(users) != 1 else ''}); add --executor {users[0] if users else '...'} or drop {flag}"
            )
    if options.seed_batch and not getattr(cls, "groups", False):
        users = [n for n in EXECUTORS.names() if getattr(EXECUTORS.get(n), "groups", False)]
        problems.append(
            f"--seed-batch: the {name} executor runs each seed separately (seed batching applies to the "
            f"{_listed(users)} executor{'s' if len(users) != 1 else ''}); drop --seed-batch or add --executor "
            f"{'local' if 'local' in users else users[0] if users else '...'}"
        )
    return problems


def _reads(cls: type) -> frozenset[str] | None:
    # the class's own declaration: an inherited one may not cover what a subclass reads
    return vars(cls).get("reads")


def _listed(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def make_executor(name: str, results_dir: str | pathlib.Path, options: ExecutorOptions | None = None) -> Executor:
    """The executor called ``name``, built after :func:`check_executor_options`; an unknown name
    is an error listing the valid ones."""
    options = options or ExecutorOptions()
    check_executor_options(name, options)
    return EXECUTORS.get(name)(pathlib.Path(results_dir), options)


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "ExecutorOptions",
    "Terminated",
    "check_executor_options",
    "make_executor",
    "record_death",
    "register_executor",
    "sigterm_interrupts",
]
