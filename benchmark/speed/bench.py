"""Throughput on the machine at hand: ``dabench bench``.

Two numbers per configuration, measured in one process so that their ratio is meaningful:

- **bare**: the backbone + a linear head, cross-entropy, an SGD step, on one batch that is
  already normalised on the device. No data path, no method: the model's own limit.
- **per method**: the real engine path (``DeviceData`` sampling and augmentation on the
  device, ``method.loss``, the optimiser step, ``RunContext.train_steps`` itself), with
  the periodic evaluations switched off for the timed steps.

Images/s counts every image a step pushes through the network: source + target for a DA
method (``2 × batch`` with the default concatenated forward), the shots for fine-tuning.
Warm-up steps (cuDNN autotuning, allocator growth, ``torch.compile``) are run and excluded;
CUDA is synchronised before each clock read. A method's rate is steady-state
(:func:`steady_rate`: the difference of runs of two lengths, so a captured run's warm-up steps
and capture, paid once per run, are reported apart as ``setup_ms``, not spread over the timed
steps); the bare network's rate is timed the same way, with the same repeats, and every rate
carries the spread of its repeats (:class:`Steady`), every ratio the range that follows. On CUDA the sync-debug mode also counts the host synchronisations inside the step loop
(the engine allows one per ``log_every`` steps). ``graph_ops``: the operations of one captured
step on any device (:mod:`dabench.engine.opcount`), against the bare network's.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import os
import pathlib
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..core.domain import Domain, DomainPair, PairData, Schedule, default_data_root
from ..core.jsonio import dump_json
from ..core.method import Method
from ..core.registry import BACKBONES, METHODS, PAIRS, RegistryError
from ..core.spec import RunSpec, run_protocol
from ..core.splits import stratified_split
from ..engine import graphs
from ..engine.compile import compile_method
from ..engine.data import DeviceData, DeviceSplits
from ..engine.evaluate import autocast
from ..engine.opcount import count_ops
from ..engine.seed_batch import NotVmappable, batch_refusal, train_batched
from ..engine.train import RunContext, _fusable, device_problem, resolve_device, sgd_step
from .profile import SHOWN, StepProfile, profile_steps

BackboneFactory = Callable[[], Backbone]

# ImageNet statistics: the synthetic mode stands in for Office-31-style photographs
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --- inputs: a real pair or a synthetic one ---------------------------------------------
def synthetic_pair(
    n: int, image_size: int = 224, channels: int = 3, num_classes: int = 31, backbone: str = "resnet50", seed: int = 0
) -> tuple[DomainPair, PairData]:
    """Two domains of ``n`` random uint8 images each, stored at 8/7 of ``image_size``
    (256 px for 224, as Office-31 loaders resize) and cropped by ``resized_crop_flip`` on the
    device: the same path a real photo pair takes, with no dataset needed."""
    if n < 2 * num_classes:
        raise ValueError(f"--synthetic needs at least {2 * num_classes} images per domain ({num_classes} classes)")
    raw = max(image_size, round(image_size * 8 / 7))
    g = torch.Generator().manual_seed(seed)

    def domain(name: str) -> Domain:
        images = torch.randint(0, 256, (n, channels, raw, raw), dtype=torch.uint8, generator=g)
        labels = torch.arange(n) % num_classes
        return Domain(name, images, labels, tuple(str(c) for c in range(num_classes)))

    source, target = domain("synthetic-source"), domain("synthetic-target")
    s_train, s_val = stratified_split(source.labels, 0.1, seed=0)
    t_adapt = torch.arange(n)
    pair = DomainPair(
        name=f"synthetic-{channels}x{image_size}",
        description=f"{n} random uint8 images per domain, {channels}x{raw}x{raw}, cropped to {image_size}",
        load=lambda _root: data,
        num_classes=num_classes,
        backbone=backbone,
        channels=channels,
        image_size=image_size,
        mean=_IMAGENET_MEAN[:channels] if channels == 3 else (0.5,) * channels,
        std=_IMAGENET_STD[:channels] if channels == 3 else (0.5,) * channels,
        augment="resized_crop_flip",
        schedule=Schedule(batch_size=32, lr=0.01),
        target_shots=3,
    )
    data = PairData(source, target, s_train, s_val, t_adapt, t_adapt)
    return pair, data


# --- backbones: the registry first, timm (random weights) as a fallback ------------------
class TimmBackbone(Backbone):
    """A timm model with its classifier removed (``num_classes=0``), random weights."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        import timm  # late: timm takes seconds to import and only timm backbones need it

        self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        # timm sets num_features as an int; torch types a Module's unknown attributes as Tensor | Module
        self.out_features = int(self.model.num_features)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _offline_options(factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """Ask a registered factory for random weights when it takes such an option: a throughput
    benchmark must not try to download pretrained weights (GPU boxes are often offline)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return options
    out = dict(options)
    if "pretrained" in params and "pretrained" not in out:
        out["pretrained"] = False
    if "weights" in params and "weights" not in out:
        out["weights"] = None
    return out


def backbone_factory(
    name: str, in_channels: int, image_size: int, options: dict[str, Any] | None = None
) -> tuple[BackboneFactory, str]:
    """A zero-argument constructor for backbone ``name`` and a note on where it came from.

    A registered backbone is used as registered; an unregistered name that timm knows is
    built from timm with random weights (and the note says so); anything else is an error
    naming the registered backbones.
    """
    registered = BACKBONES.names()
    if name in registered:
        factory = BACKBONES.get(name)
        opts = _offline_options(factory, options or {})
        return (lambda: factory(in_channels=in_channels, image_size=image_size, **opts)), f"{name} (registered)"
    try:
        import timm  # late: timm takes seconds to import and only timm backbones need it

        known = timm.is_model(name)
    except ImportError:  # pragma: no cover - timm is a dependency
        known = False
    if not known:
        raise RegistryError(
            f"backbone {name!r} is neither registered (registered: {', '.join(registered) or 'none'}) "
            "nor a timm model name"
        )
    return (lambda: TimmBackbone(name, in_channels)), (
        f"{name} (not registered in dabench; built from timm with random weights, "
        f"registered backbones: {', '.join(registered)})"
    )


# --- measurements -------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_M = TypeVar("_M", bound=nn.Module)


def _prepare(module: _M, device: torch.device, compile: bool) -> _M:
    module = module.to(device)
    if device.type == "cuda":  # as execute() does
        module = module.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if compile:
        compile_method(module)
    return module


class _Bare(nn.Module):
    """backbone → linear head: the smallest network a method could train."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _bare_setup(
    make_backbone: BackboneFactory, pair: DomainPair, batch_size: int, device: torch.device, compile: bool
) -> tuple[Callable[[list[torch.Tensor] | None], None], torch.nn.Module]:
    """The bare network's training step on a fixed device batch: ``step(None)`` with the engine's ``sgd_step``,
    ``step(lrs)`` with the engine's graph-safe SGD reading the learning rate from ``lrs`` (what a
    captured step runs)."""
    torch.manual_seed(0)
    model = _prepare(_Bare(make_backbone(), pair.num_classes), device, compile)
    model.train()
    x = torch.randn(batch_size, pair.channels, pair.image_size, pair.image_size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, pair.num_classes, (batch_size,), device=device)
    params = list(model.parameters())
    # the engine's SGD (engine/train.py): fused where torch allows, stepped by sgd_step (unfused if
    # the CUDA kernel refuses the layouts), so the bare step runs a method's optimiser kernels
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=_fusable(params))

    def step(lrs: list[torch.Tensor] | None) -> None:
        # no weight cache: a captured step must recompute autocast's casts at every replay
        with autocast(device, cache_enabled=lrs is None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if lrs is None:
            sgd_step(opt)
        else:
            graphs.graph_sgd_step(opt, lrs)

    return step, model


def bare_runner(
    make_backbone: BackboneFactory,
    pair: DomainPair,
    batch_size: int,
    warmup: int,
    device: torch.device,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Callable[[int], int]:
    """The bare network (backbone + linear head, CE + SGD on a fixed device batch), set up and warmed
    up: ``run(n)`` trains ``n`` steps, synchronises CUDA and returns ``n`` (what :func:`steady_rate`
    and :func:`interleaved_rates` time).

    ``cuda_graphs`` (CUDA): the step captured once, here, and replayed, with the engine's graph-safe
    SGD step (engine/graphs.py): the physical limit of a captured method step. The capture happens
    before any clock starts (a method's steady-state rate excludes its capture too)."""
    step, _ = _bare_setup(make_backbone, pair, batch_size, device, compile)
    one: Callable[[], None] = lambda: step(None)  # noqa: E731
    if cuda_graphs and device.type == "cuda":
        with graphs.side_stream_step(side := torch.cuda.Stream(device)):
            for _ in range(max(warmup, graphs.WARMUP_STEPS)):
                step(None)
        torch.cuda.current_stream(device).wait_stream(side)
        graph, lrs = torch.cuda.CUDAGraph(), [torch.tensor(1e-3, dtype=torch.float32, device=device)]
        with torch.cuda.graph(graph):
            step(lrs)
        one = graph.replay
    for _ in range(warmup):
        one()
    _sync(device)

    def timed(n: int) -> int:
        for _ in range(n):
            one()
        _sync(device)  # the clock is read after this: finished work only
        return n

    return timed


def bare_images_per_s(
    make_backbone: BackboneFactory,
    pair: DomainPair,
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    compile: bool = False,
    cuda_graphs: bool = False,
    repeats: int = 3,
) -> Steady:
    """Forward + backward + SGD step images/s of backbone + linear head on a fixed device batch
    (:func:`bare_runner`), timed alone by :func:`steady_rate` (runs of ``steps`` and ``2 · steps``
    steps, ``repeats`` times each). :func:`run_bench` times it in the same rounds as the methods
    instead (:func:`interleaved_rates`), so that each ratio pairs timings taken close together."""
    run = bare_runner(make_backbone, pair, batch_size, warmup, device, compile, cuda_graphs)
    return steady_rate(run, steps, repeats).scaled(batch_size)


def bare_profile(
    make_backbone: BackboneFactory, pair: DomainPair, batch_size: int, steps: int, warmup: int, device: torch.device
) -> StepProfile:
    """Where the bare network's eager step spends its time (:mod:`dabench.speed.profile`)."""
    step, _ = _bare_setup(make_backbone, pair, batch_size, device, False)

    def run(n: int) -> int:
        for _ in range(n):
            step(None)
        return n

    run(max(1, warmup))
    return profile_steps(f"bare, batch {batch_size}", run, steps, device)


def _try_profile(take: Callable[[], StepProfile | None]) -> tuple[StepProfile | None, str]:
    """(the profile, "") or (None, why): a profiler that cannot trace this device (CUPTI missing or
    busy) costs the bench its --profile section, not its rates."""
    try:
        return take(), ""
    except Exception as exc:  # noqa: BLE001 - any profiler failure: reported in the table's notes
        return None, f"profile failed: {type(exc).__name__}: {exc}"


def bare_ops_per_step(make_backbone: BackboneFactory, pair: DomainPair, batch_size: int, device: torch.device) -> int:
    """Operations in one bare step as a captured step runs it (graph-safe SGD), on any device: the
    kernels a GPU replays per step of the physical limit (:mod:`dabench.engine.opcount`)."""
    step, _ = _bare_setup(make_backbone, pair, batch_size, device, False)
    step(None)  # the momentum buffers exist from the first step on, as in a captured run
    lrs = [torch.tensor(1e-3, dtype=torch.float32, device=device)]
    return count_ops(lambda: step(lrs)).total


@dataclass(frozen=True)
class Steady:
    """A steady-state rate (:func:`steady_rate`) with its spread over the repeats.

    ``per_s``: the rate from the fastest time at each length; ``low``/``high``: the lowest and
    highest rate of single repeats (each repeat's short and long run differenced on their own),
    what a reader would have got from any one of them. ``per_s`` lies between the two (the
    difference of the two lengths' minima lies between the differences of the repeats that
    gave them). ``setup_s``: the fixed seconds one call pays, signed: a negative value is timing
    noise larger than the fixed cost (the short run was slower per step than the long one), kept so
    that the table can say so instead of a clipped 0; None when the rate is the long run's plain
    rate (``plain``: the difference was below the noise), which holds the fixed cost inside it: not
    measured apart, so never shown as a 0. ``rounds``: each repeat's own rate, in the order of the
    repeats (:func:`interleaved_rates` pairs them with other rates of the same round)."""

    per_s: float
    setup_s: float | None
    low: float
    high: float
    repeats: int
    #: differences (the repeats' and the fastest times') where the long run was not slower than the
    #: short one by a positive time: noise larger than the extra steps, so the plain rate of the long
    #: run stood in for the steady one there (it includes the fixed cost: slower than the truth)
    plain: int = 0
    rounds: tuple[float, ...] = ()

    def scaled(self, k: float) -> Steady:
        """The same measurement in other units (``k`` units per step: images/s from steps/s)."""
        return dataclasses.replace(
            self, per_s=self.per_s * k, low=self.low * k, high=self.high * k, rounds=tuple(r * k for r in self.rounds)
        )

    def plain_note(self, what: str) -> str:
        """One line for the table's notes when a difference fell back to the plain rate, else ``""``."""
        if not self.plain:
            return ""
        return (
            f"{what}: {self.plain} of {self.repeats + 1} steady-state differences were below the timing noise, "
            "the long run's plain rate stood in (fixed cost included); time more --steps"
        )


_K = TypeVar("_K", bound=Hashable)
#: the clock run_bench's rounds read (a module attribute: tests drive the rounds with a fake one)
_CLOCK: Callable[[], float] = time.perf_counter


def interleaved_rates(
    runs: dict[_K, Callable[[int], int]],
    steps: int,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    order: list[_K] | None = None,
) -> dict[_K, Steady]:
    """The steady-state rate of every run in ``runs`` (:func:`steady_rate`'s estimator), timed in
    ``repeats`` rounds: each round times every run once at each length (``steps``, then
    ``2 · steps``), the runs in the order of ``runs`` rotated by one place per round.

    Why rounds: timing all repeats of one run, then all of the next, lets a drifting clock (GPU boost
    and heat, a shared machine's load) land on some runs and not others, so a ratio of two rates
    carried their positions in the bench. Within a round the runs are timed close together, so a
    ratio formed round by round (:func:`paired_ratio`) cancels the drift; the rotation keeps any run
    from always following the same neighbour (a cache or clock state one run leaves behind).
    ``order``, when given, receives the runs' keys in the order they were timed (one per run call
    pair), for tests."""
    keys = list(runs)
    best: dict[_K, dict[int, tuple[float, int]]] = {k: {} for k in keys}
    singles: dict[_K, list[tuple[float, float, bool]]] = {k: [] for k in keys}
    for r in range(max(1, repeats)):
        shift = r % len(keys) if keys else 0
        for k in keys[shift:] + keys[:shift]:
            if order is not None:
                order.append(k)
            times: dict[int, tuple[float, int]] = {}
            for n in (steps, 2 * steps):
                t0 = clock()
                done = runs[k](n)
                times[n] = (clock() - t0, done)
                if n not in best[k] or times[n][0] < best[k][n][0]:
                    best[k][n] = times[n]
            singles[k].append(_difference(times[steps], times[2 * steps]))
    out: dict[_K, Steady] = {}
    for k in keys:
        rate, setup, plain = _difference(best[k][steps], best[k][2 * steps])
        ones = [r for r, _, _ in singles[k]]
        plains = sum(p for _, _, p in singles[k]) + plain
        out[k] = Steady(
            rate, None if plain else setup, min([*ones, rate]), max([*ones, rate]), max(1, repeats), plains, tuple(ones)
        )
    return out


def steady_rate(
    run: Callable[[int], int], steps: int, repeats: int = 3, clock: Callable[[], float] = time.perf_counter
) -> Steady:
    """Steps/s in the steady state of ``run(n)``, which trains about ``n`` steps from scratch and
    returns how many it did, with the fixed seconds per call and the spread over repeats.

    Timed at two lengths, ``steps`` and ``2 · steps``: the difference cancels what every call pays
    once (building the loop's state, a captured run's eager warm-up steps and its capture), which
    would otherwise count against a captured method and not against the bare network, captured
    before its clock starts: rate = (done₂ − done₁) / (t₂ − t₁), setup = t₁ − done₁ / rate.
    The fixed cost is reported beside the rate, not hidden: a real run pays it once. Each length
    is timed ``repeats`` times, alternating, and its fastest time kept for the rate: a difference
    of two times doubles their noise, and interference only ever adds time. The spread
    (:class:`Steady`) is the range of the repeats' own rates, so a reader can tell whether two
    rates 5 % apart are apart at all. One run alone in :func:`interleaved_rates`."""
    return interleaved_rates({0: run}, steps, repeats, clock)[0]


def paired_ratio(num: Steady, den: Steady, k: float = 1.0) -> tuple[float, float, float] | None:
    """``k · num / den`` formed round by round (both from the same :func:`interleaved_rates`):
    (the median of the rounds' ratios, the lowest, the highest); None without rounds to pair.

    The median of per-round ratios, not the ratio of the two rates: each round's two timings were
    taken close together, so a clock that drifts over the bench moves both and cancels; the range is
    what single rounds gave."""
    if not num.rounds or len(num.rounds) != len(den.rounds):
        return None
    each = [k * a / b for a, b in zip(num.rounds, den.rounds) if b > 0]
    if not each:
        return None
    return statistics.median(each), min(each), max(each)


def _difference(short: tuple[float, int], long: tuple[float, int]) -> tuple[float, float, bool]:
    """(steps/s, fixed s, plain) from the (seconds, steps) of a short and a long call; ``plain``:
    the difference was not positive, so the long call's plain rate stands in (counted and noted by
    :class:`Steady`, never silent). The fixed seconds are signed: below 0 when the short call was
    slower per step than the long one (noise larger than the fixed cost), not clipped to a 0 that
    would read as measured."""
    (t1, done1), (t2, done2) = short, long
    extra_steps, extra_s = done2 - done1, t2 - t1
    if extra_steps <= 0 or extra_s <= 0:  # timing noise larger than the extra steps: the plain rate
        return done2 / t2, 0.0, True
    rate = extra_steps / extra_s
    return rate, t1 - done1 / rate, False


@dataclass
class MethodTiming:
    """One method's measurement; ``images_per_s`` is None for a method with its own ``fit``."""

    method: str
    images_per_step: int = 0
    steps_per_s: float | None = None
    images_per_s: float | None = None
    host_syncs: int | None = None  # synchronising CUDA calls in ``sync_steps`` steps (CUDA only)
    sync_steps: int = 0
    note: str = ""
    graph_steps_per_s: float | None = None  # with --cuda-graphs (CUDA only), steady state
    graph_note: str = ""  # timings["cuda_graphs"] of that run: captured / fallback: ...
    setup_ms: float | None = None  # fixed cost of one eager run (:func:`steady_rate`)
    #: (lowest, highest) steps/s of single repeats (:class:`Steady`): the spread of ``steps_per_s``
    steps_per_s_range: tuple[float, float] | None = None
    graph_steps_per_s_range: tuple[float, float] | None = None  # the same for ``graph_steps_per_s``
    graph_setup_ms: float | None = None  # the same captured: warm-up steps and the capture
    #: operations in one captured step (any device; off CUDA counted on the emulated graph body)
    graph_ops: int | None = None
    #: steps/s of each seed with ``seed_batch`` seeds trained as one vmapped model (``--seed-batch``);
    #: None: not measured, or the method falls back to separate runs
    seed_batch_steps_per_s: float | None = None
    #: the same with the seed-batched step captured in a CUDA graph (CUDA with --cuda-graphs)
    seed_batch_graph_steps_per_s: float | None = None
    seed_batch_graph_note: str = ""  # timings["cuda_graphs"] of that seed-batched loop
    #: where the eager step's time goes, by operation (``--profile``)
    profile: StepProfile | None = None
    #: method/bare images/s as (median, lowest, highest) of the rounds' own ratios (:func:`paired_ratio`,
    #: the bare network at the nearest batch timed in the same round); None when not timed in rounds
    ratio: tuple[float, float, float] | None = None
    graph_ratio: tuple[float, float, float] | None = None  # the same captured, over the captured bare network
    #: S × per-seed steps/s over one run's steps/s, paired by round (eager; captured)
    seed_batch_speedup: tuple[float, float, float] | None = None
    seed_batch_graph_speedup: tuple[float, float, float] | None = None


class EngineBench:
    """A method on a pair's ``DeviceData``, trained by the engine's own loop for timing.

    ``run(steps)`` calls ``method.fit`` with a schedule of ``steps`` steps whose only host
    sync is the divergence check after the last step, and with evaluation switched off
    (``record_eval`` is a no-op on this context), so it times sampling, augmentation,
    the loss, backward and the optimiser step, nothing else.
    """

    def __init__(
        self,
        method_name: str,
        pair: DomainPair,
        pair_data: PairData,
        device: torch.device,
        batch_size: int,
        make_backbone: BackboneFactory,
        compile: bool = False,
        seed: int = 0,
        cuda_graphs: bool = False,
        splits: DeviceSplits | None = None,
    ) -> None:
        cls = METHODS.get(method_name)
        torch.manual_seed(seed)
        self.method: Method = _prepare(cls(make_backbone(), pair.num_classes, {}), device, False)
        if compile:
            compile_method(self.method)
        shots = pair.target_shots if (cls.protocol == "few-shot" or cls.uses.target_shots) else 0
        self.spec = RunSpec(
            method=method_name,
            pair=pair.name,
            seed=seed,
            protocol=run_protocol(cls.protocol, shots),
            target_shots=shots,
            eval_shots=pair.target_shots,
            hparams=dict(self.method.hp),
            schedule=pair.schedule.replace(batch_size=batch_size),
            backbone=pair.backbone,
        )
        self.pair, self.device = pair, device
        self.data = DeviceData(pair, pair_data, device, seed, shots, pair.target_shots, splits)
        self.own_fit = type(self.method).fit is not Method.fit
        self.cuda_graphs, self.compiled = cuda_graphs, compile

    def _scheduled_steps(self, steps: int) -> int:
        """Schedule length whose ``method.num_steps`` is at least ``steps`` (fine-tune takes a fraction)."""
        scheduled = steps
        while self.method.num_steps(scheduled) < steps:
            scheduled *= 2
        return scheduled

    def run(self, steps: int, sync: bool = True) -> RunContext:
        scheduled = self._scheduled_steps(steps)
        spec = dataclasses.replace(
            self.spec,
            schedule=self.spec.schedule.replace(steps=scheduled, log_every=scheduled, eval_every=10 * scheduled),
        )
        ctx = RunContext(spec, self.pair, self.data, self.device, cuda_graphs=self.cuda_graphs)
        ctx.count_ops = not self.compiled  # a compiled module runs eagerly under the counting mode
        ctx.record_eval = lambda *a, **k: None  # type: ignore[method-assign]  # time training only
        self.method.fit(ctx)
        if sync:
            _sync(self.device)
        return ctx


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Synchronising CUDA calls made by ``fn`` (torch's sync-debug mode); None off CUDA."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@dataclass(frozen=True)
class BenchCase:
    """What every measurement of one ``dabench bench`` shares: the pair and its data, the device,
    the per-domain batch, the timed and warm-up steps, the backbone and whether it is compiled."""

    pair: DomainPair
    pair_data: PairData
    device: torch.device
    batch_size: int
    steps: int
    warmup: int
    make_backbone: BackboneFactory
    compile: bool = False
    repeats: int = 3  # timings per length in every :func:`steady_rate` (the bare network's too)

    def engine_bench(self, method_name: str, seed: int = 0, splits: DeviceSplits | None = None) -> EngineBench:
        pair, data, make = self.pair, self.pair_data, self.make_backbone
        return EngineBench(
            method_name, pair, data, self.device, self.batch_size, make, self.compile, seed, splits=splits
        )


class MethodRuns:
    """One method set up for timing: warmed up, its host syncs counted, and its runs to time
    (``runs``: ``"eager"``, and ``"graph"`` when a captured rate is measured), each ``run(n)`` a
    fresh ``fit`` of ``n`` steps returning the steps done. :meth:`finish` turns their
    :class:`Steady` rates into the :class:`MethodTiming`. Apart, so that :func:`run_bench` can time
    every method's runs in the same rounds (:func:`interleaved_rates`).

    A method with its own ``fit`` (the linear probe: L-BFGS on cached features) has no runs: it is
    timed once here, as a note."""

    def __init__(self, method_name: str, case: BenchCase, cuda_graphs: bool = False) -> None:
        bench, device, steps, warmup = case.engine_bench(method_name), case.device, case.steps, case.warmup
        self.bench, self.runs = bench, {}
        self.graph_notes: list[str] = []  # every timed captured run's note: the runs must agree
        self.graph_note = ""
        if bench.own_fit:
            bench.run(1)  # warm-up
            t0 = time.perf_counter()
            bench.run(1)
            ms = (time.perf_counter() - t0) * 1e3
            n = len(bench.data.shots)
            self.timing = MethodTiming(
                method_name, note=f"own fit(): {ms:.1f} ms in all ({n} shot images, features cached)"
            )
            return
        ctx = bench.run(max(1, warmup))
        sync_steps = max(2, min(warmup, 20))
        syncs = count_host_syncs(lambda: bench.run(sync_steps, sync=False), device)
        _sync(device)
        self.timing = MethodTiming(
            method_name,
            images_per_step=ctx.images_seen // max(1, ctx.steps_done),
            host_syncs=syncs,
            sync_steps=sync_steps,
        )
        self.runs["eager"] = lambda n: bench.run(n).steps_done
        if device.type == "cuda" and cuda_graphs and steps <= graphs.WARMUP_STEPS:
            # a run of <= WARMUP_STEPS steps is never captured: its difference with a captured run of
            # twice the steps would mix an eager run with a captured one
            self.graph_note = (
                f"graphs not timed: --steps {steps} is not more than a captured run's {graphs.WARMUP_STEPS} "
                "eager warm-up steps"
            )
            self.timing.graph_ops = self._captured(graphs.WARMUP_STEPS + 2, record=False).graph_ops
        elif device.type == "cuda" and cuda_graphs:
            self._captured(max(1, warmup), record=False)
            self.runs["graph"] = lambda n: self._captured(n).steps_done
        else:  # off CUDA the graph-mode loop runs its captured body eagerly: its operations, not a rate
            # its note says how that loop ran ("captured" on the CPU too): nothing was captured or timed here
            self.timing.graph_ops = self._captured(graphs.WARMUP_STEPS + 2, record=False).graph_ops

    def _captured(self, n: int, record: bool = True) -> RunContext:
        self.bench.cuda_graphs = True
        try:
            ctx = self.bench.run(n)
        finally:
            self.bench.cuda_graphs = False
        if record:
            self.graph_notes.append(ctx.graph_note)
        self.last_graph = ctx
        return ctx

    def finish(self, rates: dict[str, Steady]) -> MethodTiming:
        """The timing with the rates of :attr:`runs` (keys as there) filled in."""
        timing = self.timing
        if "eager" not in rates:
            return timing
        eager = rates["eager"]
        timing.steps_per_s, timing.images_per_s = eager.per_s, eager.per_s * timing.images_per_step
        timing.setup_ms = None if eager.setup_s is None else 1e3 * eager.setup_s
        timing.steps_per_s_range = (eager.low, eager.high)
        timing.note = "; ".join(n for n in (timing.note, eager.plain_note("steps/s")) if n)
        if "graph" in rates:
            captured = rates["graph"]
            timing.graph_steps_per_s = captured.per_s
            timing.graph_setup_ms = None if captured.setup_s is None else 1e3 * captured.setup_s
            timing.graph_steps_per_s_range = (captured.low, captured.high)
            timing.note = "; ".join(n for n in (timing.note, captured.plain_note("graphs steps/s")) if n)
            # more than one distinct note: the timed runs were not alike
            timing.graph_note = "; ".join(dict.fromkeys(self.graph_notes))
            timing.graph_ops = self.last_graph.graph_ops
        elif self.graph_note:
            timing.graph_note = self.graph_note
        return timing


def time_method(method_name: str, case: BenchCase, cuda_graphs: bool = False) -> MethodTiming:
    """Images/s of one method through the engine path, timed alone (:class:`MethodRuns`; warm-up
    steps excluded). :func:`run_bench` times the methods in shared rounds instead.

    Rates are steady-state (:func:`steady_rate`: each timed ``fit`` builds its loop anew, and a
    captured one runs its eager warm-up steps and the capture; the fixed cost is ``setup_ms``).
    ``cuda_graphs`` (CUDA): also the steps/s with the step captured (``graph_steps_per_s``).
    ``graph_ops``: the operations of one captured step, on any device (off CUDA the graph-mode
    loop runs the captured body eagerly)."""
    runs = MethodRuns(method_name, case, cuda_graphs)
    return runs.finish(interleaved_rates(runs.runs, case.steps, case.repeats))


def method_profile(method_name: str, case: BenchCase) -> StepProfile | None:
    """Where the method's eager step spends its time (:mod:`dabench.speed.profile`); None for a
    method with its own ``fit`` (no step loop)."""
    bench = case.engine_bench(method_name)
    if bench.own_fit:
        return None
    bench.run(max(1, case.warmup))
    return profile_steps(method_name, lambda n: bench.run(n).steps_done, case.steps, case.device)


def seed_batch_runner(
    method_name: str, case: BenchCase, seeds: int, cuda_graphs: bool = False
) -> tuple[Callable[[int], int] | None, str, list[str]]:
    """``seeds`` seeds of ``method_name`` trained as one vmapped model by the engine's seed-batched
    loop (:func:`dabench.engine.seed_batch.train_batched`; evaluations off, as in
    :class:`EngineBench`), set up and warmed up: (``run(n)`` returning the steps each seed did,
    "", the timed loops' graph notes as they come) or (None, why, []) for a method that seed
    batching runs separately (as the engine would) and for a seed-batched step that fails: a
    failure is reported, never shown as a plain "—" (a seed-batched step that raised on a GPU once
    read as "not measured").

    ``cuda_graphs`` (CUDA): the loop captures its step (each timed loop captures anew; the
    difference of two lengths cancels that fixed cost)."""
    device = case.device
    splits = DeviceSplits(case.pair_data, device)  # one device copy of the pair for all seeds, as the engine's group
    one = dataclasses.replace(case, compile=False)
    benches = [one.engine_bench(method_name, seed=s, splits=splits) for s in range(seeds)]
    refusal = batch_refusal(benches[0].method)
    if refusal is not None:
        return None, f"seed batch: runs separately ({refusal})", []
    notes: list[str] = []

    def go(n: int) -> int:
        ctxs = []
        for b in benches:
            scheduled = b._scheduled_steps(n)
            spec = dataclasses.replace(
                b.spec,
                schedule=b.spec.schedule.replace(steps=scheduled, log_every=scheduled, eval_every=10 * scheduled),
            )
            ctxs.append(RunContext(spec, b.pair, b.data, device))
        graphed = cuda_graphs and device.type == "cuda"
        train_batched([b.method for b in benches], ctxs, device, finish=False, cuda_graphs=graphed)
        _sync(device)
        notes.append(ctxs[0].graph_note)
        return ctxs[0].steps_done

    try:
        go(max(1, case.warmup))
    except NotVmappable as exc:  # the engine would run the seeds separately
        return None, f"seed batch: runs separately ({exc.reason})", []
    except Exception as exc:  # noqa: BLE001 - the engine's seed-batched runs would fail: say so
        return None, f"seed batch failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", []
    notes.clear()  # the warm-up's note: not a timed loop
    return go, "", notes


def _seed_batch_note(rate: Steady, notes: list[str], captured: bool) -> str:
    """The note of a seed-batched rate: eager, only a noise fallback (its graph note says only "off");
    captured, what became of the graphs in the timed loops, then the fallback."""
    if not captured:
        return rate.plain_note("seed-batch")
    return "; ".join(n for n in (*dict.fromkeys(notes), rate.plain_note("seed-batch graphs")) if n)


def seed_batch_timings(
    method_name: str, case: BenchCase, seeds: int, cuda_graphs: bool = False
) -> tuple[float | None, str]:
    """Steady-state steps/s *per seed* (:func:`steady_rate`) of ``seeds`` seeds trained as one
    vmapped model (:func:`seed_batch_runner`), timed alone, and the note (a refusal, a failure, a
    noise fallback, what became of the graphs). :func:`run_bench` times it in shared rounds."""
    go, why, notes = seed_batch_runner(method_name, case, seeds, cuda_graphs)
    if go is None:
        return None, why
    rate = steady_rate(go, case.steps, case.repeats)
    return rate.per_s, _seed_batch_note(rate, notes, cuda_graphs and case.device.type == "cuda")


# --- the command ----------------------------------------------------------------------------
@dataclass
class BenchResult:
    device: str
    torch_version: str
    pair: str
    backbone: str
    image_size: int
    batch_size: int
    steps: int
    warmup: int
    compile: bool
    date: str
    bare_images_per_s: float
    #: bare images/s by batch size: the pair's batch and twice it (what a DA method's
    #: concatenated source + target forward sees), so each method is compared at its own batch
    bare_by_batch: dict[int, float] = field(default_factory=dict)
    #: the same with the bare step captured in a CUDA graph (CUDA with --cuda-graphs)
    bare_graph_by_batch: dict[int, float] = field(default_factory=dict)
    #: operations in one bare step as captured (:func:`bare_ops_per_step`), by batch size
    bare_ops_by_batch: dict[int, int] = field(default_factory=dict)
    methods: list[MethodTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seed_batch: int = 0  # seeds per vmapped group in the seed-batch column (0: not measured)
    #: the bare network's profile by batch size (``--profile``; the methods' are in their timings)
    bare_profiles: dict[int, StepProfile] = field(default_factory=dict)
    repeats: int = 3  # timings per length of every steady-state rate
    #: (lowest, highest) images/s of single repeats, by batch size: the spread of ``bare_by_batch``
    bare_range_by_batch: dict[int, tuple[float, float]] = field(default_factory=dict)
    bare_graph_range_by_batch: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: why a column is empty for every row, by column (``graphs``, ``seed-batch``, ...)
    unmeasured: dict[str, str] = field(default_factory=dict)
    #: (images/s in the first round, in the last) by batch size (:func:`interleaved_rates`): how far
    #: the clock drifted over the bench; the ratios are paired by round, so it cancels in them
    bare_drift: dict[int, tuple[float, float]] = field(default_factory=dict)
    bare_graph_drift: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: the bare network and the methods were timed in shared rounds, each ratio the median of the
    #: rounds' own (False: a result put together otherwise, e.g. from :func:`time_method` alone)
    interleaved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )


def device_slug(device: torch.device) -> str:
    """File-name form of the device: ``cpu``, ``cuda-nvidia-h100-80gb-hbm3``."""
    if device.type != "cuda":
        return "cpu"
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


class BenchArgumentError(ValueError):
    """A ``dabench bench`` / :func:`run_bench` argument out of range (one line, each value named)."""


#: the largest tensor dimension a bench value may set: torch indexes with 32-bit integers in many
#: kernels, and a larger value (e.g. --batch-size 10**23) failed as torch's "Overflow when
#: unpacking long long" with a traceback
SIZE_MAX = 2**31 - 1


def check_bench_args(
    *,
    steps: int = 50,
    warmup: int = 10,
    repeats: int = 3,
    seed_batch: int = 0,
    batch_size: int | None = None,
    image_size: int | None = None,
    synthetic: int = 0,
    device: str | None = "auto",
) -> None:
    """Refuse what the bench cannot measure, before anything is loaded or timed: the checks of
    ``dabench bench`` and :func:`run_bench` (one function, the same messages; named by their flags).

    A device that is no device (``gpu``) or a CUDA device this machine lacks raises alone;
    otherwise every bad value is named in one :class:`BenchArgumentError`, with what is valid.
    A ``batch_size``/``image_size`` of 0 would read as "the pair's" and is refused, as is a
    ``seed_batch`` of 1 (the engine runs a lone seed separately: no batched step to time).
    """
    problem = device_problem(device)
    if problem:
        raise BenchArgumentError(problem)

    def whole(v: object) -> bool:  # an int, not a bool (True would read as 1 step) nor a float
        return isinstance(v, int) and not isinstance(v, bool)

    bad = [
        f"{flag} must be {valid if whole(value) else 'an integer ' + valid} (got {value!r})"
        for flag, value, ok, valid in (
            ("--steps", steps, lambda v: v >= 1, ">= 1"),
            ("--warmup", warmup, lambda v: v >= 0, ">= 0"),
            ("--repeats", repeats, lambda v: v >= 1, ">= 1"),
            ("--seed-batch", seed_batch, lambda v: v == 0 or v >= 2, "0 (off) or >= 2 seeds"),
            ("--batch-size", batch_size, lambda v: v is None or v >= 1, ">= 1"),
            ("--image-size", image_size, lambda v: v is None or v >= 1, ">= 1"),
            ("--synthetic", synthetic, lambda v: v >= 0, "0 (off) or a number of images"),
        )
        if not ((value is None and flag in ("--batch-size", "--image-size")) or (whole(value) and ok(value)))
    ]
    bad += [
        f"{flag} must be at most {SIZE_MAX} (got {value!r})"
        for flag, value in (
            ("--seed-batch", seed_batch),
            ("--batch-size", batch_size),
            ("--image-size", image_size),
            ("--synthetic", synthetic),
        )
        if whole(value) and value > SIZE_MAX  # type: ignore[operator]
    ]
    if bad:
        raise BenchArgumentError("; ".join(bad))


def run_bench(
    pair_name: str | None = "digits-offline",
    methods: list[str] | None = None,
    steps: int = 50,
    warmup: int = 10,
    batch_size: int | None = None,
    device: str | None = "auto",
    backbone: str | None = None,
    image_size: int | None = None,
    synthetic: int = 0,
    compile: bool = False,
    data_root: pathlib.Path | None = None,
    log: Callable[[str], None] = print,
    cuda_graphs: bool = True,
    seed_batch: int = 0,
    profile: bool = False,
    repeats: int = 3,
) -> BenchResult:
    """Measure bare-backbone and per-method training images/s; see the module docstring.

    ``seed_batch > 1`` adds each method's steps/s per seed with that many seeds batched.
    ``repeats``: timings per length of every steady-state rate, the bare network's included
    (:func:`steady_rate`; the table shows the spread over them).
    ``profile``: where each eager step's time goes, by operation, the bare network's included.
    ``synthetic > 0`` replaces the pair by random uint8 photos (``synthetic`` per domain,
    3 channels, 31 classes) at ``image_size`` (default 224) with ``backbone`` (default resnet50).
    """
    check_bench_args(
        steps=steps,
        warmup=warmup,
        repeats=repeats,
        seed_batch=seed_batch,
        batch_size=batch_size,
        image_size=image_size,
        synthetic=synthetic,
        device=device,
    )
    dev = resolve_device(device)
    notes: list[str] = []
    if synthetic:
        size = image_size or 224
        pair, data = synthetic_pair(synthetic, image_size=size, backbone=backbone or "resnet50")
        bb_name = backbone or "resnet50"
    else:
        pair = PAIRS.get(pair_name or "digits-offline")
        if image_size and image_size != pair.image_size:
            pair = dataclasses.replace(pair, image_size=image_size)
        data = pair.load(data_root or default_data_root())
        bb_name = backbone or pair.backbone
    make_backbone, origin = backbone_factory(bb_name, pair.channels, pair.image_size, dict(pair.backbone_options))
    if "not registered" in origin:
        log(f"note: backbone {origin}")
        notes.append(f"backbone {origin}")
    bs = batch_size or pair.schedule.batch_size
    names = METHODS.expand(methods) if methods else list(METHODS.names())
    log(f"bench on {device_name(dev)}: {pair.name}, backbone {bb_name}, batch {bs}, {steps} steps (+{warmup} warm-up)")
    batches = (bs, 2 * bs)
    graphed = cuda_graphs and dev.type == "cuda"
    case = BenchCase(pair, data, dev, bs, steps, warmup, make_backbone, compile, repeats)
    # every profile before the first CUDA graph of the process: CUPTI attaching (or tearing down)
    # after a capture has broken graphs in some torch/CUDA versions (torch's profiler notes)
    bare_profiles: dict[int, StepProfile] = {}
    profiles: dict[str, tuple[StepProfile | None, str]] = {}
    for b in batches if profile else ():
        got, failed = _try_profile(lambda: bare_profile(make_backbone, pair, b, steps, warmup, dev))  # noqa: B023
        if got is not None:
            bare_profiles[b] = got
        if failed:
            notes.append(f"bare, batch {b}: {failed}")
    for name in names if profile else ():
        profiles[name] = _try_profile(
            lambda: method_profile(name, dataclasses.replace(case, compile=False))  # noqa: B023
        )
    # Set everything up (and warm it up) first, then time it all in shared rounds
    # (interleaved_rates): each round times the bare network and every method close together, so a
    # clock that drifts over the bench (GPU boost and heat, a shared machine's load) moves both sides
    # of a ratio formed round by round, instead of landing on the methods timed late.
    runs: dict[tuple[str, Any, str], Callable[[int], int]] = {}
    for b in batches:
        runs[("bare", b, "eager")] = bare_runner(make_backbone, pair, b, warmup, dev, compile)
    for b in batches if graphed else ():
        runs[("bare", b, "graph")] = bare_runner(make_backbone, pair, b, warmup, dev, compile, True)
    prepared: dict[str, MethodRuns] = {}
    sb_notes: dict[tuple[str, str], list[str]] = {}
    sb_why: dict[str, str] = {}
    for name in names:
        prepared[name] = mr = MethodRuns(name, case, graphed)
        runs.update({("method", name, kind): run for kind, run in mr.runs.items()})
        if seed_batch > 1 and not compile and "eager" in mr.runs:
            go, why, got_notes = seed_batch_runner(name, case, seed_batch)
            sb_why[name] = why  # a refusal or a failure
            if go is not None:
                runs[("seed-batch", name, "eager")], sb_notes[(name, "eager")] = go, got_notes
                if graphed:
                    go, why, got_notes = seed_batch_runner(name, case, seed_batch, cuda_graphs=True)
                    if go is None:
                        sb_notes[(name, "graph-refused")] = [why]
                    else:
                        runs[("seed-batch", name, "graph")], sb_notes[(name, "graph")] = go, got_notes
        log(f"  {name}: set up")
    log(f"  timing {len(runs)} runs in {repeats} rounds of {steps} and {2 * steps} steps each")
    rates = interleaved_rates(runs, steps, repeats, clock=_CLOCK)
    bare_by_batch: dict[int, float] = {}
    bare_range: dict[int, tuple[float, float]] = {}
    bare_graph: dict[int, float] = {}
    bare_graph_range: dict[int, tuple[float, float]] = {}
    bare_rates: dict[tuple[int, str], Steady] = {}
    drift: dict[str, dict[int, tuple[float, float]]] = {"eager": {}, "graph": {}}
    for (what, b, kind), rate in rates.items():
        if what != "bare":
            continue
        rate = bare_rates[(b, kind)] = rate.scaled(b)
        by, ranges = (bare_by_batch, bare_range) if kind == "eager" else (bare_graph, bare_graph_range)
        by[b], ranges[b] = rate.per_s, (rate.low, rate.high)
        drift[kind][b] = (rate.rounds[0], rate.rounds[-1])
        log(f"  bare {bb_name}, batch {b}{', CUDA graph' if kind == 'graph' else ''}: {rate.per_s:,.0f} images/s")
    bare_ops = {b: bare_ops_per_step(make_backbone, pair, b, dev) for b in batches}
    result = BenchResult(
        device=device_name(dev),
        torch_version=torch.__version__,
        pair=pair.name,
        backbone=bb_name,
        image_size=pair.image_size,
        batch_size=bs,
        steps=steps,
        warmup=warmup,
        compile=compile,
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        bare_images_per_s=bare_by_batch[bs],
        bare_by_batch=bare_by_batch,
        bare_graph_by_batch=bare_graph,
        bare_ops_by_batch=bare_ops,
        notes=notes,
        seed_batch=seed_batch,
        bare_profiles=bare_profiles,
        repeats=repeats,
        bare_range_by_batch=bare_range,
        bare_graph_range_by_batch=bare_graph_range,
        unmeasured=_unmeasured(dev, cuda_graphs, seed_batch, compile),
        bare_drift=drift["eager"],
        bare_graph_drift=drift["graph"],
        interleaved=True,
    )
    for name in names:
        mr = prepared[name]
        own = {kind: rates[("method", name, kind)] for kind in mr.runs}
        timing = mr.finish(own)
        if name in profiles:
            timing.profile, failed = profiles[name]
            timing.note = "; ".join(n for n in (timing.note, failed) if n)
        if "eager" in own:
            ips = timing.images_per_step
            near = min(batches, key=lambda b: abs(b - ips))
            timing.ratio = paired_ratio(own["eager"].scaled(ips), bare_rates[(near, "eager")])
            if "graph" in own and (near, "graph") in bare_rates:
                timing.graph_ratio = paired_ratio(own["graph"].scaled(ips), bare_rates[(near, "graph")])
        if name in sb_why:
            extra = [sb_why[name]]
            sb = rates.get(("seed-batch", name, "eager"))
            if sb is not None:
                timing.seed_batch_steps_per_s = sb.per_s
                timing.seed_batch_speedup = paired_ratio(sb, own["eager"], seed_batch)
                extra.append(_seed_batch_note(sb, sb_notes[(name, "eager")], False))
            sbg = rates.get(("seed-batch", name, "graph"))
            if sbg is not None:
                timing.seed_batch_graph_steps_per_s = sbg.per_s
                timing.seed_batch_graph_note = _seed_batch_note(sbg, sb_notes[(name, "graph")], True)
                if "graph" in own:
                    timing.seed_batch_graph_speedup = paired_ratio(sbg, own["graph"], seed_batch)
            elif (name, "graph-refused") in sb_notes:
                timing.seed_batch_graph_note = sb_notes[(name, "graph-refused")][0]
            timing.note = "; ".join(n for n in (timing.note, *extra) if n)
        shown = f"{timing.images_per_s:,.0f} images/s" if timing.images_per_s else timing.note
        log(f"  {name}: {shown}")
        result.methods.append(timing)
    return result


def _unmeasured(device: torch.device, cuda_graphs: bool, seed_batch: int, compile: bool) -> dict[str, str]:
    """Why a column is empty in every row of this bench (the legend says it: no bare dash)."""
    out: dict[str, str] = {}
    if device.type != "cuda":
        out["graphs steps/s, ratio graphs, seed-batch graphs"] = f"CUDA graphs need a CUDA device (device: {device})"
        out["host syncs"] = f"counted by CUDA's sync-debug mode, CUDA only (device: {device})"
    elif not cuda_graphs:
        out["graphs steps/s, ratio graphs, seed-batch graphs"] = "--no-cuda-graphs"
    if seed_batch <= 1:
        out["seed-batch steps/s/seed, seed-batch graphs"] = "no --seed-batch S (S > 1)"
    elif compile:
        # the engine runs the seeds of a compiled configuration separately (engine/seed_batch.py): an
        # uncompiled vmapped step set against the compiled single run would time a path no run takes
        out["seed-batch steps/s/seed, seed-batch graphs"] = (
            "--compile (the engine runs the seeds of a compiled run separately, never seed-batched)"
        )
    if compile:
        out["ops/step, ops ratio"] = "--compile (a compiled step runs eagerly under the counting mode)"
    return out


def _span(value: float, low: float, high: float) -> str:
    """``value`` with its spread as ``−a/+b %`` (:class:`Steady`)."""
    if value <= 0:
        return ""
    return f" (−{100 * (value - low) / value:.0f}/+{100 * (high - value) / value:.0f} %)"


def _ratio(num: float, den: float, num_range: tuple[float, float] | None, den_range: tuple[float, float] | None) -> str:
    """``num / den`` and, when both spreads are known, its range: the lowest over the highest to
    the highest over the lowest (single repeats of each), so that 0.90 and 0.95 read as apart
    only when their ranges are."""
    shown = f"{num / den:.2f}"
    if num_range is None or den_range is None or min(den_range) <= 0:
        return shown
    return f"{shown} ({num_range[0] / den_range[1]:.2f}–{num_range[1] / den_range[0]:.2f})"


def _paired(r: tuple[float, float, float]) -> str:
    """A ratio paired by round (:func:`paired_ratio`): its median and the range of single rounds."""
    return f"{r[0]:.2f} ({r[1]:.2f}–{r[2]:.2f})"


def _setup_ms(ms: float | None) -> str:
    """The fixed cost of a run in ms: a dash when not measured apart (a plain rate), and a negative
    estimate (the short run slower per step than the long one: noise larger than the fixed cost)
    shown as such, never clipped to a 0 that reads as measured."""
    if ms is None:
        return "—"
    if ms < 0:
        return f"≈0 (−{-ms:,.0f} ms, noise)"
    return f"{ms:,.0f}"


def markdown(result: BenchResult) -> str:
    """The result as a Markdown table with its context."""
    lines = [
        f"# dabench bench: {result.pair}, {result.backbone}",
        "",
        f"- device: {result.device}",
        f"- torch: {result.torch_version}",
        f"- batch size: {result.batch_size} per domain, image size {result.image_size} px",
        f"- timed steps: runs of {result.steps} and {2 * result.steps} steps, each {result.repeats} times, after "
        f"{result.warmup} warm-up steps; torch.compile: {result.compile}",
        *(
            [
                f"- rounds: the {result.repeats} timings of every rate were taken in {result.repeats} rounds, each "
                "round timing the bare network and every method once (the order rotated by one per round), so "
                "every ratio pairs timings taken close together"
            ]
            if result.interleaved
            else []
        ),
        f"- date: {result.date}",
        "- images/s counts every image a step trains on (source + target for a DA method)",
        *[f"- note: {n}" for n in result.notes],
        *_drift_lines(result),
        "- ratio: method images/s over the bare network's at the batch closest to the method's images/step; "
        "both timed alike (steady state, the same repeats)"
        + (
            "; the median of the rounds' own ratios (each method's round against the bare network's same round), "
            "(x–y) the lowest and highest round: two ratios whose ranges overlap are not told apart by this bench"
            if result.interleaved
            else ""
        ),
        "- spread: steps/s (−a/+b %) is the range of single repeats around the rate"
        + (
            ""
            if result.interleaved
            else "; a ratio's (x–y) is the lowest over the highest to the highest over the lowest of those: two "
            "ratios whose ranges overlap are not told apart by this bench"
        ),
        "",
        "- graphs: steps/s with the step captured in a CUDA graph (--cuda-graphs); its ratio is over the "
        "bare network's, also captured (the limit with the same levers)",
        f"- seed-batch: steps/s of each seed with {result.seed_batch or 'S'} seeds trained as one vmapped model "
        "(--seed-batch), eager steps, not compiled; (k×): the seeds' steps/s together over one run's steps/s, "
        f"i.e. {result.seed_batch or 'S'} × per seed / steps/s (above 1: batching the seeds is faster)"
        + ("; the median of the rounds' own" if result.interleaved else ""),
        "- seed-batch graphs: the same with the seed-batched step captured in a CUDA graph (--seed-batch with "
        "--cuda-graphs, CUDA); (k×) over graphs steps/s (one run, captured)",
        "- steps/s are steady-state: the difference of two timed runs of different lengths, so what a run pays "
        "once (building its loop; a captured run's warm-up steps and capture) is left out; setup ms is that "
        "fixed cost per run (eager / captured); ≈0 (−x ms, noise): the estimate came out negative, the fixed "
        "cost is below the timing noise",
        "- ops/step: operations of one captured step (each a kernel or more on a GPU; counted on any device, "
        "off CUDA on the graph body run eagerly); ops ratio: the bare network's ops/step at the nearest batch "
        "over the method's, the rate ratio a launch-free GPU would give if every kernel cost the same",
        *[f"- not measured in this bench, {cols}: {why}" for cols, why in result.unmeasured.items()],
        "",
        "| method | images/step | steps/s | images/s | ratio method/bare | graphs steps/s | ratio graphs | "
        "setup ms | ops/step | ops ratio | host syncs | seed-batch steps/s/seed | seed-batch graphs steps/s/seed | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    bare = result.bare_by_batch or {result.batch_size: result.bare_images_per_s}
    bare_g, bare_ops = result.bare_graph_by_batch, result.bare_ops_by_batch
    bare_r, bare_gr = result.bare_range_by_batch, result.bare_graph_range_by_batch
    for b, rate in sorted(bare.items()):
        span = _span(rate, *bare_r[b]) if b in bare_r else ""
        g = (
            f"{bare_g[b] / b:,.1f}{_span(bare_g[b], *bare_gr[b]) if b in bare_gr else ''} | 1.00"
            if b in bare_g
            else "— | —"
        )
        ops = f"{bare_ops[b]:,} | 1.00" if b in bare_ops else "— | —"
        lines.append(
            f"| bare {result.backbone} + linear head | {b} | {rate / b:,.1f}{span} | {rate:,.0f} | 1.00 | {g} | — | "
            f"{ops} | — | — | — | data already on device, CE + SGD |"
        )
    for m in result.methods:
        if m.images_per_s is None or m.steps_per_s is None:
            lines.append(f"| {m.method} | — | — | — | — | — | — | — | — | — | — | — | — | {m.note} |")
            continue
        syncs = "—" if m.host_syncs is None else f"{m.host_syncs} in {m.sync_steps} steps"
        near = min(bare, key=lambda b: abs(b - m.images_per_step))
        ips = m.images_per_step

        def images(r: tuple[float, float] | None) -> tuple[float, float] | None:
            return None if r is None else (r[0] * ips, r[1] * ips)  # noqa: B023 - used at once

        span = _span(m.steps_per_s, *m.steps_per_s_range) if m.steps_per_s_range else ""
        ratio = (
            _paired(m.ratio)
            if m.ratio
            else _ratio(m.images_per_s, bare[near], images(m.steps_per_s_range), bare_r.get(near))
        )
        g = "— | —"
        if m.graph_steps_per_s is not None and near in bare_g:
            g_span = _span(m.graph_steps_per_s, *m.graph_steps_per_s_range) if m.graph_steps_per_s_range else ""
            g_ratio = (
                _paired(m.graph_ratio)
                if m.graph_ratio
                else _ratio(
                    m.graph_steps_per_s * ips, bare_g[near], images(m.graph_steps_per_s_range), bare_gr.get(near)
                )
            )
            g = f"{m.graph_steps_per_s:,.1f}{g_span} | {g_ratio}"
        setup = _setup_ms(m.setup_ms)
        if m.graph_steps_per_s is not None:  # eager / captured; a fixed cost not measured apart is a dash
            setup += f" / {_setup_ms(m.graph_setup_ms)}"
        ops = "— | —"
        if m.graph_ops and near in bare_ops:
            ops = f"{m.graph_ops:,} | {bare_ops[near] / m.graph_ops:.2f}"
        seeds = result.seed_batch
        sb = sbg = "—"
        if m.seed_batch_steps_per_s is not None:  # the seeds' steps together against one run's, eager
            k = m.seed_batch_speedup[0] if m.seed_batch_speedup else seeds * m.seed_batch_steps_per_s / m.steps_per_s
            sb = f"{m.seed_batch_steps_per_s:,.1f} ({k:.2f}×)"
        if m.seed_batch_graph_steps_per_s is not None:
            sbg = f"{m.seed_batch_graph_steps_per_s:,.1f}"
            if m.seed_batch_graph_speedup:  # captured against captured, paired by round
                sbg += f" ({m.seed_batch_graph_speedup[0]:.2f}×)"
            elif m.graph_steps_per_s:
                sbg += f" ({seeds * m.seed_batch_graph_steps_per_s / m.graph_steps_per_s:.2f}×)"
        sb_note = m.seed_batch_graph_note
        sb_note = "" if sb_note in ("", "captured") else f"seed-batch graphs: {sb_note}"
        note = "; ".join(n for n in (m.note, "" if m.graph_note in ("", "captured") else m.graph_note, sb_note) if n)
        lines.append(
            f"| {m.method} | {ips} | {m.steps_per_s:,.1f}{span} | {m.images_per_s:,.0f} | "
            f"{ratio} | {g} | {setup} | {ops} | {syncs} | {sb} | {sbg} | {note} |"
        )
    return "\n".join(lines + _profile_lines(result)) + "\n"


def _drift_lines(result: BenchResult) -> list[str]:
    """The bare network's drift over the bench by batch (eager, captured): its rate in the first and
    the last round (interleaved), or before and after the methods (a result of the older layout)."""
    out = []
    for label, drift in (("", result.bare_drift), (", CUDA graph", result.bare_graph_drift)):
        parts = [
            f"batch {b}: {a:,.0f} → {z:,.0f} ({100 * (z / a - 1):+.0f} %)"
            for b, (a, z) in sorted(drift.items())
            if a > 0
        ]
        if not parts:
            continue
        if result.interleaved:
            out.append(
                f"- bare network{label}, images/s in the first → the last round: {'; '.join(parts)}; the clock's "
                "drift over the bench, which the ratios, paired by round, cancel"
            )
        else:
            out.append(
                f"- bare network{label}, images/s before → after the methods: {'; '.join(parts)}; its rate is the "
                "mean of the two and its range spans both, so clock drift widens every ratio's range"
            )
    return out


def _profile_lines(result: BenchResult) -> list[str]:
    """The ``--profile`` section: per bare batch and method, its step's time by operation."""
    rows = [(p.label, p) for _, p in sorted(result.bare_profiles.items())]
    rows += [(m.method, m.profile) for m in result.methods if m.profile is not None]
    if not rows:
        return []
    clock = rows[0][1].clock
    what = (
        "kernel time on the device, which a captured step replays unchanged (launches excluded)"
        if clock == "device"
        else "the operations' own CPU time"
    )
    lines = [
        "",
        "## Where a step's time goes (--profile)",
        "",
        f"Eager steps, µs per step by ATen operation ({what}; self time, a steady-state difference of "
        f"profiled runs of {result.steps} and {2 * result.steps} steps). The largest {SHOWN} operations, "
        "then the rest; the raw numbers, every operation, are in the .json beside this file.",
        "",
        "| step | µs/step | operations: calls/step, µs/step (share) |",
        "| --- | ---: | --- |",
    ]
    lines += [f"| {label} | {p.us_per_step:,.0f} | {p.summary()} |" for label, p in rows]
    return lines


def write_result(result: BenchResult, out: pathlib.Path) -> pathlib.Path:
    """Write the Markdown table to ``out`` and the raw numbers beside it (``.json``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(result))
    out.with_suffix(".json").write_text(dump_json(result.to_dict(), indent=2))
    return out


def default_out(device: str | None, synthetic: int, backbone: str | None) -> pathlib.Path:
    dev = resolve_device(device)
    suffix = f"-{backbone or 'resnet50'}-synthetic" if synthetic else ""
    return pathlib.Path("results/bench") / f"{device_slug(dev)}{suffix}.md"


__all__ = [
    "BenchCase",
    "BenchResult",
    "EngineBench",
    "MethodTiming",
    "backbone_factory",
    "bare_images_per_s",
    "bare_profile",
    "bare_ops_per_step",
    "count_host_syncs",
    "default_out",
    "markdown",
    "method_profile",
    "run_bench",
    "seed_batch_timings",
    "Steady",
    "steady_rate",
    "synthetic_pair",
    "time_method",
    "write_result",
]
