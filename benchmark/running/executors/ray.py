"""The Ray executor: each run a Ray task, on an existing cluster or a local Ray started on demand.

``num_gpus = 1 / runs_per_gpu`` per task when the cluster has GPUs. The results folder must be on
storage every node sees (records and checkpoints are files). Needs ``pip install 'dabench[ray]'``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
from typing import Any

from ...core.spec import RunSpec
from ...core.store import RunStore
from ..unit import Outcome
from .base import (
    TAIL_LINES,
    Executor,
    ExecutorError,
    ExecutorOptions,
    Terminated,
    _absolute_plugins,
    _raise_terminated,
    install_sigterm,
    log_lines,
    record_death,
    register_executor,
)

#: seconds to wait for a TCP connection to ``--ray-address host:port`` before giving up: Ray
#: itself retries an unreachable address for minutes before it says so
REACH_TIMEOUT_S = 5.0


WHAT_TO_DO = (
    "start one with `ray start --head` on that host (it prints the address to give), or use "
    "--ray-address auto for a cluster started on this machine, or leave it out to start a local Ray"
)


def check_reachable(address: str | None, timeout: float = REACH_TIMEOUT_S) -> None:
    """Refuse, in one line, a ``--ray-address host:port`` (or ``ray://host:port``) that nothing
    answers at, before ``ray.init`` retries it for minutes. ``None`` (start a local Ray),
    ``auto`` and ``local`` are Ray's to resolve and pass unchecked."""
    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(
            f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379); "
            "valid: auto (a cluster started on this machine), host:port, ray://host:port, or leave it out for a local Ray"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ExecutorError(f"--ray-address {address}: no Ray cluster answers there ({why}); {WHAT_TO_DO}") from None


def ray_log_path(results_dir: str | pathlib.Path, run_id: str) -> pathlib.Path:
    """Where a Ray task writes what its run prints: ``DIR/logs/ray-<run_id>.log`` (appended to by
    each attempt), in the results folder, as the local pool's and SLURM's worker logs are."""
    return pathlib.Path(results_dir) / "logs" / f"ray-{run_id}.log"


def _ray_task(spec_dict: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The body of one Ray task (module level, so Ray ships it by reference).

    What the run prints goes to :func:`ray_log_path` for the length of the task (file
    descriptors 1 and 2, so a C extension's output too), not only to Ray's session folder on
    whichever node ran it, which is gone with the cluster: a task that dies is recorded with the
    tail of that log, as a dead local worker is."""
    # late: importing the executors package (which registers this module) must not import the
    # worker module, or ``python -m dabench.running.executors.worker`` finds it already in
    # sys.modules and runpy warns, at the top of every worker log, that it may run twice
    from .worker import run_one

    log = ray_log_path(options["results_dir"], spec_dict["_run_id"])
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return run_one(spec_dict, **options)  # no log: the run's own write decides (a write fault)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {1: os.dup(1), 2: os.dup(2)}
    for target in saved:
        os.dup2(fd, target)
    os.close(fd)
    try:
        return run_one(spec_dict, **options)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, copy in saved.items():  # the Ray worker's own output goes back where it went
            os.dup2(copy, target)
            os.close(copy)


@register_executor("ray")
class RayExecutor(Executor):
    """Each run a Ray task; ``workers`` caps the runs in flight (default: what the cluster fits)."""

    reads = frozenset({"workers", "runs_per_gpu", "ray_address"})

    def __init__(self, results_dir: pathlib.Path, opts: ExecutorOptions) -> None:
        opts = opts.resolved()  # the defaults of the options not given
        address, workers, runs_per_gpu = opts.ray_address, opts.workers, opts.runs_per_gpu or 1
        try:
            import ray  # late: Ray is an optional extra (pip install 'dabench[ray]')
        except ImportError:
            raise ImportError(
                "--executor ray needs Ray: pip install 'dabench[ray]' (or pick --executor inline or local)"
            ) from None
        self.ray = ray
        self.opts = opts
        self.store = RunStore(results_dir)
        self._owns = False
        if not ray.is_initialized():
            check_reachable(address)
            # address None starts a local Ray; "auto" or host:port joins a running cluster
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:  # auto with no cluster here, or a cluster that refused us
                if address is None:
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                todo = (
                    "start one on this machine with `ray start --head`, or leave --ray-address out to start a local Ray"
                    if address == "auto"
                    else WHAT_TO_DO
                )
                raise ExecutorError(f"--ray-address {address}: {first} ({todo})") from None
            self._owns = True
        self._sigterm = False  # SIGTERM arrived (Ray's calls turn the handler's Terminated into a KeyboardInterrupt)
        # ray.init installs a C++ SIGTERM handler that dumps a stack and aborts the driver (exit
        # 134) with its tasks still running; a Python handler set after it takes its place, so
        # SIGTERM unwinds through the scheduler's finally and close() cancels the tasks. Ray's
        # C++ handler cannot be put back from Python: close() restores the Python one before it
        self._sigterm_before = install_sigterm(self._on_sigterm)
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        use_gpu = gpus > 0 and (opts.device or "auto") in ("auto", "cuda")
        num_gpus = 1.0 / runs_per_gpu if use_gpu else 0
        self.device = "cuda" if use_gpu else (opts.device if opts.device not in (None, "auto") else "cpu")
        fit = int(gpus * runs_per_gpu) if use_gpu else int(resources.get("CPU", 1))
        self._slots = max(1, workers or fit)
        self._task = ray.remote(_ray_task).options(num_cpus=1, num_gpus=num_gpus, max_retries=0)
        self._task_options = {
            "results_dir": str(pathlib.Path(results_dir).resolve()),
            "device": self.device,
            "data_root": str(opts.data_root) if opts.data_root else None,
            "plugins": _absolute_plugins(opts.plugins),
            "engine": opts.engine,
            "threads": 1,
        }
        self._refs: dict[Any, RunSpec] = {}

    @property
    def workers(self) -> int:
        return self._slots

    def free_slots(self) -> int:
        return self._slots - len(self._refs)

    def submit(self, spec: RunSpec) -> None:
        ref = self._task.remote({**spec.to_dict(), "_run_id": spec.run_id}, self._task_options)
        self._refs[ref] = spec

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._sigterm = True
        _raise_terminated(signum, frame)

    def wait(self, timeout: float) -> list[Outcome]:
        try:
            return self._wait(timeout)
        except KeyboardInterrupt:
            # ray.wait/ray.get run the handler inside Ray's own signal check and raise a plain
            # KeyboardInterrupt: say it was SIGTERM (dabench run then exits 143, not 130)
            if self._sigterm:
                raise Terminated() from None
            raise

    def _wait(self, timeout: float) -> list[Outcome]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        if not ready:
            ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=0)
        out: list[Outcome] = []
        for ref in ready:
            spec = self._refs.pop(ref)
            try:
                res = self.ray.get(ref)
                out.append(Outcome.from_message(res))
            except self.ray.exceptions.RayError as exc:  # the task's process died, or Ray lost it
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log = ray_log_path(self.store.root, spec.run_id)
                why, tail = f"ray task died: {first}; log: {log}", "\n".join(log_lines(log)[-TAIL_LINES:])
                out.append(record_death(self.store, spec, why, tail or str(exc), self.device, remote=True))
        return out

    def close(self) -> None:
        try:
            for ref in list(self._refs):
                # force: kill the task's process, as the local pool terminates its workers; the run's
                # record stays `running`, its claim names a dead process and the next runner takes
                # it over (at once on this machine, after the claim's heartbeat bound on others)
                self.ray.cancel(ref, force=True)
            self._refs.clear()
            if self._owns:
                self.ray.shutdown()
        finally:
            if self._sigterm_before is not None:
                signal.signal(signal.SIGTERM, self._sigterm_before)
                self._sigterm_before = None
