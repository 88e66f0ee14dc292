"""The seed-batched step captured in a CUDA graph (``--seed-batch`` with ``--cuda-graphs``;
``dabench.engine.seed_batch.SeedStepGraph``).

On the CPU: the static-input stacking helper, and the option resolving off (recorded ``"off"``)
for every seed. On CUDA (skipped elsewhere; the lead runs these on a GPU): a captured
seed-batched run of source-only, DANN and fine-tune against the eager seed-batched run on the
same batches, a diverging seed with graphs on, and a capture that fails falling back to eager
steps.

Tolerance of the parameter comparison: graph and eager run the same bf16-autocast kernels on
the same batches, but cuDNN's autotuning may pick other algorithms per run, so they agree to
bf16 rounding, not bit for bit; the test asks the difference to be under 5 % of how far the
parameters moved from their initialisation in those steps (a graph that updated a copy, or not
at all, misses that by far).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dabench import Batch, Loss, Method, Uses, register_method
from dabench.core.domain import default_data_root
from dabench.core.record import Status
from dabench.core.registry import BACKBONES, METHODS, PAIRS, register_backbone
from dabench.core.store import RunStore
from dabench.engine import graphs
from dabench.engine.data import DeviceData
from dabench.engine.seed_batch import stack_batches, train_batched
from dabench.engine.train import RunContext, build_method
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from registry_helpers import restored_registries
from seed_batch_helpers import lenet_nodrop, poisoned_seeds

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device; the CPU tests cover the pieces")
MOVE_FRACTION = 0.05  # graph-vs-eager parameter difference, as a fraction of the parameters' movement
ACC_ATOL = 10.0  # points of target accuracy between a captured and an eager seed-batched record


class _PoisonedOnDevice(Method):
    """Source CE made infinite from progress 1/4 on for seeds whose init draw u ≥ 0.5, decided on
    the device (no host read: capturable)."""

    uses = Uses(source_labels=True)

    def build(self, backbone, num_classes: int) -> None:
        super().build(backbone, num_classes)
        self.register_buffer("u", torch.rand(()))  # drawn after the network: seed-dependent

    def loss(self, batch: Batch, progress) -> Loss:
        ce = F.cross_entropy(self.predict(batch.x_source), batch.y_source)
        late = torch.as_tensor(progress, device=ce.device) >= 0.25
        poisoned = late & (self.u >= 0.5)
        return self.combine({"ce": ce * torch.where(poisoned, torch.full_like(ce, math.inf), torch.ones_like(ce))})


class _HostBranch(Method):
    """Source CE with Python branching on ``progress``: vmappable eagerly (a float), but a tensor's
    ``bool()`` is a host sync, which a capture refuses."""

    uses = Uses(source_labels=True)

    def loss(self, batch: Batch, progress) -> Loss:
        ce = F.cross_entropy(self.predict(batch.x_source), batch.y_source)
        if progress < 0:  # never true; on a tensor: a host read
            raise AssertionError("negative progress")
        return self.combine({"ce": ce})


@pytest.fixture(autouse=True, scope="module")
def _test_registrations():
    with restored_registries():
        register_backbone("lenet-nodrop")(lenet_nodrop)
        register_method("sbg-poisoned")(_PoisonedOnDevice)
        register_method("sbg-host-branch")(_HostBranch)
        yield


def _run(tmp, methods, seeds, steps, device, cuda_graphs, **over):
    overrides = {"steps": steps, "eval_every": over.pop("eval_every", 20), "log_every": 10, "batch_size": 32, **over}
    specs = expand(Matrix(methods=tuple(methods), pairs=("digits-offline",), seeds=tuple(seeds), overrides=overrides))
    opts = ExecutorOptions(device=device, progress=False, seed_batch=True, cuda_graphs=cuda_graphs)
    summary = run_matrix(specs, tmp, opts)
    return specs, summary, RunStore(tmp)


# --- CPU ------------------------------------------------------------------------------------
def test_stack_batches_stacks_each_part_seed_by_seed():
    g = torch.Generator().manual_seed(0)
    seeds = [{"x_source": torch.randn(4, 1, 6, 6, generator=g), "y_source": torch.randint(0, 9, (4,), generator=g)}
             for _ in range(3)]  # fmt: skip
    stacked = stack_batches(seeds)
    assert stacked["x_source"].shape == (3, 4, 1, 6, 6) and stacked["y_source"].shape == (3, 4)
    assert torch.equal(stacked["x_source"][1], seeds[1]["x_source"])
    assert torch.equal(stacked["y_source"][2], seeds[2]["y_source"])


def test_on_the_cpu_graphs_resolve_off_and_every_seed_records_it(tmp_path, one_thread):
    specs, summary, store = _run(tmp_path, ("source-only",), (0, 1), 10, "cpu", True, eval_every=10)
    assert len(summary.ran) == 2
    for spec in specs:
        rec = store.read(spec.run_id)
        assert rec.status is Status.COMPLETE, rec.error
        assert rec.timings["cuda_graphs"] == graphs.OFF
        assert rec.timings["seed_batch"] == "2 seeds"


def _vmapped_step(name: str, progress, n_seeds: int = 2):
    """``name``'s seed-batched forward (as ``train_batched`` vmaps it) on fixed batches and the
    stacked gradients of the summed totals; dropout off (its draws would differ between calls)."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from dabench.engine.seed_batch import _StepModule

    methods = []
    for s in range(n_seeds):
        torch.manual_seed(s)
        m = METHODS.get(name)(BACKBONES.get("lenet-nodrop")(in_channels=1, image_size=28), 10, {})
        methods.append(m.train())
    g = torch.Generator().manual_seed(0)
    shape = (n_seeds, 8)
    parts = {"x_source": torch.randn(*shape, 1, 28, 28, generator=g), "y_source": torch.randint(0, 10, shape, generator=g),
             "x_target": torch.randn(*shape, 1, 28, 28, generator=g) + 1.0,
             "x_shots": torch.randn(*shape, 1, 28, 28, generator=g), "y_shots": torch.randint(0, 10, shape, generator=g)}  # fmt: skip
    params, buffers = stack_module_state(methods)
    runner = _StepModule(copy.deepcopy(methods[0]))
    full = {f"method.{k}": v for k, v in {**params, **buffers}.items()}
    names = list(full)
    state = tuple(full[k] for k in names)
    torch.manual_seed(123)  # AFN's own dropout: the same draws in both calls
    totals, losses = vmap(
        lambda st, bt: functional_call(runner, dict(zip(names, st)), (bt, progress)), randomness="different"
    )(state, parts)
    totals.sum().backward()
    return totals.detach(), losses, {k: p.grad for k, p in params.items()}


def test_the_vmapped_step_of_every_batchable_method_takes_a_tensor_progress(one_thread):
    """A captured seed-batched step passes ``progress`` as a 0-d device tensor shared by all seeds
    (closed over, not vmapped): every built-in method that seed batching runs as one model computes
    with it the totals, loss parts and gradients it computes with the float (GRL ramps at p = 0.3)."""
    from dabench.engine.seed_batch import batch_refusal
    from dabench.methods import BUILTIN_METHODS

    checked = []
    for name in BUILTIN_METHODS:
        if batch_refusal(METHODS.get(name)(lenet_nodrop(), 10, {})) is not None:
            continue
        ft, fp, fg = _vmapped_step(name, 0.3)
        tt, tp, tg = _vmapped_step(name, torch.tensor(0.3, dtype=torch.float64))
        torch.testing.assert_close(tt, ft, rtol=1e-5, atol=1e-6, msg=name)
        assert tp.keys() == fp.keys(), name
        for k in fp:
            torch.testing.assert_close(tp[k], fp[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
        for k, grad in fg.items():
            assert (grad is None) == (tg[k] is None), (name, k)
            if grad is not None:
                torch.testing.assert_close(tg[k], grad, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")
        checked.append(name)
    assert {"source-only", "dann", "fine-tune"} <= set(checked), checked


# --- CUDA -----------------------------------------------------------------------------------
def _train_direct(name: str, seeds, steps: int, use_graphs: bool, device: str = "cuda"):
    """``train_batched`` on digits-offline over ``steps`` steps, evaluation at the end only (on the
    CPU ``use_graphs`` runs the graph-mode loop with each replay running the captured body);
    returns per seed (initial parameters, final parameters, data generator state) and the notes.
    Fine-tune starts from its own random init here (no checkpoint): its step and groups are what matter."""
    pair = PAIRS.get("digits-offline")
    pair_data = pair.load(default_data_root())
    dev = torch.device(device)
    specs = expand(Matrix(methods=(name,), pairs=(pair.name,), seeds=tuple(seeds),
                          overrides={"steps": steps, "eval_every": steps, "log_every": steps, "batch_size": 32,
                                     "backbone": "lenet-nodrop"}))  # fmt: skip
    specs = [s for s in specs if s.method == name]
    methods, ctxs, inits = [], [], []
    for spec in specs:
        torch.manual_seed(spec.seed)
        method = build_method(spec, pair).to(dev)
        if dev.type == "cuda":
            method = method.to(memory_format=torch.channels_last)
        inits.append({k: v.detach().clone() for k, v in method.named_parameters()})
        methods.append(method)
        data = DeviceData(pair, pair_data, dev, spec.seed, spec.target_shots, spec.eval_shots)
        ctxs.append(RunContext(spec, pair, data, dev))
    torch.backends.cudnn.benchmark = True
    outcomes = train_batched(methods, ctxs, dev, cuda_graphs=use_graphs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    finals = [{k: v.detach().clone() for k, v in m.named_parameters()} for m in methods]
    gens = [c.data.generator.get_state() for c in ctxs]
    return inits, finals, gens, [c.graph_note for c in ctxs], outcomes


@pytest.mark.parametrize(
    "name,device",
    [("source-only", "cpu"), ("dann", "cpu")]
    + [pytest.param(n, "cuda", marks=needs_cuda) for n in ("source-only", "dann", "fine-tune")],
)
def test_captured_seed_batch_equals_the_eager_seed_batch(name, device, one_thread):
    """Per seed, the parameters after WARMUP_STEPS eager + 5 replayed steps equal the eager
    seed-batched run's (same batches: each seed's data generator ends in the same state).

    On the CPU the replays run the captured body itself (``CapturedStep`` emulates the graph off
    CUDA): each seed's stream cursors, gather and augmentation inside the step, progress and the
    learning rate from the step tables, the graph-safe SGD, the in-place counters."""
    steps = graphs.WARMUP_STEPS + 5
    scheduled = 2 * steps if name == "fine-tune" else steps  # fine-tune takes steps_fraction = 0.5 of them
    inits, eager, gens_e, notes_e, _ = _train_direct(name, (0, 1, 2), scheduled, False, device)
    _, captured, gens_c, notes_c, outcomes = _train_direct(name, (0, 1, 2), scheduled, True, device)
    assert notes_e == ["off"] * 3
    assert notes_c == ["captured"] * 3, notes_c
    assert all(o.timings["cuda_graphs"] == "captured" for o in outcomes), outcomes
    assert all(o.timings["steps"] == steps for o in outcomes), outcomes
    for s in range(3):
        assert torch.equal(gens_e[s], gens_c[s])
        moved = max((eager[s][k] - inits[s][k]).abs().max().item() for k in inits[s])
        diff = max((eager[s][k] - captured[s][k]).abs().max().item() for k in inits[s])
        assert moved > 0
        assert diff <= MOVE_FRACTION * moved, (name, s, diff, moved)
    # three seeds, three different runs
    first = next(iter(captured[0]))
    assert not torch.equal(captured[0][first], captured[1][first])


@needs_cuda
def test_captured_seed_batched_records_of_the_digits_methods(tmp_path):
    """source-only, its fine-tune dependant and DANN, 3 seeds × 60 steps, seed-batched with graphs:
    every record says "captured" and "3 seeds" and its curve matches the eager seed-batched one."""
    methods, seeds = ("source-only", "fine-tune", "dann"), (0, 1, 2)
    specs, summary, store = _run(tmp_path / "g", methods, seeds, 60, "cuda", True, backbone="lenet-nodrop")
    _, _, eager = _run(tmp_path / "e", methods, seeds, 60, "cuda", False, backbone="lenet-nodrop")
    assert len(summary.ran) == 9
    for spec in specs:
        rec, ref = store.read(spec.run_id), eager.read(spec.run_id)
        assert rec.status is Status.COMPLETE, rec.error
        assert rec.timings["cuda_graphs"] == "captured", (spec.method, rec.timings)
        assert ref.timings["cuda_graphs"] == "off"
        assert rec.timings["seed_batch"] == "3 seeds"
        assert [p["step"] for p in rec.curve] == [p["step"] for p in ref.curve]
        for pr, pe in zip(rec.curve, ref.curve):
            # 60 steps of DANN are chaotic (two H200 runs: 43.5 vs 38.5 % at step 40, then 31.3 vs
            # 12.9 % at step 60): the sharp check, for DANN too, is
            # test_captured_seed_batch_equals_the_eager_seed_batch; here the others learnt and stay close
            if spec.method != "dann":
                assert pr["target_acc"] > 12.0 and pe["target_acc"] > 12.0, (spec.method, pr, pe)
                assert abs(pr["target_acc"] - pe["target_acc"]) <= ACC_ATOL, (spec.method, pr, pe)
            assert pr["loss"].keys() == pe["loss"].keys()
            assert all(math.isfinite(v) for v in pr["loss"].values())


@needs_cuda
def test_a_diverging_seed_is_recorded_diverged_with_graphs_on(tmp_path):
    good, bad = poisoned_seeds("sbg-poisoned")
    seeds = sorted([*good, bad])
    specs, _, store = _run(tmp_path / "g", ("sbg-poisoned",), seeds, 40, "cuda", True, backbone="lenet-nodrop")
    _, _, eager = _run(tmp_path / "e", ("sbg-poisoned",), seeds, 40, "cuda", False, backbone="lenet-nodrop")
    for spec in specs:
        rec, ref = store.read(spec.run_id), eager.read(spec.run_id)
        if spec.seed == bad:
            assert rec.status is Status.DIVERGED and ref.status is Status.DIVERGED
            assert rec.diverged_at_step == ref.diverged_at_step == 10  # progress 1/4 of 40, a replayed step
            assert rec.error.message == ref.error.message
        else:
            assert rec.status is Status.COMPLETE, rec.error
            assert rec.timings["cuda_graphs"] == "captured"
            assert rec.timings["seed_batch"] == "3 seeds"
            for pr, pe in zip(rec.curve, ref.curve):
                assert math.isfinite(pr["target_acc"])
                assert abs(pr["target_acc"] - pe["target_acc"]) <= ACC_ATOL, (pr, pe)


@needs_cuda
def test_a_failed_capture_falls_back_to_eager_seed_batched_steps(tmp_path):
    specs, _, store = _run(tmp_path / "f", ("sbg-host-branch",), (0, 1, 2), 60, "cuda", True, eval_every=60)
    for spec in specs:
        rec = store.read(spec.run_id)
        assert rec.status is Status.COMPLETE, rec.error
        assert rec.timings["cuda_graphs"].startswith("fallback: "), rec.timings
        assert rec.timings["seed_batch"] == "3 seeds"  # still one vmapped model, eager steps
        assert rec.final["target_acc"] > 15.0  # percent: it trained (10 classes: chance is 10 %)
    # CUDA was left as it was: the next group (LeNet with dropout: random draws in the graph) captures
    specs, _, store = _run(tmp_path / "n", ("source-only",), (0, 1), 30, "cuda", True, eval_every=30)
    for spec in specs:
        rec = store.read(spec.run_id)
        assert rec.status is Status.COMPLETE, rec.error
        assert rec.timings["cuda_graphs"] == "captured", rec.timings


@needs_cuda
def test_bench_measures_the_captured_seed_batched_step():
    from dabench.core.domain import default_data_root
    from dabench.speed.bench import BenchCase, backbone_factory, seed_batch_timings

    pair = PAIRS.get("digits-offline")
    make, _ = backbone_factory("lenet", pair.channels, pair.image_size, dict(pair.backbone_options))
    case = BenchCase(
        pair, pair.load(default_data_root()), torch.device("cuda"), 32, steps=20, warmup=5, make_backbone=make
    )
    rate, note = seed_batch_timings("dann", case, seeds=3, cuda_graphs=True)
    assert note == "captured" and rate is not None and rate > 0
