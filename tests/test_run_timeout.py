"""A run that hangs: ``--run-timeout`` stops it, records it ``failed`` (``RunTimeout``) and the
matrix goes on; executors that cannot stop a run refuse the option rather than ignore it."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions, make_executor
from tiny_runs import DABENCH, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

HANGS = textwrap.dedent('''
    import time
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method("hangs")
    class Hangs(SourceOnly):
        """Hangs at its third step, as a deadlock or an endless loop would (sends no more events)."""
        def loss(self, batch, progress):
            if progress > 0.1:
                time.sleep(3600)
            return super().loss(batch, progress)
''')


def test_hanging_runs_are_killed_at_the_timeout_and_the_matrix_goes_on(tmp_path):
    """Two runs that hang, one worker: the first is killed at the limit and recorded, and the
    matrix hands the second to a fresh worker (killed in turn) instead of waiting for ever.

    Both hang, so the outcome does not depend on how fast this (shared) machine trains."""
    plugin = tmp_path / "hangs_plugin.py"
    plugin.write_text(HANGS)
    out = tmp_path / "r"
    argv = [*DABENCH, *tiny_run(out, "hangs", "0,1", "--plugin", str(plugin), "--executor", "local")]
    # before the fix nothing bounded a run: this call would wait for the first run's hour
    proc = subprocess.run([*argv, "--run-timeout", "8"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]  # runs ended other than complete
    store = RunStore(out)
    records = list(store.records())
    assert len(records) == 2
    for rec in records:
        assert rec.status.value == "failed" and rec.error is not None
        assert rec.error.type == "RunTimeout"
        assert "ran longer than --run-timeout 8 s" in rec.error.message and "killed" in rec.error.message
    assert not list(store.claims.glob("*.claim"))  # the killed workers' claims are gone
    assert proc.stderr.count("failed: ran longer than --run-timeout 8 s") == 2  # each named as it ends


@pytest.mark.parametrize("executor", ["inline", "ray", "slurm"])
def test_executors_that_cannot_stop_a_run_refuse_a_timeout(tmp_path, executor):
    with pytest.raises(ValueError, match=rf"--run-timeout 5: the {executor} executor cannot stop.*--executor local"):
        make_executor(executor, tmp_path, ExecutorOptions(run_timeout_s=5))


@pytest.mark.parametrize("bad", [0, -1.0, "5"])
def test_a_timeout_that_is_no_positive_number_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"--run-timeout must be a number of seconds > 0, got"):
        make_executor("local", tmp_path, ExecutorOptions(run_timeout_s=bad))


def test_the_cli_refuses_a_timeout_under_the_inline_executor_in_one_line(tmp_path):
    proc = subprocess.run(
        [*DABENCH, *tiny_run(tmp_path / "r", "source-only", "0", "--run-timeout", "5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--run-timeout 5: the inline executor cannot stop a run" in proc.stderr
    assert not (tmp_path / "r" / "runs").exists()  # refused before anything ran
