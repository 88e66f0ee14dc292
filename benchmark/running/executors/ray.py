"""The Ray executor: each run a Ray task, on an existing cluster or a local Ray started on demand.

``num_gpus = 1 / runs_per_gpu`` per task when the cluster has GPUs. The results folder must be on
storage every node sees (records and checkpoints are files). Needs ``pip install 'dabench[ray]'``.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

from ...core.spec import RunSpec
from ...core.store import RunStore
from ..unit import Outcome
from .base import Executor, ExecutorOptions, _absolute_plugins, record_death, register_executor


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


def _log_tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))  # the last 64 KiB hold 30 lines
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@register_executor("ray")
class RayExecutor(Executor):
    """Each run a Ray task; ``workers`` caps the runs in flight (default: what the cluster fits)."""

    def __init__(self, results_dir: pathlib.Path, opts: ExecutorOptions) -> None:
        address, workers, runs_per_gpu = opts.ray_address, opts.workers, opts.runs_per_gpu
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
            # address None starts a local Ray; "auto" or host:port joins a running cluster
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._owns = True
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

    def wait(self, timeout: float) -> list[Outcome]:
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
                why, tail = f"ray task died: {first}; log: {log}", _log_tail(log)
                out.append(record_death(self.store, spec, why, tail or str(exc), self.device, remote=True))
        return out

    def close(self) -> None:
        for ref in list(self._refs):
            self.ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns:
            self.ray.shutdown()
