"""Linear probe and fine-tune start from the source-only checkpoint of their pair and seed; the
linear probe trains only its new head: every other tensor, BatchNorm running statistics included,
ends as the checkpoint holds it (tiny real pair, real runs)."""

from __future__ import annotations

import pathlib

import torch

from dabench.core.registry import PAIRS, load_plugin
from dabench.core.store import RunStore
from dabench.engine import train
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from tiny_runs import TINY

torch.set_num_threads(1)


def test_linear_probe_leaves_the_source_network_untouched_and_fine_tune_starts_from_it(tmp_path, monkeypatch) -> None:
    load_plugin(TINY)
    specs = {
        s.method: s
        for s in expand(
            Matrix(methods=("source-only", "linear-probe", "fine-tune"), pairs=("tiny",), seeds=(0,), plugins=(TINY,))
        )
    }
    run_matrix([specs["source-only"]], tmp_path, ExecutorOptions(device="cpu", progress=False), executor="inline")
    store = RunStore(tmp_path)
    saved = torch.load(store.checkpoint_path(specs["linear-probe"].depends_on), weights_only=True)
    assert any("running_mean" in k for k in saved)  # the bottleneck's BatchNorm: its statistics must not move

    pair = PAIRS.get("tiny")
    data = pair.load(pathlib.Path(tmp_path))
    captured: dict[str, object] = {}
    finish = train.finish_run

    def capture(method, ctx, wall, timings):
        captured["net"] = {k: v.detach().clone() for k, v in method.net.state_dict().items()}
        return finish(method, ctx, wall, timings)

    monkeypatch.setattr(train, "finish_run", capture)
    # the start: prepare_method loads the checkpoint (strict) before any training
    start = train.prepare_method(specs["fine-tune"], pair, torch.device("cpu"), store)
    assert all(torch.equal(v, saved[k]) for k, v in start.net.state_dict().items())

    train.execute(specs["linear-probe"], pair, data, torch.device("cpu"), store)
    after = captured["net"]
    moved = [k for k in saved if not k.startswith("head.") and not torch.equal(after[k], saved[k])]
    assert moved == []
    assert not torch.equal(after["head.weight"], saved["head.weight"])  # the head did train

    train.execute(specs["fine-tune"], pair, data, torch.device("cpu"), store)
    moved = [k for k in saved if not torch.equal(captured["net"][k], saved[k])]
    assert any(k.startswith("backbone.") for k in moved)  # fine-tune trains every layer
