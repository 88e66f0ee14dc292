"""The engine: builds a run from its spec, owns the device, optimiser, schedule, evaluation,
logging and checkpoints, and calls the method only for its loss (or its own ``fit``)."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backbones.base import Backbone, match_input
from ..core.domain import DomainPair, PairData, check_target_shots, lr_factor
from ..core.method import MAIN, TARGET_ACCESS, Batch, Loss, Method, TargetLabelsError, TargetView
from ..core.record import RunResult, first_line
from ..core.registry import BACKBONES, METHODS
from ..core.spec import RunSpec
from ..core.store import RunStore, WriteFault, atomic_torch_save, state_fingerprint, temp_path
from . import graphs
from .compile import compile_method
from .data import DeviceData, FitData, Stream, StreamCursor, validator_sample
from .evaluate import autocast, evaluate, predict_split
from .graphs import StepGraph
from .options import EngineOptions


class Diverged(RuntimeError):
    """The loss became non-finite; ``step`` is the first step at which it was.

    ``parts``: the loss part(s) of ``Loss.parts`` that became non-finite first (several when at
    the same step) and ``part_step`` that step; empty when no single part was (e.g. the weighted
    sum overflowed) or when the divergence showed only in the evaluation."""

    def __init__(
        self, step: int, parts: tuple[str, ...] = (), part_step: int | None = None, source_sha256: str | None = None
    ) -> None:
        where = ""
        if parts:
            names = ", ".join(repr(p) for p in parts)
            where = f" (loss part {names} first non-finite at step {part_step})"
        super().__init__(f"non-finite loss at step {step}{where}")
        self.step = step
        self.parts = tuple(parts)
        self.part_step = part_step
        #: a dependant: the fingerprint of the source weights it loaded (``RunContext.source_sha256``),
        #: so that its kept ``diverged`` record names them as a complete one does
        self.source_sha256 = source_sha256


def _first_bad_part(names: list[str], steps: list[int]) -> tuple[tuple[str, ...], int | None]:
    """The part(s) with the earliest first non-finite step (``steps[i]`` for ``names[i]``, -1: never)."""
    seen = [s for s in steps if s >= 0]
    if not seen:
        return (), None
    first = min(seen)
    return tuple(n for n, s in zip(names, steps) if s == first), first


def device_problem(name: str | None, local: bool = True) -> str | None:
    """Why ``name`` cannot be this run's device, in one line, or None when it can.

    ``gpu`` and other non-devices are refused; for runs on this machine (``local``), so is a CUDA
    device it does not have (torch's own message would come from deep inside the first run).
    Shared by ``dabench run`` (:func:`dabench.running.plan.check_device`) and ``dabench bench``
    (:func:`dabench.speed.bench.check_bench_args`).
    """
    if name in (None, "auto"):
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return f"device {name!r} is not a device; expected auto (CUDA when present), cpu, cuda or cuda:N"
    if not local or dev.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return (
            f"device {name!r}: torch {torch.__version__} sees no CUDA device on this machine; "
            "use cpu, or auto (CUDA when present)"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        return f"device {name!r}: this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def resolve_device(name: str | None = None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_backbone(pair: DomainPair, name: str, options: Mapping[str, Any]) -> Backbone:
    """Backbone ``name`` for ``pair``'s images, seeing them normalised as its weights expect."""
    backbone = BACKBONES.get(name)(in_channels=pair.channels, image_size=pair.image_size, **options)
    match_input(backbone, pair.mean, pair.std)  # pretrained weights see the normalisation they were trained with
    return backbone


def build_method(spec: RunSpec, pair: DomainPair) -> Method:
    cls = METHODS.get(spec.method)
    return cls(build_backbone(pair, spec.backbone, spec.backbone_options), pair.num_classes, spec.hparams)


def _without_loader(pair: DomainPair) -> DomainPair:
    """``pair`` whose ``load`` raises :class:`TargetLabelsError`: what a method's ``fit`` gets as
    ``ctx.pair`` (the loader returns every target label). A shallow copy: no ``__post_init__`` runs,
    so a subclass of :class:`DomainPair` copies as well; every other field is the pair's own."""
    guarded = copy.copy(pair)

    def load(*args: Any, **kwargs: Any) -> PairData:
        raise TargetLabelsError(
            f"ctx.pair.load(): pair {pair.name!r}'s loader returns every target label; the engine loaded "
            f"the run's data once; {TARGET_ACCESS}"
        )

    object.__setattr__(guarded, "load", load)  # a frozen dataclass
    return guarded


@dataclass
class RunContext:
    """What a method's ``fit`` may use: the data on the device, the schedule and the engine's loop.

    The honest-numbers rule holds here too (docs/architecture.md, "The engine's contract with
    methods"): ``data`` is a :class:`~dabench.engine.data.FitData`, the run's data without the target
    labels the method's protocol does not give it (the shots' labels only); ``pair`` cannot load the
    pair again; the results folder (``_store``: other runs' saved features hold target labels) and the
    evaluation's results (``curve``, while ``fit`` runs) are the engine's. Each such read raises
    :class:`TargetLabelsError`. The engine's own code reads the full :class:`DeviceData` as ``_data``
    (evaluation, validators, the step loop's batches): the underscore names are not the method's.
    """

    spec: RunSpec
    pair: DomainPair
    _data: DeviceData  # the engine's: evaluation split and target labels included
    device: torch.device
    _store: RunStore | None = None
    on_step: Callable[[int, int], None] | None = None
    checkpoint_every: int = 0  # steps between mid-run checkpoints (0: never)
    _curve: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0
    images_seen: int = 0
    resumed_from_step: int | None = None  # set when a mid-run checkpoint was picked up
    #: a dependant: the fingerprint (``store.state_fingerprint``) of the source-only weights it
    #: loaded (:func:`start_method`), computed once: its record's ``source_weights`` names it (through
    #: ``RunResult.source_sha256``) and its mid-run checkpoints keep it; a resume from weights that are
    #: not these (the source-only run was redone meanwhile) starts again from step 0 (``_resume``)
    source_sha256: str | None = None
    #: why a mid-run checkpoint was there but not resumed from (the record's ``resume_note``)
    resume_note: str | None = None
    cuda_graphs: bool = False  # capture the step in a CUDA graph (engine/graphs.py; CUDA only)
    #: what became of ``cuda_graphs``: the record's ``timings["cuda_graphs"]`` (set by train_steps)
    graph_note: str = ""
    #: count the operations of the captured step (``dabench bench``; never with ``torch.compile``)
    count_ops: bool = False
    #: operations in one captured step (``CapturedStep.ops``; None: not captured or not counted)
    graph_ops: int | None = None
    #: True while the engine runs ``method.fit(self)`` (``execute``): ``curve`` is then the engine's
    fitting: bool = False

    def __post_init__(self) -> None:
        # built once per run: nothing here runs per step (the step loop reads ``_data``)
        self.pair = _without_loader(self.pair)
        self._fit_data = FitData(self._data, self.pair, source_free=self.spec.protocol == "source-free")

    @property
    def data(self) -> FitData:
        """The run's data as a method sees it: no target label but the declared shots' (:class:`FitData`)."""
        return self._fit_data

    @property
    def curve(self) -> list[dict[str, Any]]:
        """The evaluations recorded so far (the record's ``curve``); not readable by the method while it trains."""
        if self.fitting:
            raise TargetLabelsError(
                "ctx.curve during fit(): the evaluations' accuracies are computed from the target labels and "
                f"go to the record, not to the method (selecting on them is the oracle rule's job); {TARGET_ACCESS}"
            )
        return self._curve

    @property
    def store(self) -> RunStore | None:
        """Not the method's: the results folder holds other runs' saved features, target labels included."""
        raise TargetLabelsError(
            "ctx.store: the results folder (other runs' records and saved features, target labels included) "
            f"is the engine's; {TARGET_ACCESS}"
        )

    @property
    def schedule(self):
        return self.spec.schedule

    def record_eval(self, method: Method, step: int, losses: dict[str, torch.Tensor] | None = None) -> None:
        """Evaluate ``method`` now (target accuracy on the evaluation split, source-val accuracy,
        label-free scores) and append the point to the run's curve. Returns nothing: the scores are
        the record's, never the method's (a method choosing on them would select on test labels)."""
        point = {"step": step, **evaluate(method, self._data)}
        if losses:
            point["loss"] = {k: float(v) for k, v in losses.items()}
        self._curve.append(point)

    def train_steps(self, method: Method) -> None:
        """SGD (Nesterov momentum) over the pair's schedule with lr·lr_mult·factor(p) (``inv``: (1+10p)^−0.75, see ``lr_factor``).

        One SGD per entry of ``method.optimizers()`` (one, ``"main"``, unless the method declares
        several); each step calls ``method.step(batch, progress, update)``, whose ``update(name,
        loss)`` zeroes every gradient, backpropagates, steps the named optimiser(s) and keeps the
        loss parts on the device. No host synchronisation inside the loop except every
        ``log_every`` steps (one read of a device-side "first non-finite step" counter, for the
        total and for each loss part, so a divergence names the part that went first) and at
        evaluations. A method with ``refresh_every(view) > 0`` (SHOT) gets ``refresh(view, step)``
        before every such multiple of steps (:meth:`target_view`: the whole target adaptation split).
        """
        sch = self.spec.schedule
        steps = method.num_steps(sch.steps)
        opts = _build_optimizers(method, sch)
        dev = self.device
        streams = self.streams(method)
        # first non-finite step of the total (entry 0) and of each loss part (entry 1 + i for
        # part_names[i]), -1 while finite: kept on the device, read once per log window
        part_names: list[str] = []
        first_bad = torch.full((1,), -1, dtype=torch.long, device=dev)
        sums: dict[str, torch.Tensor] = {}
        n_since = 0
        start = 0
        if self.checkpoint_every:
            resumed = self._resume(method, opts, streams)
            if resumed is not None:
                start, sums, n_since, first_bad, part_names = resumed
        per_step_images = sum(s.batch_size for s in streams.values())
        view = self.target_view(method)
        refresh_every = method.refresh_every(view) if method.uses.target_unlabeled else 0
        method.train()
        step = start
        step_parts: dict[str, torch.Tensor] = {}

        def update(names: str | Sequence[str], out: Loss) -> None:
            """One update: backward of ``out.total``, a step of the named optimiser(s), device-side logging."""
            nonlocal part_names, first_bad
            chosen = _pick(opts, names, method)
            with torch.autocast(dev.type, enabled=False):  # backward and the optimiser outside autocast
                for opt in opts.values():  # every optimiser: a phase's backward reaches others' parameters
                    opt.zero_grad(set_to_none=True)
                out.total.backward()
                for opt in chosen:
                    sgd_step(opt)
            total = out.total.detach()
            if list(out.parts) != part_names:
                # a part not seen before (methods usually return the same parts every step):
                # grow the counter by one entry per new name; no host read
                new_names = [k for k in out.parts if k not in part_names]
                part_names += new_names
                first_bad = torch.cat([first_bad, first_bad.new_full((len(new_names),), -1)])
            values = [total.float().reshape(())]
            values += [
                out.parts[k].detach().float().reshape(()) if k in out.parts else values[0].new_zeros(())
                for k in part_names
            ]
            first_bad = torch.where(graphs.nonfinite(torch.stack(values)) & (first_bad < 0), step, first_bad)
            step_parts.update(out.parts)

        # CUDA graphs (engine/graphs.py): WARMUP_STEPS eager steps on a side stream, then one
        # capture at step ``capture_at`` and replays; any failure falls back to eager steps
        graph: StepGraph | None = None
        capture_at: int | None = None
        side: torch.cuda.Stream | None = None
        if not self.cuda_graphs:
            self.graph_note = graphs.OFF
        elif (why := graphs.refusal(method, steps - start)) is not None:
            self.graph_note = why
        else:
            capture_at, side = start + graphs.WARMUP_STEPS, graphs.side_stream(dev)

        cursors: dict[str, StreamCursor] = {}

        def set_lr(at: int) -> None:
            """The float ``lr`` of every group at step ``at`` (the eager ``sgd_step`` and checkpoints read it)."""
            factor = lr_factor(sch.lr_schedule, at / steps)
            for opt in opts.values():
                for g in opt.param_groups:
                    g["lr"] = sch.lr * g["lr_mult"] * factor

        for step in range(start, steps):
            if refresh_every and step % refresh_every == 0:  # before the step's batch, as SHOT's epochs
                with torch.no_grad():
                    method.refresh(view, step)
            if step == capture_at:
                capture_at = None
                graph = self._capture(
                    method, opts, streams, cursors, step, steps, part_names, first_bad, sums, step_parts
                )
                if graph is not None:
                    sums = graph.sums
            if graph is not None:
                for cursor in cursors.values():  # host bookkeeping; device work only at epoch boundaries
                    cursor.prepare()
                graph.replay()
            else:
                progress = step / steps
                set_lr(step)
                warm = side if capture_at is not None and step < capture_at else None
                step_parts = {}
                with graphs.side_stream_step(warm):
                    batch = self._draw(streams)
                    with autocast(dev):
                        method.step(batch, progress, update)
                    for k, v in step_parts.items():
                        sums[k] = sums.get(k, 0) + v.detach().float()
                if warm is not None:  # back on the main stream before anything reads the step's results
                    torch.cuda.current_stream(dev).wait_stream(warm)
            n_since += 1
            self.steps_done = step + 1
            self.images_seen += per_step_images
            last = step + 1 == steps
            if (step + 1) % sch.log_every == 0 or last:
                counter = graph.read_first_bad() if graph is not None else first_bad
                bad = counter.tolist()  # the periodic sync (one read: the total's and every part's)
                if bad[0] >= 0:
                    raise Diverged(bad[0], *_first_bad_part(part_names, bad[1:]), source_sha256=self.source_sha256)
                if self.on_step:
                    self.on_step(step + 1, steps)
            if (step + 1) % sch.eval_every == 0 or last:
                self.record_eval(method, step + 1, {k: v / n_since for k, v in sums.items()})
                sums, n_since = (graph.reset_sums() if graph is not None else {}), 0
            if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and not last:
                if graph is not None:
                    set_lr(step)  # replays read the lr from the graph's table; the checkpoint keeps the eager value
                    first_bad = graph.read_first_bad()  # the eager counter's form: checkpoints keep one format
                self._save_partial(method, opts, step + 1, streams, sums, n_since, first_bad, part_names)
        self.graph_ops = graph.ops if graph is not None else None

    def target_view(self, method: Method) -> TargetView:
        """The target adaptation split as :meth:`Method.refresh` sees it: predicted through the
        engine (eval mode, no augmentation; the method's train/eval mode is restored), never loaded."""

        def predict(output: str = "predict") -> torch.Tensor:
            if output not in ("predict", "features"):
                raise ValueError(f"TargetView.predict: output must be 'predict' or 'features', got {output!r}")
            was_training = method.training
            method.eval()
            try:
                return predict_split(method, self._data, self._data.target, output=output)
            finally:
                method.train(was_training)

        return TargetView(len(self._data.target), self.spec.schedule.batch_size, predict)

    def streams(self, method: Method) -> dict[str, Stream]:
        """The batch streams ``method.uses`` asks for (``source``, ``target``, ``shots``), each
        drawing from this run's data generator."""
        sch, data, uses = self.spec.schedule, self._data, method.uses
        streams = {}
        if uses.source_labels:
            streams["source"] = data.stream(data.source, sch.batch_size)
        if uses.target_unlabeled:
            streams["target"] = data.stream(data.target, sch.batch_size)
        if self.spec.target_shots > 0:
            if len(data.shots) == 0:
                raise ValueError(f"{self.spec.method} needs target shots but target_shots gives none")
            streams["shots"] = data.stream(data.shots, min(sch.batch_size, len(data.shots)))
        return streams

    def _draw(self, streams: dict[str, Stream]) -> Batch:
        """The step's batch: the next indices of each stream, gathered and augmented on the device."""
        return self._batch(lambda name: streams[name].next(), streams)

    def _batch(self, take: Callable[[str], torch.Tensor], names: Container[str]) -> Batch:
        """A batch from ``take(stream name)`` indices, streams in a fixed order (their draws from
        the data generator interleave with the augmentation's in this order)."""
        data = self._data
        batch = Batch()
        if "source" in names:
            batch.x_source, batch.y_source = data.batch_from(data.source, take("source"))
        if "target" in names:
            batch.idx_target = take("target")
            batch.x_target, _ = data.batch_from(data.target, batch.idx_target)
        if "shots" in names:
            batch.x_shots, batch.y_shots = data.batch_from(data.shots, take("shots"))
        return batch

    def _capture(
        self,
        method: Method,
        opts: dict[str, torch.optim.Optimizer],
        streams: dict[str, Stream],
        cursors: dict[str, StreamCursor],
        step: int,
        steps: int,
        part_names: list[str],
        first_bad: torch.Tensor,
        sums: dict[str, torch.Tensor],
        step_parts: dict[str, torch.Tensor],
    ) -> StepGraph | None:
        """Capture the step, data path included, to replay from ``step`` on; ``None`` (and
        ``graph_note`` says why) if it cannot be: the run then goes on eagerly, as it would have.

        Fills ``cursors`` (one per stream). A capture runs nothing, so the streams, the data
        generator and the default CUDA generator stand where they stood; a failed one leaves the
        generators it registered in capture mode, so the data generator is replaced by a fresh
        one in the same state (:func:`graphs.recover_from_failed_capture` ends that mode of the
        default generator)."""
        dev, data, sch = self.device, self._data, self.spec.schedule
        main_stream = graphs.current_stream(dev)
        generator_state = data.generator.get_state()
        try:
            cursors.clear()
            cursors.update({name: StreamCursor(s) for name, s in streams.items()})
            progress, lrs = graphs.step_tables(sch.lr, sch.lr_schedule, steps, list(opts.values()))
            graph = StepGraph(
                method, opts, lambda n: _pick(opts, n, method), dev,
                lambda: self._batch(lambda name: cursors[name].take(defer=True), cursors),
                progress, lrs, step, [data.generator], part_names, first_bad, sums, step_parts,
                list(cursors.values()),
            )  # fmt: skip
            graph.count_ops = self.count_ops
            graph.capture()
        except Exception as exc:  # noqa: BLE001 - any failure to capture: eager steps instead
            self.graph_note = graphs.fallback_note(exc)
            cursors.clear()
            graphs.recover_from_failed_capture(main_stream)
            self.renew_generator(generator_state, streams)
            return None
        self.graph_note = graphs.CAPTURED
        return graph

    def renew_generator(self, state: torch.Tensor, streams: dict[str, Stream]) -> None:
        """After a failed capture: a fresh data generator in ``state`` for the data and its streams
        (the failed capture left the generator it registered in capture mode)."""
        fresh = torch.Generator(device=self.device)
        fresh.set_state(state)
        self._data.generator = fresh
        for s in streams.values():
            s.g = fresh

    # --- mid-run checkpoints ---------------------------------------------------------
    # A resumed run must equal the uninterrupted one (on the CPU at a fixed thread count), so a
    # checkpoint holds every piece of state the remaining steps read: the networks and the
    # optimiser, the data generator (augmentation and reshuffles), each batch stream's current
    # permutation and position, the global torch RNG (dropout, noise layers; CPU and CUDA), and
    # the loss sums since the last evaluation (the next curve point averages them).
    def _save_partial(
        self,
        method: Method,
        opts: dict[str, torch.optim.Optimizer],
        step: int,
        streams: dict[str, Stream],
        sums: dict[str, torch.Tensor],
        n_since: int,
        first_bad: torch.Tensor,
        part_names: list[str],
    ) -> None:
        assert self._store is not None
        path = self._store.checkpoint_path(self.spec.run_id, partial=True)
        state = {
            "step": step,
            "method": method.state_dict(),
            # a one-optimiser method keeps the key of earlier versions, so their checkpoints resume
            **(
                {"optimizer": opts[MAIN].state_dict()}
                if list(opts) == [MAIN]
                else {"optimizers": {name: o.state_dict() for name, o in opts.items()}}
            ),
            "curve": self._curve,
            "generator": self._data.generator.get_state(),
            "streams": {name: s.state_dict() for name, s in streams.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "loss_sums": sums,
            "loss_count": n_since,
            "first_bad": first_bad,
            "first_bad_parts": list(part_names),
            "source_sha256": self.source_sha256,
        }
        atomic_torch_save(state, path)

    def _resume(
        self, method: Method, opts: dict[str, torch.optim.Optimizer], streams: dict[str, Stream]
    ) -> tuple[int, dict[str, torch.Tensor], int, torch.Tensor, list[str]] | None:
        """Load the run's mid-run checkpoint if there is one; returns (step, loss sums, their
        count, first non-finite steps, the loss parts they follow) for the loop to go on from, or ``None``."""
        if self._store is None:
            return None
        path = self._store.checkpoint_path(self.spec.run_id, partial=True)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch reports a damaged file as RuntimeError, EOFError, OSError ...
            # a mid-run checkpoint only saves time: a damaged one (cut short by a full disk, edited)
            # must not fail the run on every rerun; nothing was loaded yet, so start from step 0
            warnings.warn(
                f"mid-run checkpoint {path} cannot be loaded ({first_line(str(exc)) or type(exc).__name__}): "
                f"removed; run {self.spec.label} starts again from step 0",
                stacklevel=2,
            )
            path.unlink(missing_ok=True)
            self.resume_note = f"mid-run checkpoint at {path.name} could not be loaded: started again from step 0"
            return None
        if self.spec.depends_on and state.get("source_sha256") != self.source_sha256:
            # its steps so far were trained from other source-only weights than the run starts
            # from now (the source-only run was redone, or, without a fingerprint, an older
            # dabench cannot tell): resuming would give a record that names the new weights but
            # trained half from the old ones. Start over; the time lost buys an honest record.
            was = state.get("source_sha256")
            self.resume_note = (
                f"mid-run checkpoint at step {int(state['step'])} not resumed: its steps were trained from "
                + (f"source weights {str(was)[:12]}" if was else "source weights it does not name (an older dabench)")
                + f" of source-only run {self.spec.depends_on}, which now holds {str(self.source_sha256)[:12]}; "
                "started again from step 0"
            )
            warnings.warn(f"run {self.spec.label}: {self.resume_note}", stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        method.load_state_dict(state["method"])
        saved_opts = state["optimizers"] if "optimizers" in state else {MAIN: state["optimizer"]}
        if set(saved_opts) != set(opts):
            raise ValueError(
                f"checkpoint {path} holds optimisers {sorted(saved_opts)}, "
                f"but this run's method declares {sorted(opts)}"
            )
        for name, opt in opts.items():
            opt.load_state_dict(saved_opts[name])
        self._curve = list(state["curve"])
        # a generator's state is a CPU ByteTensor on every device (map_location moved it to the device)
        self._data.generator.set_state(state["generator"].cpu())
        saved_streams = state.get("streams", {})  # absent in checkpoints of older versions
        if saved_streams and set(saved_streams) != set(streams):
            raise ValueError(
                f"checkpoint {path} holds batch streams {sorted(saved_streams)}, but this run draws {sorted(streams)}"
            )
        for name, saved in saved_streams.items():
            streams[name].load_state_dict(saved)
        if state.get("torch_rng") is not None:
            torch.set_rng_state(state["torch_rng"].cpu())  # the CPU generator takes a CPU ByteTensor
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.steps_done = self.resumed_from_step = int(state["step"])
        dev = self.device
        # older checkpoints hold the total's counter alone, as a 0-d tensor
        first_bad = state.get("first_bad", torch.full((), -1, dtype=torch.long)).to(dev).reshape(-1)
        part_names = list(state.get("first_bad_parts", []))
        if len(first_bad) != 1 + len(part_names):
            first_bad, part_names = first_bad[:1], []
        return (
            self.steps_done,
            dict(state.get("loss_sums", {})),
            int(state.get("loss_count", 0)),
            first_bad,
            part_names,
        )


def _build_optimizers(method: Method, sch) -> dict[str, torch.optim.Optimizer]:
    """One SGD (Nesterov, fused) per entry of ``method.optimizers()``, each group at ``lr · lr_mult``."""
    declared = method.optimizers()
    if not isinstance(declared, dict) or not declared:
        raise TypeError(
            f"{method.name}.optimizers() must return a non-empty dict name -> parameter groups, got {declared!r}"
        )
    opts: dict[str, torch.optim.Optimizer] = {}
    for name, groups in declared.items():
        for g in groups:
            g["lr"] = sch.lr * g["lr_mult"]
        params = [p for g in groups for p in g["params"]]
        opts[name] = torch.optim.SGD(
            groups,
            lr=sch.lr,
            momentum=sch.momentum,
            weight_decay=sch.weight_decay,
            nesterov=True,
            # one kernel per step for all parameters (foreach: seven), on the CPU too; the captured
            # step runs the same fused update (graphs.graph_sgd_step)
            fused=_fusable(params),
        )
    return opts


def sgd_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()``; if torch's fused SGD kernel refuses the tensors (on CUDA it checks that a
    parameter, its gradient and its momentum buffer share dtype and strides, before launching
    anything or creating any state), the optimiser goes on unfused: the same update, more kernels."""
    try:
        opt.step()
    except RuntimeError:
        if not any(g.get("fused") for g in opt.param_groups):
            raise
        for g in opt.param_groups:
            g["fused"] = False
        opt.defaults["fused"] = False
        opt.step()


def _fusable(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused SGD takes these parameters (floating point, on a CPU or CUDA device)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _pick(opts: dict[str, torch.optim.Optimizer], names: str | Sequence[str], method: Method) -> list:
    """The optimisers an ``update`` names (one name or several); an unknown name lists the declared ones."""
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in opts]
    if unknown or not wanted:
        raise KeyError(
            f"{method.name}: update() names optimiser(s) {unknown or wanted!r}; "
            f"its optimizers() declares {sorted(opts)}"
        )
    return [opts[n] for n in wanted]


FEATURES_PER_DOMAIN = 1000  # enough for a t-SNE and a domain classifier; keeps the file small (float16)


def _uniform_subset(n: int, size: int = FEATURES_PER_DOMAIN) -> torch.Tensor:
    """Sorted positions of a fixed uniform sample of ``size`` of ``n`` (all if ``n <= size``).

    Not the first ``size`` in stored order: on a class-sorted split (Office-31) that skips classes,
    and DEV's importance weights would then see another distribution than the split's."""
    return validator_sample(n, seed=0, size=size)


def save_features(method: Method, data: DeviceData, path, step: int | None = None) -> None:
    """Features of the final model, as ``.npz`` (float16 features), for the t-SNE figure and DEV.

    Keys (each at most :data:`FEATURES_PER_DOMAIN` rows, a fixed uniform sample of its split):

    - ``source_features``, ``source_labels``, ``source_logits``: the source-validation split (DEV's
      validation set: per-sample losses from logits + labels).
    - ``source_train_features``: the source training split (DEV trains its domain classifier on
      these against the target features).
    - ``validator_features``: the target *adaptation* split, a subset of the validator sample the
      label-free validators score (no labels saved): what DEV may look at on the target.
    - ``target_features``, ``target_labels``: the target *evaluation* split, for the t-SNE figure
      only; no selection rule reads them (a validator must not look at evaluation images).
    - ``step``: the step of the model (the run's last evaluation).
    """
    method.eval()
    out: dict[str, Any] = {}  # Any: numpy's stubs would match ndarray values to savez's allow_pickle
    sample = data.validator_positions[_uniform_subset(len(data.validator_positions))].to(data.device)
    for name, split, idx in (
        ("source", data.source_val, _uniform_subset(len(data.source_val)).to(data.device)),
        ("source_train", data.source, _uniform_subset(len(data.source)).to(data.device)),
        ("validator", data.target, sample),
        ("target", data.target_eval, _uniform_subset(len(data.target_eval)).to(data.device)),
    ):
        feats = predict_split(method, data, split, limit=FEATURES_PER_DOMAIN, output="features", indices=idx)
        out[f"{name}_features"] = feats.cpu().numpy().astype(np.float16)
        if name in ("source", "target"):
            out[f"{name}_labels"] = split.labels[idx].cpu().numpy()
        if name == "source":
            logits = predict_split(method, data, split, indices=idx)
            out["source_logits"] = logits.cpu().numpy().astype(np.float32)
    out["step"] = np.array(-1 if step is None else step)
    tmp = temp_path(path, ".tmp.npz")  # ends in .npz: numpy adds the suffix to any other name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(tmp, **out)
        tmp.replace(path)
    except OSError as exc:  # a temp file left on a full disk keeps it full
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WriteFault(path, exc) from exc


def prepare_method(spec: RunSpec, pair: DomainPair, device: torch.device, store: RunStore | None) -> Method:
    """The run's method on ``device`` as it starts (:func:`start_method` without the fingerprint)."""
    return start_method(spec, pair, device, store)[0]


def start_method(
    spec: RunSpec, pair: DomainPair, device: torch.device, store: RunStore | None
) -> tuple[Method, str | None]:
    """The run's method on ``device``, built from ``spec.seed`` (its initialisation) and, for a
    method that starts from another run (``depends_on``), holding that run's network; with the
    fingerprint of the source weights it loaded (None for a run that loads none).

    One place for every way a run starts (``execute`` and seed-batched groups), so a seed trained
    in a group starts exactly as the same seed trained alone.

    The fingerprint is :func:`~dabench.core.store.state_fingerprint` of the very state dict loaded
    into the network: the function the source-only run's record applies to the same file
    (``weights_fingerprint``: ``weights_sha256``), so the two are equal exactly when the dependant
    was trained from the weights the source-only record names (``scheduler.stale_source``,
    ``tables.source_weight_notes`` compare them). Computed here, once, from what was loaded, not
    from a second read of the file: a source-only run recreated between a check of the file and
    this load must not leave a record naming weights the run never saw.
    """
    torch.manual_seed(spec.seed)
    method = build_method(spec, pair).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    source_sha256 = None
    if spec.depends_on:
        if store is None:
            raise ValueError(f"{spec.method} starts from run {spec.depends_on} but no results store was given")
        ckpt = store.checkpoint_path(spec.depends_on)
        if not ckpt.exists():
            raise FileNotFoundError(
                f"{spec.method} starts from the source-only run {spec.depends_on}, whose checkpoint {ckpt} is missing"
            )
        try:
            saved = torch.load(ckpt, map_location=device, weights_only=True)
        except Exception as exc:  # torch reports a damaged file as RuntimeError, EOFError, OSError, UnpicklingError ...
            raise RuntimeError(
                f"{spec.method} starts from the source-only run {spec.depends_on}, whose checkpoint {ckpt} cannot be "
                f"loaded ({first_line(str(exc)) or type(exc).__name__}); recreate it with: "
                f"dabench run --rerun {spec.depends_on} --results {store.root}"
            ) from exc
        method.net.load_state_dict(saved)  # strict: the network now holds exactly these tensors
        source_sha256 = state_fingerprint(saved)
        method.on_init_loaded()  # e.g. ADDA's frozen copy of the loaded encoder (a resume then overwrites it)
    return method, source_sha256


def execute(
    spec: RunSpec,
    pair: DomainPair,
    pair_data: PairData,
    device: torch.device,
    store: RunStore | None = None,
    on_step: Callable[[int, int], None] | None = None,
    engine: EngineOptions = EngineOptions(),
) -> RunResult:
    """Train and evaluate one run; returns the result part of its record. Raises on failure.

    ``engine`` (:class:`~dabench.engine.options.EngineOptions`): mid-run checkpoints,
    ``torch.compile`` of the method's networks, the step captured in a CUDA graph; they change
    speed, not the run's spec or id. ``timings["cuda_graphs"]`` says what became of the graphs.
    """
    # a dependant's record and mid-run checkpoints name the source weights it loaded: one fingerprint
    method, source_sha256 = start_method(spec, pair, device, store)
    if engine.compile:
        compile_method(method)
    # backstop for pairs whose max_target_shots is unknown (or wrong): the matrix's message, not an IndexError
    check_target_shots(pair, pair_data, spec.target_shots, spec.eval_shots)
    data = DeviceData(pair, pair_data, device, spec.seed, spec.target_shots, spec.eval_shots)
    ctx = RunContext(spec, pair, data, device, store, on_step, engine.checkpoint_every, source_sha256=source_sha256)
    ctx.cuda_graphs = graphs.resolve_cuda_graphs(engine.cuda_graphs, device)
    # a method with its own fit() may never reach the step loop that captures
    ctx.graph_note = "unused: the method's own fit()" if ctx.cuda_graphs else graphs.OFF
    t0 = time.perf_counter()
    ctx.fitting = True  # the evaluations' results are the record's while the method trains (RunContext.curve)
    try:
        method.fit(ctx)
    finally:
        ctx.fitting = False
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return finish_run(method, ctx, wall, {"compiled": engine.compile})


def data_summary(pair: DomainPair, pair_data: PairData) -> dict[str, Any]:
    """What the record says of the data: the pair's description and protocol (a folder pair's
    names the classes and files it left out) and the sizes of the four splits, so that a reader
    of one record can tell what a number was computed on without the dataset at hand."""
    return {
        "description": pair.description,
        "protocol": pair.protocol_note,
        "source_domain": pair_data.source.name,
        "target_domain": pair_data.target.name,
        "classes": pair.num_classes,
        **{
            name: len(getattr(pair_data, name))
            for name in ("source_train", "source_val", "target_adapt", "target_eval")
        },
        **({"loader_notes": list(pair_data.notes)} if pair_data.notes else {}),
    }


def finish_run(method: Method, ctx: RunContext, wall: float, timings: dict[str, Any]) -> RunResult:
    """The end of a run, once its steps are done (one run, or one seed of a seed-batched group):
    the final evaluation if none was recorded, the source-only checkpoint its dependants load, the
    features (``save_features``), and the result part of the record (the mid-run checkpoint is
    removed by whoever writes the record, once it is written: ``running/unit.py``); ``timings`` adds to the common timings. Raises :class:`Diverged` when the final
    evaluation is not finite."""
    spec, store, data = ctx.spec, ctx._store, ctx._data
    if not ctx._curve:
        ctx.record_eval(method, ctx.steps_done)
    if store is not None and spec.method == "source-only":
        atomic_torch_save(method.net.state_dict(), store.checkpoint_path(spec.run_id))
    # the mid-run checkpoint stays until the record says complete (running/unit.py removes it
    # then): a kill between here and that write resumes from it, not from step 0
    if store is not None and spec.save_features:
        save_features(method, data, store.features_path(spec.run_id), step=ctx._curve[-1].get("step"))
    final = ctx._curve[-1]
    if not math.isfinite(final["target_acc"]):
        raise Diverged(ctx.steps_done, source_sha256=ctx.source_sha256)
    return RunResult(
        curve=ctx._curve,
        final=final,
        target_labels=spec.target_labels(ctx.pair.num_classes),
        eval_size=data.eval_size,
        # what the label-free validators (entropy, IM, SND in the curve) were computed on
        validators={
            "split": "target_adapt",
            "samples": data.validator_samples,
            "overlaps_evaluation": data.validator_overlaps_eval,
        },
        resumed_from_step=ctx.resumed_from_step,
        resume_note=ctx.resume_note,
        source_sha256=ctx.source_sha256,
        data=data_summary(ctx.pair, ctx._data.pair_data),
        timings={
            "wall_s": round(wall, 3),
            "steps": ctx.steps_done,
            "steps_per_s": round(ctx.steps_done / wall, 2) if wall > 0 else None,
            "images_per_s": round(ctx.images_seen / wall, 1) if wall > 0 else None,
            "cuda_graphs": ctx.graph_note,
            **timings,
        },
    )
