"""``dabench run`` command lines on the tiny plugin's pair, and waiting on the processes they start
(a module of its own: ``conftest`` is ambiguous to import, tests/benchmarks has one too)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

from dabench.core.spec import RunSpec
from dabench.running.matrix import Matrix, expand

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
DABENCH = [sys.executable, "-m", "dabench.cli"]
# the tiny plugin's `slow` method long enough to be caught mid-run (60 steps of 0.05 s), with a
# mid-run checkpoint every CHECKPOINT_EVERY steps to resume from
SLOW = {"slow.sleep": 0.05, "steps": 60}
CHECKPOINT_EVERY = 10


def tiny_run(out: pathlib.Path, methods: str, seeds: str = "0", *more: str) -> list[str]:
    """``dabench run`` arguments (without the program) for ``methods`` × ``seeds`` (comma lists, as
    the CLI takes them) on the tiny pair, results in ``out``, on the CPU, without progress bars;
    ``more``: further flags."""
    return [
        "run",
        "--plugin",
        TINY,
        "--pairs",
        "tiny",
        "--methods",
        methods,
        "--seeds",
        seeds,
        *more,
        "--results",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]


def slow_checkpointed_run(out: pathlib.Path, methods: str, seeds: str, *more: str) -> tuple[list[str], list[RunSpec]]:
    """The command line (program included) of :func:`tiny_run` with :data:`SLOW` and a checkpoint
    every :data:`CHECKPOINT_EVERY` steps, and the specs it runs (in the matrix's order)."""
    sets = [flag for k, v in SLOW.items() for flag in ("--set", f"{k}={v}")]
    args = [*DABENCH, *tiny_run(out, methods, seeds, *sets, "--checkpoint-every", str(CHECKPOINT_EVERY), *more)]
    matrix = Matrix(
        methods=tuple(methods.split(",")),
        pairs=("tiny",),
        seeds=tuple(int(s) for s in seeds.split(",")),
        plugins=(TINY,),
        overrides=dict(SLOW),
    )
    return args, expand(matrix)


CRASHER = textwrap.dedent('''
    import os
    from dabench import register_method
    from dabench.methods.source_only import SourceOnly

    @register_method({name!r})
    class Crash(SourceOnly):
        """Kills its own process at the third step, like a segfault or the OOM killer would."""
        def loss(self, batch, progress):
            if progress > 0.1:
                os._exit(3)
            return super().loss(batch, progress)
''')


def crash_plugin(folder: pathlib.Path, method: str) -> tuple[str, str]:
    """Write a plugin to ``folder`` that registers ``method``, a source-only run that ends its own
    process at its third step; returns the plugins to load: the tiny pair's and it."""
    plugin = folder / f"{method.replace('-', '_')}_plugin.py"
    plugin.write_text(CRASHER.format(name=method))
    return TINY, str(plugin)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` s, or at once (with its
    output) if ``proc`` ends first."""
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{out}\n{err[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped) counts as dead
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def sigterm_once_started(argv: list[str], out: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Start the command ``argv``, send it SIGTERM once its first record is in ``out/runs``, and
    return (the ended process, its stderr); it is killed if it outlives the test's waits."""
    import signal

    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        wait_for(lambda: (out / "runs").is_dir() and any((out / "runs").glob("*.json")), 120, "the run's start", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, err
