"""Shared plumbing for timm feature extractors: pooled features, local weight files, clear errors."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import Backbone, renormalise


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be had; the message says how to provide them."""


class TimmBackbone(Backbone):
    """A timm model built with ``num_classes=0``: its forward returns the pooled feature vector."""

    def __init__(self, model: nn.Module, pretrained: bool) -> None:
        super().__init__()
        self.model = model
        # timm sets num_features as an int; torch types a Module's unknown attributes as Tensor | Module
        self.out_features = int(model.num_features)  # type: ignore[arg-type]
        self.pretrained = pretrained
        if pretrained:  # the statistics its weights were trained with, from timm's pretrained_cfg
            cfg: Any = getattr(model, "pretrained_cfg", None) or {}
            if "mean" in cfg and "std" in cfg:
                self.input_mean = tuple(float(v) for v in cfg["mean"])
                self.input_std = tuple(float(v) for v in cfg["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(renormalise(self, x))


def read_state_dict(path: str | pathlib.Path, origin: str = "given as backbone.weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (``weights_only=True``); unwraps ``state_dict``/``model``
    wrappers and a DataParallel ``module.`` prefix. ``origin`` says where the path came from (and how
    to mend it) in the error a missing file raises."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(f"backbone weights file {p} does not exist ({origin})")
    sd: Any = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise WeightsUnavailable(f"{p} holds a {type(sd).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_features(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into a ``num_classes=0`` model, ignoring the classifier's keys; anything else
    missing or mis-shaped is an error naming the keys."""
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own}
    bad_shape = [k for k, v in usable.items() if v.shape != own[k].shape]
    missing = [k for k in own if k not in usable]
    if bad_shape or missing:
        raise WeightsUnavailable(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(bad_shape)} of another shape {bad_shape[:5]}"
        )
    model.load_state_dict(usable, strict=True)
