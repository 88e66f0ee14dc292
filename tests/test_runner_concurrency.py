"""Two runners on one results folder at once: the races of resuming a matrix together.

The runners are threads of this process (each claim holds this pid and its own token, so one
thread's claim is another runner's live claim to the other). The race window is opened
deterministically: both runners are held at a barrier until each has read what the race is about.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dabench.core.store import RunStore
from dabench.running import scheduler
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import MatrixSummary, run_matrix
from tiny_runs import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _in_threads(target, n: int = 2) -> list[Any]:
    """Run ``target(i)`` in ``n`` threads; their results, re-raising the first exception."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a runner hung"
    if errors:
        raise errors[0]
    return results


def _complete_source_only_without_checkpoint(tmp_path):
    """A folder where source-only is complete but its checkpoint is lost, and its dependant
    (linear-probe) has no record: (source-only spec, linear-probe spec, store, options)."""
    so, lp = expand(Matrix(methods=("source-only", "linear-probe"), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    store = RunStore(tmp_path)
    opts = ExecutorOptions(device="cpu", progress=False)
    run_matrix([so, lp], tmp_path, opts)
    store.checkpoint_path(so.run_id).unlink()
    store.record_path(lp.run_id).unlink()
    return so, lp, store, opts


def test_two_runners_recreating_one_lost_checkpoint_rerun_it_once(tmp_path, monkeypatch):
    """Both runners find the complete source-only run without its checkpoint before either moves its
    record aside. Before: both moved it, and the second stopped with "cannot write previous/...".
    Now one moves it and reruns it, the other waits for the recreated checkpoint; the dependant
    runs once, from it."""
    so, lp, store, opts = _complete_source_only_without_checkpoint(tmp_path)

    # each runner's first look at the checkpoint (the initial pass) waits for the other's
    barrier = threading.Barrier(2, timeout=20)
    looked: set[int] = set()
    real = scheduler.checkpoint_problem

    def first_look_together(path):
        problem = real(path)
        me = threading.get_ident()
        if me not in looked:
            looked.add(me)
            barrier.wait()
        return problem

    monkeypatch.setattr(scheduler, "checkpoint_problem", first_look_together)
    summaries: list[MatrixSummary] = _in_threads(lambda i: run_matrix([so, lp], tmp_path, opts, poll_s=0.05))

    ran = [(r.run_id, r.status.value) for s in summaries for r in s.ran]
    assert sorted(ran) == sorted([(so.run_id, "complete"), (lp.run_id, "complete")])  # each once
    assert len(list((tmp_path / "previous").glob(f"{so.run_id}.*.json"))) == 1  # moved aside once
    assert sum(len(s.rerun_for_checkpoint) for s in summaries) == 1
    assert store.checkpoint_path(so.run_id).exists()
    for s in summaries:  # each accounts for both runs: ran them, found them complete, or (the dependant,
        # which nothing waits for) left it to the other runner, still running it when this one ended
        assert len(s.ran) + len(s.skipped_complete) + len(s.busy) == 2 and set(s.busy) <= {lp.run_id}
        assert not s.gave_up
    assert not list(store.claims.glob("*.claim"))


def test_a_lost_checkpoint_held_by_another_runner_is_waited_for(tmp_path, monkeypatch):
    """Another runner holds the complete source-only run whose checkpoint is lost (its claim: it is
    moving the record aside to redo it). This runner leaves the record to it and must not count the
    run complete meanwhile (a first version of the fix above did, and ran the dependant at once,
    which failed with MissingCheckpoint or was skipped): it waits; when the other runner lets go
    without redoing it (it died), this one redoes the run, then the dependant."""
    so, lp, store, opts = _complete_source_only_without_checkpoint(tmp_path)
    assert store.claim(so.run_id)  # the other runner (this thread: the same process, another token)

    waiting = threading.Event()  # set when the runner sleeps in its wait for runs held elsewhere

    class Clock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            waiting.set()
            time.sleep(seconds)

    monkeypatch.setattr(scheduler, "time", Clock)
    runner = threading.Thread(target=lambda: summaries.append(run_matrix([so, lp], tmp_path, opts, poll_s=0.05)))
    summaries: list[MatrixSummary] = []
    runner.start()
    try:
        assert waiting.wait(20), "the runner never waited for the run held elsewhere"
        assert store.read(lp.run_id) is None  # the dependant did not start without the checkpoint
    finally:
        store.release(so.run_id)  # the other runner lets go (it died before redoing it)
        runner.join(60)
    (summary,) = summaries
    assert [(r.run_id, r.status.value) for r in summary.ran] == [(so.run_id, "complete"), (lp.run_id, "complete")]
    assert store.checkpoint_path(so.run_id).exists()
    assert len(list((tmp_path / "previous").glob(f"{so.run_id}.*.json"))) == 1


def test_rerun_moves_the_record_aside_under_the_claim(tmp_path, monkeypatch):
    """Two ``--rerun`` of one run at once (or a rerun beside a runner recreating its checkpoint):
    the second names what happened instead of "cannot write previous/..." (the record was gone)."""
    from dabench.running.scheduler import prepare_rerun

    (so,) = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    run_matrix([so], tmp_path, ExecutorOptions(device="cpu", progress=False))
    barrier = threading.Barrier(2, timeout=20)
    real = scheduler.load_record_file

    def read_together(path):  # both have found and read the record before either moves it
        out = real(path)
        barrier.wait()
        return out

    monkeypatch.setattr(scheduler, "load_record_file", read_together)
    outcomes: list[str] = []

    def rerun(_i: int) -> None:
        try:
            prepare_rerun(tmp_path, [so.run_id])
            outcomes.append("moved")
        except Exception as exc:  # noqa: BLE001 - the loser's error is the point
            outcomes.append(f"{type(exc).__name__}: {exc}")

    _in_threads(rerun)
    loser = next(o for o in outcomes if o != "moved")
    assert outcomes.count("moved") == 1 and loser.startswith("MatrixError: --rerun ") and "cannot write" not in loser
    assert len(list((tmp_path / "previous").glob(f"{so.run_id}.*.json"))) == 1
