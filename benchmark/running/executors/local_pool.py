"""The local executor: a pool of ``python -m dabench.running.executors.worker`` processes on this machine.

One worker per GPU, or ``runs_per_gpu`` per GPU (``CUDA_VISIBLE_DEVICES`` set per worker); one
on a CPU unless told otherwise. A run's crash, OOM or SIGKILL kills only its worker process; the
parent records the run ``failed`` with the exit code or signal and starts a fresh worker.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.jsonio import dump_json, load_json
from ...core.spec import RunSpec
from ...core.store import RunStore, WriteFault
from ..unit import Outcome
from .base import (
    TAIL_LINES,
    Executor,
    ExecutorOptions,
    _absolute_plugins,
    _step_bar,
    log_lines,
    record_death,
    register_executor,
    run_marker,
)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (none on a CPU machine)."""
    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [d.strip() for d in env.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class SlotPlan:
    """How the pool's workers map onto devices."""

    workers: int
    device: str  # the --device each worker gets
    gpu_of_slot: list[str | None] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES per slot
    threads: int = 1


def plan_slots(device: str | None, workers: int | None, runs_per_gpu: int = 1) -> SlotPlan:
    """Default: ``runs_per_gpu`` workers per visible GPU, each seeing only its GPU; one worker
    on the CPU. An explicit ``cuda:N`` device pins every worker to that device."""
    if runs_per_gpu < 1:
        raise ValueError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    cpus = os.cpu_count() or 1
    dev = device or "auto"
    gpus = visible_gpus() if dev in ("auto", "cuda") else []
    if gpus:
        n = workers or len(gpus) * runs_per_gpu
        # round robin: with n = len(gpus) * K every GPU gets exactly K workers
        return SlotPlan(n, "cuda", [gpus[i % len(gpus)] for i in range(n)], max(1, cpus // n))
    if dev.startswith("cuda"):
        n = workers or runs_per_gpu
        return SlotPlan(n, dev, [None] * n, max(1, cpus // n))
    n = workers or 1
    # CPU runs: split the cores so the workers do not fight over them
    return SlotPlan(n, "cpu", [None] * n, max(1, cpus // n))


def runner_id() -> str:
    """This runner (``dabench run`` process) as ``<host>-<pid>``: its workers' log files carry it,
    so that two runners on one results folder (on one host or sharing it over a network
    filesystem) never write to, nor quote, each other's logs."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", platform.node().split(".")[0]) or "host"
    return f"{host}-{os.getpid()}"


class _Worker:
    """One worker process and the spec it is running."""

    def __init__(self, slot: int, proc: subprocess.Popen, log_path: pathlib.Path, log_start: int = 0) -> None:
        self.slot = slot
        self.proc = proc
        self.log_path = log_path
        # the log's size when this process started: its slot's earlier (and spare) processes
        # append to the same file, and a death message quotes only this process's lines
        self.log_start = log_start
        self.current: RunSpec | None = None
        self.pending: dict[
            str, RunSpec
        ] = {}  # the runs it was given whose outcome has not come (a seed group: several)
        self.runs = 0
        self.handed_at: float | None = None  # time.monotonic() when it was handed its current run


def _death_message(proc: subprocess.Popen, log_path: pathlib.Path, log_start: int = 0) -> tuple[str, str]:
    """(one-line reason, tail of the worker's log from ``log_start`` on: what it wrote) for a
    worker that died mid-run."""
    rc = proc.returncode
    if rc is not None and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        hint = " (killed: out of memory, or by a user or the system)" if -rc == signal.SIGKILL else ""
        why = f"worker process {proc.pid} died from {name}{hint}"
    else:
        why = f"worker process {proc.pid} exited with code {rc} without finishing the run"
    lines = log_lines(log_path, log_start)
    # from the process's last run marker on: a spare of its slot, started (log_start taken)
    # while the slot's previous process ran its last run, would otherwise quote that run's lines
    marker = run_marker(proc.pid)
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if starts:
        lines = lines[starts[-1] :]
    return f"{why}; log: {log_path}", "\n".join(lines[-TAIL_LINES:])


@register_executor("local")
class LocalPoolExecutor(Executor):
    """A pool of ``python -m dabench.running.executors.worker`` processes; ``runs_per_process`` runs each before a
    fresh process replaces it (1: every run in its own process; 0: reuse without limit)."""

    def __init__(self, results_dir: pathlib.Path, opts: ExecutorOptions) -> None:
        opts = opts.resolved()  # the defaults of the options not given
        runs_per_process = opts.runs_per_process or 0  # checked by make_executor (check_executor_options)
        self.opts = opts
        self.plan = plan_slots(opts.device, opts.workers, opts.runs_per_gpu or 1)
        self.runs_per_process = runs_per_process
        self.results_dir = pathlib.Path(results_dir)
        self.store = RunStore(results_dir)
        self.logs = self.store.root / "logs"
        self.runner = runner_id()  # in the workers' log names: logs/worker-<host>-<pid>-<slot>.log
        self._slots: list[_Worker | None] = [None] * self.plan.workers
        # a started, idle process per slot that takes the slot's next run: its interpreter and
        # torch import (seconds) overlap the current run instead of delaying the next one
        self._spares: list[_Worker | None] = [None] * self.plan.workers
        # ... but only where a spare core exists for it: on a CPU-bound machine the import would
        # slow the runs as much as it saves
        self._use_spares = bool(runs_per_process) and (os.cpu_count() or 1) >= 2 * self.plan.workers + 1
        self._events: queue.Queue = queue.Queue()
        self._bars = [_step_bar(opts.progress, i + 1) for i in range(self.plan.workers)]
        self.run_timeout_s = opts.run_timeout_s

    #: the pool enforces --run-timeout: a run past it is stopped by killing its worker process
    stops_runs = True
    reads = frozenset({"workers", "runs_per_gpu", "runs_per_process"})

    #: seconds a worker whose output has closed may take to exit before it is killed: tearing
    #: torch and CUDA down takes a few; a process stuck there must not block the runner for ever
    exit_grace_s: float = 60.0

    @property
    def workers(self) -> int:
        return self.plan.workers

    def assigned_device(self, slot: int) -> str:
        """The device the runner gave ``slot``'s workers, as a record names it (for a run whose
        worker died before recording its own; no CUDA call: the parent opens no CUDA context)."""
        gpu = self.plan.gpu_of_slot[slot]
        if gpu is not None:
            return f"{self.plan.device} (CUDA_VISIBLE_DEVICES={gpu})"
        return f"cpu ({os.cpu_count()} cores)" if self.plan.device == "cpu" else self.plan.device

    def _spawn(self, slot: int) -> _Worker:
        o = self.opts
        cmd = [
            sys.executable,
            "-m",
            "dabench.running.executors.worker",
            "--results",
            str(self.results_dir.resolve()),
            "--device",
            self.plan.device,
            "--threads",
            str(self.plan.threads),
            *o.engine.to_flags(),
            "--max-runs",
            str(self.runs_per_process),
            "--parent-pid",
            str(os.getpid()),
        ]
        if o.data_root:
            cmd += ["--data-root", str(o.data_root)]
        for plugin in _absolute_plugins(o.plugins):
            cmd += ["--plugin", plugin]
        env = dict(os.environ)
        gpu = self.plan.gpu_of_slot[slot]
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # a worker must not spawn its own thread pools beyond its share of the cores
        env.setdefault("OMP_NUM_THREADS", str(self.plan.threads))
        log_path = self.logs / f"worker-{self.runner}-{slot}.log"
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "a")
            log_start = os.fstat(log.fileno()).st_size
        except OSError as exc:
            raise WriteFault(log_path, exc) from exc
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True, bufsize=1
        )
        log.close()  # the child holds its own descriptor
        worker = _Worker(slot, proc, log_path, log_start)
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        return worker

    def _read(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        for line in worker.proc.stdout:
            try:
                self._events.put((worker, load_json(line)))
            except json.JSONDecodeError:
                continue  # not ours: the protocol lines are JSON
        self._events.put((worker, None))  # EOF: the process is gone or going

    def free_slots(self) -> int:
        return sum(1 for w in self._slots if w is None or w.current is None)

    groups = True

    def submit(self, spec: RunSpec) -> None:
        self._hand([spec], group=False)

    def submit_group(self, specs: list[RunSpec]) -> None:
        self._hand(specs, group=True)

    def _hand(self, specs: list[RunSpec], group: bool) -> None:
        """Give a free slot one run, or (``group``) the seeds of one configuration to batch: a
        group of one still goes as a group, so its record says why it ran unbatched."""
        spec = specs[0]
        if all(w is None for w in self._slots):
            # the first run starts the whole pool: the workers' start-up (interpreter, torch
            # import) then overlaps instead of happening one after another as runs arrive
            self._slots = [self._spawn(i) for i in range(self.plan.workers)]
        for slot, w in enumerate(self._slots):
            if w is None or w.current is None:
                spent = w is not None and self.runs_per_process and w.runs >= self.runs_per_process
                if w is None or spent or w.proc.poll() is not None:
                    # a spent worker exits by itself after its last outcome; its EOF finds no current run
                    spare, self._spares[slot] = self._spares[slot], None
                    w = spare if spare is not None and spare.proc.poll() is None else self._spawn(slot)
                    self._slots[slot] = w
                w.current = spec
                w.pending = {s.run_id: s for s in specs}
                w.handed_at = time.monotonic()
                if self._use_spares and w.runs + 1 >= self.runs_per_process and self._spares[slot] is None:
                    self._spares[slot] = self._spawn(slot)
                bar = self._bars[slot]
                bar.reset(total=spec.schedule.steps)
                bar.set_description_str(f"[{slot}] {spec.label}" + (f" ({len(specs)} seeds)" if len(specs) > 1 else ""))
                assert w.proc.stdin is not None
                try:
                    wire = [{**s.to_dict(), "_run_id": s.run_id} for s in specs]
                    msg = {"specs": wire} if group else {"spec": wire[0]}
                    w.proc.stdin.write(dump_json(msg, default=str) + "\n")
                    w.proc.stdin.flush()
                except BrokenPipeError:
                    pass  # it died before reading: its EOF event records the run failed
                return
        raise RuntimeError("submit() with no free worker slot")

    def wait(self, timeout: float) -> list[Outcome]:
        out: list[Outcome] = []
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return self._expire()
        while True:
            out += self._handle(*item)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return out + self._expire()

    def _expire(self) -> list[Outcome]:
        """Kill the workers whose run has been running longer than ``--run-timeout`` and record
        their runs ``failed`` (``RunTimeout``); the slot then gets a fresh worker.

        Checked here, in the parent, on every :meth:`wait` (at least once per scheduler poll): a
        run that hangs (a deadlock, an endless loop, a stuck read) sends no events at all, so
        nothing inside the worker could be relied on to notice. Its process is killed, not asked:
        a hang in native code ignores a polite signal as readily as it ignores the run's end.
        """
        limit = self.run_timeout_s
        if limit is None:
            return []
        out: list[Outcome] = []
        now = time.monotonic()
        for w in self._slots:
            if w is None or not w.pending or w.handed_at is None or now - w.handed_at <= limit:
                continue
            w.proc.kill()
            w.proc.wait()  # reaped: its claim's pid is gone, so record_death finds the claim stale
            pending, w.pending, w.current = list(w.pending.values()), {}, None
            self._slots[w.slot] = None  # its EOF, read later, finds nothing pending
            self._bars[w.slot].reset(total=0)
            _, tail = _death_message(w.proc, w.log_path, w.log_start)
            why = (
                f"ran longer than --run-timeout {limit:g} s (wall clock since its worker was handed the run): "
                f"worker process {w.proc.pid} killed; log: {w.log_path}"
            )
            device, threads = self.assigned_device(w.slot), self.plan.threads
            out += [
                record_death(
                    self.store, s, why, tail, device, pid=w.proc.pid, torch_threads=threads, error_type="RunTimeout"
                )
                for s in pending
            ]
        return out

    def _handle(self, worker: _Worker, msg: dict[str, Any] | None) -> list[Outcome]:
        if msg is None:  # the process ended, or closed its output and is ending
            try:
                worker.proc.wait(timeout=self.exit_grace_s)
            except subprocess.TimeoutExpired:
                # stuck after its output closed (e.g. in teardown): it has nothing more to say
                worker.proc.kill()
                worker.proc.wait()
            if self._slots[worker.slot] is worker:
                self._slots[worker.slot] = None
            if self._spares[worker.slot] is worker:
                self._spares[worker.slot] = None
            pending, worker.pending, worker.current = list(worker.pending.values()), {}, None
            if not pending:
                return []  # a clean exit after its last run
            self._bars[worker.slot].reset(total=0)
            why, tail = _death_message(worker.proc, worker.log_path, worker.log_start)
            device, pid, threads = self.assigned_device(worker.slot), worker.proc.pid, self.plan.threads
            return [record_death(self.store, s, why, tail, device, pid=pid, torch_threads=threads) for s in pending]
        event = msg.get("event")
        if event == "step" and worker.current is not None:
            bar = self._bars[worker.slot]
            bar.total, bar.n = msg["total"], msg["done"]
            bar.refresh()
        elif event == "outcome":
            worker.pending.pop(msg["run_id"], None)
            if not worker.pending:  # a seed group answers once per seed
                worker.current = None
                worker.runs += 1
                self._bars[worker.slot].reset(total=0)
            return [Outcome.from_message(msg)]
        return []

    def close(self) -> None:
        everyone = [w for w in self._slots + self._spares if w is not None]
        for w in everyone:
            try:
                if w.proc.stdin:
                    w.proc.stdin.close()  # EOF: an idle worker exits
            except OSError:
                pass
            if w.current is not None:
                w.proc.terminate()  # interrupted mid-run: its record stays running, rerun next time
        for w in everyone:
            if w is not None:
                try:
                    w.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
        for bar in self._bars:
            bar.close()
