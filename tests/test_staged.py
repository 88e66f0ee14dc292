"""Multi-optimiser, multi-phase methods: the engine's ``step``/``update`` support, MCD's mechanics,
and that one-optimiser methods record exactly what they did before the support existed."""

from __future__ import annotations

import pathlib

import pytest
import torch

import dabench
from dabench.core.store import RunStore
from dabench.engine.options import EngineOptions
from dabench.methods.mcd import MCD, classifier_discrepancy
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import run_spec
from method_steps import run_step

# the zoo's random source/target batch; one_thread comes from conftest.py
from test_zoo import _batch

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
TINY_SCHEDULE = {"steps": 8, "eval_every": 4, "log_every": 2, "batch_size": 16}


def _mcd(**hp) -> MCD:
    torch.manual_seed(0)
    return MCD(dabench.BACKBONES.get("lenet")(in_channels=1, image_size=28), 10, hp)


# --- one-optimiser methods are unchanged ------------------------------------------------
#: recorded from the engine before multi-optimiser support (commit 2ea89a5), CPU, one thread:
#: the tiny pair, TINY_SCHEDULE, seed 0 — the losses, accuracies and run ids of source-only and DANN
BEFORE = {
    "source-only": {
        "run_id": "b7367a7233ec",
        "target_acc": [37.5, 32.5],
        "loss": [{"ce": 1.363410472869873}, {"ce": 1.0831340551376343}],
    },
    "dann": {
        "run_id": "0fcf835f479d",
        "target_acc": [30.000001907348633, 40.0],
        "loss": [
            {"ce": 1.3878517150878906, "da": 0.7156498432159424, "disc_acc": 0.515625},
            {"ce": 1.0505039691925049, "da": 0.6863721609115601, "disc_acc": 0.5390625},
        ],
    },
}


def test_one_optimiser_runs_record_what_they_did_before(tmp_path, one_thread):
    specs = expand(
        Matrix(methods=("source-only", "dann"), pairs=("tiny",), seeds=(0,), overrides=TINY_SCHEDULE, plugins=(TINY,))
    )
    store = RunStore(tmp_path)
    for spec in specs:
        rec = run_spec(spec, store, torch.device("cpu"), None)
        assert rec["status"] == "complete", rec["error"]
        want = BEFORE[spec.method]
        assert spec.run_id == want["run_id"]
        assert [p["target_acc"] for p in rec["curve"]] == want["target_acc"]
        # bit for bit until the engine's SGD became fused and the normalisation one addcmul
        # (2026-11-26): both round differently, by ~1e-7 relative in these losses
        got = [p["loss"] for p in rec["curve"]]
        assert [sorted(g) for g in got] == [sorted(w) for w in want["loss"]]
        for g, w in zip(got, want["loss"]):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=0), (spec.method, k)


# --- MCD mechanics ------------------------------------------------------------------------
def test_discrepancy_is_the_mean_absolute_difference_of_the_softmaxes():
    l1 = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    l2 = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    s = torch.sigmoid(torch.tensor(1.0)).item()  # softmax([1, 0])[0]
    # row 0: |0.5 − s| + |0.5 − (1 − s)| = 2(s − 0.5); row 1: 0. Mean over 2 rows × 2 classes.
    assert classifier_discrepancy(l1, l2).item() == pytest.approx(2 * (s - 0.5) / 4, abs=1e-7)
    assert classifier_discrepancy(l1, l1).item() == 0.0


def _params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def _moved(m: MCD, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {
        n.split(".")[0] if n.startswith("head2") else ".".join(n.split(".")[:2])
        for n in before
        if not torch.equal(before[n], after[n])
    }


def test_each_phase_moves_only_its_part_of_the_network():
    m = _mcd(num_k=3)
    seen = run_step(m, _batch(), _params)
    final = _params(m)
    states = [b for _, b in seen] + [final]
    names = [n for n, _ in seen]
    assert names == [("generator", "classifiers"), ("classifiers",), ("generator",), ("generator",), ("generator",)]
    moved = [_moved(m, states[i], states[i + 1]) for i in range(len(seen))]
    assert moved[0] == {"net.backbone", "net.bottleneck", "net.head", "head2"}  # (A): everything
    assert moved[1] == {"net.head", "head2"}  # (B): the classifiers only, the generator fixed
    for later in moved[2:]:
        assert later == {"net.backbone", "net.bottleneck"}  # (C): the generator only


def test_phase_b_raises_and_phase_c_lowers_the_discrepancy():
    """(B) steps the classifiers up the target discrepancy, (C) steps the generator down it, each
    measured on the input both phases see (the target batch alone through BatchNorm).
    trade_off 10: at a random initialisation the source CE's gradient in (B) would otherwise dominate."""
    m = _mcd(num_k=1, trade_off=10.0)
    _no_dropout(m)
    batch = _batch()

    def disc() -> float:
        with torch.no_grad():  # train mode: batch statistics, as the phases see
            f_target = m.net.features(batch.x_target)
            return classifier_discrepancy(m.net.head(f_target), m.head2(f_target)).item()

    # small plain SGD steps (no momentum carrying phase A's gradient, no decay): each phase's own direction
    opts = {name: torch.optim.SGD(groups, lr=0.01) for name, groups in m.optimizers().items()}
    values = []

    def update(names, loss):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.total.backward()
        for name in (names,) if isinstance(names, str) else names:
            opts[name].step()
        values.append(disc())

    m.train()
    m.step(batch, 0.5, update)
    after_a, after_b, after_c = values
    assert after_b > after_a  # (B) maximised it
    assert after_c < after_b  # (C) minimised it


def _no_dropout(m: MCD) -> None:
    """LeNet's dropout off: a measurement must see the deterministic function each phase stepped."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0


@pytest.mark.parametrize("forward, same", [("separate", True), ("concat", False)])
def test_phase_b_and_c_score_the_same_target_features(forward, same):
    """The classifiers (B) and the generator (C) play on one quantity: the discrepancy of the target
    features normalised by BatchNorm with the *target* batch's statistics (the authors' code passes
    the target alone in both). With no parameter moving between them, (B)'s discrepancy therefore
    equals (C)'s bit for bit. The old (B) passed source and target as one batch, so the classifiers
    maximised the discrepancy of differently normalised features (kept as ``forward="concat"``)."""
    m = _mcd(num_k=1, forward=forward)
    _no_dropout(m)
    parts: dict[str, torch.Tensor] = {}
    m.train()
    m.step(_batch(), 0.5, lambda names, loss: parts.update(loss.parts))  # no optimiser steps
    assert torch.equal(parts["discrepancy_b"], parts["da"]) is same


def test_mcd_defaults_to_the_authors_separate_passes_and_refuses_an_unknown_mode():
    assert MCD.defaults["forward"] == "separate"
    with pytest.raises(ValueError, match=r"mcd.forward must be 'separate' or 'concat', got 'joint'"):
        _mcd(forward="joint").step(_batch(), 0.5, lambda names, loss: None)


def test_an_update_naming_an_undeclared_optimiser_is_refused():
    from dabench.engine.train import _build_optimizers, _pick

    m = _mcd()
    with pytest.raises(KeyError, match=r"'discriminator'.*declares \['classifiers', 'generator'\]"):
        _pick(_build_optimizers(m, dabench.Schedule()), "discriminator", m)


def test_mcd_passes_check_method():
    from dabench.testing import check_method

    report = check_method("mcd")
    assert set(report.hparams_used) >= {"trade_off", "num_k"}
    assert {"ce", "ce_b", "discrepancy_b", "da"} <= set(report.loss_parts)


def test_mcd_trains_and_resumes_with_both_optimisers(tmp_path, one_thread):
    """A real MCD run on the tiny pair with mid-run checkpoints; a leftover checkpoint (both
    optimisers' states) resumes to the uninterrupted run's record."""
    specs = expand(
        Matrix(
            methods=("mcd",),
            pairs=("tiny",),
            seeds=(0,),
            overrides={**TINY_SCHEDULE, "steps": 24, "eval_every": 12},
            plugins=(TINY,),
        )
    )
    spec = specs[0]
    straight = RunStore(tmp_path / "straight")
    rec = run_spec(spec, straight, torch.device("cpu"), None)
    assert rec["status"] == "complete", rec["error"]
    assert rec["final"]["target_acc"] > 25.0  # 4 classes
    assert set(rec["curve"][-1]["loss"]) == {"ce", "ce_b", "discrepancy_b", "da"}

    # stop at step 10 with a checkpoint (step 8) of both optimisers, then resume
    resumed = RunStore(tmp_path / "resumed")

    class Stop(Exception):
        pass

    def on_step(step, total):
        if step == 10:  # after the checkpoint of step 8 (every 4), before the next
            raise Stop

    every_4 = EngineOptions(checkpoint_every=4)
    with pytest.raises(Stop):
        from dabench.engine.train import execute
        from dabench.running.unit import load_pair_data

        pair = dabench.PAIRS.get("tiny")
        execute(spec, pair, load_pair_data("tiny", None), torch.device("cpu"), resumed, on_step, every_4)
    state = torch.load(resumed.checkpoint_path(spec.run_id, partial=True), weights_only=True)
    assert set(state["optimizers"]) == {"generator", "classifiers"} and "optimizer" not in state
    again = run_spec(spec, resumed, torch.device("cpu"), None, engine=every_4)
    assert again["status"] == "complete", again["error"]
    assert again["resumed_from_step"] == 8
    assert again["curve"] == rec["curve"]
