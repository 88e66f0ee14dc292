"""Domains, domain pairs and their default schedules (the data side of a benchmark task)."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

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
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"domain {self.name!r}: images must be uint8 [N, C, H, W], "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"domain {self.name!r}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
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


@dataclass(frozen=True)
class Schedule:
    """The optimisation schedule the engine runs; the same for every method of a pair.

    The learning rate at progress p in [0, 1] is ``lr * (1 + 10 p) ** -0.75`` when
    ``lr_schedule == "inv"`` (Ganin et al. 2016, applied to all methods so they are comparable).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "inv"  # "inv" or "constant"
    eval_every: int = 250
    log_every: int = 50

    def replace(self, **changes: Any) -> "Schedule":
        valid = {f.name for f in fields(self)}
        bad = sorted(set(changes) - valid)
        if bad:
            raise KeyError(f"unknown schedule key(s) {bad}; valid: {sorted(valid)}")
        cast = {k: type(getattr(self, k))(v) for k, v in changes.items()}
        return Schedule(**{**self.__dict__, **cast})


def default_data_root() -> pathlib.Path:
    """``$DABENCH_DATA`` if set, else ``~/.cache/dabench``."""
    env = os.environ.get("DABENCH_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(cache) / "dabench"


class MissingDataError(FileNotFoundError):
    """A dataset is not on disk; the message says where it looked and how to provide it."""


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

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"pair {self.name!r}: augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
