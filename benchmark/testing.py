"""``check_method``: a quick contract test for a method class, built-in or plugin.

Runs on the CPU in a few seconds on a small stratified subset of a real pair (the embedded
``digits-offline`` by default) and fails with an ``AssertionError`` that says what to fix::

    from dabench.testing import check_method
    check_method(MyMethod)            # or check_method("my-method")

A class that is not registered yet is registered on the fly, exactly as
``dabench.run(methods=[MyMethod])`` does: under the ``name`` set on the class itself, else its
lower-cased class name.

What it checks, in order:

1. the class is complete (:func:`dabench.core.method.validate_method_class`) and registered
   under its name (so ``dabench run --methods <name>`` finds it);
2. every declared hyperparameter is overridable from the command line: ``--set <name>.<key>=v``
   (given as text, as the CLI gives it) lands in the run spec with the default's type, and a
   bogus key is refused with a message listing the method's hyperparameters;
3. two builds under one seed are identical, and one loss on the same batch is identical
   (determinism under a seed);
4. for a method trained by the engine's step loop: every numeric (int or float) hyperparameter
   is *used*: changing it (an int by +1, a float halved) changes the network ``build()`` makes
   (shapes or initial values), the loss or its gradients (at ``progress`` 0.5, else 0.1 or
   0.9), ``param_groups()``' learning-rate multipliers or ``num_steps()``. A trade-off
   hard-coded in ``loss()`` or a temperature never read fails here. A hyperparameter that
   legitimately acts elsewhere (only in ``fit``, only logged) is declared on the class:
   ``hparams_outside_loss = ("name",)`` (or passed as ``allow_unused_hparams=``). Methods that
   override ``fit`` are not checked for this (their hyperparameters may act only there);
5. for a method trained by the engine's step loop (it does not override ``fit``), for each
   ``update(name(s), loss)`` its ``step`` makes (one, of ``"main"``, unless it overrides ``step``;
   later phases are computed on the same parameters, nothing is stepped): the loss is a
   finite scalar with a gradient; every parameter the named optimiser(s) will update
   receives a non-zero gradient; no parameter outside the groups receives one (it would silently
   never be trained); and the adaptation part ``parts["da"]``, when present, sends a non-zero
   gradient to the feature extractor (a ``detach()``, a ``no_grad`` block or a constant
   discriminator output — e.g. a softmax over one logit — leaves it with none);
6. one real training step through the engine (``method.fit`` with a one-step schedule, or the
   method's own ``fit``): the parameters it trains change, the frozen ones (``requires_grad``
   False, or in no parameter group) do not;
7. ``predict`` returns finite ``[batch, num_classes]`` logits;
8. a ``state_dict`` round trip (``torch.save`` → ``torch.load(weights_only=True)`` → a fresh
   build, strict) reproduces the predictions exactly;
9. for a method that accepts target shots (a few-shot method, or ``accepts_target_shots`` True,
   the default, for a UDA one): the shots' labels change the step's losses
   (:func:`check_shot_labels_trained`; for a method with its own ``fit``: the weights one
   engine step trains), else a run given ``<method>.target_shots`` would be tabled as a few-shot
   row that never trained on its labels.

Methods with ``uses.init == "source-only"`` normally start from the source-only checkpoint of
the same pair and seed. ``check_method`` does not train one: it starts them from the randomly
initialised network, which exercises the same code paths (the checkpoint only changes values).

``progress`` (the fraction of training done, 0 → 1) given to ``loss``: 0.5 for the loss,
gradient and determinism checks (mid-training, where ramps such as DANN's λ_p are well above
0); 0.1 and 0.9 as well when a hyperparameter shows no effect at 0.5 (a warm-up or a late
switch); the one engine step of check 6 runs with the engine's own value for step 0 of a
one-step schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .core.domain import Domain, DomainPair, PairData, default_data_root
from .core.method import Batch, Loss, Method, validate_method_class
from .core.registry import BACKBONES, METHODS, PAIRS, RegistryError, ensure_method_registered
from .core.spec import RunSpec, run_protocol
from .engine.data import DeviceData
from .engine.train import RunContext, build_backbone
from .running.matrix import Matrix, MatrixError, expand, parse_value
from .running.unit import load_pair_data

__all__ = ["check_method", "check_shot_labels_trained", "CheckReport", "isolated_registries"]

_SUBSET_CACHE: dict[tuple[str, int], PairData] = {}


@dataclass
class CheckReport:
    """What :func:`check_method` measured (returned when every check passed)."""

    method: str
    loss: float | None = None
    loss_parts: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    hparams_checked: list[str] = field(default_factory=list)
    #: numeric hyperparameters shown to change the network, the loss, its gradients, the
    #: learning-rate multipliers or the number of steps (step-loop methods only)
    hparams_used: list[str] = field(default_factory=list)


def check_method(
    method: type[Method] | str,
    *,
    pair: str = "digits-offline",
    seed: int = 0,
    batch_size: int = 8,
    per_class: int = 4,
    allow_no_grad: Iterable[str] = (),
    allow_unused_hparams: Iterable[str] = (),
    data_root: str | pathlib.Path | None = None,
) -> CheckReport:
    """Check that ``method`` (a class or a registered name) honours the method contract.

    A class not registered yet is registered on the fly, as ``dabench.run(methods=[cls])``
    does. ``allow_no_grad``: parameter-name prefixes that may legitimately get no gradient from
    one step (e.g. a module only used late in training). ``allow_unused_hparams``: hyperparameter
    names that may change neither the network, the loss nor its gradients (added to the class's
    ``hparams_outside_loss``). Raises ``AssertionError`` on the first broken rule, naming the
    method and what to change; a method that cannot be built raises what a real run would, with
    the same message: ``TypeError`` for an ``__init__`` without ``super().__init__`` or a
    ``build()`` without ``self.net``, ``HyperparameterError`` (a ``KeyError``) for a read of an
    undeclared ``self.hp[...]``. Runs on the CPU, single-threaded work of a few seconds.
    """
    cls = _resolve(method)
    name = cls.name
    report = CheckReport(method=name)
    pair_obj: DomainPair = PAIRS.get(pair)
    small = _small_pair_data(pair, per_class, pathlib.Path(data_root) if data_root else default_data_root())
    shots = 1 if (cls.uses.target_shots or cls.protocol == "few-shot") else 0
    hparams = cls.resolve_hparams({})

    report.hparams_checked = _check_hparams(cls, pair)

    # --- determinism: two builds under one seed, one loss each on the same batch -----------
    m1, m2 = _build(cls, pair_obj, hparams, seed), _build(cls, pair_obj, hparams, seed)
    _assert_same_state(m1, m2, f"{name}: two builds under seed {seed} differ")
    data = DeviceData(pair_obj, small, torch.device("cpu"), seed, shots, shots)
    batch = _batch(cls, data, batch_size, seed)
    uses_step_loop = cls.fit is Method.fit
    if uses_step_loop:
        # every update of one step (one, of "main", unless the method overrides step())
        ups1 = _updates(m1, batch, seed)
        ups2 = _updates(m2, batch, seed)
        out1 = ups1[0][1]
        report.loss = float(out1.total.detach())
        report.loss_parts = {k: float(v.detach()) for _, o in ups1 for k, v in o.parts.items() if v.numel() == 1}
        totals1 = [float(o.total.detach()) for _, o in ups1]
        totals2 = [float(o.total.detach()) for _, o in ups2]
        _check(
            totals1 == totals2,
            f"{name}: not deterministic under a seed: two builds with seed {seed} give losses "
            f"{totals1!r} and {totals2!r} on the same batch (a random draw that "
            f"ignores torch's seed, e.g. Python's random or numpy?)",
        )
        _check_global_rng(m2, batch, seed)
        for names, out in ups1:
            _check_gradients(m1, out, tuple(allow_no_grad), report, names)
        report.hparams_used = _check_hparams_used(cls, pair_obj, hparams, batch, seed, tuple(allow_unused_hparams))
    del m2

    # --- one real step through the engine ---------------------------------------------------
    model = _build(cls, pair_obj, hparams, seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _fit_once(model, pair_obj, small, hparams, seed, shots, batch_size)
    in_groups = _optimised(model) if uses_step_loop else None
    changed, frozen = [], []
    for n, p in model.named_parameters():
        is_frozen = not p.requires_grad or (in_groups is not None and id(p) not in in_groups)
        moved = n not in before or before[n].shape != p.shape or not torch.equal(before[n], p.detach())
        if is_frozen:
            frozen.append(n)
            _check(
                not moved,
                f"{name}: parameter {n!r} is frozen (requires_grad=False or in no "
                f"param group) but changed during training",
            )
        elif moved:
            changed.append(n)
    _check(
        bool(changed),
        f"{name}: one training step changed no parameter (is the learning rate "
        f"multiplier 0, or does fit() train a copy?)",
    )
    report.trained, report.frozen = changed, frozen

    # --- predict ---------------------------------------------------------------------------
    model.eval()
    x_eval, _ = data.batch_from(data.target_eval, torch.arange(min(5, len(data.target_eval))), train=False)
    with torch.no_grad():
        logits = model.predict(x_eval)
    _check(
        isinstance(logits, torch.Tensor) and tuple(logits.shape) == (len(x_eval), pair_obj.num_classes),
        f"{name}: predict(x) must return logits of shape [batch, num_classes] = "
        f"{[len(x_eval), pair_obj.num_classes]}, got {getattr(logits, 'shape', type(logits))}",
    )
    _check(bool(torch.isfinite(logits).all()), f"{name}: predict(x) returned non-finite logits")

    # --- state-dict round trip ---------------------------------------------------------------
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = _build(cls, pair_obj, hparams, seed + 1)
    try:
        fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure is the method's to fix
        raise AssertionError(
            f"{name}: its state_dict does not load into a fresh build (weights_only=True, strict): "
            f"{type(exc).__name__}: {str(exc).strip().rstrip('.')}. Create every module in build(), not in loss() or fit(), "
            f"with shapes that depend only on the hyperparameters."
        ) from None
    fresh.eval()
    with torch.no_grad():
        again = fresh.predict(x_eval)
    _check(
        torch.equal(logits, again),
        f"{name}: predictions differ after a state_dict round trip (state kept outside parameters and buffers?)",
    )

    # --- target shots: their labels are trained on ------------------------------------------
    takes_shots = cls.protocol != "source-free" and bool(shots or getattr(cls, "accepts_target_shots", True))
    if takes_shots and uses_step_loop:
        # a UDA method accepting <method>.target_shots is tabled as a few-shot row when given them:
        # its step must train on their labels (the batch gets shots even though a UDA run has none)
        if not shots:
            batch = _batch(cls, DeviceData(pair_obj, small, torch.device("cpu"), seed, 1, 1), batch_size, seed)
        check_shot_labels_trained(lambda: _build(cls, pair_obj, hparams, seed), batch, seed=seed)
    elif takes_shots:
        # an own fit() given ctx.data.shots: one engine step with the shots' labels, one with every
        # label moved to another class; the trained state must differ
        states = []
        for shift in (0, 1):
            m = _build(cls, pair_obj, hparams, seed)
            _fit_once(m, pair_obj, small, hparams, seed, max(shots, 1), batch_size, shift_shot_labels=shift)
            states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        if all(torch.equal(states[0][k], states[1][k]) for k in states[0]):
            why, fix = _shots_why_fix(name, cls.protocol)
            raise AssertionError(
                f"{name}: its fit() trains the same weights whatever the target shots' labels (one engine step with "
                f"the labels given, one with every label moved to another class): {why}, but it never trains on "
                f"them. Train on ctx.data.shots (images and labels, e.g. through batch.x_shots / batch.y_shots as "
                f"supervised_loss does){fix}"
            )
    return report


def _fit_once(
    model: Method,
    pair_obj: DomainPair,
    small: PairData,
    hparams: dict[str, Any],
    seed: int,
    shots: int,
    batch_size: int,
    shift_shot_labels: int = 0,
) -> None:
    """``model.fit`` through the engine with a one-step schedule on the small data, as ``execute`` calls it.

    ``shift_shot_labels``: every shot's label moved by that many classes (mod C) before the run.
    """
    spec = RunSpec(
        method=model.name,
        pair=pair_obj.name,
        seed=seed,
        protocol=run_protocol(model.protocol, shots),
        target_shots=shots,
        eval_shots=shots,
        hparams=hparams,
        schedule=pair_obj.schedule.replace(steps=1, batch_size=batch_size, eval_every=1, log_every=1),
        backbone=pair_obj.backbone,
        backbone_options=dict(pair_obj.backbone_options),
    )
    torch.manual_seed(seed)
    data = DeviceData(pair_obj, small, torch.device("cpu"), seed, shots, shots)
    if shift_shot_labels:
        data.shots.labels = (data.shots.labels + shift_shot_labels) % pair_obj.num_classes
    ctx = RunContext(spec, pair_obj, data, torch.device("cpu"))
    ctx.fitting = True  # as execute(): the method trains without the evaluation's results
    try:
        model.fit(ctx)
    finally:
        ctx.fitting = False


def check_shot_labels_trained(
    build: Callable[[], Method], batch: Batch, *, seed: int = 0, progress: float = 0.5
) -> None:
    """The labels of the target shots in ``batch`` change the losses of one ``step``; else ``AssertionError``.

    A UDA method given ``<method>.target_shots=k`` is recorded under the few-shot protocol with
    ``k·C`` target labels (a few-shot method always is). A step that never reads ``batch.y_shots``
    would be tabled in that label budget having trained on none of the labels. Told by running
    one step (nothing is stepped) of two fresh builds (``build()``) under the same torch seed, once with
    the shots' labels and once with every label moved to the next class, ``(y + 1) mod C``: the
    losses the step hands to ``update`` must differ (relative tolerance 1e-6, far above the
    run-to-run noise of a deterministic CPU step). ``batch`` must hold ``x_shots`` and ``y_shots``.
    Shared by :func:`check_method` and the built-in methods' tests.
    """
    if batch.x_shots is None or batch.y_shots is None:
        raise ValueError("check_shot_labels_trained: batch has no x_shots/y_shots to relabel")

    def totals(labels: torch.Tensor) -> tuple[Method, list[float]]:
        torch.manual_seed(seed)
        m = build()
        m.train()
        out: list[float] = []
        relabelled = dataclasses.replace(batch, y_shots=labels)
        torch.manual_seed(seed + 1)  # dropout and any sampling inside the step draw the same numbers
        m.step(relabelled, progress, lambda names, loss: out.append(float(loss.total.detach())))
        return m, out

    m, given = totals(batch.y_shots)
    name = m.name or type(m).__name__
    _, moved = totals((batch.y_shots + 1) % m.num_classes)
    differ = len(given) != len(moved) or any(
        not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(given, moved)
    )
    if differ:
        return
    why, fix = _shots_why_fix(name, m.protocol)
    raise AssertionError(
        f"{name}: the target shots' labels do not change its step's losses ({given} with the labels given, the "
        f"same with every label moved to another class): {why}, but it never trains on them. Train on "
        f"batch.x_shots / batch.y_shots as supervised_loss does (it adds parts['ce_shots'] = cross-entropy of "
        f"self.predict(batch.x_shots) against batch.y_shots; a step() or loss() of your own must add it too){fix}"
    )


def _shots_why_fix(name: str, protocol: str) -> tuple[str, str]:
    """Why a method must train on the shots' labels, and the other way out (a UDA method's)."""
    if protocol == "uda":
        return (
            f"{name} accepts target shots (accepts_target_shots is True, the default), so a run given "
            f"{name}.target_shots=k is tabled as a few-shot row with k labels per class",
            f"; or, if it cannot use them, set accepts_target_shots = False on the class (the matrix then "
            f"refuses {name}.target_shots > 0)",
        )
    return f"{name} is a few-shot method, tabled with k labels per class", ""


@contextlib.contextmanager
def isolated_registries() -> Iterator[None]:
    """Undo every registration made inside the block (methods, pairs, backbones, groups, factories)
    and forget plugin files imported by ``load_plugin`` in it, so a test's plugins do not leak into
    the rest of the session (e.g. into a test that lists the built-in methods)."""
    registries = (METHODS, PAIRS, BACKBONES)
    for r in registries:
        # built-ins register lazily, once: loaded first inside the block they would be undone with it,
        # leaving an empty registry that never reloads them (their modules stay imported)
        r._load_builtin()
    fields = ("_items", "_sources", "_groups", "_factories", "_labels", "_broken", "_dists")
    saved = [({f: dict(getattr(r, f)) for f in fields}, r._entry_points_loaded) for r in registries]
    modules = set(sys.modules)
    try:
        yield
    finally:
        for r, (dicts, loaded) in zip(registries, saved):
            for f, value in dicts.items():
                setattr(r, f, value)
            r._entry_points_loaded = loaded
        for name in set(sys.modules) - modules:
            if name.startswith("dabench_plugin_"):
                del sys.modules[name]


# --- pieces ---------------------------------------------------------------------------------
def _check(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def _resolve(method: type[Method] | str) -> type[Method]:
    if isinstance(method, str):
        try:
            return METHODS.get(method)
        except RegistryError as exc:
            raise AssertionError(str(exc)) from None
    try:
        validate_method_class(method)
    except TypeError as exc:
        raise AssertionError(str(exc)) from None
    try:
        name = ensure_method_registered(method)  # as dabench.run(methods=[cls]) does
    except RegistryError as exc:
        raise AssertionError(str(exc)) from None
    return METHODS.get(name)


def _build(cls: type[Method], pair: DomainPair, hparams: dict[str, Any], seed: int) -> Method:
    torch.manual_seed(seed)
    return cls(build_backbone(pair, pair.backbone, pair.backbone_options), pair.num_classes, hparams)


def _per_class(idx: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` indices of each class in ``idx`` (deterministic, stratified)."""
    keep = [idx[labels[idx] == c][:n] for c in torch.unique(labels[idx]).tolist()]
    return torch.cat(keep).sort().values


def _small_pair_data(pair: str, per_class: int, data_root: pathlib.Path) -> PairData:
    key = (pair, per_class)
    if key not in _SUBSET_CACHE:
        full = load_pair_data(pair, data_root)
        src, tgt = full.source, full.target

        def shrink(d: Domain, *splits: torch.Tensor) -> tuple[Domain, list[torch.Tensor]]:
            # keep only the images the splits use, renumbered, so the subset is small in memory
            used = torch.cat(splits).unique()
            remap = torch.full((len(d),), -1, dtype=torch.long)
            remap[used] = torch.arange(len(used))
            return Domain(d.name, d.images[used].clone(), d.labels[used].clone(), d.classes), [remap[s] for s in splits]

        s, (s_train, s_val) = shrink(
            src,
            _per_class(full.source_train, src.labels, per_class),
            _per_class(full.source_val, src.labels, max(1, per_class // 2)),
        )
        t, (t_adapt, t_eval) = shrink(
            tgt,
            _per_class(full.target_adapt, tgt.labels, per_class),
            _per_class(full.target_eval, tgt.labels, max(1, per_class // 2)),
        )
        _SUBSET_CACHE[key] = PairData(s, t, s_train, s_val, t_adapt, t_eval)
    return _SUBSET_CACHE[key]


def _batch(cls: type[Method], data: DeviceData, batch_size: int, seed: int) -> Batch:
    """The batch the engine's step loop would give this method (same fields, same preprocessing)."""
    g = torch.Generator().manual_seed(seed)
    batch = Batch()

    def pick(split) -> torch.Tensor:
        return torch.randint(len(split), (batch_size,), generator=g)

    if cls.uses.source_labels:
        batch.x_source, batch.y_source = data.batch_from(data.source, pick(data.source))
    if cls.uses.target_unlabeled:
        batch.idx_target = pick(data.target)
        batch.x_target, _ = data.batch_from(data.target, batch.idx_target)
    if len(data.shots):
        batch.x_shots, batch.y_shots = data.batch_from(data.shots, torch.arange(len(data.shots)))
    return batch


def _optimised(m: Method, names: Iterable[str] | None = None) -> set[int]:
    """ids of the parameters the named optimisers (all of ``optimizers()`` by default) update."""
    declared = m.optimizers()
    return {id(p) for n in (declared if names is None else names) for g in declared[n] for p in g["params"]}


def _updates(m: Method, batch: Batch, seed: int, progress: float = 0.5) -> list[tuple[tuple[str, ...], Loss]]:
    """The updates one ``step`` asks for, as (optimiser names, loss), each checked; nothing is stepped.

    For a multi-phase method the later phases' losses are then computed on the same parameters
    (no earlier phase applied): enough to check each phase's gradients and hyperparameters.
    """
    m.train()
    torch.manual_seed(seed + 1)  # dropout and any sampling inside the loss draw from torch's RNG
    declared = set(m.optimizers())
    out: list[tuple[tuple[str, ...], Loss]] = []

    def update(names, loss: Loss) -> None:
        names = (names,) if isinstance(names, str) else tuple(names)
        unknown = [n for n in names if n not in declared]
        _check(
            bool(names) and not unknown,
            f"{m.name}: step() calls update({names!r}, ...), but optimizers() declares {sorted(declared)}",
        )
        out.append((names, _checked_loss(m, loss)))

    m.step(batch, progress, update)  # 0.5, mid-training: ramps such as DANN's λ_p are well above 0
    _check(bool(out), f"{m.name}: step() made no update(name, loss) call")
    return out


def _check_global_rng(m: Method, batch: Batch, seed: int) -> None:
    """A step must draw from the global RNGs (torch, Python's ``random``, numpy), never reseed them.

    The engine seeds them once per run (the run's seed); a ``torch.manual_seed(0)`` inside
    ``loss`` would give every seed the same dropout masks and draws from then on, so the seeds of
    a table would no longer be independent and its ± would look smaller than it is. Told by
    the state *after* a step: under two different states before it, an untouched RNG ends in two
    different states; a reseeded one ends in the same.
    """
    import random

    import numpy as np

    after = []
    for s in (seed + 11, seed + 12):
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s)  # noqa: NPY002 - the legacy global RNG is what a plugin might reseed
        m.step(batch, 0.5, lambda names, loss: None)
        after.append((torch.rand(4), random.random(), float(np.random.rand())))  # noqa: NPY002
    for i, (rng, call) in enumerate(
        (("torch's", "torch.manual_seed"), ("Python's random", "random.seed"), ("numpy's", "np.random.seed"))
    ):
        a, b = after[0][i], after[1][i]
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
        _check(
            not same,
            f"{m.name}: its step reseeds {rng} global RNG ({call}(...) in loss() or step()): every seed of a run "
            f"would then draw the same numbers, and the seeds of a table would not be independent. Draw from the "
            f"global RNG without seeding it (the engine seeds it per run), or use a torch.Generator of your own "
            f"seeded in build() from torch.initial_seed()",
        )


def _checked_loss(m: Method, out: Loss) -> Loss:
    name = m.name
    _check(isinstance(out, Loss), f"{name}: loss() must return dabench.Loss(total, parts), got {type(out).__name__}")
    _check(
        isinstance(out.total, torch.Tensor) and out.total.numel() == 1,
        f"{name}: Loss.total must be a scalar tensor, got {getattr(out.total, 'shape', out.total)!r}",
    )
    value = float(out.total.detach()) if isinstance(out.total, torch.Tensor) else float("nan")
    _check(math.isfinite(value), f"{name}: the loss is not finite ({value}) on a normal batch")
    _check(
        out.total.requires_grad,
        f"{name}: the total loss has no gradient: is everything detached or computed under torch.no_grad()?",
    )
    return out


def _check_gradients(
    m: Method, out: Loss, allow: tuple[str, ...], report: CheckReport, names: tuple[str, ...] | None = None
) -> None:
    """``out``'s gradients reach every parameter the optimisers ``names`` step (all by default), and
    none reaches a trainable parameter that no optimiser steps."""
    name = m.name
    named = list(m.named_parameters())
    in_groups = _optimised(m, names)
    anywhere = _optimised(m)
    da = out.parts.get("da")
    backbone_params = [p for p in m.backbone.parameters() if p.requires_grad and id(p) in in_groups]
    if da is not None and backbone_params:
        _check(
            da.requires_grad,
            f"{name}: the adaptation loss parts['da'] is detached: it cannot move "
            f"the features, so the method trains as source-only",
        )
        grads = torch.autograd.grad(da, backbone_params, retain_graph=True, allow_unused=True)
        reach = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        _check(
            reach,
            f"{name}: the adaptation loss parts['da'] sends no gradient to the feature extractor "
            f"(a detach(), a no_grad block, or a constant output such as a softmax over one "
            f"logit?): the method would train as source-only",
        )
    m.zero_grad(set_to_none=True)
    out.total.backward()

    def allowed(n: str) -> bool:
        return any(n.startswith(a) for a in allow)

    dead = [
        n
        for n, p in named
        if id(p) in in_groups and not allowed(n) and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
    _check(
        not dead,
        f"{name}: parameters the optimiser trains (param_groups) get no gradient from "
        f"the loss: {dead[:8]}{' ...' if len(dead) > 8 else ''} (detached? unused? If that "
        f"is intended, freeze them (requires_grad_(False)) or pass allow_no_grad=)",
    )
    stray = [
        n
        for n, p in named
        if p.requires_grad and id(p) not in anywhere and p.grad is not None and bool(p.grad.abs().sum() > 0)
    ]
    _check(
        not stray,
        f"{name}: parameters receive gradients but are in no param group, so they are "
        f"never updated: {stray[:8]} (add them in param_groups())",
    )
    m.zero_grad(set_to_none=True)


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module, message: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    diff = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
    _check(not diff and sa.keys() == sb.keys(), f"{message}: {diff[:5]} (draw random numbers from torch only)")


def _other_value(v: Any) -> Any:
    """A value different from the default, of the same type (strings keep theirs: no valid other is known)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 0.5 if v else 0.5
    return v


def _check_hparams(cls: type[Method], pair: str) -> list[str]:
    """Every declared hyperparameter lands in the run spec when given as ``--set`` text."""
    name = cls.name
    defaults = cls.hparam_defaults()
    checked = []
    for key, default in defaults.items():
        if default is None:
            continue
        wanted = _other_value(default)
        # A method that starts from the source-only checkpoint must share its network shape, so
        # the engine takes base hyperparameters (bottleneck_dim) from source-only: set them for all.
        shared = cls.uses.init == "source-only" and key in Method.base_defaults
        flag = key if shared else f"{name}.{key}"
        text = str(wanted)  # what a user types after --set flag=
        methods = (name, "source-only") if shared else (name,)
        try:
            specs = expand(Matrix(methods=methods, pairs=(pair,), seeds=(0,), overrides={flag: parse_value(text)}))
        except (MatrixError, KeyError, ValueError) as exc:
            raise AssertionError(f"{name}: --set {flag}={text} is refused: {exc}") from None
        got = next(s for s in specs if s.method == name).hparams.get(key)
        _check(
            got == wanted and type(got) is type(default),
            f"{name}: --set {flag}={text} gave {key}={got!r} ({type(got).__name__}); expected {wanted!r} "
            f"({type(default).__name__})",
        )
        checked.append(key)
    try:
        expand(Matrix(methods=(name,), pairs=(pair,), seeds=(0,), overrides={f"{name}.no_such_hparam": 1}))
    except MatrixError as exc:
        missing = [k for k in defaults if k not in str(exc)]
        _check(not missing, f"{name}: an unknown hyperparameter's error should list all of them; misses {missing}")
    else:
        raise AssertionError(f"{name}: --set {name}.no_such_hparam=1 was accepted")
    return checked


#: progress values at which a hyperparameter's effect on the loss is looked for: mid-training
#: first, then early and late (a warm-up or a switch late in training may hide it at 0.5)
_PROGRESS_PROBES = (0.5, 0.1, 0.9)


def _fingerprint(m: Method, batch: Batch, seed: int, progress: float) -> list[torch.Tensor]:
    """Each update's loss and every parameter's gradient summed over them (zeros where none), in parameter order."""
    ups = _updates(m, batch, seed, progress)
    m.zero_grad(set_to_none=True)
    for _, out in ups:
        out.total.backward()
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    return [torch.stack([out.total.detach().reshape(()) for _, out in ups]), *grads]


def _lr_mults(m: Method) -> list[tuple[str, float]]:
    return [(n, g.get("lr_mult", 1.0)) for n, groups in m.optimizers().items() for g in groups]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def _check_hparams_used(
    cls: type[Method], pair: DomainPair, hparams: dict[str, Any], batch: Batch, seed: int, allow: tuple[str, ...]
) -> list[str]:
    """Every numeric hyperparameter changes the network, the loss, its gradients, the learning-rate
    multipliers or the step count; else it is ignored (a hard-coded value in ``loss``) unless declared.

    Comparisons are exact: the same seed, batch and progress give bit-identical results (check 3),
    so any difference is the hyperparameter's doing.
    """
    name = cls.name
    declared = tuple(getattr(cls, "hparams_outside_loss", ()) or ())
    _check(
        isinstance(declared, (tuple, list)) and all(isinstance(k, str) for k in declared),
        f"{name}: hparams_outside_loss must be a tuple of hyperparameter names, got {declared!r}",
    )
    unknown = [k for k in (*declared, *allow) if k not in hparams]
    _check(
        not unknown,
        f"{name}: hparams_outside_loss / allow_unused_hparams name {unknown}, which are not "
        f"hyperparameters; its hyperparameters: {', '.join(hparams)}",
    )
    exempt = set(declared) | set(allow)
    base = _build(cls, pair, hparams, seed)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}  # BN buffers move in loss()
    base_lr = _lr_mults(base)
    base_steps = base.num_steps(1000)
    base_prints: dict[float, list[torch.Tensor]] = {}
    used = []
    for key, default in hparams.items():
        if key in exempt or isinstance(default, bool) or not isinstance(default, (int, float)):
            continue  # strings (a mode such as forward="concat") have no generic "other" value
        other = _other_value(default)
        m = _build(cls, pair, {**hparams, key: other}, seed)
        state = m.state_dict()
        if (
            state.keys() != base_state.keys()
            or any(state[k].shape != base_state[k].shape or not torch.equal(state[k], base_state[k]) for k in state)
            or _lr_mults(m) != base_lr
            or m.num_steps(1000) != base_steps
        ):
            used.append(key)
            continue
        for progress in _PROGRESS_PROBES:
            if progress not in base_prints:
                base_prints[progress] = _fingerprint(base, batch, seed, progress)
            if not _same(_fingerprint(m, batch, seed, progress), base_prints[progress]):
                used.append(key)
                break
        else:
            raise AssertionError(
                f"{name}: hyperparameter {key!r} is ignored: changing it from {default!r} to {other!r} changes "
                f"neither the network build() makes, the loss, its gradients (at progress "
                f"{', '.join(map(str, _PROGRESS_PROBES))}), param_groups() nor num_steps(). Read it in loss() as "
                f"self.hp[{key!r}] instead of a hard-coded value; or, if it acts only elsewhere (in fit(), "
                f"logging), declare it inert on the class: hparams_outside_loss = ({key!r},)"
            )
    return used
