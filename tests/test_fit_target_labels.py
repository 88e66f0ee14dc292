"""The honest-numbers rule inside a method's own ``fit(ctx)``: no target label except the declared shots.

A method that overrides ``fit`` gets the :class:`RunContext`; before, ``ctx.data`` was the engine's
``DeviceData`` and every target label (evaluation split included) was one attribute away, with
nothing in the record. Each obvious route now raises :class:`TargetLabelsError` naming the rule
and the allowed accessors; what the protocol allows still works (images, the shots' labels, the
engine's step loop and evaluation). Real runs on the synthetic ``tiny`` pair (tests/tiny_plugin.py).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import dabench
from dabench import Method, TargetLabelsError, Uses
from dabench.core.registry import PAIRS, load_plugin
from dabench.core.spec import RunSpec
from dabench.engine import train
from dabench.engine.train import RunContext, execute
from dabench.methods.source_only import SourceOnly
from dabench.running.unit import load_pair_data

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
SCHEDULE = {"steps": 2, "eval_every": 2, "log_every": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny():
    load_plugin(TINY)
    return PAIRS.get("tiny"), load_pair_data("tiny", pathlib.Path("."))


def _spec(name: str, target_shots: int = 0, protocol: str = "uda") -> RunSpec:
    pair = PAIRS.get("tiny")
    return RunSpec(
        method=name,
        pair="tiny",
        seed=0,
        protocol=protocol,
        target_shots=target_shots,
        eval_shots=target_shots,
        schedule=pair.schedule.replace(**SCHEDULE),
        backbone=pair.backbone,
    )


def _run(
    tiny, fit: Callable[[Method, RunContext], Any], uses: Uses = SourceOnly.uses, shots: int = 0, protocol: str = ""
) -> Any:
    """Execute one run of a method whose ``fit`` is ``fit`` (a plugin's), as the runner does."""

    class Probe(SourceOnly):
        """A plugin method with its own fit (test only)."""

        def fit(self, ctx: RunContext) -> None:
            fit(self, ctx)

    Probe.uses = uses
    pair, data = tiny
    spec = _spec("source-only", target_shots=shots, protocol=protocol or ("few-shot" if shots else "uda"))
    with pytest.MonkeyPatch.context() as mp:  # the engine builds Probe for the spec (its own path otherwise)
        mp.setattr(train, "build_method", lambda spec, pair: Probe(train.build_backbone(pair, spec.backbone, {}), 4))
        return execute(spec, pair, data, torch.device("cpu"))


#: every route to the target labels (or to what is computed from them) a fit() had before
ROUTES: dict[str, Callable[[Method, RunContext], Any]] = {
    "ctx.data.target.labels": lambda m, ctx: ctx.data.target.labels,
    "ctx.data.target_eval": lambda m, ctx: ctx.data.target_eval.labels,
    "ctx.data.pair_data": lambda m, ctx: ctx.data.pair_data.target.labels,
    "ctx.pair.load": lambda m, ctx: ctx.pair.load(pathlib.Path(".")).target.labels,
    "ctx.data.pair.load": lambda m, ctx: ctx.data.pair.load(pathlib.Path(".")).target.labels,
    "ctx.store": lambda m, ctx: ctx.store,
    "ctx.curve": lambda m, ctx: (ctx.record_eval(m, 0), ctx.curve[-1]["target_acc"]),
    "ctx.data.validator_positions": lambda m, ctx: ctx.data.validator_positions,
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_fit_reading_the_target_labels_gets_one_clear_error(tiny, route, one_thread):
    """Each route raises TargetLabelsError naming the rule and the allowed accessors (old code: the labels)."""
    with pytest.raises(TargetLabelsError) as err:
        _run(tiny, ROUTES[route])
    message = str(err.value)
    assert "no target label except its protocol's labelled shots" in message
    assert "ctx.data.shots" in message and "ctx.data.target" in message
    assert route.split(".")[-1] in message, message


def test_what_the_protocol_allows_still_works(tiny, one_thread):
    """A few-shot fit reads the target images (labels None), the shots' labels, then trains through the
    engine's step loop and evaluates: the run completes; record_eval hands the method no scores."""
    seen: dict[str, Any] = {}

    def fit(m: Method, ctx: RunContext) -> None:
        idx = torch.arange(4)
        x, y = ctx.data.batch_from(ctx.data.target, idx, train=False)
        seen["target"] = (tuple(x.shape), y, len(ctx.data.target), tuple(ctx.data.target.gather(idx).shape))
        seen["images"] = tuple(ctx.data.target.images.shape)
        _, ys = ctx.data.batch_from(ctx.data.shots, torch.arange(len(ctx.data.shots)), train=False)
        seen["shots"] = ys
        seen["stream"] = ctx.data.stream(ctx.data.target, 4).next().shape
        seen["pair"] = (ctx.pair.name, ctx.pair.num_classes, ctx.data.pair.num_classes)
        ctx.train_steps(m)
        seen["eval"] = ctx.record_eval(m, ctx.steps_done)

    result = _run(tiny, fit, Uses(source_labels=True, target_unlabeled=True, target_shots=True), shots=2)
    assert seen["target"][0] == (4, 1, 28, 28) and seen["target"][1] is None
    assert seen["target"][2] == 80 and seen["target"][3] == (4, 1, 28, 28) and seen["images"][0] == 80
    assert sorted(seen["shots"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # k = 2 per class of 4
    assert tuple(seen["stream"]) == (4,)
    assert seen["pair"] == ("tiny", 4, 4)
    assert seen["eval"] is None
    assert [p["step"] for p in result.curve] == [2, 2] and 0 <= result.final["target_acc"] <= 100


def test_the_record_of_a_run_that_read_them_says_so(tmp_path, one_thread):
    """Through the runner (dabench.run with a plugin class): the run is recorded failed, its error the
    TargetLabelsError that names the route, so no leaderboard row comes from it."""
    load_plugin(TINY)

    class Peeker(SourceOnly):
        """A plugin method whose fit reads the evaluation labels (test only)."""

        name = "peeker"

        def fit(self, ctx: RunContext) -> None:
            ctx.data.target_eval.labels  # noqa: B018 - the read is the point

    summary = dabench.run(
        methods=[Peeker], pairs=["tiny"], seeds=[0], results_dir=tmp_path / "res", device="cpu", overrides=SCHEDULE
    )
    (record,) = summary.ran
    assert record["status"] == "failed"
    assert record["error"]["type"] == "TargetLabelsError"
    assert "ctx.data.target_eval" in record["error"]["message"]


@pytest.mark.parametrize("split", ["source", "source_val"])
def test_a_source_free_fit_reaches_no_source_data(tiny, split, one_thread):
    """A source-free run adapts the source-only network with unlabelled target data only; its own
    fit read the labelled source splits as any other (old code: the split)."""
    with pytest.raises(TargetLabelsError, match=rf"ctx\.data\.{split}: this run's protocol is source-free"):
        _run(tiny, lambda m, ctx: getattr(ctx.data, split).labels, protocol="source-free")
    seen = _run(tiny, lambda m, ctx: len(ctx.data.target), protocol="source-free")  # the target: as before
    assert seen is not None
    assert _run(tiny, lambda m, ctx: len(ctx.data.source)) is not None  # a UDA run's fit reads the source
