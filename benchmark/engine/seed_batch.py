"""Seed-batched training: the seeds of one configuration trained in one process as ONE vmapped model.

S runs that differ only in their seed (same method, pair, schedule, hyperparameters, backbone)
are stacked: every parameter and buffer becomes one leaf tensor ``[S, ...]``
(:func:`torch.func.stack_module_state`), and each step is one call of
``vmap(per_seed, randomness="different")`` over (parameters, buffers, the seeds' batches
``[S, B, ...]``), where ``per_seed`` runs the method's own ``step`` through
:func:`torch.func.functional_call` and captures the :class:`~dabench.core.method.Loss` its
``update`` is given. ``totals.sum().backward()`` then gives every seed its own gradient (the
seeds' parameters are disjoint) and ONE SGD steps the stacked parameters: SGD with momentum,
weight decay and Nesterov is elementwise, so it is S separate SGDs with the same learning rate,
``lr_mult`` groups and ``lr_factor`` schedule. On a small network the step is launch-bound, so S
seeds cost about as much as one (see ``dabench bench``'s ``seed-batch`` column).

What stays per seed, exactly as in :func:`dabench.engine.train.execute`:

- the initialisation: each seed's method is built after ``torch.manual_seed(seed)`` (and loads
  its own source-only checkpoint when it depends on one) before the stacking;
- the data: its own :class:`DeviceData` (generator, batch streams, augmentation, shots,
  evaluation subset), drawn in the unbatched order; the images and labels of the pair's splits
  are uploaded once per group (one :class:`~dabench.engine.data.DeviceSplits` all seeds' data
  share), not once per seed;
- BatchNorm: the stacked running statistics are updated in place, per seed, by ``functional_call``
  under ``vmap``;
- evaluations every ``eval_every`` steps: the seed's slice is copied into a normal method
  instance and :meth:`RunContext.record_eval` evaluates it, so curves and validators are
  computed by the same code as an unbatched run; an evaluation that raises fails its seed alone;
- divergence: a device-side "first non-finite step" per seed (total and each loss part), read
  once per ``log_every``. A seed that diverges is recorded ``diverged`` (same step and message
  as unbatched); the others go on in the same batch: every operation is per seed (a batched
  convolution is a grouped one, SGD is elementwise), so the diverged seed's NaNs never reach the
  others' slices (``tests/test_seed_batch.py`` checks the survivors equal their unbatched runs);
- the source-only checkpoint ``checkpoints/<run_id>.pt`` and the record (same run id).

CUDA graphs (``cuda_graphs``, resolved by :func:`dabench.engine.graphs.resolve_cuda_graphs`):
after :data:`~dabench.engine.graphs.WARMUP_STEPS` eager steps on a side stream the whole
seed-batched step is captured once (:class:`SeedStepGraph`), every seed's data path included
(its stream cursors, gather and augmentation with its own data generator), and replayed; a
failed capture falls back to eager seed-batched steps. Each seed's ``timings.cuda_graphs`` says which
(``captured`` / ``off`` / ``fallback: <reason>``). A diverged seed stays in the stacked model
and the graph, so nothing is ever re-stacked or re-captured.

Random draws: on the CPU each seed's dropout (the whole dropout family: ``nn.Dropout*``,
``F.dropout`` as AFN calls it, alpha dropout) is drawn from a generator of its own holding the
state the global generator has when its separate run starts its steps (after its
initialisation), in the same shapes and order (:mod:`dabench.engine.seed_draws`): its masks are
its separate run's, bit for bit. Any other random op in the step (a Gaussian-noise layer such as
``cnn32``'s, a method's own sampling) draws from one global generator for all seeds
(``randomness="different"``): the seed's run is then an equally valid draw, not the same one
(its later dropout masks too). On CUDA nothing is replaced (the eager dropout kernel's stream
cannot be matched from the host; the captured step is unchanged): dropout and noise are
another draw. Each record's ``timings.seed_batch_draws`` says which: ``none``, ``the separate
run's (<dropout kinds>)`` or ``another draw: <ops>`` (``(cuda)`` on CUDA, named from the first
step there).

Differences from unbatched runs: float32 reduction order (a batched convolution is a grouped
one), which training amplifies: to 1e-3 relative in the losses and 1 point after 40 steps for
source-only, several points for an adversarial method on an unstable start (DANN: 3.5 points at
step 20; measured in ``tests/test_seed_batch.py``), with or without dropout on the CPU; beyond
that only the draws ``timings.seed_batch_draws`` calls another draw. Where every draw is the
separate run's (or there is none), a seed's record is bit for bit the same whichever seeds share
its group (a resumed group with fewer seeds gives the same numbers). The whole group's wall
time is each seed's ``timings.wall_s``; ``timings.seed_batch`` says ``"<S> seeds"``.

Falls back to separate runs (:func:`~dabench.engine.train.execute` per seed, one after another;
``timings.seed_batch = "fallback: <reason>"``) when the method overrides ``fit``, declares
several optimisers (multi-phase ``step``, MCD), holds a tensor outside its parameters and
buffers that differs per seed (:func:`unstacked_state`: the step would use the first seed's), when a step cannot be vmapped (it raises
under ``vmap``: host reads, data-dependent shapes; at the first step or at a later one, e.g. a
branch on ``progress``: the group's steps so far are then discarded), when ``compile`` is asked for, and when a seed
has a mid-run checkpoint to resume from. A seed-batched group writes no mid-run checkpoints:
an interrupted group restarts from scratch (completed records are never lost); seeds that fall
back are ordinary runs and write the ones ``checkpoint_every`` asks for.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Container, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.domain import DomainPair, PairData, check_target_shots, lr_factor
from ..core.method import MAIN, Batch, Loss, Method
from ..core.record import RunResult
from ..core.spec import RunSpec
from ..core.store import RunStore
from . import graphs
from .data import DeviceData, DeviceSplits, Stream, StreamCursor
from .evaluate import autocast
from .graphs import NotCapturable, graph_sgd_step
from .options import EngineOptions
from .seed_draws import SeedDraws, start_generators
from .train import Diverged, RunContext, _build_optimizers, _first_bad_part, execute, finish_run, sgd_step, start_method

#: what :func:`execute_seeds` gives back per spec: its result, or the exception that ended it
SeedOutcome = RunResult | BaseException

_PARTS = ("x_source", "y_source", "x_target", "x_shots", "y_shots")


def batch_refusal(method: Method) -> str | None:
    """Why ``method`` cannot be seed-batched (checked before any step), or ``None``."""
    cls = type(method)
    if cls.fit is not Method.fit:
        return f"{method.name or cls.__name__} overrides fit()"
    declared = method.optimizers()
    if isinstance(declared, dict) and list(declared) != [MAIN]:
        return f"{method.name or cls.__name__} declares several optimisers ({', '.join(declared)})"
    if cls.refresh is not Method.refresh:  # the batched loop has no per-seed refresh over the target split
        return f"{method.name or cls.__name__} refreshes state over the target split (refresh())"
    return None


def unstacked_state(methods: Sequence[Method]) -> str | None:
    """Why the seeds' methods cannot share one step module, or ``None``: a tensor one holds outside
    its parameters and buffers (a plain attribute, e.g. ``self.proj = torch.randn(...)`` in
    ``build``) that differs between the seeds.

    The vmapped step swaps in each seed's slice of the stacked parameters and buffers alone
    (:func:`~torch.func.functional_call`); every other attribute is the first seed's, so every seed
    would train with the first seed's tensor (and be evaluated with its own): another run than its
    separate one, recorded as if it were. Equal tensors (a constant) are shared harmlessly."""
    first = dict(methods[0].named_modules())
    for other in methods[1:]:
        for path, mod in other.named_modules():
            for attr, value in vars(mod).items():
                if not isinstance(value, torch.Tensor):
                    continue
                ref = getattr(first.get(path), attr, None)
                same = isinstance(ref, torch.Tensor) and ref.shape == value.shape and torch.equal(ref, value)
                if not same:
                    where = f"{path}.{attr}" if path else attr
                    return (
                        f"{methods[0].name or type(methods[0]).__name__} holds tensor {where!r} outside its "
                        "parameters and buffers, different per seed (register_buffer makes it per seed)"
                    )
    return None


class _StepModule(nn.Module):
    """Runs ``method.step`` and returns the Loss its ``update`` was given: the function vmapped."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, parts: dict[str, torch.Tensor], progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        captured: list[Loss] = []

        def update(names: str | Sequence[str], out: Loss) -> None:
            captured.append(out)

        self.method.step(Batch(**parts), progress, update)
        if len(captured) != 1:
            raise RuntimeError(f"seed batching needs exactly one update per step, got {len(captured)}")
        out = captured[0]
        return out.total.float().reshape(()), {k: v.detach().float().reshape(()) for k, v in out.parts.items()}


def _separately(
    specs: Sequence[RunSpec],
    pair: DomainPair,
    pair_data: PairData,
    device: torch.device,
    store: RunStore | None,
    on_step: Callable[[int, int], None] | None,
    engine: EngineOptions,
    reason: str,
    on_outcome: Callable[[RunSpec, SeedOutcome], None] | None = None,
) -> list[SeedOutcome]:
    """The fallback: each seed through the unbatched engine, its record noting why; ``on_outcome``
    hears each seed's outcome as soon as that seed ends (see :func:`execute_seeds`)."""
    out: list[SeedOutcome] = []
    for spec in specs:
        res: SeedOutcome
        try:
            res = execute(spec, pair, pair_data, device, store, on_step, engine)
            res.timings = {**res.timings, "seed_batch": f"fallback: {reason}"}
        except Exception as exc:  # noqa: BLE001 - the seed failed; the caller records it
            res = exc
        out.append(res)
        if on_outcome is not None:
            on_outcome(spec, res)
    return out


def execute_seeds(
    specs: Sequence[RunSpec],
    pair: DomainPair,
    pair_data: PairData,
    device: torch.device,
    store: RunStore | None = None,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
    on_outcome: Callable[[RunSpec, SeedOutcome], None] | None = None,
) -> list[SeedOutcome]:
    """Train and evaluate the seeds ``specs`` (one configuration) as one vmapped model.

    Returns, per spec in order, its :class:`RunResult` or the exception that ended it
    (:class:`Diverged` for a diverged seed). Never raises for a run's own failure.

    ``on_outcome(spec, outcome)``, when given, is called once per spec as soon as its outcome is
    known, before the next seed trains where the seeds run one after another (the fallbacks):
    the caller writes each record then, so a kill while a later seed trains loses no seed that
    had finished (``running/unit.py run_group``). An exception it raises propagates.
    """
    specs = list(specs)
    keys = {s.seed_group for s in specs}
    if len(keys) != 1:
        raise ValueError(f"execute_seeds: specs differ in more than their seed ({len(keys)} configurations)")
    args = (specs, pair, pair_data, device, store, on_step, engine)
    if len(specs) == 1:
        return _separately(*args, reason="one seed", on_outcome=on_outcome)
    if engine.compile:
        return _separately(*args, reason="compile", on_outcome=on_outcome)
    if engine.checkpoint_every and store is not None:
        if any(store.checkpoint_path(s.run_id, partial=True).exists() for s in specs):
            return _separately(*args, reason="resuming from mid-run checkpoints", on_outcome=on_outcome)
    outcomes: list[SeedOutcome | None] = [None] * len(specs)
    methods: list[Method] = []
    ctxs: list[RunContext] = []
    live: list[int] = []  # positions in specs that build and train
    # each seed's global CPU generator state where its separate run starts its steps (after its
    # initialisation; its data draws from its own generator): its dropout masks are drawn from it
    rng_states: list[torch.Tensor] = []
    splits = DeviceSplits(pair_data, device)  # one device copy of the pair's splits for all seeds
    for i, spec in enumerate(specs):
        try:
            method, source_sha256 = start_method(spec, pair, device, store)  # the unbatched run's start, exactly
            check_target_shots(pair, pair_data, spec.target_shots, spec.eval_shots)
            data = DeviceData(pair, pair_data, device, spec.seed, spec.target_shots, spec.eval_shots, splits)
        except Exception as exc:  # noqa: BLE001 - this seed fails; the others go on
            outcomes[i] = exc
            if on_outcome is not None:
                on_outcome(spec, exc)
            continue
        methods.append(method)
        rng_states.append(torch.get_rng_state())
        ctxs.append(RunContext(spec, pair, data, device, store, None, 0, source_sha256=source_sha256))
        live.append(i)
    if not methods:
        return [o for o in outcomes if o is not None]
    reason = batch_refusal(methods[0]) or ("one seed" if len(methods) == 1 else unstacked_state(methods))
    if reason is None:
        try:
            results = train_batched(
                methods,
                ctxs,
                device,
                on_step,
                cuda_graphs=graphs.resolve_cuda_graphs(engine.cuda_graphs, device),
                rng_states=rng_states,
            )
        except NotVmappable as exc:
            reason = exc.reason
        else:
            for i, res in zip(live, results):
                outcomes[i] = res
                if on_outcome is not None:
                    on_outcome(specs[i], res)
            return [o for o in outcomes if o is not None]
    # the seeds run separately, each uploading its own data: the group's models and its device copy
    # of the pair go first (outside the except block, whose traceback would keep them alive)
    del methods, ctxs, splits, method, data
    # each an ordinary run from here: the mid-run checkpoints asked for included (compile is off here)
    rest = _separately([specs[i] for i in live], pair, pair_data, device, store, on_step, engine, reason, on_outcome)
    for i, res in zip(live, rest):
        outcomes[i] = res
    return [o for o in outcomes if o is not None]


class NotVmappable(Exception):
    """The step cannot run under ``vmap``: the seeds are trained separately (``reason`` in their records)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _load_slice(method: Method, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], s: int) -> None:
    """Copy seed ``s``'s slice of the stacked state into its own method instance."""
    with torch.no_grad():
        for name, p in method.named_parameters():
            p.copy_(params[name][s])
        for name, b in method.named_buffers():
            if name in buffers:
                b.copy_(buffers[name][s])


def stack_batches(seed_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The seeds' batches stacked per part (``[S, B, ...]``, seed ``s`` at index ``s``)."""
    keys = [k for k in _PARTS if k in seed_batches[0]]
    return {k: torch.stack([b[k] for b in seed_batches]) for k in keys}


#: the vmapped forward of all seeds: (stacked batch, progress) -> (totals [S], loss parts {name: [S]})
_Forward = Callable[[dict[str, torch.Tensor], "float | torch.Tensor"], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class SeedStepGraph(graphs.CapturedStep):
    """One seed-batched training step captured in a CUDA graph (the seed-batched form of
    :class:`dabench.engine.graphs.StepGraph`), its data path included.

    Inside the graph: every seed's batch (``draw()``: each seed's stream cursors, gather,
    normalisation and augmentation with that seed's own registered data generator, stacked to
    ``[S, B, ...]``), the step's ``progress`` and learning-rate factor from the per-step device
    tables, the vmapped forward and loss of all seeds (``forward``, under bf16 autocast without its
    weight cache), the backward of the summed totals, :func:`graph_sgd_step` of the stacked
    parameters' SGD, the per-seed "first non-finite step" counter ``first_bad`` ``[S, 1 + parts]``
    and the per-seed loss sums ``sums`` ``{part: [S]}`` (both updated in place) and ``step += 1``.
    Outside: each seed's streams' bookkeeping (``StreamCursor.prepare``) and the replay; no copy,
    no fill, no per-seed launch.

    The graph reads and writes the stacked parameter, buffer and momentum tensors themselves, so
    evaluations and the end of the run (:func:`_load_slice`) see every replay's update; nothing is
    re-stacked after the capture.
    """

    def __init__(
        self,
        forward: _Forward,
        opt: torch.optim.Optimizer,
        device: torch.device,
        draw: Callable[[], dict[str, torch.Tensor]],
        progress_table: torch.Tensor,
        lr_table: torch.Tensor,
        first_step: int,
        generators: Sequence[torch.Generator],
        part_names: list[str],
        first_bad: torch.Tensor,
        sums: dict[str, torch.Tensor],
        keys: list[str],
        cursors: Sequence[StreamCursor] = (),
    ) -> None:
        n_seeds = first_bad.shape[0]
        # one [S] sum per part the warm-up steps logged
        shapes = {k: torch.zeros(n_seeds, device=device) for k in keys}
        super().__init__(
            device, progress_table, lr_table, first_step, generators, part_names, sums, shapes, first_bad, cursors
        )
        self.forward, self.opt, self.draw = forward, opt, draw
        self.batch: dict[str, torch.Tensor] = {}

    def body(self) -> None:
        """One seed-batched step, from the seeds' indices to ``step += 1`` (what the graph holds)."""
        self.batch = self.draw()  # outside autocast, as the eager loop draws it
        progress, lrs = self.lookup()
        with autocast(self.device, cache_enabled=False):
            totals, parts = self.forward(self.batch, progress)
        with torch.autocast(self.device.type, enabled=False):
            self.opt.zero_grad(set_to_none=True)
            totals.sum().backward()
            graph_sgd_step(self.opt, lrs)
        new = [k for k in parts if k not in self.part_names]
        if new:
            raise NotCapturable(f"loss part(s) {new} first appear after the warm-up steps")
        if list(parts) != self.keys:
            raise NotCapturable(f"the step logs loss parts {list(parts)}, the warm-up steps logged {self.keys}")
        # every seed's total and parts (a part not logged is 0 in the eager check: nothing to check)
        self.check([(0, totals)] + [(1 + i, parts[k]) for i, k in enumerate(self.part_names) if k in parts])
        self.end_step(parts)


def train_batched(
    methods: list[Method],
    ctxs: list[RunContext],
    device: torch.device,
    on_step: Callable[[int, int], None] | None = None,
    finish: bool = True,
    cuda_graphs: bool = False,
    rng_states: Sequence[torch.Tensor] | None = None,
) -> list[SeedOutcome]:
    """The step loop of :meth:`RunContext.train_steps`, over S stacked seeds (``methods[i]``
    built for ``ctxs[i]``); returns each seed's outcome. ``finish=False`` (``dabench bench``)
    stops after the loop: no end-of-run evaluation, checkpoint or result.

    ``cuda_graphs`` (already resolved: CUDA only): :data:`graphs.WARMUP_STEPS` eager steps on a
    side stream, then the step captured once (:class:`SeedStepGraph`) and replayed; a capture
    that fails leaves CUDA as it was (:func:`graphs.recover_from_failed_capture`) and the steps go
    on eagerly. What became of it is each ``ctxs[i].graph_note`` (the record's
    ``timings["cuda_graphs"]``). A seed that diverges stays in the stacked model (and the graph)
    until the end: its NaNs stay in its slice, it is only no longer evaluated or recorded, so
    nothing is re-stacked or re-captured.

    ``rng_states[i]``: the global CPU generator's state where seed ``i``'s separate run starts
    its steps; on the CPU its dropout masks are drawn from a generator in that state
    (:mod:`dabench.engine.seed_draws`), so they are the separate run's. ``None`` (``dabench
    bench``): generators seeded with each spec's seed, not the separate runs' streams. Each
    record's ``timings.seed_batch_draws`` says which (:meth:`SeedDraws.note`)."""
    n_seeds = len(methods)
    spec0 = ctxs[0].spec
    sch = spec0.schedule
    steps = methods[0].num_steps(sch.steps)
    for m in methods:
        m.train()
    params, buffers = stack_module_state(methods)  # leaves [S, ...]
    # a throwaway copy whose parameters functional_call swaps for the stacked slices
    runner = _StepModule(copy.deepcopy(methods[0]))
    # the engine's optimiser construction, over the stacked leaves: method 0's groups (with their
    # lr_mult) mapped by parameter name
    name_of = {id(p): n for n, p in methods[0].named_parameters()}
    groups = methods[0].optimizers()[MAIN]
    stacked_groups = [{**g, "params": [params[name_of[id(p)]] for p in g["params"]]} for g in groups]

    class _Groups:  # what _build_optimizers reads of a method
        name = methods[0].name

        @staticmethod
        def optimizers() -> dict[str, list[dict]]:
            return {MAIN: stacked_groups}

    opt = _build_optimizers(_Groups(), sch)[MAIN]  # type: ignore[arg-type]
    streams = [ctx.streams(m) for ctx, m in zip(ctxs, methods)]
    per_step_images = sum(s.batch_size for s in streams[0].values())
    full = {**params, **buffers}
    prefixed = {f"method.{k}": v for k, v in full.items()}
    names = list(prefixed)
    # the very tensors stack_module_state made: the optimiser steps them, the graph replays on them
    # and _load_slice reads them
    state = tuple(prefixed[k] for k in names)

    if rng_states is None:
        generators = [torch.Generator().manual_seed(ctx.spec.seed) for ctx in ctxs]
    else:
        generators = start_generators(rng_states)
    # the CPU: the dropout family drawn per seed (each seed's separate-run masks) and the other
    # random ops named; CUDA: nothing replaced (the eager kernel's stream cannot be matched), the
    # first step watched for the note, the rest (and any capture) without the mode, as before
    draws = SeedDraws(generators, replace=device.type == "cpu", device=device, exact=rng_states is not None)
    watch = True  # read by forward(); the loop below clears it after CUDA's first step
    global_drawn = False  # the CPU: the global generator moved during a step (an unreproduced draw)

    def per_seed(st: tuple[torch.Tensor, ...], parts: dict[str, torch.Tensor], progress: float | torch.Tensor):
        return functional_call(runner, dict(zip(names, st)), (parts, progress))

    def forward(stacked: dict[str, torch.Tensor], progress: float | torch.Tensor):
        # progress: a float in eager steps, the graph's 0-d tensor (shared by all seeds) when captured
        batched = vmap(lambda st, bt: per_seed(st, bt, progress), randomness="different")
        if not watch:
            return batched(state, stacked)
        with draws:
            return batched(state, stacked)

    def draw(take: Sequence[Callable[[str], torch.Tensor]], names: Sequence[Container[str]]) -> dict[str, torch.Tensor]:
        # each seed's own streams, drawn as the unbatched loop draws them (seed by seed), stacked
        batches = [ctx._batch(t, n) for ctx, t, n in zip(ctxs, take, names)]
        return stack_batches([{k: getattr(b, k) for k in _PARTS if getattr(b, k) is not None} for b in batches])

    def next_of(st: dict[str, Stream]) -> Callable[[str], torch.Tensor]:
        return lambda name: st[name].next()

    def eager_draw() -> dict[str, torch.Tensor]:
        return draw([next_of(st) for st in streams], streams)

    part_names: list[str] = []
    first_bad = torch.full((n_seeds, 1), -1, dtype=torch.long, device=device)
    sums: dict[str, torch.Tensor] = {}
    last_parts: list[str] = []  # the loss parts of the last eager step: a graph's sums
    n_since = 0
    outcomes: list[SeedOutcome | None] = [None] * n_seeds
    alive = list(range(n_seeds))

    # CUDA graphs: WARMUP_STEPS eager steps on a side stream, the capture at step ``capture_at``
    graph: SeedStepGraph | None = None
    capture_at: int | None = None
    side: torch.cuda.Stream | None = None
    if not cuda_graphs:
        note = graphs.OFF
    elif (why := graphs.refusal(methods[0], steps)) is not None:
        note = why
    else:
        note, capture_at, side = graphs.OFF, graphs.WARMUP_STEPS, graphs.side_stream(device)
    cursors: list[dict[str, StreamCursor]] = []

    def take_of(c: dict[str, StreamCursor]) -> Callable[[str], torch.Tensor]:
        return lambda name: c[name].take(defer=True)

    def capture(step: int) -> SeedStepGraph | None:
        """The step captured (data path included) to replay from ``step`` on; ``None`` if it cannot be."""
        nonlocal note
        main_stream = graphs.current_stream(device)
        states = [ctx._data.generator.get_state() for ctx in ctxs]
        try:
            cursors[:] = [{name: StreamCursor(s) for name, s in st.items()} for st in streams]
            takes = [take_of(c) for c in cursors]  # deferred: the graph advances every cursor at once
            progress, lrs = graphs.step_tables(sch.lr, sch.lr_schedule, steps, [opt])
            graph = SeedStepGraph(
                forward, opt, device, lambda: draw(takes, cursors), progress, lrs, step,
                [ctx._data.generator for ctx in ctxs], part_names, first_bad, sums, last_parts,
                [c for seed_cursors in cursors for c in seed_cursors.values()],
            )  # fmt: skip
            graph.count_ops = ctxs[0].count_ops
            graph.capture()
        except Exception as exc:  # noqa: BLE001 - any failure to capture: eager steps instead
            note = graphs.fallback_note(exc)
            cursors.clear()
            graphs.recover_from_failed_capture(main_stream)
            for ctx, st, state in zip(ctxs, streams, states):
                ctx.renew_generator(state, st)
            return None
        note = graphs.CAPTURED
        return graph

    t0 = time.perf_counter()
    images = 0
    for step in range(steps):
        if step == capture_at:
            capture_at = None
            graph = capture(step)
            if graph is not None:
                sums = graph.sums
        if graph is not None:
            for seed_cursors in cursors:  # host bookkeeping; device work only at epoch boundaries
                for cursor in seed_cursors.values():
                    cursor.prepare()
            graph.replay()
        else:
            progress = step / steps
            factor = lr_factor(sch.lr_schedule, progress)
            for g in opt.param_groups:
                g["lr"] = sch.lr * g["lr_mult"] * factor
            warm = side if capture_at is not None and step < capture_at else None
            with graphs.side_stream_step(warm):
                stacked = eager_draw()
                check_global = device.type == "cpu" and not global_drawn
                before = torch.get_rng_state() if check_global else None
                try:
                    with autocast(device):
                        totals, parts = forward(stacked, progress)
                    if before is not None and not torch.equal(before, torch.get_rng_state()):
                        global_drawn = True  # a random op the mode did not replace: another draw
                    if device.type != "cpu":
                        watch = False  # CUDA: the first step named the random ops; no mode from here
                    with torch.autocast(device.type, enabled=False):
                        opt.zero_grad(set_to_none=True)
                        totals.sum().backward()  # a custom autograd rule may refuse batched tensors here
                        sgd_step(opt)
                except Exception as exc:
                    # the method's step does something vmap cannot batch: at the first step (host
                    # reads, data-dependent shapes) or only later (a branch on ``progress`` that
                    # turns such code on). Either way the seeds are trained separately: a failure
                    # of batching must not be recorded as every seed's failure; a method that
                    # fails unbatched too fails there, seed by seed, with its own error.
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    at = "" if step == 0 else f" at step {step}"
                    raise NotVmappable(f"step not vmappable{at}: {type(exc).__name__}: {first}") from exc
                if list(parts) != part_names:
                    new = [k for k in parts if k not in part_names]
                    part_names += new
                    first_bad = torch.cat([first_bad, first_bad.new_full((n_seeds, len(new)), -1)], dim=1)
                zeros = totals.new_zeros(n_seeds)
                values = torch.stack([totals.detach()] + [parts.get(k, zeros) for k in part_names], dim=1)
                first_bad = torch.where(graphs.nonfinite(values) & (first_bad < 0), step, first_bad)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0) + v.detach()
                last_parts = list(parts)
            if warm is not None:  # back on the main stream before anything reads the step's results
                torch.cuda.current_stream(device).wait_stream(warm)
        n_since += 1
        images += per_step_images
        for i in alive:
            ctxs[i].steps_done = step + 1
            ctxs[i].images_seen = images
        last = step + 1 == steps
        if (step + 1) % sch.log_every == 0 or last:
            counter = graph.read_first_bad() if graph is not None else first_bad
            bad = counter.tolist()  # the periodic sync: every seed's total and parts at once
            for i in list(alive):
                if bad[i][0] >= 0:
                    outcomes[i] = Diverged(
                        bad[i][0], *_first_bad_part(part_names, bad[i][1:]), source_sha256=ctxs[i].source_sha256
                    )
                    alive.remove(i)
            if not alive:
                break
            if on_step:
                on_step(step + 1, steps)
        if (step + 1) % sch.eval_every == 0 or last:
            for i in list(alive):
                try:
                    _load_slice(methods[i], params, buffers, i)
                    ctxs[i].record_eval(methods[i], step + 1, {k: v[i] / n_since for k, v in sums.items()})
                except Exception as exc:  # noqa: BLE001 - this seed's evaluation failed: it fails, as
                    # its separate run would; the others go on (it stays in the stack, as a diverged one)
                    outcomes[i] = exc
                    alive.remove(i)
            sums, n_since = (graph.reset_sums() if graph is not None else {}), 0
            if not alive:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    for ctx in ctxs:
        ctx.graph_note = note
        ctx.graph_ops = graph.ops if graph is not None else None
    if not finish:
        return []
    for i in alive:
        try:
            outcomes[i] = _finish(methods[i], ctxs[i], params, buffers, i, wall, n_seeds, draws.note(global_drawn))
        except Exception as exc:  # noqa: BLE001 - this seed fails; the others are recorded
            outcomes[i] = exc
    return [o for o in outcomes if o is not None]


def _finish(
    method: Method,
    ctx: RunContext,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    s: int,
    wall: float,
    n_seeds: int,
    draws: str,
) -> RunResult:
    """Seed ``s``'s end of run, :func:`execute`'s own (:func:`finish_run`) on its slice of the
    stacked state; ``wall_s`` is the whole group's (the seeds trained together), ``draws`` whose
    random draws its steps made (:meth:`SeedDraws.note`)."""
    _load_slice(method, params, buffers, s)
    timings = {"compiled": False, "seed_batch": f"{n_seeds} seeds", "seed_batch_draws": draws}
    return finish_run(method, ctx, wall, timings)


__all__ = [
    "execute_seeds",
    "train_batched",
    "batch_refusal",
    "unstacked_state",
    "stack_batches",
    "SeedStepGraph",
    "SeedOutcome",
]
