"""ADDA: staged on the source-only run (the engine's ``on_init_loaded`` hook), two update phases
per step (discriminator, then target encoder), frozen source encoder and head, exact resume."""

from __future__ import annotations

import pathlib
import shutil

import pytest
import torch

import dabench
from dabench.core.store import RunStore
from dabench.engine.options import EngineOptions
from dabench.engine.train import execute
from dabench.methods.adda import ADDA
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import load_pair_data, run_spec
from method_steps import run_step

# the zoo's random source/target batch; one_thread comes from conftest.py
from test_zoo import _batch

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
TINY_SCHEDULE = {"steps": 24, "eval_every": 12, "log_every": 2, "batch_size": 16}


def _adda(**hp) -> ADDA:
    torch.manual_seed(0)
    return ADDA(dabench.BACKBONES.get("lenet")(in_channels=1, image_size=28), 10, hp)


def _specs():
    specs = expand(Matrix(methods=("adda",), pairs=("tiny",), seeds=(0,), overrides=TINY_SCHEDULE, plugins=(TINY,)))
    base = next(s for s in specs if s.method == "source-only")
    adda = next(s for s in specs if s.method == "adda")
    assert adda.depends_on == base.run_id  # stage 1 is the seed's own source-only run
    return base, adda


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_source_encoder_is_the_loaded_source_only_encoder(tmp_path, one_thread, monkeypatch):
    """Through execute(): after the engine loads the source-only checkpoint, the frozen source
    encoder and the target encoder both equal the checkpoint's encoder (on_init_loaded)."""
    base, spec = _specs()
    store = RunStore(tmp_path)
    assert run_spec(base, store, torch.device("cpu"), None)["status"] == "complete"
    ckpt = torch.load(store.checkpoint_path(base.run_id), weights_only=True)
    seen = {}

    def capture(self, ctx) -> None:  # instead of training: what fit() starts from
        seen["net"], seen["source"] = _state(self.net), _state(self.source_encoder)

    monkeypatch.setattr(ADDA, "fit", capture)
    execute(spec, dabench.PAIRS.get("tiny"), load_pair_data("tiny", None), torch.device("cpu"), store)
    assert seen, "fit was not reached"
    for k, v in ckpt.items():
        assert torch.equal(seen["net"][k], v), k
    for k, v in seen["source"].items():  # source_encoder.0 = backbone, .1 = bottleneck
        prefix = "backbone." if k.startswith("0.") else "bottleneck."
        assert torch.equal(v, ckpt[prefix + k[2:]]), k


def _part(key: str) -> str:
    if key.startswith("net.head"):
        return "head"
    if key.startswith("net."):
        return "target_encoder"  # net.backbone and net.bottleneck: M_t
    return key.split(".")[0]  # discriminator, source_encoder


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """The parts whose parameters changed (buffers such as BatchNorm statistics left out)."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {_part(k) for k in before if not k.endswith(stats) and not torch.equal(before[k], after[k])}


def test_the_target_encoder_starts_as_the_source_encoder():
    m = _adda()
    net = _state(m.net)
    src = _state(m.source_encoder)
    assert src and all(
        torch.equal(v, net[("backbone." if k[0] == "0" else "bottleneck.") + k[2:]]) for k, v in src.items()
    )


def test_each_phase_moves_only_its_part_and_the_head_and_source_encoder_never():
    m = _adda()
    seen = run_step(m, _batch(), _state)
    assert [n for n, _ in seen] == [("discriminator",), ("encoder",)]
    states = [b for _, b in seen] + [_state(m)]
    assert _changed(states[0], states[1]) == {"discriminator"}  # (1): D only
    assert _changed(states[1], states[2]) == {"target_encoder"}  # (2): M_t only (backbone + bottleneck)
    # the head and the whole source encoder, buffers included (eval mode: its BatchNorm statistics stay)
    for k in states[0]:
        if k.startswith(("net.head", "source_encoder")):
            assert torch.equal(states[0][k], states[2][k]), k
    assert not m.source_encoder.training and m.net.training


def test_the_encoder_phase_fools_the_updated_discriminator_more():
    """(2) lowers the mapping loss −log D(M_t(x_t)) it steps on (plain small SGD: its own direction)."""
    m = _adda()
    for mod in m.modules():  # LeNet's dropout off: compare the same function before and after
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0
    opts = {n: torch.optim.SGD(g, lr=0.01) for n, g in m.optimizers().items()}
    losses = []

    def update(names, loss):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.total.backward()
        opts[names].step()
        losses.append(loss.parts)

    batch = _batch()
    m.train()
    m.step(batch, 0.5, update)
    with torch.no_grad():
        f_s, f_t = m.source_encoder(batch.x_source), m.net.features(batch.x_target)
        _, d_t = m._d_logits(f_s, f_t)
        after = torch.nn.functional.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))
    assert after.item() < losses[1]["da"].item()


def test_adda_passes_check_method():
    from dabench.testing import check_method

    report = check_method("adda")
    assert set(report.hparams_used) >= {"disc_hidden", "lr_mult"}
    assert {"disc", "disc_acc", "da"} <= set(report.loss_parts)
    assert any(n.startswith("source_encoder") for n in report.frozen)
    assert any(n.startswith("net.head") for n in report.frozen)


def test_adda_trains_and_resumes_to_the_same_record(tmp_path, one_thread):
    """A real ADDA run on the tiny pair after its source-only run; stopped after a mid-run
    checkpoint and resumed, it records what the uninterrupted run records."""
    base, spec = _specs()
    straight = RunStore(tmp_path / "straight")
    assert run_spec(base, straight, torch.device("cpu"), None)["status"] == "complete"
    rec = run_spec(spec, straight, torch.device("cpu"), None)
    assert rec["status"] == "complete", rec["error"]
    assert set(rec["curve"][-1]["loss"]) == {"disc", "disc_acc", "da"}
    assert rec["final"]["target_acc"] > 25.0  # 4 classes

    resumed = RunStore(tmp_path / "resumed")
    for path in (RunStore.record_path, RunStore.checkpoint_path):  # the same stage 1, not trained again
        path(resumed, base.run_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path(straight, base.run_id), path(resumed, base.run_id))

    class Stop(Exception):
        pass

    def on_step(step, total):
        if step == 10:  # after the checkpoint of step 8 (every 4), before the next
            raise Stop

    pair = dabench.PAIRS.get("tiny")
    every_4 = EngineOptions(checkpoint_every=4)
    with pytest.raises(Stop):
        execute(spec, pair, load_pair_data("tiny", None), torch.device("cpu"), resumed, on_step, every_4)
    state = torch.load(resumed.checkpoint_path(spec.run_id, partial=True), weights_only=True)
    assert set(state["optimizers"]) == {"encoder", "discriminator"}
    assert any(k.startswith("source_encoder.") for k in state["method"])  # M_s travels with the checkpoint
    again = run_spec(spec, resumed, torch.device("cpu"), None, engine=every_4)
    assert again["status"] == "complete", again["error"]
    assert again["resumed_from_step"] == 8
    assert again["curve"] == rec["curve"]
