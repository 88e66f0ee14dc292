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
- the data: its own :class:`DeviceData` (generator, batch streams, augmentation, shots), drawn in
  the unbatched order;
- BatchNorm: the stacked running statistics are updated in place, per seed, by ``functional_call``
  under ``vmap``;
- evaluations every ``eval_every`` steps: the seed's slice is copied into a normal method
  instance and :meth:`RunContext.record_eval` evaluates it, so curves and validators are
  computed by the same code as an unbatched run;
- divergence: a device-side "first non-finite step" per seed (total and each loss part), read
  once per ``log_every``. A seed that diverges is recorded ``diverged`` (same step and message
  as unbatched); the others go on in the same batch: every operation is per seed (a batched
  convolution is a grouped one, SGD is elementwise), so the diverged seed's NaNs never reach the
  others' slices (``tests/test_seed_batch.py`` checks the survivors equal their unbatched runs);
- the source-only checkpoint ``checkpoints/<run_id>.pt`` and the record (same run id).

Differences from unbatched runs: dropout and noise layers draw from one global generator for
all seeds (``randomness="different"``), so with them a seed's run is an equally valid draw, not
the same one; without them the records agree to float32 reduction-order noise (the tolerance
is stated in ``tests/test_seed_batch.py``). The whole group's wall time is each seed's
``timings.wall_s``; ``timings.seed_batch`` says ``"<S> seeds"``.

Falls back to separate runs (:func:`~dabench.engine.train.execute` per seed, one after another;
``timings.seed_batch = "fallback: <reason>"``) when the method overrides ``fit``, declares
several optimisers (multi-phase ``step``, MCD), when its first step cannot be vmapped (it raises
under ``vmap``: host reads, data-dependent shapes), when ``compile`` is asked for, and when a seed
has a mid-run checkpoint to resume from. A seed-batched group writes no mid-run checkpoints:
an interrupted group restarts from scratch (completed records are never lost).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.domain import DomainPair, PairData, check_target_shots, lr_factor
from ..core.method import MAIN, Batch, Loss, Method
from ..core.record import RunResult
from ..core.spec import RunSpec
from ..core.store import RunStore, atomic_torch_save
from .data import DeviceData
from .evaluate import autocast
from .train import Diverged, RunContext, _build_optimizers, _first_bad_part, execute, prepare_method, save_features

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
    checkpoint_every: int,
    compile: bool,
    reason: str,
    cuda_graphs: bool | None = None,
) -> list[SeedOutcome]:
    """The fallback: each seed through the unbatched engine, its record noting why."""
    out: list[SeedOutcome] = []
    for spec in specs:
        try:
            res = execute(
                spec,
                pair,
                pair_data,
                device,
                store,
                on_step,
                checkpoint_every,
                compile=compile,
                cuda_graphs=cuda_graphs,
            )
            res.timings = {**res.timings, "seed_batch": f"fallback: {reason}"}
            out.append(res)
        except Exception as exc:  # noqa: BLE001 - the seed failed; the caller records it
            out.append(exc)
    return out


def execute_seeds(
    specs: Sequence[RunSpec],
    pair: DomainPair,
    pair_data: PairData,
    device: torch.device,
    store: RunStore | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
    compile: bool = False,
    cuda_graphs: bool | None = None,
) -> list[SeedOutcome]:
    """Train and evaluate the seeds ``specs`` (one configuration) as one vmapped model.

    Returns, per spec in order, its :class:`RunResult` or the exception that ended it
    (:class:`Diverged` for a diverged seed). Never raises for a run's own failure.
    """
    specs = list(specs)
    keys = {s.seed_group for s in specs}
    if len(keys) != 1:
        raise ValueError(f"execute_seeds: specs differ in more than their seed ({len(keys)} configurations)")
    args = (specs, pair, pair_data, device, store, on_step, checkpoint_every, compile)
    if len(specs) == 1:
        return _separately(*args, reason="one seed", cuda_graphs=cuda_graphs)
    if compile:
        return _separately(*args, reason="compile", cuda_graphs=cuda_graphs)
    if checkpoint_every and store is not None:
        if any(store.checkpoint_path(s.run_id, partial=True).exists() for s in specs):
            return _separately(*args, reason="resuming from mid-run checkpoints", cuda_graphs=cuda_graphs)
    outcomes: list[SeedOutcome | None] = [None] * len(specs)
    methods: list[Method] = []
    ctxs: list[RunContext] = []
    live: list[int] = []  # positions in specs that build and train
    for i, spec in enumerate(specs):
        try:
            method = prepare_method(spec, pair, device, store)  # the unbatched run's start, exactly
            check_target_shots(pair, pair_data, spec.target_shots, spec.eval_shots)
            data = DeviceData(pair, pair_data, device, spec.seed, spec.target_shots, spec.eval_shots)
        except Exception as exc:  # noqa: BLE001 - this seed fails; the others go on
            outcomes[i] = exc
            continue
        methods.append(method)
        ctxs.append(RunContext(spec, pair, data, device, store, None, 0))
        live.append(i)
    if not methods:
        return [o for o in outcomes if o is not None]
    refusal = batch_refusal(methods[0])
    if refusal is not None or len(methods) == 1:
        rest = _separately(
            [specs[i] for i in live],
            pair,
            pair_data,
            device,
            store,
            on_step,
            0,
            False,
            refusal or "one seed",
            cuda_graphs,
        )
        for i, res in zip(live, rest):
            outcomes[i] = res
        return [o for o in outcomes if o is not None]
    try:
        results = train_batched(methods, ctxs, device, on_step)
    except _NotVmappable as exc:
        rest = _separately(
            [specs[i] for i in live], pair, pair_data, device, store, on_step, 0, False, exc.reason, cuda_graphs
        )
        for i, res in zip(live, rest):
            outcomes[i] = res
        return [o for o in outcomes if o is not None]
    for i, res in zip(live, results):
        outcomes[i] = res
    return [o for o in outcomes if o is not None]


class _NotVmappable(Exception):
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


def train_batched(
    methods: list[Method],
    ctxs: list[RunContext],
    device: torch.device,
    on_step: Callable[[int, int], None] | None = None,
    finish: bool = True,
) -> list[SeedOutcome]:
    """The step loop of :meth:`RunContext.train_steps`, over S stacked seeds (``methods[i]``
    built for ``ctxs[i]``); returns each seed's outcome. ``finish=False`` (``dabench bench``)
    stops after the loop: no end-of-run evaluation, checkpoint or result."""
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
    uses = methods[0].uses
    streams: list[dict[str, Any]] = []
    for ctx in ctxs:
        data, st = ctx.data, {}
        if uses.source_labels:
            st["source"] = data.stream(data.source, sch.batch_size)
        if uses.target_unlabeled:
            st["target"] = data.stream(data.target, sch.batch_size)
        if ctx.spec.target_shots > 0:
            if len(data.shots) == 0:
                raise ValueError(f"{ctx.spec.method} needs target shots but target_shots gives none")
            st["shots"] = data.stream(data.shots, min(sch.batch_size, len(data.shots)))
        streams.append(st)
    per_step_images = sum(s.batch_size for s in streams[0].values())
    full = {**params, **buffers}
    prefixed = {f"method.{k}": v for k, v in full.items()}
    names = list(prefixed)

    def per_seed(state: tuple[torch.Tensor, ...], parts: dict[str, torch.Tensor], progress: float):
        return functional_call(runner, dict(zip(names, state)), (parts, progress))

    part_names: list[str] = []
    first_bad = torch.full((n_seeds, 1), -1, dtype=torch.long, device=device)
    sums: dict[str, torch.Tensor] = {}
    n_since = 0
    outcomes: list[SeedOutcome | None] = [None] * n_seeds
    alive = list(range(n_seeds))
    t0 = time.perf_counter()
    images = 0
    state = tuple(prefixed[k] for k in names)
    for step in range(steps):
        progress = step / steps
        factor = lr_factor(sch.lr_schedule, progress)
        for g in opt.param_groups:
            g["lr"] = sch.lr * g["lr_mult"] * factor
        seed_batches: list[dict[str, torch.Tensor]] = []
        for ctx, st in zip(ctxs, streams):  # each seed's own streams, in the unbatched order
            data, b = ctx.data, {}
            if "source" in st:
                b["x_source"], b["y_source"] = data.batch_from(data.source, st["source"].next())
            if "target" in st:
                b["x_target"], _ = data.batch_from(data.target, st["target"].next())
            if "shots" in st:
                b["x_shots"], b["y_shots"] = data.batch_from(data.shots, st["shots"].next())
            seed_batches.append(b)
        stacked = {k: torch.stack([b[k] for b in seed_batches]) for k in _PARTS if k in seed_batches[0]}
        try:
            with autocast(device):
                totals, parts = vmap(lambda st, bt, p=progress: per_seed(st, bt, p), randomness="different")(
                    state, stacked
                )
        except Exception as exc:
            if step == 0:  # the method's step does something vmap cannot batch
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise _NotVmappable(f"step not vmappable: {type(exc).__name__}: {first}") from exc
            raise
        with torch.autocast(device.type, enabled=False):
            opt.zero_grad(set_to_none=True)
            totals.sum().backward()
            opt.step()
        if list(parts) != part_names:
            new = [k for k in parts if k not in part_names]
            part_names += new
            first_bad = torch.cat([first_bad, first_bad.new_full((n_seeds, len(new)), -1)], dim=1)
        zeros = totals.new_zeros(n_seeds)
        values = torch.stack([totals.detach()] + [parts.get(k, zeros) for k in part_names], dim=1)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(values), step, first_bad)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v.detach()
        n_since += 1
        images += per_step_images
        for i in alive:
            ctxs[i].steps_done = step + 1
            ctxs[i].images_seen = images
        last = step + 1 == steps
        if (step + 1) % sch.log_every == 0 or last:
            bad = first_bad.tolist()  # the periodic sync: every seed's total and parts at once
            for i in list(alive):
                if bad[i][0] >= 0:
                    outcomes[i] = Diverged(bad[i][0], *_first_bad_part(part_names, bad[i][1:]))
                    alive.remove(i)
            if not alive:
                break
            if on_step:
                on_step(step + 1, steps)
        if (step + 1) % sch.eval_every == 0 or last:
            for i in alive:
                _load_slice(methods[i], params, buffers, i)
                ctxs[i].record_eval(methods[i], step + 1, {k: v[i] / n_since for k, v in sums.items()})
            sums, n_since = {}, 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if not finish:
        return []
    for i in alive:
        try:
            outcomes[i] = _finish(methods[i], ctxs[i], params, buffers, i, wall, n_seeds)
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
) -> RunResult:
    """Seed ``s``'s end of run, as :func:`execute`'s: checkpoint, features, the result."""
    spec, store, data = ctx.spec, ctx.store, ctx.data
    _load_slice(method, params, buffers, s)
    if not ctx.curve:
        ctx.record_eval(method, ctx.steps_done)
    if store is not None and spec.method == "source-only":
        atomic_torch_save(method.net.state_dict(), store.checkpoint_path(spec.run_id))
    if store is not None:
        store.checkpoint_path(spec.run_id, partial=True).unlink(missing_ok=True)
        if spec.save_features:
            save_features(method, data, store.features_path(spec.run_id))
    final = ctx.curve[-1]
    if not math.isfinite(final["target_acc"]):
        raise Diverged(ctx.steps_done)
    return RunResult(
        curve=ctx.curve,
        final=final,
        target_labels=spec.target_labels(ctx.pair.num_classes),
        eval_size=data.eval_size,
        validators={
            "split": "target_adapt",
            "samples": data.validator_samples,
            "overlaps_evaluation": data.validator_overlaps_eval,
        },
        resumed_from_step=None,
        timings={
            "wall_s": round(wall, 3),  # the whole group's: the seeds trained together
            "steps": ctx.steps_done,
            "steps_per_s": round(ctx.steps_done / wall, 2) if wall > 0 else None,
            "images_per_s": round(ctx.images_seen / wall, 1) if wall > 0 else None,
            "compiled": False,
            "seed_batch": f"{n_seeds} seeds",
        },
    )


__all__ = ["execute_seeds", "train_batched", "batch_refusal", "SeedOutcome"]
