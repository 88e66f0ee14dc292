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
from .data import StreamCursor
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

#: the captured divergence counter holds step numbers in float32, exact up to 2**24
_EXACT_FLOAT32_STEPS = 2**24

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

    as torch's fused SGD computes it (``torch._fused_sgd_``: one kernel per dtype and lr tensor —
    groups given the same tensor share one —, where the foreach form is seven), reading and writing ``opt.state[p]["momentum_buffer"]``, so
    a checkpoint's optimiser state is the same as with ``opt.step()`` — which the engine's own SGD
    runs fused too (``_build_optimizers``): eager and captured steps compute the same update. The
    buffers must exist (torch creates them on a parameter's first step; the engine runs eager
    warm-up steps first): a missing one raises :class:`NotCapturable`.
    """
    if len(lrs) != len(opt.param_groups):
        raise ValueError(f"graph_sgd_step: {len(lrs)} learning rates for {len(opt.param_groups)} parameter groups")
    # groups given the very same lr tensor (and the same momentum, weight decay and Nesterov flag)
    # go to one fused call: the update is elementwise, so only the number of kernels changes
    batches: dict[tuple[Any, ...], tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = {}
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
        for i, p in enumerate(params):  # the fused kernel takes one dtype per call, as torch groups them
            key = (id(lr), momentum, group["weight_decay"], group["nesterov"], p.dtype)
            _, ps, gs, bs = batches.setdefault(key, (lr, [], [], []))
            ps.append(p)
            gs.append(cast(torch.Tensor, p.grad))
            if bufs:
                bs.append(bufs[i])
    for (_, momentum, weight_decay, nesterov, _), (lr, ps, gs, bs) in batches.items():
        try:
            torch._fused_sgd_(
                ps, gs, bs,
                weight_decay=weight_decay, momentum=momentum, lr=lr, dampening=0.0,
                nesterov=nesterov, maximize=False, is_first_step=False,
            )  # fmt: skip
        except RuntimeError:
            # the CUDA kernel checks its tensors' layouts (one dtype, dense, the same strides for a
            # parameter, its gradient and its buffer) before it launches anything; where it
            # refuses, the same update in foreach form (seven kernels instead of one)
            _foreach_sgd(ps, gs, bs, weight_decay, momentum, nesterov, lr)


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
        first_bad: torch.Tensor,
        cursors: Sequence[StreamCursor] = (),
    ) -> None:
        self.device = device
        steps = len(progress_table)
        if steps > _EXACT_FLOAT32_STEPS:
            # the divergence counter holds step numbers in float32 (see :meth:`end_step`)
            raise NotCapturable(f"{steps} steps: the captured divergence counter counts up to {_EXACT_FLOAT32_STEPS}")
        self.table, self.lr_columns = pack_step_tables(progress_table, lr_table)
        self.table = self.table.to(device)
        self.step = torch.full((), first_step, dtype=torch.long, device=device)
        self.generators = list(generators)
        self.cursors = list(cursors)
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
        # the divergence counter in the graph's form (:meth:`end_step`), from the eager one
        # (``first_bad``: ``[1 + parts]``, or ``[seeds, 1 + parts]``, -1 while finite): entry ``j``
        # of the total and the parts is row ``j`` of ``poison`` and ``ok_until`` (contiguous rows:
        # the foreach kernels' fast path takes them)
        counter = first_bad.detach().to(device)
        bad = (counter >= 0).t()
        nan = torch.full((), float("nan"), device=device)
        self.poison = torch.where(bad, nan, 0.0).contiguous()
        self.ok_until = torch.where(bad, counter.t() - 1, first_step - 1).to(torch.float32).contiguous()
        self._layout = counter.shape
        # the constant second factors of the foreach update: 1 for a loss sum, 0 for a poison row
        self._one = {tuple(v.shape): torch.ones_like(v) for v in self.sums.values()}
        self._zero = torch.zeros_like(self.poison[0])
        self._checks: list[list[tuple[int, torch.Tensor]]] = []

    def body(self) -> None:
        raise NotImplementedError

    def lookup(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This step's progress (0-d float64) and every parameter group's learning rate (0-d
        float32, in :func:`step_tables`' group order; groups with the same rate at every step share
        one tensor): views of one row of the packed table, read at the device step."""
        # index_select, not table[step]: indexing with a 0-d tensor may read it on the host
        row = self.table.index_select(0, self.step.reshape(1)).reshape(-1)
        progress = row.view(torch.float64)[0]  # views: no kernel
        rates = row.view(torch.float32)
        shared = {c: rates[2 + c] for c in set(self.lr_columns)}  # one tensor per column: graph_sgd_step merges on it
        return progress, [shared[c] for c in self.lr_columns]

    def check(self, values: list[tuple[int, torch.Tensor]]) -> None:
        """One update's divergence check: ``(entry, value)`` for the total (entry 0) and each loss
        part it logs (entry ``1 + i`` for ``part_names[i]``; 0-d, or ``[seeds]``), applied by
        :meth:`end_step` (the first update's together with the loss sums, in one kernel)."""
        self._checks.append([(j, v.detach().float()) for j, v in values])

    def end_step(self, parts: dict[str, torch.Tensor]) -> None:
        """The end of the body: the loss sums, the divergence counter, the step and the streams' positions.

        The counter, per entry (the total and each loss part; per seed): ``poison`` becomes NaN
        from the first step with a non-finite value on (``poison += v·0``: ``v·0`` is 0 for a finite
        ``v``, NaN for ±inf and NaN, and NaN stays), and ``ok_until = fmax(ok_until, poison + step)``
        is the last step before it (``fmax`` ignores the NaN), so the first non-finite step is
        ``ok_until + 1`` (:meth:`read_first_bad`): the eager counter's value, in two kernels for all
        entries where the eager check takes six. ``poison += v·0`` joins the loss sums' update,
        ``sums += part·1`` (exact: the same sums as ``sums += part``), in one ``_foreach_addcmul_``.
        The step counter and the streams' positions (:meth:`StreamCursor.take`) advance in one
        ``_foreach_add_``."""
        checks, self._checks = self._checks or [[]], []
        first = checks[0]
        selves = [self.sums[k] for k in self.keys] + [self.poison[j] for j, _ in first]
        if selves:
            torch._foreach_addcmul_(
                selves,
                [parts[k].detach().float() for k in self.keys] + [v for _, v in first],
                [self._one[tuple(self.sums[k].shape)] for k in self.keys] + [self._zero] * len(first),
            )
        for later in checks[1:]:  # a step of several updates: one kernel more for each further one
            if later:  # (one list may not name a row twice: its kernel would race on it)
                torch._foreach_addcmul_(
                    [self.poison[j] for j, _ in later], [v for _, v in later], [self._zero] * len(later)
                )
        torch.fmax(self.ok_until, self.poison + self.step, out=self.ok_until)
        moved = [m for m in (c.advance() for c in self.cursors) if m is not None]
        torch._foreach_add_([self.step, *(pos for pos, _ in moved)], [1, *(by for _, by in moved)])

    def read_first_bad(self) -> torch.Tensor:
        """The divergence counter in the eager loop's form (long, -1 while finite; ``[1 + parts]``
        or ``[seeds, 1 + parts]``): what the host reads every ``log_every`` steps and a checkpoint keeps."""
        first = torch.where(torch.isnan(self.poison), self.ok_until + 1, -1.0).to(torch.long)
        return first.t().contiguous().reshape(self._layout)

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
        cursors: Sequence[StreamCursor] = (),
    ) -> None:
        super().__init__(
            device, progress_table, lr_table, first_step, generators, part_names, sums, parts, first_bad, cursors
        )
        self.method, self.opts, self.pick = method, opts, pick
        self.draw = draw
        #: the captured step's batch (static tensors of the graph's pool; ``idx_target`` included)
        self.batch: Batch | None = None
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
        self.end_step(self._step_parts)

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
        # a part this update does not log is 0 in the eager check: finite, nothing to check
        values = [(0, out.total.reshape(()))]
        values += [(1 + i, out.parts[k].reshape(())) for i, k in enumerate(self.part_names) if k in out.parts]
        self.check(values)
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


def pack_step_tables(progress: torch.Tensor, lrs: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """:func:`step_tables`' two tables as one, so that a captured step reads its progress and every
    learning rate with one gather: row ``s`` holds the float64 ``progress[s]`` in its first 8 bytes,
    then the float32 learning rates, their bits unchanged (int64 storage: a gather copies bits).
    Groups whose learning rate is the same float at every step share a column; returns the table
    and, per group, its column (:meth:`CapturedStep.lookup` reads column ``c`` at float32 ``2 + c``)."""
    columns: list[torch.Tensor] = []
    of_group: list[int] = []
    for j in range(lrs.shape[1]):
        col = lrs[:, j].to(torch.float32)
        same = [c for c, kept in enumerate(columns) if torch.equal(kept, col)]
        if not same:
            columns.append(col)
        of_group.append(same[0] if same else len(columns) - 1)
    rates = torch.stack(columns, dim=1) if columns else torch.zeros(len(progress), 0)
    if rates.shape[1] % 2:  # whole int64 words
        rates = torch.cat([rates, torch.zeros(len(progress), 1)], dim=1)
    packed = torch.cat([progress.to(torch.float64).reshape(-1, 1).view(torch.int64), rates.view(torch.int64)], dim=1)
    return packed.contiguous(), of_group


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
