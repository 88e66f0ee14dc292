"""The Ray executor against a real local Ray head (127.0.0.1, 2 CPUs, no dashboard): a tiny
matrix with a dependant gives the same records as inline, plugins load in the Ray workers,
a Ray task that dies fails only its run, SIGTERM of the driver cancels its tasks, and an
unreachable cluster address is refused at once. Skipped when Ray is not installed
(``pip install 'dabench[ray]'``)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dabench[ray]'")

from dabench.core.store import RunStore  # noqa: E402
from dabench.running.executors import ExecutorError, ExecutorOptions, make_executor  # noqa: E402
from dabench.running.matrix import Matrix, expand  # noqa: E402
from dabench.running.scheduler import run_matrix  # noqa: E402
from tiny_runs import DABENCH, TINY, pid_alive, sigterm_once_started, tiny_run, wait_for  # noqa: E402

# a run that says something, then kills its own process (a segfault, the OOM killer) at its third step
LAST_WORDS = """
import os, sys
from dabench import register_method
from dabench.methods.source_only import SourceOnly

@register_method("ray-crash")
class Crash(SourceOnly):
    \"\"\"Prints a line, then kills its own process at the third step.\"\"\"
    def loss(self, batch, progress):
        if progress > 0.1:
            print("last words before the crash", file=sys.stderr, flush=True)
            os._exit(3)
        return super().loss(batch, progress)
"""


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def test_ray_matches_inline_and_survives_a_dead_task(local_ray, tmp_path, restore_registries):
    import torch

    (tmp_path / "last_words.py").write_text(LAST_WORDS)
    plugins = (TINY, str(tmp_path / "last_words.py"))
    specs = expand(
        Matrix(methods=("source-only", "linear-probe", "ray-crash"), pairs=("tiny",), seeds=(0,), plugins=plugins)
    )
    summary = run_matrix(
        specs, tmp_path / "ray", ExecutorOptions(device="cpu", progress=False, plugins=plugins), executor="ray"
    )
    got = {r["spec"]["method"]: r for r in summary.ran}
    assert got["source-only"]["status"] == got["linear-probe"]["status"] == "complete"
    assert got["ray-crash"]["status"] == "failed" and got["ray-crash"]["error"]["type"] == "WorkerDied"
    # its log is in the results folder (not only in Ray's session folder), and its record quotes it
    log = tmp_path / "ray" / "logs" / f"ray-{got['ray-crash']['run_id']}.log"
    assert f"log: {log}" in got["ray-crash"]["error"]["message"]
    assert "last words before the crash" in log.read_text()
    assert "last words before the crash" in got["ray-crash"]["error"]["traceback"]
    assert got["source-only"]["pid"] != os.getpid()  # it ran in a Ray worker
    assert got["linear-probe"]["started_at"] >= got["source-only"]["finished_at"]

    torch.set_num_threads(1)
    good = [s for s in specs if s.method != "ray-crash"]
    run_matrix(good, tmp_path / "inline", ExecutorOptions(device="cpu", progress=False))
    inline = {r["run_id"]: r for r in RunStore(tmp_path / "inline").records()}
    for s in good:
        assert got[s.method]["final"]["target_acc"] == pytest.approx(inline[s.run_id]["final"]["target_acc"], abs=1e-9)
    assert RunStore(tmp_path / "ray").status(got["ray-crash"]["run_id"]) == "failed"


def _slow_run(out, *more: str) -> list[str]:
    """``dabench run`` of the tiny plugin's ``slow`` method, long enough (120 steps of 0.05 s) to be
    caught mid-run."""
    return [*DABENCH, *tiny_run(out, "slow", "0", "--set", "slow.sleep=0.05", "--set", "steps=120", *more)]


def test_sigterm_of_a_ray_driver_cancels_its_tasks_and_exits_like_an_interrupt(local_ray, tmp_path):
    """SIGTERM of ``dabench run --executor ray`` on a cluster it joined: Ray's own handler dumped a
    stack and aborted the driver (exit 134). Now: one line, exit 143 (128 + SIGTERM), the task
    cancelled (its process gone), the run left ``running`` and taken over by the next runner."""
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    proc, err = sigterm_once_started(_slow_run(out, "--executor", "ray", "--ray-address", address), out)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("dabench:")]
    assert len(lines) == 1 and lines[0].startswith("dabench: terminated (SIGTERM):"), err[-3000:]
    assert "run the same command again" in lines[0]
    (rec,) = RunStore(out).records()
    assert rec["status"] == "running" and rec["pid"] != proc.pid
    wait_for(lambda: not pid_alive(rec["pid"]), 60, f"the cancelled task's process {rec['pid']} to end")
    # the next runner (inline, the same matrix) takes the dead task's claim over at once and finishes the run
    again = subprocess.run(_slow_run(out, "--wait-limit", "0"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert RunStore(out).status(rec["run_id"]) == "complete"


def test_the_ray_sigterm_handler_is_put_back_on_close(local_ray, tmp_path):
    """The executor's SIGTERM handler lives as long as it does: close() restores the one before."""
    import signal as sig

    before = sig.getsignal(sig.SIGTERM)
    ex = make_executor("ray", tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert sig.getsignal(sig.SIGTERM) is not before
    ex.close()
    assert sig.getsignal(sig.SIGTERM) is before


def test_an_unreachable_ray_address_fails_at_once_in_one_line(tmp_path, monkeypatch):
    """``--ray-address host:port`` with nothing there: Ray retried it for over two minutes. Now a
    connection check refuses it first, naming the address and what to do; ray.init is never called."""
    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def no_init(*args, **kwargs):
        raise AssertionError(f"ray.init{args}{kwargs} called for an unreachable address")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_init)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ExecutorError) as err:
            make_executor("ray", tmp_path, ExecutorOptions(device="cpu", ray_address=address))
        message = str(err.value)
        assert f"--ray-address {address}: no Ray cluster answers there" in message and "\n" not in message
        assert "ray start --head" in message and "--ray-address auto" in message

    def no_cluster(*args, **kwargs):  # what ray.init(address="auto") says with no cluster on this machine
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ExecutorError, match=r"--ray-address auto: Could not find .*`ray start --head`"):
        make_executor("ray", tmp_path, ExecutorOptions(device="cpu", ray_address="auto"))
    with pytest.raises(ExecutorError, match="is not host:port"):
        make_executor("ray", tmp_path, ExecutorOptions(device="cpu", ray_address="nohost"))
    # the CLI: one line, exit 2, quickly (no Ray started)
    proc = subprocess.run(
        [
            *DABENCH,
            *tiny_run(tmp_path / "cli", "source-only", "0", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"dabench: error: --ray-address 127.0.0.1:{port}: no Ray")
