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


# --- against fake sbatch / sacct / srun / scancel on PATH (no SLURM here): what submitit's SLURM
# executor sees of a real cluster, so the states a job can end in are chosen by the test

FAKE_BIN = {
    # submits nothing: keeps the script for the test, answers as sbatch does (or fails as told)
    "sbatch": """#!/bin/bash
if [ -f "$FAKE_SLURM/refuse" ]; then cat "$FAKE_SLURM/refuse" >&2; exit 1; fi
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100)
cp "$1" "$FAKE_SLURM/submitted-$n.sh"
echo $((n + 1)) > "$FAKE_SLURM/next"
echo "Submitted batch job $n"
""",
    "sacct": """#!/bin/bash
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/sacct" 2>/dev/null || true
""",
    "srun": "#!/bin/bash\nexit 0\n",
    "scancel": '#!/bin/bash\necho "$@" >> "$FAKE_SLURM/scancel"\n',
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir, state = tmp_path / "bin", tmp_path / "fake-slurm"
    bin_dir.mkdir(), state.mkdir()
    for name, body in FAKE_BIN.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def _specs(n: int):
    from dabench.running.matrix import Matrix, expand

    return expand(Matrix(methods=("source-only",), seeds=tuple(range(n)), overrides={"steps": 2}))


def test_slurm_jobs_that_end_without_a_result_are_recorded_with_their_state(tmp_path, fake_slurm):
    """One array of six jobs, ended as sacct says: five without a result (TIMEOUT, PREEMPTED and never
    requeued, NODE_FAIL, OUT_OF_MEMORY, CANCELLED by a user) and one COMPLETED with its result. Each
    of the five runs is recorded ``failed`` naming its job's state, at once; the sixth keeps its
    outcome; jobs.json lists each job's state. The old executor waited for ever on the PREEMPTED one
    (submitit counts PREEMPTED as unfinished), waited 15 s per job for a result file that could not
    come, and listed the cancelled job (``CANCELLED by 1000``) as FINISHED."""
    import submitit

    from dabench.running.executors import ExecutorOptions, make_executor

    specs = _specs(6)
    ex = make_executor("slurm", tmp_path / "r", ExecutorOptions(device="cpu", progress=False))
    ex.preempted_grace_s = 0.0  # a real cluster requeues within the default grace; this one never does
    for spec in specs:
        ex.submit(spec)
    outcomes = ex.wait(0)  # submitted; sacct knows nothing of them yet
    done_job = next(j["job"] for j in ex._jobs if str(j["job"].job_id) == "100_5")
    submitit.core.utils.cloudpickle_dump(
        ("success", [{"run_id": specs[5].run_id, "kind": "already-complete"}]), done_job.paths.result_pickle
    )
    states = ["TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED by 1000", "COMPLETED"]
    (fake_slurm / "sacct").write_text("".join(f"100_{i}|{s}|node1\n" for i, s in enumerate(states)))
    for _ in range(40):  # sacct is read at most every 2 s (submitit); a hang fails here, not the suite
        outcomes += ex.wait(1.0)
        if len(outcomes) == 6:
            break
    ex.close()
    got = {o.run_id: o for o in outcomes}
    assert len(got) == 6, f"only {len(got)} of 6 jobs ended: {[j['state'] for j in ex._jobs]}"
    assert got[specs[5].run_id].kind == "already-complete"
    store = RunStore(tmp_path / "r")
    for spec, state in zip(specs, ["TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED"]):
        rec = store.read(spec.run_id)
        assert rec["status"] == "failed" and got[spec.run_id].kind == "died", state
        assert rec["error"]["message"].startswith(f"SLURM job 100_{spec.seed} ended {state}"), rec["error"]
        assert "without a result" in rec["error"]["message"]
    listed = json.loads((tmp_path / "r" / "slurm" / "jobs.json").read_text())["jobs"]
    assert [j["state"] for j in listed][:5] == [
        "TIMEOUT", "PREEMPTED (NOT REQUEUED)", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED",
    ]  # fmt: skip
    assert listed[5]["state"] in ("COMPLETED", "FINISHED")  # FINISHED: its result was in before sacct said so
    assert not (fake_slurm / "scancel").exists()  # every job had ended: close() cancels none


def test_slurm_preempted_job_that_is_requeued_is_waited_for(tmp_path, fake_slurm):
    """PREEMPTED within the grace is a requeue in progress: the job is not recorded, and comes back."""
    from dabench.running.executors import ExecutorOptions, make_executor

    (spec,) = _specs(1)
    ex = make_executor("slurm", tmp_path / "r", ExecutorOptions(device="cpu", progress=False))
    (fake_slurm / "sacct").write_text("100_0|PREEMPTED|node1\n")
    ex.submit(spec)
    assert ex.wait(0) == [] and ex.wait(2.5) == []
    assert RunStore(tmp_path / "r").read(spec.run_id) is None and ex.free_slots() == ex.workers - 1
    ex.close()
    assert (fake_slurm / "scancel").read_text().split()[0] in ("100", "100_0")  # still queued: cancelled on close


def test_sbatch_refusing_the_array_stops_the_matrix_with_its_message(tmp_path, fake_slurm):
    from dabench.running.executors import ExecutorError, ExecutorOptions
    from dabench.running.matrix import MatrixError
    from dabench.running.scheduler import run_matrix

    (fake_slurm / "refuse").write_text("sbatch: error: invalid partition specified: gpux\n")
    with pytest.raises(ExecutorError, match=r"sbatch refused the job array .*invalid partition specified: gpux"):
        run_matrix(_specs(2), tmp_path / "r", ExecutorOptions(progress=False), executor="slurm")
    assert issubclass(ExecutorError, MatrixError)  # dabench run prints it as one line, exit code 2
    assert RunStore(tmp_path / "r").read(_specs(1)[0].run_id) is None  # nothing ran, nothing recorded


def test_slurm_without_sbatch_is_a_clear_error_not_a_local_run(tmp_path, monkeypatch):
    """The default cluster is SLURM: where there is none, say so (submitit's auto-detection ran the
    jobs as local processes instead)."""
    from dabench.running.executors import ExecutorOptions, make_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun or sacct
    with pytest.raises(ConnectionError, match=r"sbatch, srun, sacct not found on PATH .*--slurm-cluster local"):
        make_executor("slurm", tmp_path / "r", ExecutorOptions())


def _one_job_script(root, fake_slurm) -> str:
    """The sbatch script the slurm executor writes for one run into results folder ``root``."""
    from dabench.running.executors import ExecutorOptions, make_executor

    ex = make_executor("slurm", root, ExecutorOptions(progress=False))
    ex.submit(_specs(1)[0])
    ex.wait(0)
    ex.close()
    return (fake_slurm / "submitted-100.sh").read_text()


def test_sbatch_script_quotes_a_results_folder_with_spaces(tmp_path, fake_slurm):
    """The job's command line (what bash runs) names the folder whole, spaces and quote included."""
    import shlex

    root = tmp_path / "my results" / "it's here"
    script = _one_job_script(root, fake_slurm)
    folder = str(root.resolve() / "slurm" / "submitit")
    command = next(line for line in script.splitlines() if line.startswith("srun "))
    words = shlex.split(command)
    assert words[-1] == folder and words[words.index("--output") + 1].startswith(folder + "/")


def test_sbatch_script_escapes_percent_signs_of_the_results_folder_in_log_paths(tmp_path, fake_slurm):
    """SLURM expands %u, %x, %% ... in --output/--error (its filename patterns): a folder named
    ``acc 100%u`` sent the job's logs elsewhere. There the folder's % are written %%; submitit's own
    patterns (%j, %t) stay; submitit's command names the folder as it is (not a pattern)."""
    import shlex

    root = tmp_path / "acc 100%u" / "x%%y"
    script = _one_job_script(root, fake_slurm)
    folder = str(root.resolve() / "slurm" / "submitit")
    slurm_folder = folder.replace("%", "%%")
    sbatch = {
        flag: shlex.split(line.split("=", 1)[1])[0]
        for line in script.splitlines()
        for flag in ("--output", "--error")
        if line.startswith(f"#SBATCH {flag}=")
    }
    assert sbatch == {"--output": f"{slurm_folder}/%j_0_log.out", "--error": f"{slurm_folder}/%j_0_log.err"}
    words = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert words[words.index("--output") + 1] == f"{slurm_folder}/%j_%t_log.out"
    assert words[words.index("--error") + 1] == f"{slurm_folder}/%j_%t_log.err"
    assert words[-1] == folder  # submitit's argument: a path, not a pattern


def test_a_results_folder_with_submitits_own_tags_is_refused(tmp_path, fake_slurm):
    from dabench.running.executors import ExecutorOptions, make_executor

    with pytest.raises(ValueError, match=r"--results .*run%j.*holds %j, which submitit replaces by job ids"):
        make_executor("slurm", tmp_path / "run%j", ExecutorOptions(progress=False))


def test_two_slurm_runners_on_one_folder_keep_each_others_jobs_in_jobs_json(tmp_path, fake_slurm):
    """Each runner rewrote DIR/slurm/jobs.json with its own jobs alone: dabench status lost the
    other runner's. Now each write merges (under a lock); a gone runner's jobs are dropped."""
    from dabench.core.store import machine_tag
    from dabench.running.executors import ExecutorOptions, make_executor

    a_spec, b_spec = _specs(2)
    root = tmp_path / "r"
    jobs_file = root / "slurm" / "jobs.json"
    a = make_executor("slurm", root, ExecutorOptions(progress=False))
    b = make_executor("slurm", root, ExecutorOptions(progress=False))
    a.submit(a_spec)
    a.wait(0)
    b.submit(b_spec)
    b.wait(0)
    (fake_slurm / "sacct").write_text("100|RUNNING|node1\n101|RUNNING|node1\n")
    a.wait(2.5)  # a's job changes state: a rewrites the file, b's job stays listed
    listed = {j["job_id"]: j for j in json.loads(jobs_file.read_text())["jobs"]}
    assert sorted(listed) == ["100", "101"]
    assert listed["100"]["run_ids"] == [a_spec.run_id] and listed["101"]["run_ids"] == [b_spec.run_id]
    # a runner killed on this machine (its pid gone) leaves a stale list: the next write drops it
    payload = json.loads(jobs_file.read_text())
    payload["jobs"].append(
        {
            "job_id": "7",
            "state": "RUNNING",
            "run_ids": ["x"],
            "runner": {"pid": 2**22 + 7, "machine": machine_tag(), "id": "dead"},
        }
    )
    jobs_file.write_text(json.dumps(payload))
    a.close()
    b.close()
    assert sorted(j["job_id"] for j in json.loads(jobs_file.read_text())["jobs"]) == ["100", "101"]
