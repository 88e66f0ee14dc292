"""The Ray executor against a real local Ray head (127.0.0.1, 2 CPUs, no dashboard): a tiny
matrix with a dependant gives the same records as inline, plugins load in the Ray workers,
and a Ray task that dies fails only its run. Skipped when Ray is not installed
(``pip install 'dabench[ray]'``)."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dabench[ray]'")

from dabench.core.store import RunStore  # noqa: E402
from dabench.running.executors import ExecutorOptions  # noqa: E402
from dabench.running.matrix import Matrix, expand  # noqa: E402
from dabench.running.scheduler import run_matrix  # noqa: E402
from tiny_runs import TINY  # noqa: E402

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
