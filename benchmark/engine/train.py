"""The engine: builds a run from its spec, owns the device, optimiser, schedule, evaluation,
logging and checkpoints, and calls the method only for its loss (or its own ``fit``)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .compile import compile_method
from .data import DeviceData, Stream
from ..core.domain import DomainPair, PairData, check_target_shots, lr_factor
from .evaluate import autocast, evaluate, predict_split
from ..core.method import Batch, Method
from ..core.record import RunResult
from ..core.registry import BACKBONES, METHODS
from ..core.spec import RunSpec
from ..core.store import RunStore, WriteFault, atomic_torch_save


class Diverged(RuntimeError):
    """The loss became non-finite; ``step`` is the first step at which it was."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def resolve_device(name: str | None = None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_method(spec: RunSpec, pair: DomainPair) -> Method:
    cls = METHODS.get(spec.method)
    backbone = BACKBONES.get(spec.backbone)(
        in_channels=pair.channels, image_size=pair.image_size, **spec.backbone_options
    )
    return cls(backbone, pair.num_classes, spec.hparams)


@dataclass
class RunContext:
    """What a method's ``fit`` may use: the data on the device, the schedule and the engine's loop."""

    spec: RunSpec
    pair: DomainPair
    data: DeviceData
    device: torch.device
    store: RunStore | None = None
    on_step: Callable[[int, int], None] | None = None
    checkpoint_every: int = 0  # steps between mid-run checkpoints (0: never)
    curve: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0
    images_seen: int = 0
    resumed_from_step: int | None = None  # set when a mid-run checkpoint was picked up

    @property
    def schedule(self):
        return self.spec.schedule

    def record_eval(self, method: Method, step: int, losses: dict[str, torch.Tensor] | None = None) -> dict:
        point = {"step": step, **evaluate(method, self.data)}
        if losses:
            point["loss"] = {k: float(v) for k, v in losses.items()}
        self.curve.append(point)
        return point

    def train_steps(self, method: Method) -> None:
        """SGD (Nesterov momentum) over the pair's schedule with lr·lr_mult·factor(p) (``inv``: (1+10p)^−0.75, see ``lr_factor``).

        No host synchronisation inside the loop except every ``log_every`` steps (one check of
        a device-side "first non-finite step" counter) and at evaluations.
        """
        sch = self.spec.schedule
        steps = method.num_steps(sch.steps)
        groups = method.param_groups()
        for g in groups:
            g["lr"] = sch.lr * g["lr_mult"]
        opt = torch.optim.SGD(groups, lr=sch.lr, momentum=sch.momentum, weight_decay=sch.weight_decay, nesterov=True)
        uses = method.uses
        data, dev = self.data, self.device
        streams = {}
        if uses.source_labels:
            streams["source"] = data.stream(data.source, sch.batch_size)
        if uses.target_unlabeled:
            streams["target"] = data.stream(data.target, sch.batch_size)
        if self.spec.target_shots > 0:
            if len(data.shots) == 0:
                raise ValueError(f"{self.spec.method} needs target shots but target_shots gives none")
            streams["shots"] = data.stream(data.shots, min(sch.batch_size, len(data.shots)))
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        sums: dict[str, torch.Tensor] = {}
        n_since = 0
        start = 0
        if self.checkpoint_every:
            resumed = self._resume(method, opt, streams)
            if resumed is not None:
                start, sums, n_since, first_bad = resumed
        per_step_images = sum(s.batch_size for s in streams.values())
        method.train()
        for step in range(start, steps):
            progress = step / steps
            factor = lr_factor(sch.lr_schedule, progress)
            for g in opt.param_groups:
                g["lr"] = sch.lr * g["lr_mult"] * factor
            batch = Batch()
            if "source" in streams:
                batch.x_source, batch.y_source = data.batch_from(data.source, streams["source"].next())
            if "target" in streams:
                batch.x_target, _ = data.batch_from(data.target, streams["target"].next())
            if "shots" in streams:
                batch.x_shots, batch.y_shots = data.batch_from(data.shots, streams["shots"].next())
            with autocast(dev):
                out = method.loss(batch, progress)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
            total = out.total.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(total), step, first_bad)
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            n_since += 1
            self.steps_done = step + 1
            self.images_seen += per_step_images
            last = step + 1 == steps
            if (step + 1) % sch.log_every == 0 or last:
                bad = int(first_bad)  # the periodic sync
                if bad >= 0:
                    raise Diverged(bad)
                if self.on_step:
                    self.on_step(step + 1, steps)
            if (step + 1) % sch.eval_every == 0 or last:
                self.record_eval(method, step + 1, {k: v / n_since for k, v in sums.items()})
                sums, n_since = {}, 0
            if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and not last:
                self._save_partial(method, opt, step + 1, streams, sums, n_since, first_bad)

    # --- mid-run checkpoints ---------------------------------------------------------
    # A resumed run must equal the uninterrupted one (on the CPU at a fixed thread count), so a
    # checkpoint holds every piece of state the remaining steps read: the networks and the
    # optimiser, the data generator (augmentation and reshuffles), each batch stream's current
    # permutation and position, the global torch RNG (dropout, noise layers; CPU and CUDA), and
    # the loss sums since the last evaluation (the next curve point averages them).
    def _save_partial(self, method: Method, opt: torch.optim.Optimizer, step: int, streams: dict[str, Stream],
                      sums: dict[str, torch.Tensor], n_since: int, first_bad: torch.Tensor) -> None:
        assert self.store is not None
        path = self.store.checkpoint_path(self.spec.run_id, partial=True)
        state = {
            "step": step,
            "method": method.state_dict(),
            "optimizer": opt.state_dict(),
            "curve": self.curve,
            "generator": self.data.generator.get_state(),
            "streams": {name: s.state_dict() for name, s in streams.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "loss_sums": sums,
            "loss_count": n_since,
            "first_bad": first_bad,
        }
        atomic_torch_save(state, path)

    def _resume(
        self, method: Method, opt: torch.optim.Optimizer, streams: dict[str, Stream]
    ) -> tuple[int, dict[str, torch.Tensor], int, torch.Tensor] | None:
        """Load the run's mid-run checkpoint if there is one; returns (step, loss sums, their
        count, first non-finite step) for the loop to go on from, or ``None``."""
        if self.store is None:
            return None
        path = self.store.checkpoint_path(self.spec.run_id, partial=True)
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=True)
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["optimizer"])
        self.curve = list(state["curve"])
        self.data.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
        saved_streams = state.get("streams", {})  # absent in checkpoints of older versions
        if saved_streams and set(saved_streams) != set(streams):
            raise ValueError(f"checkpoint {path} holds batch streams {sorted(saved_streams)}, "
                             f"but this run draws {sorted(streams)}")
        for name, saved in saved_streams.items():
            streams[name].load_state_dict(saved)
        if state.get("torch_rng") is not None:
            torch.set_rng_state(state["torch_rng"].cpu())  # the CPU generator takes a CPU ByteTensor
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.steps_done = self.resumed_from_step = int(state["step"])
        dev = self.device
        first_bad = state.get("first_bad", torch.full((), -1, dtype=torch.long)).to(dev)
        return self.steps_done, dict(state.get("loss_sums", {})), int(state.get("loss_count", 0)), first_bad


FEATURES_PER_DOMAIN = 1000  # enough for a t-SNE; keeps the file small (float16)


def save_features(method: Method, data: DeviceData, path) -> None:
    """Features of (up to 1,000) source-validation and target-evaluation images, with labels, as .npz."""
    method.eval()
    out = {}
    for name, split in (("source", data.source_val), ("target", data.target_eval)):
        feats = predict_split(method, data, split, limit=FEATURES_PER_DOMAIN, output="features")
        out[f"{name}_features"] = feats.cpu().numpy().astype(np.float16)
        out[f"{name}_labels"] = split.labels[: len(feats)].cpu().numpy()
    tmp = path.with_name(path.name + ".tmp.npz")
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


def execute(
    spec: RunSpec,
    pair: DomainPair,
    pair_data: PairData,
    device: torch.device,
    store: RunStore | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
    compile: bool = False,
) -> RunResult:
    """Train and evaluate one run; returns the result part of its record. Raises on failure.

    ``compile`` runs the method's networks through ``torch.compile`` (an engine option: it
    changes speed, not the run's spec or id).
    """
    torch.manual_seed(spec.seed)
    method = build_method(spec, pair).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    if spec.depends_on:
        if store is None:
            raise ValueError(f"{spec.method} starts from run {spec.depends_on} but no results store was given")
        ckpt = store.checkpoint_path(spec.depends_on)
        if not ckpt.exists():
            raise FileNotFoundError(
                f"{spec.method} starts from the source-only run {spec.depends_on}, whose checkpoint {ckpt} is missing"
            )
        method.net.load_state_dict(torch.load(ckpt, map_location=device, weights_only=True))
    if compile:
        compile_method(method)
    # backstop for pairs whose max_target_shots is unknown (or wrong): the matrix's message, not an IndexError
    check_target_shots(pair, pair_data, spec.target_shots, spec.eval_shots)
    data = DeviceData(pair, pair_data, device, spec.seed, spec.target_shots, spec.eval_shots)
    ctx = RunContext(spec, pair, data, device, store, on_step, checkpoint_every)
    t0 = time.perf_counter()
    method.fit(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
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
        target_labels=spec.target_labels(pair.num_classes),
        eval_size=data.eval_size,
        # what the label-free validators (entropy, IM, SND in the curve) were computed on
        validators={
            "split": "target_adapt",
            "samples": data.validator_samples,
            "overlaps_evaluation": data.validator_overlaps_eval,
        },
        resumed_from_step=ctx.resumed_from_step,
        timings={
            "wall_s": round(wall, 3),
            "steps": ctx.steps_done,
            "steps_per_s": round(ctx.steps_done / wall, 2) if wall > 0 else None,
            "images_per_s": round(ctx.images_seen / wall, 1) if wall > 0 else None,
            "compiled": compile,
        },
    )
