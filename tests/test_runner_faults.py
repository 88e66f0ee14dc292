"""Faults, with real processes: killed workers and a killed ``dabench run``, corrupt records,
exceptions and non-finite losses inside methods, two runners on one folder.

The promises (docs/architecture.md, "Principles", *Behaviour on bad input*): a killed run is never recorded complete;
nothing that completed is lost or recomputed on resume; a corrupt record is reported by name
and rerun; a failing or diverging run is recorded as such and the matrix goes on; a long run
resumes from its mid-run checkpoint.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import textwrap

import pytest
import torch

from dabench.cli import main
from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from dabench.running.unit import run_claimed
from tiny_runs import DABENCH, TINY, pid_alive, slow_checkpointed_run, tiny_run, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")


FAULTY = textwrap.dedent('''
    """Methods that fail on purpose (written by the test, loaded with --plugin)."""
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method("boom")
    class Boom(SourceOnly):
        """Raises at step 2."""
        def loss(self, batch, progress):
            if progress >= 0.1:
                raise RuntimeError("boom: a bug inside the method")
            return super().loss(batch, progress)

    @register_method("nan")
    class NaNLoss(SourceOnly):
        """Its loss becomes NaN from step 5 on."""
        def loss(self, batch, progress):
            parts = self.supervised_loss(batch, self.net(batch.x_source)[0])
            if progress >= 0.25:
                parts["ce"] = parts["ce"] * float("nan")
            return self.combine(parts)

    @register_method("nan-da")
    class NaNAdaptation(SourceOnly):
        """Two loss parts; only the adaptation part ``da`` becomes infinite, from step 7 on."""
        def loss(self, batch, progress):
            parts = self.supervised_loss(batch, self.net(batch.x_source)[0])
            da = parts["ce"].detach() * 0
            if progress >= 0.35:
                da = da + float("inf")
            return self.combine(parts, da, trade_off=1.0)
''')


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> pathlib.Path:
    """FAULTY as one plugin file for the module: its methods may be registered from one path only."""
    plugin = tmp_path_factory.mktemp("plugin") / "faulty.py"
    plugin.write_text(FAULTY)
    return plugin


def test_exception_and_nan_are_recorded_and_the_matrix_goes_on(tmp_path, faulty):
    plugin = faulty
    plugins = (TINY, str(plugin))
    specs = expand(
        Matrix(
            methods=("boom", "nan", "nan-da", "source-only", "linear-probe"),
            pairs=("tiny",),
            seeds=(0,),
            plugins=plugins,
        )
    )
    summary = run_matrix(specs, tmp_path / "out", ExecutorOptions(device="cpu", progress=False, plugins=plugins))
    recs = {r["spec"]["method"]: r for r in summary.ran}
    assert recs["boom"]["status"] == "failed"
    assert recs["boom"]["error"]["type"] == "RuntimeError"
    assert "boom: a bug inside the method" in recs["boom"]["error"]["traceback"]
    assert "faulty.py" in recs["boom"]["error"]["traceback"]  # the traceback points into the plugin
    assert recs["nan"]["status"] == "diverged" and recs["nan"]["diverged_at_step"] == 5
    assert "loss part 'ce' first non-finite at step 5" in recs["nan"]["error"]["message"]
    # two parts, only `da` goes infinite (step 7): the record names it; found at the step-10 sync
    assert recs["nan-da"]["status"] == "diverged" and recs["nan-da"]["diverged_at_step"] == 7
    assert recs["nan-da"]["error"]["message"] == "non-finite loss at step 7 (loss part 'da' first non-finite at step 7)"
    assert recs["source-only"]["status"] == recs["linear-probe"]["status"] == "complete"


def test_a_diverged_run_is_kept_not_rerun_on_resume(tmp_path, capsys, faulty):
    """A divergence is the run's result: the next run of the matrix keeps the record and names it
    (before: it was recomputed on every resume, its record overwritten, and on a GPU re-rolled until
    it happened to complete); the failed run is retried; ``run_claimed`` of a second runner that
    finds the diverged record after its claim does not run it either; ``--rerun`` still repeats it."""
    plugin = faulty
    plugins = (TINY, str(plugin))
    specs = expand(Matrix(methods=("nan", "boom"), pairs=("tiny",), seeds=(0,), plugins=plugins))
    nan, boom = specs
    out, opts = tmp_path / "out", ExecutorOptions(device="cpu", progress=False, plugins=plugins)
    first = run_matrix(specs, out, opts)
    assert [r["status"] for r in first.ran] == ["diverged", "failed"]
    store = RunStore(out)
    before = store.record_path(nan.run_id).read_bytes()
    capsys.readouterr()
    again = run_matrix(specs, out, opts)
    assert again.kept_diverged == [nan.run_id] and again.counts()["already diverged (kept)"] == 1
    assert [r["run_id"] for r in again.ran] == [boom.run_id]  # a failure is retried
    assert store.record_path(nan.run_id).read_bytes() == before
    assert f"dabench run --rerun RUN_ID --results {out}" in capsys.readouterr().err
    outcome = run_claimed(nan, store, torch.device("cpu"), pathlib.Path("unused"))
    assert outcome.kind == "already-diverged" and outcome.record["diverged_at_step"] == 5
    assert store.record_path(nan.run_id).read_bytes() == before
    assert main([*tiny_run(out, "nan", "0", "--plugin", str(plugin)), "--no-progress"]) == 1  # not complete: exit 1
    assert store.record_path(nan.run_id).read_bytes() == before
    assert main(["run", "--rerun", nan.run_id, "--results", str(out), "--no-progress", "--device", "cpu"]) == 1
    # the old record moved aside and a new one written (byte-equal when the rerun falls in the same
    # second: the run is deterministic and the timestamps have a resolution of one second)
    (archived,) = (out / "previous").glob(f"{nan.run_id}.*.json")
    assert archived.read_bytes() == before and store.read(nan.run_id)["started_at"] is not None
    assert store.record_path(nan.run_id).stat().st_ino != archived.stat().st_ino


def test_corrupt_records_are_named_and_rerun(tmp_path):
    specs = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0, 1, 2), plugins=(TINY,)))
    run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False))
    store = RunStore(tmp_path)
    torn, garbage, intact = (store.record_path(s.run_id) for s in specs)
    torn.write_text(torn.read_text()[: len(torn.read_text()) // 2])  # a write cut off half way
    garbage.write_text("\x00\x01 not json")
    before = intact.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="corrupt run record") as caught:
        summary = run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False))
    named = " ".join(str(w.message) for w in caught)
    assert torn.name in named and garbage.name in named
    assert sorted(summary.corrupt) == sorted([specs[0].run_id, specs[1].run_id])
    assert [r["run_id"] for r in summary.ran] == [specs[0].run_id, specs[1].run_id]
    assert all(store.read(s.run_id)["status"] == "complete" for s in specs)
    assert intact.stat().st_mtime_ns == before


def test_killed_worker_and_killed_runner_resume_without_recomputing(tmp_path):
    """One `dabench run --executor local --workers 1` (runs in matrix order: source-only 0, slow 0,
    source-only 1, slow 1): the worker running `slow` seed 0 is SIGKILLed after its first mid-run
    checkpoint (recorded failed, the matrix goes on in a fresh worker), and the main process is
    SIGKILLed while seed 1 runs (its worker dies with it). A second `dabench run` finishes both slow runs from their checkpoints and
    leaves the complete runs alone."""
    out = tmp_path / "out"
    args, specs = slow_checkpointed_run(out, "source-only,slow", "0,1")
    done_first = [s for s in specs if s.method == "source-only"]
    slow0, slow1 = [s for s in specs if s.method == "slow"]
    store = RunStore(out)

    def mid_run_worker(spec, timeout: float) -> int:
        """Once ``spec`` has written its first partial checkpoint: the pid of the worker running it."""
        wait_for(
            store.checkpoint_path(spec.run_id, partial=True).exists,
            timeout,
            f"the first partial checkpoint of slow seed {spec.seed}",
            main,
        )
        return json.loads((store.claims / f"{spec.run_id}.claim").read_text())["pid"]

    main = subprocess.Popen(
        [*args, "--executor", "local", "--workers", "1", "--runs-per-process", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        worker_pid = mid_run_worker(slow0, 90)
        assert worker_pid != main.pid
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: store.status(slow0.run_id) == "failed", 30, "slow seed 0 recorded failed", main)
        worker_pid = mid_run_worker(slow1, 90)  # a fresh worker process first: slow on a loaded machine
        main.kill()
        main.wait()
        wait_for(lambda: not pid_alive(worker_pid), 10, "the worker to die with its parent")
    finally:
        main.kill()
        main.communicate()
    rec = store.read(slow0.run_id)
    assert rec["error"]["type"] == "WorkerDied" and "SIGKILL" in rec["error"]["message"]
    assert store.status(slow1.run_id) == "running"  # killed: never recorded complete
    before = {
        s.run_id: (store.record_path(s.run_id).stat().st_mtime_ns, store.read(s.run_id)["finished_at"])
        for s in done_first
    }
    assert all(store.status(s.run_id) == "complete" for s in done_first)

    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 already complete, 2 complete" in again.stdout
    for s in done_first:  # not recomputed
        assert (store.record_path(s.run_id).stat().st_mtime_ns, store.read(s.run_id)["finished_at"]) == before[s.run_id]
    for spec in (slow0, slow1):
        rec = store.read(spec.run_id)
        assert rec["status"] == "complete"
        assert rec["resumed_from_step"] is not None and rec["resumed_from_step"] >= 10
        assert [p["step"] for p in rec["curve"]] == list(range(10, 61, 10))  # the curve continues
        assert rec["timings"]["steps"] == 60
        assert not store.checkpoint_path(spec.run_id, partial=True).exists()


def test_two_runners_on_one_folder_run_each_run_once(tmp_path):
    out = tmp_path / "out"
    trace = tmp_path / "trace.txt"
    args = [*DABENCH, *tiny_run(out, "slow", "0,1,2,3", "--set", "slow.sleep=0.03")]
    env = {**os.environ, "DABENCH_TEST_TRACE": str(trace), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_so, se) in zip(procs, results):
        assert p.returncode == 0, se[-3000:]
    started = [line.split()[0] for line in trace.read_text().splitlines()]
    assert len(started) == 4 and len(set(started)) == 4, started  # each run once, by one of the two
    store = RunStore(out)
    recs = list(store.records())
    assert len(recs) == 4 and all(r["status"] == "complete" for r in recs)
    assert not list(store.claims.glob("*.claim"))
