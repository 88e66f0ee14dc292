"""The method API: what a DA method owns (modules, hyperparameters, its loss) and declares.

A method never loads data or steps an optimiser; the engine (``dabench.engine.train``) does.
All methods combine their losses the same way: ``total = ce + trade_off * da``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from .parsing import parse_bool
from .spec import PROTOCOLS

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.train import RunContext  # the type only: the engine imports this module

INITS = (None, "source-only")


def _where(obj: Any) -> str:
    """``file:line`` of a class or function (a plugin author's own code), else its qualified name."""
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return getattr(obj, "__qualname__", repr(obj))


class HyperparameterError(KeyError):
    """A method read ``self.hp[name]`` for a name its ``defaults`` do not declare."""

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0])


class HParams(dict):
    """``self.hp``: a plain dict of the resolved hyperparameters whose missing key is one clear error.

    A name read in ``loss``/``build`` but misspelt in ``defaults`` (``"trade_of"``) would otherwise
    fail as a bare ``KeyError: 'trade_off'`` deep in a run; this names the method, its declared
    hyperparameters, the nearest one and the fix.
    """

    method: str = ""

    def __missing__(self, key: Any) -> Any:
        near = difflib.get_close_matches(str(key), [str(k) for k in self], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else "."
        raise HyperparameterError(
            f"method {self.method!r} reads self.hp[{key!r}], which its defaults do not declare{hint} "
            f"Its hyperparameters: {', '.join(f'{k}={v!r}' for k, v in self.items())}. "
            f"Add {key!r} to the class's defaults (with the paper's value) or fix the name."
        )

    def __reduce__(self) -> Any:  # pickles (worker processes, deepcopy) as a plain dict's contents
        return (_make_hparams, (self.method, dict(self)))


def _make_hparams(method: str, values: dict[str, Any]) -> HParams:
    hp = HParams(values)
    hp.method = method
    return hp


@dataclass(frozen=True)
class Uses:
    """The data a method needs.

    source_labels: labelled source batches; target_unlabeled: unlabelled target batches;
    target_shots: the k labelled target images per class; init: ``"source-only"`` to start
    from the source-only checkpoint of the same pair and seed (reused, never retrained).
    """

    source_labels: bool = True
    target_unlabeled: bool = False
    target_shots: bool = False
    init: str | None = None


#: what a ``protocol = "source-free"`` method declares: the source-only network of the same pair and
#: seed, then unlabelled target data only (no source batch is ever drawn for it)
SOURCE_FREE_USES = Uses(source_labels=False, target_unlabeled=True, target_shots=False, init="source-only")


@dataclass
class Batch:
    """One training step's data, already preprocessed on the device. Absent parts are ``None``."""

    x_source: torch.Tensor | None = None
    y_source: torch.Tensor | None = None
    x_target: torch.Tensor | None = None
    x_shots: torch.Tensor | None = None
    y_shots: torch.Tensor | None = None
    #: positions of ``x_target``'s rows in the target adaptation split (the row order of
    #: :meth:`TargetView.predict`), for methods that keep per-image state (SHOT's pseudo-labels)
    idx_target: torch.Tensor | None = None


class TargetLabelsError(RuntimeError):
    """A method reached for target labels (or what is computed from them) that its protocol does not give it,
    or, in a source-free run, for source data.

    The honest-numbers rule: a method sees no target label except the labelled shots its protocol
    declares (``Uses(target_shots=True)``: ``k`` per class, ``ctx.data.shots`` / ``Batch.y_shots``).
    The engine keeps the evaluation split, the adaptation split's labels, the pair's loader and the
    evaluation results to itself; during :meth:`Method.fit` they raise this error, naming the rule and
    what the method may read instead, and the run is recorded ``failed`` with it.
    """


#: what a method may read of the target domain during ``fit`` (the text every TargetLabelsError ends with)
TARGET_ACCESS = (
    "a method sees no target label except its protocol's labelled shots: read target images through "
    "ctx.data.target (unlabelled: len, gather(idx), images) or ctx.data.batch_from(ctx.data.target, idx) "
    "(labels None), the shots' labels through ctx.data.shots (k per class, few-shot methods only), and "
    "evaluate through ctx.record_eval(method, step) (the engine scores the evaluation split; the results "
    "go to the record, not to the method)"
)


@dataclass(frozen=True)
class TargetView:
    """What :meth:`Method.refresh` may read: the unlabelled target adaptation split, through the engine.

    ``predict(output)`` runs the method over the whole split in its stored order (eval mode, no
    augmentation, no gradient; the engine's ``predict_split``) and returns float32 ``"predict"``
    logits or ``"features"``, row i for the image at position i (what ``Batch.idx_target`` holds).
    No labels: the method never loads data itself.
    """

    size: int  #: images in the target adaptation split
    batch_size: int  #: the run's training batch size (so an interval can be given in passes over the split)
    predict: Callable[[str], torch.Tensor]


@dataclass
class Loss:
    """The step's total loss and its named parts (tensors; logged without a host sync)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


#: what :meth:`Method.step` calls to take one update: ``update(optimiser name(s), loss)``. The
#: engine zeroes every gradient, backpropagates ``loss.total``, steps the named optimiser(s) only
#: and logs ``loss.parts`` (and checks them for divergence) on the device, without a host sync.
Update = Callable[[str | Sequence[str], "Loss"], None]

#: the name of the one optimiser of a method that does not override :meth:`Method.optimizers`
MAIN = "main"


class Classifier(nn.Module):
    """backbone → bottleneck (Linear-BN-ReLU) → linear head; the network every built-in method trains."""

    def __init__(self, backbone: Backbone, num_classes: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(
            nn.Linear(backbone.out_features, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU()
        )
        self.head = nn.Linear(bottleneck_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f


class Method(nn.Module):
    """Base class of every DA method (built-in or plugin).

    Subclasses set ``defaults`` (hyperparameters with the paper's values), ``uses``
    (:class:`Uses`), ``protocol`` (``"uda"``, ``"few-shot"`` or ``"source-free"``) and implement
    :meth:`loss`. They may extend :meth:`build` to add modules (discriminators, ...),
    and override :meth:`fit` when training is not a loop of steps. A method with several
    update phases per step (MCD) declares named optimisers in :meth:`optimizers` and overrides
    :meth:`step` instead of :meth:`loss`. A method that needs the whole target split now and
    then (SHOT's pseudo-labels) implements :meth:`refresh_every` and :meth:`refresh`.

    The resolved hyperparameters are in ``self.hp`` (a dict: the defaults, updated by the
    pair's per-method overrides and ``--set``, cast to each default's type). ``__init__`` sets
    ``self.hp`` and ``self.num_classes`` *before* it calls :meth:`build`, so ``build`` may read
    them (e.g. ``self.hp["bottleneck_dim"]`` for a discriminator's input size).

    A class may list, as ``hparams_outside_loss = ("name", ...)``, numeric hyperparameters that
    change neither the network ``build`` makes, the loss, its gradients, ``param_groups`` nor
    ``num_steps`` (e.g. one read only in an overridden ``fit``, or only logged);
    :func:`dabench.testing.check_method` fails on any other that has no effect.
    """

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = "uda"
    uses: ClassVar[Uses] = Uses()
    defaults: ClassVar[dict[str, Any]] = {}
    citation: ClassVar[str] = ""
    #: False: the engine never captures this method's step in a CUDA graph (``--cuda-graphs``;
    #: a step that fails to capture falls back to eager steps anyway, see engine/graphs.py)
    capturable: ClassVar[bool] = True
    #: False: the method's training never reads ``Batch.x_shots``/``y_shots`` (ADDA's stage 2 has no
    #: classification loss to add them to), so the matrix refuses ``<method>.target_shots`` > 0 for
    #: it; otherwise the run would be tabled as a few-shot row that trained on no target label.
    #: A method that overrides :meth:`step` or :meth:`fit` and ignores the shots must set it False.
    accepts_target_shots: ClassVar[bool] = True
    #: hyperparameters every method has; a method's own ``defaults`` add to these
    base_defaults: ClassVar[dict[str, Any]] = {"bottleneck_dim": 256}

    def __init__(self, backbone: Backbone, num_classes: int, hparams: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.hp = _make_hparams(self.name or type(self).__name__, self.resolve_hparams(hparams or {}))
        self.num_classes = num_classes
        self.build(backbone, num_classes)
        self._check_built()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_dabench_checks_super", False):
            return

        # A subclass __init__ that forgets super().__init__(...) leaves the object without
        # nn.Module's state and without self.hp; it would fail much later, in the engine, as
        # "'X' object has no attribute '_modules'". Say so where the mistake is, at construction.
        @functools.wraps(init)
        def checked_init(self: Method, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if "hp" not in self.__dict__ or "_modules" not in self.__dict__:
                raise TypeError(
                    f"method {cls.name or cls.__name__!r}: {cls.__qualname__}.__init__ ({_where(init)}) "
                    "did not call super().__init__(backbone, num_classes, hparams); call it first "
                    "(it sets self.hp and self.num_classes, then calls build()), or drop __init__ and "
                    "create modules in build()"
                )

        checked_init._dabench_checks_super = True  # type: ignore[attr-defined]
        cls.__init__ = checked_init  # type: ignore[method-assign]

    def _check_built(self) -> None:
        """``build`` must leave ``self.net`` unless the method replaces everything that reads it."""
        if "net" in self._modules:
            return
        cls = type(self)
        readers = [n for n in ("predict", "features", "param_groups") if getattr(cls, n) is getattr(Method, n)]
        if readers:
            build = cls.build
            raise TypeError(
                f"method {self.name or cls.__name__!r}: build() ({_where(build)}) did not create self.net; "
                "call super().build(backbone, num_classes) first in it (self.net = backbone -> bottleneck "
                f"-> head, which {', '.join(readers)} and forward_source_target read)"
            )

    # --- hyperparameters -------------------------------------------------------------
    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        return {**cls.base_defaults, **cls.defaults}

    @classmethod
    def resolve_hparams(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated by ``overrides``; an unknown name is an error listing the valid ones."""
        defaults = cls.hparam_defaults()
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            # a name close to a declared one is a typo on one side: in the --set, or in defaults
            near = [f"{m[0]!r} for {u!r}" for u in unknown if (m := difflib.get_close_matches(u, list(defaults), n=1))]
            hint = f"; did you mean {', '.join(near)}? (defaults are in {_where(cls)})" if near else ""
            raise KeyError(
                f"method {cls.name!r} has no hyperparameter(s) {unknown}; "
                f"its hyperparameters: {', '.join(f'{k}={v!r}' for k, v in defaults.items())}{hint}"
            )
        out = dict(defaults)
        for k, v in overrides.items():
            default = defaults[k]
            out[k] = _coerce(v, default, f"{cls.name}.{k}")
        return out

    @classmethod
    def description(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    # --- modules ---------------------------------------------------------------------
    def build(self, backbone: Backbone, num_classes: int) -> None:
        """Create the modules. The default is :class:`Classifier` as ``self.net``.

        Called by ``__init__`` after ``self.hp`` and ``self.num_classes`` are set. Create every
        module here (not in ``loss``): a checkpoint is loaded into a fresh build.
        """
        self.net = Classifier(backbone, num_classes, int(self.hp["bottleneck_dim"]))

    @property
    def backbone(self) -> Backbone:
        return self.net.backbone

    def param_groups(self) -> list[dict]:
        """Parameter groups with ``lr_mult``: 0.1 for a pretrained backbone, 1 for new layers."""
        bb = [p for p in self.backbone.parameters() if p.requires_grad]
        bb_ids = {id(p) for p in bb}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in bb_ids]
        groups = [{"params": rest, "lr_mult": 1.0}]
        if bb:
            groups.insert(0, {"params": bb, "lr_mult": 0.1 if self.backbone.pretrained else 1.0})
        return groups

    def optimizers(self) -> dict[str, list[dict]]:
        """Named optimisers, each a list of parameter groups with ``lr_mult`` (as :meth:`param_groups`).

        The default is one optimiser, ``"main"``, over :meth:`param_groups`. A method that updates
        parts of its network separately (MCD: the generator, then the classifiers) returns one entry
        per part and overrides :meth:`step`. The engine builds one SGD per entry, with the same
        schedule (learning rate · ``lr_mult`` · ``lr_factor(progress)``), and checkpoints them all.
        """
        return {MAIN: self.param_groups()}

    # --- computation -----------------------------------------------------------------
    def step(self, batch: Batch, progress: float, update: Update) -> None:
        """One training step on ``batch``: one or several updates, each ``update(name, loss)``.

        The default takes one update of the ``"main"`` optimiser with :meth:`loss`. A multi-phase
        method (MCD) overrides it and calls ``update`` once per phase, naming the optimiser(s) that
        phase steps, e.g. ``update("classifiers", loss_b)``; a loss part logged under the same name
        by several updates of one step keeps the last one's value. The engine runs ``step`` under
        its autocast and owns everything else (zeroing gradients, backward, the learning rate,
        divergence checks, logging, checkpoints): the method never touches an optimiser.
        """
        update(MAIN, self.loss(batch, progress))

    def loss(self, batch: Batch, progress: float) -> Loss:  # pragma: no cover - interface
        """The loss of one training step on ``batch``.

        ``progress`` is the fraction of training done, ``step / steps`` in [0, 1) (0 at the first
        step), for ramps such as DANN's λ_p: a float, or a 0-d tensor on the device when the
        engine replays the step from a CUDA graph (compute with it as a tensor, no ``float()``). :func:`dabench.testing.check_method` calls it with
        0.5 (and 0.1, 0.9 when looking for a hyperparameter's effect).
        """
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.net(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head classifies (used for t-SNE, linear probes and validators)."""
        return self.net.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def on_init_loaded(self) -> None:
        """Called by the engine right after it loads the source-only checkpoint into ``self.net``
        (methods with ``uses.init = "source-only"``), before training or a resume; default: nothing.

        ``build`` runs before that load, so a method that needs a copy of the *loaded* network
        (ADDA's frozen source encoder) makes it here. Keep such a copy a module made in ``build``
        (so it is in the ``state_dict``): a resume then restores it from the mid-run checkpoint.
        """

    def fit(self, ctx: RunContext) -> None:
        """Train. The default runs the engine's step loop calling :meth:`loss`."""
        ctx.train_steps(self)

    def num_steps(self, scheduled: int) -> int:
        """How many optimiser steps of the pair's schedule this method takes (default: all)."""
        return scheduled

    def refresh_every(self, view: TargetView) -> int:
        """Steps between calls of :meth:`refresh` in the engine's step loop (0, the default: never)."""
        return 0

    def refresh(self, view: TargetView, step: int) -> None:
        """Recompute state from the whole target adaptation split (SHOT: pseudo-labels by clustering).

        The step loop calls it, under ``torch.no_grad()``, before step ``step`` whenever ``step`` is
        a multiple of :meth:`refresh_every` (step 0 included), for methods with
        ``uses.target_unlabeled``. Keep what it computes in registered buffers: the mid-run
        checkpoint (``state_dict()``) must hold it, so a resumed run equals the uninterrupted one.
        """

    # --- helpers shared by the built-in methods --------------------------------------
    def supervised_loss(self, batch: Batch, logits_source: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Cross-entropy on the source batch and, when present, on the target shots."""
        parts: dict[str, torch.Tensor] = {}
        if logits_source is not None and batch.y_source is not None:
            parts["ce"] = F.cross_entropy(logits_source, batch.y_source)
        if batch.x_shots is not None and batch.y_shots is not None:
            parts["ce_shots"] = F.cross_entropy(self.predict(batch.x_shots), batch.y_shots)
        return parts

    def forward_source_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and features of the source and target batches: ``(logits_s, logits_t, f_s, f_t)``.

        The features are those the head classifies: the output of the bottleneck
        (Linear → BatchNorm1d → ReLU after the backbone), shape ``[batch, bottleneck_dim]``
        (256 by default; non-negative, after the ReLU), not the backbone's
        ``backbone.out_features``-wide output. Logits are ``[batch, num_classes]``.

        With ``forward="concat"`` (the default) both go through the network in one batch, so
        BatchNorm normalises them together; ``"separate"`` runs two passes (per-domain batch
        statistics). This changes DANN by several points on digits, so it is a recorded
        hyperparameter of each method that aligns domains.
        """
        assert batch.x_source is not None and batch.x_target is not None
        mode = self.hp.get("forward", "concat")
        if mode == "concat":
            logits, feats = self.net(torch.cat([batch.x_source, batch.x_target]))
            n = batch.x_source.shape[0]
            return logits[:n], logits[n:], feats[:n], feats[n:]
        if mode == "separate":
            ls, fs = self.net(batch.x_source)
            lt, ft = self.net(batch.x_target)
            return ls, lt, fs, ft
        raise ValueError(f"{self.name}.forward must be 'concat' or 'separate', got {mode!r}")

    @staticmethod
    def combine(parts: dict[str, torch.Tensor], da: torch.Tensor | None = None, trade_off: float = 0.0) -> Loss:
        """``total = sum of supervised parts + trade_off * da`` — the same rule for every method."""
        # cast: a sum of tensors is a tensor (typeshed types sum()'s start, 0, into the result)
        total = cast(torch.Tensor, sum(parts.values())) if parts else torch.zeros(())
        out = dict(parts)
        if da is not None:
            total = total + trade_off * da
            out["da"] = da
        return Loss(total=total, parts=out)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Cast a value given on the command line (often a string) to the default's type."""
    if default is None:
        return value
    try:
        if isinstance(default, bool):
            return parse_bool(value, where)
        if isinstance(default, (int, float, str)):
            if isinstance(value, bool) and not isinstance(default, str):
                # float(True) == 1.0: a `true` written for a number is a mistake, not the value 1
                raise ValueError(value)
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            out = type(default)(value)
            if isinstance(out, float) and not math.isfinite(out):  # nan/inf: no hyperparameter means that
                raise ValueError(value)
            return out
    except (TypeError, ValueError):
        kind = {float: "a finite float", int: "an integer", str: "a string"}.get(type(default), type(default).__name__)
        raise ValueError(f"{where}: expected {kind} like {default!r}, got {value!r}") from None
    return value


def validate_method_class(cls: type) -> None:
    """Refuse a method class that lacks a required piece, saying which."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} must subclass dabench.Method")
    problems = []
    if cls.loss is Method.loss and cls.fit is Method.fit and cls.step is Method.step:
        problems.append("implement loss(batch, progress) (or override step(batch, progress, update) or fit(ctx))")
    if cls.protocol not in PROTOCOLS:
        problems.append(f"protocol must be one of {PROTOCOLS}, got {cls.protocol!r}")
    if not isinstance(cls.uses, Uses):
        problems.append("uses must be a dabench.Uses(...)")
    elif cls.uses.init not in INITS:
        problems.append(f"uses.init must be one of {INITS}, got {cls.uses.init!r}")
    elif cls.protocol == "source-free" and cls.uses != SOURCE_FREE_USES:
        # the protocol's promise: adapt the source model with unlabelled target data and nothing else
        problems.append(f"a source-free method must declare uses = {SOURCE_FREE_USES}, got {cls.uses}")
    if not isinstance(cls.defaults, dict):
        problems.append("defaults must be a dict of hyperparameter defaults")
    if not cls.__doc__:
        problems.append("add a docstring (first line: what it is; then citation and equation)")
    if problems:
        raise TypeError(f"method class {cls.__qualname__} is incomplete: " + "; ".join(problems))
