"""Domains, domain pairs and their default schedules (the data side of a benchmark task)."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # torch only in the functions that touch tensors: the Schedule, DomainPair and the errors
    # are read by the analysis and status paths, which must not pay for importing torch
    # (docs/architecture.md, "Import layers")
    import torch

AUGMENTATIONS = ("none", "shift", "crop_flip", "resized_crop_flip")


@dataclass(frozen=True)
class Domain:
    """A named image set held in memory: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        import torch  # late: see the module's imports (whoever made the tensors has torch loaded)

        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"domain {self.name!r}: images must be uint8 [N, C, H, W], "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"domain {self.name!r}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            # other dtypes failed only inside a run, naming neither pair nor field: int32 in the
            # cross-entropy ("expected target dtype to be Long"), uint8 in index_add_, float and
            # bool in bincount (the shot draw); int64 is what every consumer indexes and counts with
            raise ValueError(
                f"domain {self.name!r}: labels must be int64 class indices [N], got {self.labels.dtype}; "
                "convert them with labels.long() (float labels: round them first)"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class PairData:
    """The loaded data of a pair: two domains and the index splits into them.

    ``target_adapt`` is what methods may see unlabelled (and draw shots from);
    ``target_eval`` is what every run is scored on. They may overlap (Office-31's
    transductive protocol evaluates on the whole target domain).
    """

    source: Domain
    target: Domain
    source_train: torch.Tensor
    source_val: torch.Tensor
    target_adapt: torch.Tensor
    target_eval: torch.Tensor
    #: what the loader left out that the pair's name does not say (a folder pair's files that
    #: cannot be decoded): in the record's ``data`` and in a refused label budget's message
    notes: tuple[str, ...] = ()


class ScheduleError(ValueError):
    """A schedule value out of its type, range or choices; the message names the key, the value and what is valid."""


#: learning-rate factors at progress p in [0, 1] (see :class:`Schedule`)
LR_SCHEDULES = ("inv", "cosine", "constant")


def lr_factor(kind: str, progress: float) -> float:
    """The multiplier of the base learning rate at ``progress`` p ∈ [0, 1].

    - ``inv``: ``(1 + 10 p) ** -0.75`` (Ganin et al. 2016, JMLR, §5.2.2; the annealing of DANN/CDAN);
    - ``cosine``: ``0.5 (1 + cos(π p))`` (Loshchilov & Hutter 2017, ICLR, SGDR without restarts);
    - ``constant``: 1.
    """
    if kind == "inv":
        return (1 + 10 * progress) ** -0.75
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "constant":
        return 1.0
    raise ScheduleError(f"lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, got {kind!r}")


def _is_int(v: Any) -> bool:
    # bool is an int subclass, but steps=true is a mistake, not 1
    return isinstance(v, int) and not isinstance(v, bool)


def _as_int(v: Any) -> Any:
    """An integral number as int (``1e3`` → 1000); anything else unchanged, for the range check to refuse."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return v
    return v


def _as_float(v: Any) -> Any:
    if _is_int(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return v
    return v


def _num(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v)


#: key → (conversion, check, what is allowed). The one place schedule values are checked: the
#: matrix (``--set``, ``[set]``), ``--dry-run``, pair registrations and records all build a Schedule.
SCHEDULE_RULES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
    "steps": (_as_int, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (_as_int, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (_as_float, lambda v: _num(v) and v > 0, "a finite number > 0"),
    # the engine's SGD is Nesterov, which needs a momentum > 0; >= 1 never forgets and diverges
    "momentum": (_as_float, lambda v: _num(v) and 0 < v < 1, "a number in (0, 1) (the engine uses Nesterov SGD)"),
    "weight_decay": (_as_float, lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "lr_schedule": (lambda v: v, lambda v: v in LR_SCHEDULES, f"one of {', '.join(LR_SCHEDULES)}"),
    "eval_every": (_as_int, lambda v: _is_int(v) and v >= 1, "an integer >= 1 (steps between evaluations)"),
    "log_every": (_as_int, lambda v: _is_int(v) and v >= 1, "an integer >= 1 (steps between loss checks)"),
}


@dataclass(frozen=True)
class Schedule:
    """The optimisation schedule the engine runs; the same for every method of a pair.

    The learning rate at progress p in [0, 1] is ``lr * lr_factor(lr_schedule, p)``: ``inv``
    is ``(1 + 10 p) ** -0.75`` (Ganin et al. 2016, applied to all methods so they are comparable),
    ``cosine`` is ``0.5 (1 + cos(π p))``, ``constant`` is 1. Every value is checked on
    construction against :data:`SCHEDULE_RULES` (:class:`ScheduleError` names key, value and
    what is allowed), so a bad ``--set`` fails before anything runs.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "inv"  # one of LR_SCHEDULES
    eval_every: int = 250
    log_every: int = 50

    def __post_init__(self) -> None:
        for f in fields(self):
            convert, ok, allowed = SCHEDULE_RULES[f.name]
            given = getattr(self, f.name)
            value = convert(given)
            if not ok(value):
                raise ScheduleError(f"schedule key {f.name!r}: expected {allowed}, got {given!r}")
            object.__setattr__(self, f.name, value)  # frozen: normalise 1e3 → 1000, 1 → 1.0 in place

    def replace(self, **changes: Any) -> Schedule:
        valid = {f.name for f in fields(self)}
        bad = sorted(set(changes) - valid)
        if bad:
            raise ScheduleError(f"unknown schedule key(s) {bad}; valid: {sorted(valid)}")
        return Schedule(**{**self.__dict__, **changes})


def default_data_root() -> pathlib.Path:
    """``$DABENCH_DATA`` if set, else ``~/.cache/dabench``."""
    env = os.environ.get("DABENCH_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "dabench"


class MissingDataError(FileNotFoundError):
    """A dataset is not on disk; the message says where it looked and how to provide it."""


class DataFileError(ValueError):
    """A data file is there but is not what its loader reads (not an archive, a missing key, a
    wrong dtype, shape or label range, a failed checksum); the message names the file, what was
    found, what is expected and the fix."""


@dataclass(frozen=True)
class DomainPair:
    """A source→target task with everything needed to run it the same way every time.

    ``load(data_root)`` returns :class:`PairData`; it must raise :class:`MissingDataError`
    naming the expected location when the files are absent.
    """

    name: str
    description: str
    load: Callable[[pathlib.Path], PairData]
    num_classes: int
    backbone: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    schedule: Schedule = field(default_factory=Schedule)
    target_shots: int = 10
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    protocol_note: str = ""
    #: labelled images per class the target adaptation split can supply (its smallest class), known
    #: without loading the data so a matrix asking for more is refused up front; ``None``: unknown,
    #: checked only when the data is loaded (:func:`check_target_shots`)
    max_target_shots: int | None = None

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"pair {self.name!r}: augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.max_target_shots is not None and not 0 <= self.target_shots <= self.max_target_shots:
            raise ValueError(shots_error(self.name, self.target_shots, self.max_target_shots))


def shots_error(pair_name: str, shots: int, maximum: int, key: str = "target_shots") -> str:
    """The one message for a label budget the pair cannot supply (matrix check and load-time check alike)."""
    return (
        f"{key}={shots!r} on pair {pair_name!r}: the pair's target adaptation split has {maximum} images in "
        f"its smallest class, so target_shots must be an integer from 0 to {maximum} (labelled images per class)"
    )


def target_shot_capacity(data: PairData) -> int:
    """Images in the smallest class of ``data.target_adapt``: the most shots per class it can supply."""
    import torch  # late: see the module's imports

    labels = data.target.labels[data.target_adapt]
    counts = torch.bincount(labels, minlength=len(data.target.classes))
    return int(counts.min()) if len(counts) else 0


#: why a run needs each split (the message for an empty one)
EMPTY_SPLIT = {
    "source_train": "a run needs source images to train on",
    "source_val": "every evaluation scores source-validation accuracy (the source-val rule), so hold out "
    "some source images: stratified_split(labels, 0.1, seed=0) holds out 10% of each class, none of a "
    "class with 5 images or fewer",
    "target_adapt": "adapting methods train on it, few-shot runs draw their shots from it and the label-free "
    "validators score it: give the pair unlabelled target images",
    "target_eval": "a run needs target images to score",
}


class PairDataError(ValueError):
    """A pair's loader returned data that does not fit its :class:`DomainPair` (the message names the
    pair, the field, the value and what is valid)."""


def check_pair_data(pair: DomainPair, data: PairData) -> None:
    """Refuse loaded data that would fail deep inside a run, or score it dishonestly.

    What a plugin pair's loader most often gets wrong, each otherwise a torch error naming neither
    the pair nor the field (``index 1797 is out of bounds``, ``Target 9 is out of bounds``, a
    convolution's channel count), or no error at all: a ``source_val`` sharing images with
    ``source_train`` makes the ``source-val`` selection rule score on training images.
    (``target_adapt`` may overlap ``target_eval``: the transductive protocol; the record's
    ``validators.overlaps_evaluation`` says so.) Called once per load, before any run trains.
    """
    import torch  # late: see the module's imports

    where = f"pair {pair.name!r}"
    if not isinstance(data, PairData):
        raise PairDataError(f"{where}: load(data_root) must return a PairData, got {type(data).__name__}")
    n_stats = (len(pair.mean), len(pair.std))
    if n_stats != (pair.channels, pair.channels):
        raise PairDataError(
            f"{where}: mean/std have {n_stats[0]}/{n_stats[1]} value(s) but channels={pair.channels}; "
            "give one mean and one std per channel"
        )
    for role, dom in (("source", data.source), ("target", data.target)):
        n = len(dom.images)
        if len(dom.labels) != n:
            raise PairDataError(f"{where}: {role} domain {dom.name!r} has {n} images but {len(dom.labels)} labels")
        if dom.images.shape[1] != pair.channels:
            raise PairDataError(
                f"{where}: {role} images have {dom.images.shape[1]} channel(s) ([N, C, H, W] = "
                f"{tuple(dom.images.shape)}) but the pair declares channels={pair.channels}"
            )
        if len(dom.classes) != pair.num_classes:
            raise PairDataError(
                f"{where}: {role} domain {dom.name!r} has {len(dom.classes)} classes but the pair declares "
                f"num_classes={pair.num_classes}; they must agree"
            )
        if n and (int(dom.labels.min()) < 0 or int(dom.labels.max()) >= pair.num_classes):
            raise PairDataError(
                f"{where}: {role} labels range over [{int(dom.labels.min())}, {int(dom.labels.max())}]; "
                f"labels are class indices 0..{pair.num_classes - 1} (num_classes={pair.num_classes})"
            )
        splits = ("source_train", "source_val") if role == "source" else ("target_adapt", "target_eval")
        for split in splits:
            idx = getattr(data, split)
            if not isinstance(idx, torch.Tensor) or idx.ndim != 1 or idx.dtype not in (torch.int64, torch.int32):
                got = f"{idx.dtype} {tuple(idx.shape)}" if isinstance(idx, torch.Tensor) else type(idx).__name__
                raise PairDataError(f"{where}: {split} must be a 1-D integer tensor of image indices, got {got}")
            if len(idx) == 0:
                # every split is read by every run: an empty source_val failed each run at its first
                # evaluation ("torch.cat(): expected a non-empty list of Tensors"), an empty
                # target_adapt each adapting run ("cannot sample batches from an empty split")
                raise PairDataError(f"{where}: {split} is empty; {EMPTY_SPLIT[split]}")
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise PairDataError(
                    f"{where}: {split} holds indices in [{int(idx.min())}, {int(idx.max())}], but the {role} "
                    f"domain {dom.name!r} has {n} images (valid: 0..{n - 1})"
                )
    shared = torch.isin(data.source_val, data.source_train)
    if bool(shared.any()):
        raise PairDataError(
            f"{where}: source_val shares {int(shared.sum())} of its {len(data.source_val)} images with "
            "source_train; the source-val selection rule would score on training images. Make them disjoint "
            "(dabench.core.splits.stratified_split)"
        )


def check_target_shots(pair: DomainPair, data: PairData, *shots: int) -> None:
    """Refuse shot counts the loaded data cannot supply (backstop for pairs whose maximum is unknown
    or wrong), with the same message as the matrix check. Otherwise a too-large k silently takes
    every image of the small classes and records a label budget that never existed."""
    capacity = target_shot_capacity(data)
    for k in shots:
        if k > capacity:
            # the pair's own maximum can be one the loader then undercut (a file it could not
            # decode): the note says why the split holds fewer images than the folder lists
            why = "".join(f"; {n}" for n in data.notes)
            raise ValueError(shots_error(pair.name, k, capacity) + why)
