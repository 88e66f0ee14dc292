"""A SLURM job body on a leash, for ``tests/test_slurm.py``: preemption signals at chosen moments.

``python slurm_fakes.py jobs DIR SCENARIO...`` runs, for each scenario in turn (one process: one torch import), a :class:`~dabench.running.executors.slurm.SlurmTask`
of two runs (``a``, ``b``) the way a submitit job does (``submitit.core.submission.process_job``:
load the pickled ``DelayedSubmission``, install submitit's own signal handlers, call it), and
requeues it the way submitit's local controller does (a ``SystemExit`` with code 144 runs the
re-dumped pickle again). Its workers are ``python slurm_fake_worker.py DIR`` processes that speak
the worker protocol and move on only when the test's marker files say so, so each scenario sends
``USR2`` at a known point of the task's life, never after a sleep tuned to the machine's load:

- ``before``: before the task is called (submitit's handler is already installed);
- ``mid-run``: both workers started, neither has answered;
- ``answered-exiting``: ``a`` has answered and closed its pipe but has not exited (the moment a
  worker tears torch down), and the job's main thread is blocked (in the old task: in ``a``'s
  ``Popen.wait()``, where submitit's handler deadlocked); ``b`` is still running;
- ``all-answered``: the same, with both workers answered and neither exited;
- ``after-return``: the task has returned its outcomes; the job has not exited yet.

Prints one JSON line per scenario: ``{"scenario": ..., "attempts": [144 | "done", ...], "result": [...],
"starts": [[run, pid], ...], "torch": false}``.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading
import time

from dabench.running.slurm_task import SlurmTask

WORKER = pathlib.Path(__file__).with_name("slurm_fake_worker.py")  # stdlib only: starts in a blink
REQUEUE = 144  # submitit's LOCAL_REQUEUE_RETURN_CODE: the local controller runs the job again


def _await(cond) -> None:
    # the harness process itself runs under the test's timeout: this loop cannot outlive it
    while not cond():
        time.sleep(0.005)


class FakeWorkerTask(SlurmTask):
    def __init__(self, d: pathlib.Path) -> None:
        specs = [{"_run_id": "a"}, {"_run_id": "b"}]
        super().__init__(specs, str(d / "results"), "cpu", 0, None, ())
        self.dir = str(d)

    def _command(self, threads: int) -> list[str]:
        return [sys.executable, str(WORKER), self.dir]


def _main_thread_blocked() -> bool:
    """True while the main thread sleeps in the kernel elsewhere than on a pipe read or the GIL."""
    base = pathlib.Path(f"/proc/self/task/{threading.main_thread().native_id}")
    state = (base / "stat").read_text().rsplit(")", 1)[1].split()[0]
    wchan = (base / "wchan").read_text().strip()
    return state == "S" and "pipe" not in wchan and "futex" not in wchan


def _arm(scenario: str, d: pathlib.Path) -> None:
    """Send USR2 to this process at the scenario's point (from a thread: the main thread runs the task)."""
    if scenario == "before":
        os.kill(os.getpid(), signal.SIGUSR2)
        return
    if scenario == "after-return":
        (d / "go").touch(), (d / "exit").touch()
        return
    waits = {
        "mid-run": ["started-a", "started-b"],
        "answered-exiting": ["answered-a", "started-b"],
        "all-answered": ["answered-a", "answered-b"],
    }[scenario]
    for run_id in {"answered-exiting": ["a"], "all-answered": ["a", "b"]}.get(scenario, []):
        (d / f"go-{run_id}").touch()

    def fire() -> None:
        _await(lambda: all((d / w).exists() for w in waits))
        if scenario != "mid-run":
            _await(_main_thread_blocked)
        os.kill(os.getpid(), signal.SIGUSR2)

    threading.Thread(target=fire, daemon=True).start()


def job(scenario: str, d: pathlib.Path) -> None:
    d.mkdir(parents=True)
    os.environ.update(
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_JOB_ID="4242",
        SUBMITIT_LOCAL_GLOBALID="0",
        SUBMITIT_LOCAL_LOCALID="0",
        SUBMITIT_LOCAL_NTASKS="1",
        SUBMITIT_FOLDER=str(d / "submitit"),
    )
    from submitit.core import job_environment, utils

    env = job_environment.JobEnvironment()
    paths = env.paths
    paths.folder.mkdir(parents=True, exist_ok=True)
    first = utils.DelayedSubmission(FakeWorkerTask(d))
    first.set_timeout(30, 3)
    first.dump(paths.submitted_pickle)
    attempts: list[int | str] = []
    result = None
    while len(attempts) < 4:
        # submitit.core.submission.process_job, minus its result pickle
        delayed = utils.DelayedSubmission.load(paths.submitted_pickle)
        env._handle_signals(paths, delayed)
        try:
            if not attempts:
                _arm(scenario, d)
            else:
                (d / "go").touch(), (d / "exit").touch()  # a requeued job's runs go through
            result = delayed.result()
            if not attempts and scenario == "after-return":
                os.kill(os.getpid(), signal.SIGUSR2)  # returned, not exited yet
        except SystemExit as exc:
            attempts.append(exc.code)
            if exc.code != REQUEUE:
                break
            continue
        attempts.append("done")
        break
    starts = (
        [line.split() for line in (d / "starts.txt").read_text().splitlines()] if (d / "starts.txt").exists() else []
    )
    report = {"scenario": scenario, "attempts": attempts, "result": result, "starts": starts}
    report["torch"] = "torch" in sys.modules  # a job's body stays torch-free (each start would pay for it)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    assert sys.argv[1] == "jobs", sys.argv
    for name in sys.argv[3:]:
        job(name, pathlib.Path(sys.argv[2]) / name)
