"""A run SIGKILLed after a mid-run checkpoint and resumed records what the uninterrupted run
records (CPU, one thread): the same curve, losses and final accuracies, to the last bit.

On the ``tiny`` pair of tests/tiny_plugin.py (it loads instantly; digits-offline takes ~5 s to
load per process, three processes here)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
#: DANN on tiny: source and target streams (216 and 80 images: the checkpoint at step 4 is in the
#: middle of an epoch of each), LeNet's dropout (the global RNG), and the checkpoint between
#: evaluations (steps 10, 20), so the loss sums are mid-way too
OVERRIDES = {"steps": 20, "eval_every": 10, "log_every": 2, "batch_size": 16}
CHECKPOINT_EVERY = 4

DRIVER = (
    textwrap.dedent('''
    """Runs one spec through the runner; with "hang", stops at the first progress report after a
    mid-run checkpoint exists, so the test can SIGKILL it there."""
    import pathlib, sys, time
    import torch
    torch.set_num_threads(1)
    from dabench.running.matrix import Matrix, expand
    from dabench.running.unit import run_spec
    from dabench.core.store import RunStore
    from dabench.engine.options import EngineOptions

    out, hang = pathlib.Path(sys.argv[1]), sys.argv[2] == "hang"
    spec = expand(Matrix(methods=("dann",), pairs=("tiny",), seeds=(0,), overrides=OVERRIDES,
                         plugins=(TINY,)))[0]
    store = RunStore(out)
    partial = store.checkpoint_path(spec.run_id, partial=True)

    def on_step(step, total):
        if hang and partial.exists():
            print("checkpointed; waiting to be killed at step", step, flush=True)
            time.sleep(600)

    rec = run_spec(spec, store, torch.device("cpu"), None, on_step, EngineOptions(checkpoint_every=CHECKPOINT_EVERY))
    assert rec["status"] == "complete", rec["error"]
''')
    .replace("OVERRIDES", repr(OVERRIDES))
    .replace("CHECKPOINT_EVERY", str(CHECKPOINT_EVERY))
    .replace("TINY", repr(TINY))
)


def _start(driver: pathlib.Path, out: pathlib.Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(driver), str(out), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_killed_and_resumed_run_equals_the_uninterrupted_run(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    spec = expand(Matrix(methods=("dann",), pairs=("tiny",), seeds=(0,), overrides=OVERRIDES, plugins=(TINY,)))[0]
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    store = RunStore(killed_dir)
    partial = store.checkpoint_path(spec.run_id, partial=True)

    # single-threaded processes are deterministic side by side: the uninterrupted run goes alongside
    straight = _start(driver, straight_dir, "straight")
    proc = _start(driver, killed_dir, "hang")
    try:
        t0 = time.monotonic()
        while not partial.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"driver ended (rc {proc.returncode}) before its checkpoint:\n{out}\n{err[-3000:]}")
            if time.monotonic() - t0 > 90:
                pytest.fail("no mid-run checkpoint after 90 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert store.status(spec.run_id) == "running"  # killed mid-run, not recorded complete

        _finish(_start(driver, killed_dir, "resume"))
        _finish(straight)
    finally:
        for p in (proc, straight):
            if p.poll() is None:
                p.kill()
                p.communicate()

    a, b = store.read(spec.run_id), RunStore(straight_dir).read(spec.run_id)
    assert a["resumed_from_step"] == CHECKPOINT_EVERY and b["resumed_from_step"] is None
    assert [p["step"] for p in a["curve"]] == [10, 20]
    assert a["curve"] == b["curve"]  # accuracies, validators and the averaged losses, bit for bit
    assert a["final"] == b["final"]
    assert not partial.exists()


@pytest.mark.usefixtures("one_thread")
def test_fit_based_and_shot_methods_run_with_checkpoints(tmp_path):
    """linear-probe (its own fit) and fine-tune (the step loop on the shots stream) complete with
    mid-run checkpoints switched on, and a leftover checkpoint of fine-tune resumes."""
    specs = expand(
        Matrix(
            methods=("linear-probe", "fine-tune"),
            pairs=("tiny",),
            seeds=(0,),
            overrides={"steps": 12, "eval_every": 6},
            plugins=(TINY,),
        )
    )
    summary = run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False, checkpoint_every=2))
    recs = {r["spec"]["method"]: r for r in summary.ran}
    assert set(recs) == {"source-only", "linear-probe", "fine-tune"}
    for name, rec in recs.items():
        assert rec["status"] == "complete", (name, rec["error"])
        assert rec["validators"]["split"] == "target_adapt"
    assert recs["fine-tune"]["timings"]["steps"] == 6  # steps_fraction 0.5 of 12
