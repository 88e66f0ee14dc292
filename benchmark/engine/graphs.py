"""CUDA graphs of the engine's training step (``dabench run --cuda-graphs``, on by default on CUDA).

A LeNet-sized step is a few hundred tiny kernels: on a GPU the host's launch overhead, not the
arithmetic, bounds it. Capturing the whole step — forward, backward, every update phase's
optimiser step, the device-side divergence counters and loss sums — once in a
``torch.cuda.CUDAGraph`` and replaying it turns those launches into one.

Hand-built rather than ``torch.compile(mode="reduce-overhead")``: compiling a method's step
takes tens of seconds to minutes, longer than a whole 10-s digits run, and recompiles for every
method and hyperparameter; a hand-built capture costs one step.

The data path is inside the graph too (:class:`StepGraph`): each stream's indices come from a
device buffer at a device-side offset (:class:`~dabench.engine.data.StreamCursor`), the gather,
normalisation and augmentation run in the graph with the data generator registered with it
(``CUDAGraph.register_generator_state``), and ``progress`` and every parameter group's learning
rate (the optimiser step is :func:`graph_sgd_step`, torch's fused SGD reading the learning rate
from a tensor; ``torch.optim.SGD`` bakes its float ``lr`` into a graph) come from per-step device
tables indexed by a device step counter the graph advances. Per step, the host does
the streams' bookkeeping (Python integers; a reshuffle at an epoch boundary, on the device) and
one ``replay()``: no copy, no fill. Everything else (evaluations, the ``log_every`` divergence
read, checkpoints, resume) stays as in the eager loop: it reads and writes the same parameter,
buffer, optimiser-state, stream and generator state the graph replays on.

Same batches as the eager loop, with one documented exception: a stream's reshuffle at an
epoch boundary runs before the replay, i.e. before the step's augmentation draws of the
streams drawn earlier in the step (eager: after them), so from the first such boundary of a
second or third stream on, permutation and augmentation draws come from other offsets of the
same generator — the same distribution, and the generator ends in the same state.

A step that cannot be captured (a host sync such as ``.item()``, data-dependent shapes, Python
branching on ``progress``, a loss part that appears only later) makes the run fall back to eager
steps; the record's ``timings["cuda_graphs"]`` says so in one line. A method may also opt out
with the class attribute ``capturable = False``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..core.domain import lr_factor
from ..core.method import Batch, Loss, Method
from .evaluate import autocast
from .opcount import count_ops

#: ``--cuda-graphs`` when neither the CLI nor the API says: on for CUDA devices (off on the CPU,
#: where there is nothing to capture). The one switch to flip if measurements say otherwise.
CUDA_GRAPHS_DEFAULT = True

#: eager steps before the capture (on a side stream, as torch's CUDA-graph docs require): they
#: create the momentum buffers, run cuDNN's autotuning and let the allocator settle
WARMUP_STEPS = 3

#: ``timings["cuda_graphs"]`` values (fallbacks add a reason after ``"fallback: "``)
CAPTURED, OFF = "captured", "off"

_BATCH_PARTS = ("x_source", "y_source", "x_target", "idx_target", "x_shots", "y_shots")


class NotCapturable(RuntimeError):
    """The step cannot be replayed from a graph (raised during capture; the run goes on eagerly)."""


def resolve_cuda_graphs(option: bool | None, device: torch.device) -> bool:
    """Whether a run on ``device`` captures its steps: ``option`` (None: :data:`CUDA_GRAPHS_DEFAULT`), CUDA only."""
    if device.type != "cuda":
        return False
    return CUDA_GRAPHS_DEFAULT if option is None else bool(option)


def refusal(method: Method, steps_left: int) -> str | None:
    """Why this run's steps are not captured before trying (``None``: try)."""
    if not getattr(method, "capturable", True):
        return f"fallback: {method.name or type(method).__name__} declares capturable = False"
    if steps_left <= WARMUP_STEPS:
        return f"fallback: {steps_left} step(s) left, not more than the {WARMUP_STEPS} eager warm-up steps"
    return None


def fallback_note(exc: BaseException) -> str:
    """``"fallback: <first line of the error>"``, the record's one-line note.

    The first error raised in the capture, not the "capture invalidated" that ending the
    capture raises after it (Python chains that one to it as its ``__context__``)."""
    while exc.__context__ is not None and exc.__cause__ is None:
        exc = exc.__context__
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"fallback: {type(exc).__name__}: {first}"[:300]


@torch.no_grad()
def graph_sgd_step(opt: torch.optim.Optimizer, lrs: Sequence[torch.Tensor]) -> None:
    """``opt.step()`` of a ``torch.optim.SGD`` with each group's learning rate read from a device tensor.

    The update of torch's SGD (dampening 0), per group with learning rate η (``lrs[i]``, a 0-d
    float32 tensor on the parameters' device), momentum μ and weight decay λ, for each parameter p
    with a gradient g:

        g ← g + λ p;   b ← μ b + g;   d = g + μ b (Nesterov) or b;   p ← p − η d

    as torch's fused SGD computes it (``torch._fused_sgd_``: one kernel per group and dtype,
    where the foreach form is seven), reading and writing ``opt.state[p]["momentum_buffer"]``, so
    a checkpoint's optimiser state is the same as with ``opt.step()`` — which the engine's own SGD
    runs fused too (``_build_optimizers``): eager and captured steps compute the same update. The
    buffers must exist (torch creates them on a parameter's first step; the engine runs eager
    warm-up steps first): a missing one raises :class:`NotCapturable`.
    """
    if len(lrs) != len(opt.param_groups):
        raise ValueError(f"graph_sgd_step: {len(lrs)} learning rates for {len(opt.param_groups)} parameter groups")
    for group, lr in zip(opt.param_groups, lrs):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        if group.get("dampening", 0) != 0 or group.get("maximize", False):
            raise NotCapturable("graph_sgd_step supports SGD with dampening 0 and maximize=False only")
        if any(p.grad.is_sparse for p in params):
            raise NotCapturable("graph_sgd_step: sparse gradients")
        momentum = group["momentum"]
        bufs: list[torch.Tensor] = []
        if momentum != 0:
            found = [opt.state[p].get("momentum_buffer") for p in params]
            if any(b is None for b in found):
                raise NotCapturable("a parameter has no momentum buffer yet (its first step must be eager)")
            bufs = cast(list[torch.Tensor], found)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(params):  # the fused kernel takes one dtype per call, as torch groups them
            by_dtype.setdefault(p.dtype, []).append(i)
        for idx in by_dtype.values():
            ps = [params[i] for i in idx]
            gs = [cast(torch.Tensor, params[i].grad) for i in idx]
            bs = [bufs[i] for i in idx] if bufs else []
            try:
                torch._fused_sgd_(
                    ps, gs, bs,
                    weight_decay=group["weight_decay"], momentum=momentum, lr=lr, dampening=0.0,
                    nesterov=group["nesterov"], maximize=False, is_first_step=False,
                )  # fmt: skip
            except RuntimeError:
                # the CUDA kernel checks its tensors' layouts (one dtype, dense, the same strides for a
                # parameter, its gradient and its buffer) before it launches anything; where it
                # refuses, the same update in foreach form (seven kernels instead of one)
                _foreach_sgd(ps, gs, bs, group["weight_decay"], momentum, group["nesterov"], lr)


@torch.no_grad()
def _foreach_sgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    lr: torch.Tensor,
) -> None:
    """:func:`graph_sgd_step`'s update in torch's foreach order (``bufs`` empty without momentum)."""
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum != 0:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1.0)
        grads = list(torch._foreach_add(grads, bufs, alpha=momentum)) if nesterov else bufs
    # the 0-d lr in the parameters' dtype: torch's ``alpha=-lr`` also rounds it to that dtype
    torch._foreach_add_(params, torch._foreach_mul(grads, (-lr).to(params[0].dtype)))


class CapturedStep:
    """What both captured steps share (:class:`StepGraph`, one run; the seed-batched
    ``SeedStepGraph``): the per-step device tables, the capture with the data generators
    registered, the replay, the loss sums.

    ``progress_table[s] = s / steps`` (float64) and ``lr_table[s, j]``, group ``j``'s learning
    rate at step ``s`` (float32, what the fused SGD kernel reads; :func:`step_tables`: the very
    floats the eager loop computes) are read at the device step counter ``step``, which the body
    advances last. A subclass's :meth:`body` is the whole step; it calls :meth:`lookup` for the
    step's progress and learning rates.

    Off CUDA (the CPU tests and ``dabench bench``'s operation counts) nothing is recorded:
    :meth:`capture` only marks the step captured and each :meth:`replay` runs :meth:`body`, so the
    engine's graph-mode loop — cursors, tables, the graph-safe SGD, in-place counters — runs as
    such, eagerly (``emulated``). The engine never asks for that itself: ``resolve_cuda_graphs``
    is off on every non-CUDA device.
    """

    def __init__(
        self,
        device: torch.device,
        progress_table: torch.Tensor,
        lr_table: torch.Tensor,
        first_step: int,
        generators: Sequence[torch.Generator],
        part_names: list[str],
        sums: dict[str, torch.Tensor],
        parts: dict[str, torch.Tensor],
    ) -> None:
        self.device = device
        self.progress_table = progress_table.to(device=device, dtype=torch.float64)
        self.lr_table = lr_table.to(device=device, dtype=torch.float32)
        self.step = torch.full((), first_step, dtype=torch.long, device=device)
        self.generators = list(generators)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.emulated = False
        #: operations in one step (:class:`~dabench.engine.opcount.OpCounter`), when ``count_ops`` is
        #: set before the capture: counted while the body is recorded (CUDA) or at its first emulated
        #: replay; a GPU replays about that many kernels. Off by default: under a Python dispatch
        #: mode ``torch.compile``d modules run their eager code, which the graph would then record.
        self.count_ops = False
        self.ops: int | None = None
        #: the loss parts the divergence counter follows (fixed from the capture on)
        self.part_names = list(part_names)
        # the sums accumulate in place inside the graph: one static float32 tensor per loss part a
        # step logs (``parts``: the last eager step's, their keys and shapes), from the window's sums
        self.keys = list(parts)
        self.sums: dict[str, torch.Tensor] = {}
        for k in self.keys:
            self.sums[k] = torch.zeros_like(parts[k].detach(), dtype=torch.float32)
            if k in sums:
                self.sums[k].copy_(sums[k])
        for k, v in sums.items():  # a part seen earlier in this window but not now: kept until the evaluation
            self.sums.setdefault(k, v)

    def body(self) -> None:
        raise NotImplementedError

    def lookup(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This step's progress (0-d float64) and every parameter group's learning rate (0-d
        float32 views of one table row, in :func:`step_tables`' group order), read at the device step."""
        at = self.step.reshape(1)
        # index_select, not table[step]: indexing with a 0-d tensor may read it on the host
        progress = self.progress_table.index_select(0, at).reshape(())
        row = self.lr_table.index_select(0, at).reshape(-1)
        return progress, list(row.unbind(0))  # views: no kernel

    def capture(self) -> None:
        """Record one step; raises (any exception: the caller falls back to eager steps) if it cannot be."""
        if self.device.type != "cuda":
            self.emulated = True  # nothing to record: each replay runs the body (see the class docstring)
            return
        graph = torch.cuda.CUDAGraph()
        register = getattr(graph, "register_generator_state", None)
        if register is None and self.generators:
            raise NotCapturable(f"torch {torch.__version__} has no CUDAGraph.register_generator_state")
        for gen in self.generators:
            # before the capture begins: the capture's prologue puts each registered generator in
            # graph mode (its draws then read seed and offset from device tensors that every
            # replay sets, and each replay advances its offset by the whole graph's increment)
            register(gen)  # type: ignore[misc]
        # thread_local: a progress bar or logging thread of the host process may still call CUDA
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            if self.count_ops:  # the mode only watches: without torch.compile the kernels recorded are the same
                self.ops = count_ops(self.body).total
            else:
                self.body()
        self.graph = graph

    def accumulate(self, parts: dict[str, torch.Tensor]) -> None:
        """Add this step's loss parts to the in-place sums: one foreach kernel for all of them."""
        if self.keys:
            torch._foreach_add_([self.sums[k] for k in self.keys], [parts[k].detach().float() for k in self.keys])

    def replay(self) -> None:
        """One training step (the caller has prepared the streams' cursors): nothing but the replay."""
        if self.emulated:
            if self.count_ops and self.ops is None:
                self.ops = count_ops(self.body).total
            else:
                self.body()
            return
        assert self.graph is not None, "capture() first"
        self.graph.replay()

    def reset_sums(self) -> dict[str, torch.Tensor]:
        """After an evaluation: see :func:`zero_sums`."""
        self.sums = zero_sums(self.sums, self.keys)
        return self.sums


class StepGraph(CapturedStep):
    """One training step of ``method`` captured in a CUDA graph, its data path included.

    The graph holds the whole step: the batch (``draw()``, run inside the capture: each
    stream's indices from its :class:`~dabench.engine.data.StreamCursor`, the gather from the
    device-resident uint8 split, the normalisation and the augmentation, whose draws come from
    the registered ``generators``), the step's ``progress`` and every group's learning rate (looked
    up in per-step device tables, :func:`step_tables`: the very floats the eager loop computes),
    forward, backward, every update
    phase's optimiser step, the divergence counters, the loss sums and, last, ``step += 1``
    (the device-side step index). A replay therefore needs no host→device copy at all: the
    host only does the streams' bookkeeping (:meth:`StreamCursor.prepare`) and ``replay()``.

    Built after the eager warm-up steps from their state: ``part_names`` (the loss parts the
    divergence counter follows; fixed from here on), ``first_bad`` (that counter, updated in
    place from now on), ``sums`` (the loss sums since the last evaluation) and ``parts`` (the
    last eager step's loss parts: the sums' keys and shapes). ``first_step`` is the step the
    first replay runs. :meth:`capture` records the step; :meth:`replay` runs one.
    """

    def __init__(
        self,
        method: Method,
        opts: dict[str, torch.optim.Optimizer],
        pick: Callable[[str | Sequence[str]], list[torch.optim.Optimizer]],
        device: torch.device,
        draw: Callable[[], Batch],
        progress_table: torch.Tensor,
        lr_table: torch.Tensor,
        first_step: int,
        generators: Sequence[torch.Generator],
        part_names: list[str],
        first_bad: torch.Tensor,
        sums: dict[str, torch.Tensor],
        parts: dict[str, torch.Tensor],
    ) -> None:
        super().__init__(device, progress_table, lr_table, first_step, generators, part_names, sums, parts)
        self.method, self.opts, self.pick = method, opts, pick
        self.draw = draw
        #: the captured step's batch (static tensors of the graph's pool; ``idx_target`` included)
        self.batch: Batch | None = None
        self.first_bad = first_bad  # updated in place from here on
        self._lrs: dict[int, list[torch.Tensor]] = {}
        self._step_parts: dict[str, torch.Tensor] = {}

    def body(self) -> None:
        """What the graph holds: one whole step, from the batch's indices to ``step += 1``.

        Run once, under capture, by :meth:`capture`; run as such (no graph), it is one step of
        the captured run, which the CPU tests compare with the eager loop's."""
        self.batch = self.draw()  # outside autocast, as the eager loop draws it
        progress, lrs = self.lookup()
        # every group's learning rate, lr · lr_mult · factor, from the table row (optimisers in order)
        self._lrs, at = {}, 0
        for opt in self.opts.values():
            self._lrs[id(opt)] = lrs[at : at + len(opt.param_groups)]
            at += len(opt.param_groups)
        self._step_parts = {}
        # cache_enabled=False: autocast's cache of cast weights must not outlive the capture
        with autocast(self.device, cache_enabled=False):
            # a 0-d device tensor stands in for the float ``progress`` (docs/adding-a-method.md)
            self.method.step(self.batch, cast(float, progress), self._update)
        if list(self._step_parts) != self.keys:
            raise NotCapturable(
                f"the step logs loss parts {list(self._step_parts)}, the warm-up steps logged {self.keys}"
            )
        self.accumulate(self._step_parts)
        self.step.add_(1)

    def _update(self, names: str | Sequence[str], out: Loss) -> None:
        """The engine's ``update`` inside the graph: backward, the graph-safe SGD, in-place counters."""
        chosen = self.pick(names)
        with torch.autocast(self.device.type, enabled=False):
            for opt in self.opts.values():
                opt.zero_grad(set_to_none=True)
            out.total.backward()
            for opt in chosen:
                graph_sgd_step(opt, self._lrs[id(opt)])
        new = [k for k in out.parts if k not in self.part_names]
        if new:
            raise NotCapturable(f"loss part(s) {new} first appear after the warm-up steps")
        total = out.total.detach().float().reshape(())
        values = [total] + [
            out.parts[k].detach().float().reshape(()) if k in out.parts else total.new_zeros(())
            for k in self.part_names
        ]
        bad = nonfinite(torch.stack(values)) & (self.first_bad < 0)
        torch.where(bad, self.step, self.first_bad, out=self.first_bad)  # in place: the graph's static counter
        self._step_parts.update(out.parts)


def nonfinite(values: torch.Tensor) -> torch.Tensor:
    """``~isfinite(values)`` in two kernels (``isfinite``'s composite takes four): ``v · 0`` is 0 for
    a finite ``v`` and NaN for ±inf and NaN, so it differs from 0 exactly where ``v`` is not finite."""
    return (values * 0) != 0


def step_tables(
    lr: float, lr_schedule: str, steps: int, opts: Sequence[torch.optim.Optimizer]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-step tables of a captured step (CPU): ``progress[s] = s / steps`` (float64) and
    ``lrs[s, j] = lr · lr_mult_j · lr_factor(lr_schedule, s / steps)`` for every parameter group
    ``j`` of ``opts`` in order (float32, the dtype the fused SGD kernel reads), each the very float
    expression the eager loop sets as the group's ``lr``."""
    progress = torch.arange(steps, dtype=torch.float64) / steps  # IEEE division: equals step / steps
    mults = [float(g["lr_mult"]) for opt in opts for g in opt.param_groups]
    factors = [lr_factor(lr_schedule, s / steps) for s in range(steps)]
    lrs = torch.tensor([[lr * m * f for m in mults] for f in factors], dtype=torch.float64)
    return progress, lrs.to(torch.float32)


def zero_sums(sums: dict[str, torch.Tensor], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """After an evaluation: zero a captured step's loss sums in place (outside the graph, which
    adds into these very tensors) and keep only the parts the graph logs; the dict the loop keeps."""
    for k in keys:
        sums[k].zero_()
    return {k: sums[k] for k in keys}


def recover_from_failed_capture(main_stream: torch.cuda.Stream | None) -> None:
    """Leave CUDA as it was before a capture that raised, so the run can go on eagerly.

    A capture that fails inside ``torch.cuda.graph`` leaves its capture stream current, and it
    leaves the default CUDA generator in capture mode (torch ends that mode only when a capture
    *succeeds*): the next eager dropout would then fail with "Offset increment outside graph
    capture encountered unexpectedly". One trivial capture that succeeds ends the mode; the
    generator's seed and offset are saved before and restored after, so the eager steps draw
    exactly what they would have drawn.
    """
    if main_stream is None:  # off CUDA (an emulated capture): nothing was put in capture mode
        return
    device = main_stream.device
    torch.cuda.set_stream(main_stream)
    torch.cuda.synchronize(device)
    rng = torch.cuda.get_rng_state(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(main_stream)
    with torch.cuda.stream(side):
        scratch = torch.zeros(1, device=device)
        reset = torch.cuda.CUDAGraph()
        with torch.cuda.graph(reset, stream=side):
            scratch.add_(1)
    torch.cuda.synchronize(device)
    torch.cuda.set_rng_state(rng, device)
    del reset, scratch


def _static(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone(memory_format=torch.preserve_format)


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The side stream of the eager warm-up steps before a capture (``None`` off CUDA: nothing to wait for)."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def current_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream a failed capture must return to (``None`` off CUDA)."""
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def side_stream_step(side: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[Any]:
    """Run a warm-up step on ``side`` (after the current stream's work; the caller joins back)."""
    if side is None:
        return contextlib.nullcontext()
    side.wait_stream(torch.cuda.current_stream(side.device))
    return torch.cuda.stream(side)
