"""The slurm executor, for real, on submitit's LocalExecutor (``--slurm-cluster local``: the same
job pickles, signals and requeue path as on SLURM, as local processes; no SLURM needed).

One `dabench run --executor slurm`: source-only and ``slow`` packed in one job (``--runs-per-gpu 2``
on CPU jobs), then the dependant linear probe in a second array once source-only is complete. The
job is preempted (SIGUSR2, what SLURM sends before a time limit or a preemption) after ``slow``'s
first mid-run checkpoint: submitit calls the task's ``checkpoint()``, the job is requeued, and
``slow`` resumes from its checkpoint while source-only (complete) is not run again.

The preemption signal at every other point of a job's life (before its workers start, while they
run, once they have answered but not exited, after the task returned) is sent at points that marker
files make certain, with fake workers (``slurm_fakes.py``); both tests fail on a hang (a timeout
kills the process group) instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from dabench.core.store import RunStore

pytest.importorskip("submitit", reason="the slurm executor needs submitit: pip install 'dabench[slurm]'")

from tiny_runs import DABENCH, slow_checkpointed_run, wait_for

FAKES = str(pathlib.Path(__file__).with_name("slurm_fakes.py"))


def _parent(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow  # process start-ups: main, jobs, workers (~30 s at load 10 on 2 cores; up to ~2 min seen)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the job's process")
def test_slurm_job_array_preempted_requeued_and_resumed(tmp_path):
    out = tmp_path / "out"
    trace = tmp_path / "trace.txt"
    args, specs_in_order = slow_checkpointed_run(
        out,
        "source-only,slow,linear-probe",
        "0",
        "--executor",
        "slurm",
        "--slurm-cluster",
        "local",
        "--gpus-per-job",
        "0",
        "--runs-per-gpu",
        "2",
        "--slurm-time",
        "30",
    )
    specs = {s.method: s for s in specs_in_order}
    store = RunStore(out)
    env = {**os.environ, "DABENCH_TEST_TRACE": str(trace), "OMP_NUM_THREADS": "1"}
    # own session: on a failure the whole tree (submitit's job processes too) is killed, never left running
    main = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    slow = specs["slow"].run_id
    try:
        wait_for(store.checkpoint_path(slow, partial=True).exists, 120, "slow's first mid-run checkpoint", main)
        jobs = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
        assert len(jobs) == 1 and sorted(jobs[0]["run_ids"]) == sorted([specs["source-only"].run_id, slow])
        worker = json.loads(store.claim_path(slow).read_text())["pid"]
        task = _parent(worker)  # the job's process: submitit's signal handler lives there
        assert task != main.pid
        os.kill(task, signal.SIGUSR2)  # preempted
        # generous: on a loaded 2-core machine the requeued job restarts processes that import torch;
        # a hang (the preempted job never requeued nor done) fails here instead of blocking the suite
        _stdout, stderr = main.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(main.pid, signal.SIGKILL)
        # submitit's local jobs may sit in a session of their own: they are found by the results folder
        subprocess.run(["pkill", "-KILL", "-f", str(out)], check=False)
        main.wait()
    assert main.returncode == 0, stderr[-3000:]
    for method in ("source-only", "slow", "linear-probe"):
        assert store.read(specs[method].run_id)["status"] == "complete", method
    rec = store.read(slow)
    assert rec["resumed_from_step"] is not None and rec["resumed_from_step"] >= 10
    assert [p["step"] for p in rec["curve"]] == [10, 20, 30, 40, 50, 60]  # the curve went on
    starts = [line.split() for line in trace.read_text().splitlines()]
    assert [r for r, _ in starts] == [slow, slow] and starts[0][1] != starts[1][1]  # two processes, one run
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
    assert [j["run_ids"] for j in jobs][1] == [specs["linear-probe"].run_id]  # the second round's array
    assert all(j["state"] == "FINISHED" for j in jobs)
    status = subprocess.run([*DABENCH, "status", str(out)], capture_output=True, text=True, timeout=60)
    assert "matrix: 3 runs = 3 complete" in status.stdout
    assert "slurm jobs (2 submitted" in status.stdout and "none queued or running" in status.stdout


def test_slurm_options_are_checked(tmp_path):
    from dabench.running.executors import ExecutorOptions, make_executor

    with pytest.raises(ValueError, match=r"--gpus-per-job must be 0 .* got -1"):
        make_executor("slurm", tmp_path, ExecutorOptions(gpus_per_job=-1))
    with pytest.raises(ValueError, match="--slurm-cluster 'pbs': valid are slurm"):
        make_executor("slurm", tmp_path, ExecutorOptions(slurm_cluster="pbs"))


#: each scenario of slurm_fakes.py: the job's attempts (144: requeued) and how often each run's worker started
PREEMPTIONS = {
    "before": ([144, "done"], {"a": 1, "b": 1}),  # nothing started: the requeued job runs both
    "mid-run": ([144, "done"], {"a": 2, "b": 2}),  # both stopped, both run again
    "answered-exiting": ([144, "done"], {"a": 1, "b": 2}),  # a's outcome is kept, only b runs again
    "all-answered": (["done"], {"a": 1, "b": 1}),  # nothing left to run: the job just finishes
    "after-return": ([144, "done"], {"a": 1, "b": 1}),  # requeued, answers at once from its outcomes
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see where the job's thread waits")
def test_slurm_task_preempted_at_any_moment_requeues_or_finishes(tmp_path):
    """USR2 at every point of a job's life (submitit's own signal handling, requeue by re-running
    the re-dumped pickle): the job never hangs and ends with every run's outcome, each run
    started again only if it had not answered. The old task deadlocked in "answered-exiting" and
    "all-answered" (submitit's handler called ``Popen.wait()`` on the worker whose ``wait()`` the
    main thread was in) and ran both runs again in "after-return"."""
    proc = subprocess.Popen(
        [sys.executable, FAKES, "jobs", str(tmp_path), *PREEMPTIONS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its fake workers die with it (PDEATHSIG); a hang is killed as a group
    )
    try:
        # each scenario takes about a second (a few tiny processes); the bound is for a loaded machine
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    reports = {r["scenario"]: r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))}
    hung = [name for name in PREEMPTIONS if name not in reports]
    assert not hung, f"the job hung or failed when preempted at {hung[0]!r} (done: {list(reports)}):\n{err[-3000:]}"
    for name, (attempts, starts) in PREEMPTIONS.items():
        rep = reports[name]
        assert rep["attempts"] == attempts, name
        assert rep["result"] == [{"run_id": r, "kind": "ran", "record": None} for r in ("a", "b")], name
        started = [run for run, _pid in rep["starts"]]
        assert {r: started.count(r) for r in ("a", "b")} == starts, name
        assert len({pid for _run, pid in rep["starts"]}) == len(rep["starts"]), name  # a fresh worker each time
        assert rep["torch"] is False, name  # the job's own process never imports torch


def test_a_worker_dying_inside_a_slurm_job_is_recorded_failed_with_its_own_pid(tmp_path):
    """A worker killed without an answer (the OOM killer) leaves a ``failed`` record naming the
    dead worker's pid, not the job process's (the worker never wrote a record of its own)."""
    from dabench.running.matrix import Matrix, expand
    from dabench.running.slurm_task import SlurmTask

    spec = expand(Matrix(methods=("source-only",), seeds=(0,), overrides={"steps": 2}))[0]
    marker = tmp_path / "worker.pid"

    class DyingWorkerTask(SlurmTask):
        def _command(self, threads: int) -> list[str]:
            # stdlib only: reads its spec, writes its pid, dies with exit code 3 without answering
            body = "import os, sys; sys.stdin.readline(); open(sys.argv[1], 'w').write(str(os.getpid())); os._exit(3)"
            return [sys.executable, "-c", body, str(marker)]

    task = DyingWorkerTask([{**spec.to_dict(), "_run_id": spec.run_id}], str(tmp_path / "r"), "cpu", 0, None, ())
    (outcome,) = task()
    assert outcome["kind"] == "died"
    record = json.loads(RunStore(tmp_path / "r").record_path(spec.run_id).read_text())
    assert record["status"] == "failed" and "exit code 3" in record["error"]["message"], record
    assert record["pid"] == int(marker.read_text()) != os.getpid()
