"""The backbone interface: a feature extractor with a known output width."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor ``[B, C, H, W] -> [B, out_features]``.

    Subclasses set ``out_features`` and ``pretrained`` (pretrained backbones get a
    10x smaller learning rate than the new layers, as the standard recipes do).
    """

    out_features: int = 0
    pretrained: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError
