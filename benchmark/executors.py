"""Executors: where the runs of a matrix execute. The scheduler (:func:`dabench.runner.run_matrix`)
decides *what* runs when; an executor only runs what it is given, ``free_slots()`` at a time.

- ``inline``: in this process, one run after another.
- ``local``: a pool of worker processes (``python -m dabench.worker``) on this machine, one
  per GPU or ``runs_per_gpu`` per GPU (``CUDA_VISIBLE_DEVICES`` set per worker), one on the
  CPU unless told otherwise. A run's crash, OOM or SIGKILL kills only its own process; the
  parent then records the run ``failed`` with the exit code or signal.
- ``ray``: each run a Ray task (``num_gpus=1/runs_per_gpu`` when the cluster has GPUs) on an
  existing cluster (``ray_address``) or a local one started on demand. The results folder
  must be on storage every node sees (records and checkpoints are files).

Every executor runs :func:`dabench.runner.run_claimed`, so the records are the same. The pool
lives in :mod:`dabench.local_pool`, the Ray executor in :mod:`dabench.ray_executor`.
"""
from __future__ import annotations

import pathlib
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from .runner import Outcome, record_failure, run_claimed
from .spec import RunSpec
from .store import RunStore

EXECUTORS = ("inline", "local", "ray")


class Executor(ABC):
    """Runs specs; at most ``free_slots()`` more may be submitted now."""

    @abstractmethod
    def free_slots(self) -> int: ...

    @abstractmethod
    def submit(self, spec: RunSpec) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """Outcomes that finished since the last call; waits up to ``timeout`` s for the first."""

    def close(self) -> None:
        """Stop workers; records of runs still in flight stay ``running`` (rerun next time)."""

    @property
    def workers(self) -> int:
        return 1


@dataclass
class Options:
    """What every executor needs to run a spec (the ``dabench run`` flags)."""

    results_dir: pathlib.Path
    device: str | None = None
    data_root: pathlib.Path | None = None
    progress: bool = True
    checkpoint_every: int = 0
    compile: bool = False
    plugins: tuple[str, ...] = ()


def _absolute_plugins(plugins: Sequence[str]) -> tuple[str, ...]:
    # a worker or Ray task may start in another directory: plugin files travel as absolute paths
    return tuple(str(pathlib.Path(p).resolve()) if p.endswith(".py") or "/" in p else p for p in plugins)


def _step_bar(progress: bool, position: int):
    from tqdm.auto import tqdm

    return tqdm(total=0, unit="step", leave=False, disable=not progress, file=sys.stderr, position=position)


class InlineExecutor(Executor):
    """In this process: ``submit`` runs the spec to the end before returning."""

    def __init__(self, opts: Options) -> None:
        from .domain import default_data_root
        from .registry import load_plugin
        from .train import resolve_device

        self.opts = opts
        for plugin in opts.plugins:  # already loaded by expand(); harmless and needed for --rerun
            load_plugin(plugin)
        self.device = resolve_device(opts.device)
        self.root = opts.data_root or default_data_root()
        self.store = RunStore(opts.results_dir)
        self._done: list[Outcome] = []

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def submit(self, spec: RunSpec) -> None:
        bar = _step_bar(self.opts.progress, 1)
        bar.set_description_str(spec.label)

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            self._done.append(run_claimed(spec, self.store, self.device, self.root, on_step,
                                          self.opts.checkpoint_every, compile=self.opts.compile))
        finally:
            bar.close()

    def wait(self, timeout: float) -> list[Outcome]:
        out, self._done = self._done, []
        return out


def record_death(store: RunStore, spec: RunSpec, why: str, detail: str, device: str | None,
                  remote: bool = False) -> Outcome:
    """The process running ``spec`` died: record the run ``failed`` unless it wrote a terminal
    record first, or unless it never claimed the run and a live process elsewhere holds it.

    ``remote``: the dead process may have run on another host (Ray), whose claims the store
    cannot check; only a claim of a live process on this host then counts as someone else's.
    """
    info = store.claim_info(spec.run_id)
    busy = info is not None and info.live
    if busy and remote:
        # a claim from another machine may be the dead task's own, still within its heartbeat
        # bound: only a live claim on this machine surely belongs to someone else
        busy = info.on_this_machine
    if busy:
        return Outcome(spec.run_id, "busy")
    rec = record_failure(spec, store, "WorkerDied", why, detail, device)
    # the claim names the dead process: remove it now (it is stale) rather than wait for a takeover
    store.remove_stale_claim(spec.run_id)
    return Outcome(spec.run_id, "died" if rec.get("status") != "complete" else "ran", rec)


def make_executor(name: str, results_dir: pathlib.Path, device: str | None = None,
                  data_root: pathlib.Path | None = None, progress: bool = True, checkpoint_every: int = 0,
                  compile: bool = False, plugins: tuple[str, ...] = (), workers: int | None = None,
                  runs_per_gpu: int = 1, runs_per_process: int = 0, ray_address: str | None = None) -> Executor:
    """The executor called ``name``; an unknown name is an error listing the valid ones."""
    opts = Options(pathlib.Path(results_dir), device, data_root, progress, checkpoint_every, compile, plugins)
    if name == "inline":
        return InlineExecutor(opts)
    if name == "local":
        from .local_pool import LocalPoolExecutor

        return LocalPoolExecutor(opts, workers, runs_per_gpu, runs_per_process)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(opts, ray_address, workers, runs_per_gpu)
    raise ValueError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "Options", "make_executor"]
