"""A SLURM job's body (:class:`SlurmTask`): the slurm executor's job arrays run one per array task.

Torch-free, apart from recording a worker's death: a job's process only starts worker processes
(``python -m dabench.running.executors.worker``, which train) and waits for them, and every start
of it (the first, and each requeue after a preemption) would otherwise pay a torch import. It
lives outside ``executors/`` because importing that package registers every executor (and
imports torch). ``executors/slurm.py`` submits it; see its docstring for the whole picture.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from ..core.jsonio import dump_json, load_json
from ..core.spec import RunSpec
from ..core.store import RunStore
from ..engine.options import EngineOptions


class SlurmTask:
    """One SLURM job's body: run a group of specs at once, one worker process each.

    Checkpointable the submitit way (a ``checkpoint`` method returning a ``DelayedSubmission``),
    without subclassing ``submitit.helpers.Checkpointable``, so this module imports without submitit.

    Preemption at any moment. submitit's ``USR2`` handler runs ``checkpoint()`` *inside* the
    signal handler, i.e. on the main thread, between two bytecodes of whatever it was doing. Had
    that been ``Popen.wait()`` on a worker that had answered but not yet exited, a ``wait()`` in
    the handler blocked forever on the ``Popen``'s own (non-reentrant) waitpid lock: the job hung
    after "Calling checkpoint method". So while :meth:`__call__` runs, the signal only *notes* the
    preemption (:meth:`_note_preemption` touches no lock and no process handle); the main loop,
    which never blocks for long, then stops the workers, drains their answers and only then hands
    the signal to submitit's handler (checkpoint → requeue). Outside ``__call__`` (before its
    first worker starts, after it returned) submitit's handler runs as usual and
    :meth:`checkpoint` has no worker to stop. The outcomes already collected travel with the
    requeued task (``_results``), so its runs that had finished are neither run nor waited for again.
    """

    #: how often the main loop looks at its workers and at a noted preemption (seconds)
    poll_s = 0.05

    def __init__(
        self,
        specs: list[dict[str, Any]],
        results_dir: str,
        device: str | None,
        gpus: int,
        data_root: str | None,
        plugins: tuple[str, ...],
        engine: EngineOptions = EngineOptions(),
    ) -> None:
        self.specs = specs
        self.results_dir = results_dir
        self.device = device
        self.gpus = gpus
        self.data_root = data_root
        self.plugins = plugins
        self.engine = engine
        # run id -> its outcome ({"run_id", "kind", "record"}), kept across a requeue (pickled)
        self._results: dict[str, dict[str, Any]] = {}
        self._procs: dict[str, subprocess.Popen] = {}  # run id -> its live worker (this process only)
        self._preempted: int | None = None  # the signal number noted during __call__

    def __getstate__(self) -> dict[str, Any]:
        # a requeue pickles the task: the worker handles belong to the dying job
        return {k: v for k, v in self.__dict__.items() if k not in ("_procs", "_preempted")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_results", {})  # a task pickled before _results existed
        if "engine" not in state:  # a task pickled before EngineOptions: its three flat fields
            state["engine"] = EngineOptions(
                state.pop("checkpoint_every", 0), state.pop("compile", False), state.pop("cuda_graphs", None)
            )
        self.__dict__.update(state, _procs={}, _preempted=None)

    def _command(self, threads: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "dabench.running.executors.worker",
            "--results",
            self.results_dir,
            "--max-runs",
            "1",
            "--parent-pid",
            str(os.getpid()),
            "--threads",
            str(threads),
            *self.engine.to_flags(),
            "--device",
            ("cuda" if self.gpus else (self.device or "auto")),
        ]
        if self.data_root:
            cmd += ["--data-root", self.data_root]
        for plugin in self.plugins:
            cmd += ["--plugin", plugin]
        return cmd

    def _note_preemption(self, signum: int, frame: Any) -> None:
        # a signal handler: only set a plain attribute (no lock, no Popen: see the class docstring)
        self._preempted = signum

    def __call__(self) -> list[dict[str, Any]]:
        """Start one worker per unfinished spec, then collect their outcomes (``{"run_id", "kind", "record"}``).

        A preemption signal during the call stops the workers; if a run is left without an
        outcome the task is checkpointed and requeued (submitit's handler, which exits the
        job), else the outcomes are returned as if no signal had come.
        """
        sig = _preemption_signal()
        previous = signal.getsignal(sig)
        # defer only submitit's handler (a Python callable), and only where a handler can be set
        defer = callable(previous) and threading.current_thread() is threading.main_thread()
        if defer:
            signal.signal(sig, self._note_preemption)
        try:
            self._run_workers()
            if self._preempted is not None and len(self._results) < len(self.specs):
                assert callable(previous)  # _preempted is only ever set by the deferring handler
                previous(self._preempted, None)  # submitit: checkpoint() and requeue; exits the job
                left = [s["_run_id"] for s in self.specs if s["_run_id"] not in self._results]
                raise RuntimeError(
                    f"preempted, and submitit's signal handler did not requeue the job: runs {left} stopped"
                )
            return [self._results[s["_run_id"]] for s in self.specs]
        finally:
            if defer:
                signal.signal(sig, previous)

    def _run_workers(self) -> None:
        todo = [s for s in self.specs if s["_run_id"] not in self._results]
        if not todo:
            return  # a requeued task whose runs had all finished: nothing to start
        threads = max(
            1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // len(todo)
        )
        # the GPUs SLURM gave this job (CUDA_VISIBLE_DEVICES), shared round robin by its runs
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        gpus = visible or [str(i) for i in range(self.gpus)]
        logs = pathlib.Path(self.results_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        answers: dict[str, dict[str, Any]] = {}  # written by the reader threads
        readers: dict[str, threading.Thread] = {}
        codes: dict[str, int | None] = {}  # run id -> its worker's exit code
        try:
            for i, spec in enumerate(todo):
                if self._preempted is not None:
                    break  # preempted before this worker started: it is left to the requeued job
                run_id = spec["_run_id"]
                env = dict(os.environ)
                if self.gpus and gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
                with open(logs / f"slurm-{run_id}.log", "a") as log:  # the child keeps its own copy
                    proc = subprocess.Popen(
                        self._command(threads),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                        env=env,
                    )
                self._procs[run_id] = proc
                assert proc.stdin is not None and proc.stdout is not None  # both PIPE
                # a thread per worker reads its answers, so that the main thread only ever polls
                readers[run_id] = threading.Thread(
                    target=_read_outcome, args=(proc.stdout, run_id, answers), name=f"slurm-{run_id}", daemon=True
                )
                readers[run_id].start()
                try:
                    proc.stdin.write(dump_json({"spec": spec}) + "\n")
                    proc.stdin.close()
                except BrokenPipeError:  # it died at once: recorded below as a worker death
                    pass
            # wait for every worker to exit, or for a preemption (never blocking in Popen.wait)
            while self._preempted is None and any(p.poll() is None for p in self._procs.values()):
                time.sleep(self.poll_s)
        finally:
            # preempted (or an exception): stop what still runs; the exited ones are reaped here
            pids = {run_id: proc.pid for run_id, proc in self._procs.items()}  # the record names the dead worker
            codes = self._stop_workers()
        for reader in readers.values():
            # the worker is dead: its pipe ends once its last answer is read (bounded all the same:
            # a grandchild that inherited the pipe, e.g. a data loader process, may outlive it briefly)
            reader.join(timeout=60)
        preempted = self._preempted is not None
        for spec in todo:
            run_id = spec["_run_id"]
            if run_id in answers:
                self._results[run_id] = answers[run_id]
            elif run_id in readers and not preempted:  # the worker died without an answer (OOM killer ...)
                rec = _record_worker_death(self.results_dir, spec, codes.get(run_id), self.device, pids.get(run_id))
                self._results[run_id] = {"run_id": run_id, "kind": "died", "record": rec}
            # else: stopped by the preemption, or never started: the requeued job runs it

    def _stop_workers(self) -> dict[str, int | None]:
        """Kill the live workers and reap every worker (their exit codes by run id); free the claims
        of the killed ones (stale now: a requeued job, maybe on another node, must not wait for them to age)."""
        store = RunStore(self.results_dir)
        codes: dict[str, int | None] = {}
        for run_id, proc in list(self._procs.items()):
            killed = proc.poll() is None
            if killed:
                proc.kill()
            codes[run_id] = proc.wait()  # main thread, outside any signal handler: cannot deadlock
            if killed:
                store.remove_stale_claim(run_id)  # its holder is dead now: stale on this host
        self._procs.clear()
        return codes

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption / time-limit hook: requeue this same task (no worker is running
        when it is called: see the class docstring); its unfinished runs resume from their mid-run
        checkpoints, its finished ones keep their outcomes."""
        import submitit  # late: only ever called inside a submitit job

        self._stop_workers()  # none in practice; a no-op then
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _preemption_signal() -> signal.Signals:
    # submitit's choice: $SUBMITIT_PREEMPT_SIGNAL (default USR2), as submitit.JobEnvironment reads it
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _read_outcome(stream: IO[str], run_id: str, answers: dict[str, dict[str, Any]]) -> None:
    """A reader thread: keep the worker's ``outcome`` message (drain the rest: a full pipe would block it)."""
    with stream:
        for line in stream:
            try:
                msg = load_json(line)
            except ValueError:
                continue  # a torn last line of a killed worker
            if msg.get("event") == "outcome":
                answers[run_id] = {k: v for k, v in msg.items() if k != "event"}


def _record_worker_death(
    results_dir: str, spec_dict: dict[str, Any], code: int | None, device: str | None, pid: int | None = None
) -> dict[str, Any] | None:
    spec_dict = dict(spec_dict)
    spec_dict.pop("_run_id", None)
    spec = RunSpec.from_dict(spec_dict)
    why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    from .executors.base import record_death  # late: it imports torch, which the job itself never needs

    rec = record_death(
        RunStore(results_dir), spec, f"worker process died ({why}) inside its SLURM job", "", device, pid=pid
    ).record
    # as JSON, like the outcomes the workers send: the job's results travel back pickled as plain dicts
    return rec.to_dict() if rec is not None else None
