"""What the local pool's worker processes leave behind: each runner's own worker logs (two runners on
one results folder never quote each other's), the record of a run whose worker died before it
started, and a worker log free of start-up noise. Real worker processes on the tiny pair
(``tests/tiny_plugin.py``); the two runners synchronise on marker files, not on sleeps.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from dabench.core.registry import load_plugin
from dabench.core.store import RunStore
from dabench.core.version import __version__
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from registry_helpers import restored_registries
from tiny_runs import DABENCH, TINY, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread", "tiny_pair")


@pytest.fixture
def tiny_pair():
    """The tiny plugin loaded for good *before* any registrations a test forgets: loaded first
    inside :func:`restored_registries`, its pair would be forgotten while its module stays
    imported (and is never imported again)."""
    load_plugin(TINY)


@pytest.fixture
def forget_registrations(tiny_pair):
    with restored_registries():
        yield


TWO_RUNNERS = textwrap.dedent('''
    import os, pathlib, sys, time
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    FLAGS = pathlib.Path({flags!r})

    @register_method("chatty")
    class Chatty(SourceOnly):
        """Writes a line to its worker's log, then marks that it did."""
        def loss(self, batch, progress):
            if not (FLAGS / "chatty.said").exists():
                print("CHATTY: the other runner's worker", file=sys.stderr, flush=True)
                (FLAGS / "chatty.said").touch()
            return super().loss(batch, progress)

    @register_method("crash-late")
    class CrashLate(SourceOnly):
        """Dies at its third step, once the other runner's worker has written to its log."""
        def loss(self, batch, progress):
            if progress > 0.1:
                deadline = time.monotonic() + 60  # never hang the test: die anyway
                while not (FLAGS / "chatty.said").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                print("CRASH-LATE: dying now", file=sys.stderr, flush=True)
                os._exit(3)
            return super().loss(batch, progress)
''')


def test_two_runners_on_one_folder_quote_their_own_worker_logs(tmp_path, forget_registrations):
    """Runner A (a ``dabench run`` process) has a worker that dies; runner B (this process), on
    the same results folder, has a worker that writes to its log just before. A's WorkerDied
    message names A's worker log and quotes A's worker's lines, none of B's."""
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    plugin = tmp_path / "two_runners_plugin.py"
    plugin.write_text(TWO_RUNNERS.format(flags=str(flags)))
    runner_a = subprocess.Popen(
        [*DABENCH, *tiny_run(out, "crash-late", "0", "--plugin", str(plugin), "--executor", "local")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        specs = expand(Matrix(methods=("chatty",), pairs=("tiny",), seeds=(0,), plugins=(TINY, str(plugin))))
        opts = ExecutorOptions(workers=1, device="cpu", progress=False, plugins=(TINY, str(plugin)))
        b = run_matrix(specs, out, opts, executor="local")
        assert [r["status"] for r in b.ran] == ["complete"]
        _, err = runner_a.communicate(timeout=120)
    finally:
        if runner_a.poll() is None:
            runner_a.kill()
            runner_a.communicate()
    crash = next(r for r in RunStore(out).records() if r["spec"]["method"] == "crash-late")
    assert crash["status"] == "failed" and crash["error"]["type"] == "WorkerDied", err[-2000:]
    message, tail = crash["error"]["message"], crash["error"]["traceback"]
    assert "exited with code 3" in message
    assert "CRASH-LATE: dying now" in tail and "CHATTY" not in tail
    a_log = pathlib.Path(message.rsplit("log: ", 1)[1].split(";")[0])
    assert a_log.parent == out.resolve() / "logs" and a_log.name == f"worker-{a_log.name.split('-', 1)[1]}"
    assert "CHATTY" not in a_log.read_text() and "CRASH-LATE" in a_log.read_text()
    logs = sorted((out / "logs").glob("worker-*.log"))
    assert len(logs) == 2  # one per runner (one worker each), names apart
    (b_log,) = [p for p in logs if p.name != a_log.name]
    assert f"-{os.getpid()}-0.log" in b_log.name and "CHATTY" in b_log.read_text()


DIES_IN_WORKER = textwrap.dedent("""
    import os, sys
    # dies on import in a pool worker (python -m dabench.running.executors.worker), not in the
    # runner: the worker dies before it claims its run or writes its 'running' record
    if sys.argv[0].endswith("worker.py"):
        print("DIES-IN-WORKER: exiting on import", file=sys.stderr, flush=True)
        os._exit(5)
""")


def test_a_worker_dying_before_the_run_gets_the_runners_knowledge(tmp_path):
    """A worker that dies before its ``running`` record: the failed record says so and carries
    the device the runner assigned, the dead worker's pid (not the runner's) and the versions."""
    plugin = tmp_path / "dies_in_worker.py"
    plugin.write_text(DIES_IN_WORKER)
    specs = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    opts = ExecutorOptions(workers=1, device="cpu", progress=False, plugins=(TINY, str(plugin)))
    summary = run_matrix(specs, tmp_path / "out", opts, executor="local")
    (rec,) = summary.ran
    assert rec["status"] == "failed" and rec["error"]["type"] == "WorkerDied"
    assert "exited with code 5" in rec["error"]["message"]
    assert "died before starting the run" in rec["error"]["message"]
    assert "DIES-IN-WORKER" in rec["error"]["traceback"]
    assert rec["pid"] is not None and rec["pid"] != os.getpid()  # the dead worker's
    assert rec["device"] == f"cpu ({os.cpu_count()} cores)"
    assert rec["versions"]["dabench"] == __version__ and rec["versions"]["torch"] == torch.__version__
    assert "git_commit" in rec["versions"] and rec["torch_threads"] >= 1 and rec["host"]
    assert RunStore(tmp_path / "out").read(rec["run_id"])["pid"] == rec["pid"]
    assert not list((tmp_path / "out" / "claims").glob("*.claim"))


def test_a_worker_starts_without_a_runpy_warning(tmp_path):
    """``python -m dabench.running.executors.worker`` must not find its module already imported
    by its package (runpy's RuntimeWarning opened every worker log)."""
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "dabench.running.executors.worker"]
        + ["--results", str(tmp_path), "--max-runs", "1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert '"event": "ready"' in proc.stdout


def test_a_retried_run_reports_its_own_death_not_the_last_attempts(tmp_path, monkeypatch):
    """A ``failed`` run is retried by the next ``dabench run``; when the retry's worker dies before
    writing a record, the record must say why *this* attempt failed, not keep the earlier one's."""
    plugin = tmp_path / "dies_in_worker.py"
    plugin.write_text(DIES_IN_WORKER.replace("os._exit(5)", "os._exit(int(os.environ['DIE_CODE']))"))
    specs = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    opts = ExecutorOptions(workers=1, device="cpu", progress=False, plugins=(TINY, str(plugin)))
    codes = []
    for code in (5, 7):
        monkeypatch.setenv("DIE_CODE", str(code))
        (rec,) = run_matrix(specs, tmp_path / "out", opts, executor="local").ran
        codes.append((rec["error"]["message"], rec["pid"]))
    (first, pid1), (second, pid2) = codes
    assert "exited with code 5" in first and "exited with code 7" in second
    assert "died before starting the run" in second and pid2 != pid1
    assert "exited with code 7" in RunStore(tmp_path / "out").read(specs[0].run_id)["error"]["message"]


def test_a_worker_stuck_after_closing_its_output_is_killed_not_waited_for(tmp_path):
    """A worker whose output has closed but which never exits (stuck tearing down) blocked the
    runner for ever in ``proc.wait()``; after ``exit_grace_s`` it is killed and its run recorded."""
    import threading

    from dabench.running.executors.local_pool import LocalPoolExecutor, _Worker

    pool = LocalPoolExecutor(tmp_path, ExecutorOptions(device="cpu", workers=1, progress=False))
    pool.exit_grace_s = 0.2
    stuck = "import os, time; os.close(1); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", stuck], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.read() == ""  # its output has closed: the pool's EOF
    worker = _Worker(0, proc, tmp_path / "w.log")
    spec = expand(Matrix(methods=("source-only",), seeds=(0,), overrides={"steps": 2}))[0]
    worker.current, worker.pending = spec, {spec.run_id: spec}
    out: list = []
    handler = threading.Thread(target=lambda: out.extend(pool._handle(worker, None)), daemon=True)
    handler.start()
    handler.join(timeout=30)
    try:
        assert not handler.is_alive(), "the runner waits for ever on a worker stuck after closing its output"
        assert proc.returncode is not None and proc.returncode < 0  # killed
        (outcome,) = out
        assert outcome.record is not None and outcome.record.status.value == "failed"
        assert outcome.record.error is not None and "SIGKILL" in outcome.record.error.message
    finally:
        proc.kill()
        proc.wait()


SAYS_THEN_DIES = textwrap.dedent('''
    import os, sys
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method("says-a")
    class SaysA(SourceOnly):
        """Writes a few lines to its worker's log, then trains to the end."""
        def loss(self, batch, progress):
            if progress == 0:
                for i in range(5):
                    print(f"RUN-A line {i}", file=sys.stderr, flush=True)
            return super().loss(batch, progress)

    @register_method("dies-b")
    class DiesB(SourceOnly):
        """Says its last words and kills its process at its third step."""
        def loss(self, batch, progress):
            if progress > 0.1:
                print("RUN-B: dying now", file=sys.stderr, flush=True)
                os._exit(3)
            return super().loss(batch, progress)
''')


def test_a_dead_runs_log_tail_quotes_only_its_own_run(tmp_path, forget_registrations):
    """With ``--runs-per-process 1`` a slot's spare process starts (and its log position is
    taken) while the slot's current process runs its last run, into the same log: when the spare
    then died in the next run, the WorkerDied record quoted the previous run's lines as its own.
    Each run now starts with a marker line, and the tail is quoted from the dead process's last one."""
    from dabench.running.executors.local_pool import LocalPoolExecutor

    plugin = tmp_path / "says_then_dies.py"
    plugin.write_text(SAYS_THEN_DIES)
    plugins = (TINY, str(plugin))
    specs = expand(Matrix(methods=("says-a", "dies-b"), pairs=("tiny",), seeds=(0,), plugins=plugins))
    opts = ExecutorOptions(workers=1, runs_per_process=1, device="cpu", progress=False, plugins=plugins)
    pool = LocalPoolExecutor(tmp_path / "out", opts)
    pool._use_spares = True  # as on a machine with a spare core per slot (this one may have too few)
    summary = run_matrix(specs, tmp_path / "out", opts, executor=pool)
    got = {r["spec"]["method"]: r for r in summary.ran}
    assert got["says-a"]["status"] == "complete"
    dead = got["dies-b"]
    assert dead["status"] == "failed" and dead["error"]["type"] == "WorkerDied"
    tail = dead["error"]["traceback"]
    assert "RUN-B: dying now" in tail and "RUN-A" not in tail, tail
    (log,) = (tmp_path / "out" / "logs").glob("worker-*.log")
    assert "RUN-A line 4" in log.read_text()  # the log keeps everything; the quote is the run's own
