"""The 32-px conv net of the CIFAR↔STL domain-adaptation line of work, trained from scratch.

Layers follow the classifier of DIRT-T (Shu et al. 2018, ICLR, Appendix B; the released
``codebase/models/nns/small.py`` / ``large.py``), itself the conv-large/conv-small design of
the semi-supervised literature also used by self-ensembling (French et al. 2018, ICLR):

    [instance norm of the input]
    3 x (conv 3x3 w1, pad 1, BN, leaky ReLU 0.1), max-pool 2x2, dropout 0.5, Gaussian noise σ=1
    3 x (conv 3x3 w2, pad 1, BN, leaky ReLU 0.1), max-pool 2x2, dropout 0.5, Gaussian noise σ=1
    3 x (conv 3x3 w2, pad 1, BN, leaky ReLU 0.1), global average pool  → w2 features

``size="small"``: w1 = w2 = 64 (default); ``size="large"``: w1 = 96, w2 = 192 (DIRT-T's larger
variant). The final dense layer of the paper is the method's head, not part of the backbone.
Noise and dropout act in training mode only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.parsing import parse_bool
from ..core.registry import register_backbone
from .base import Backbone

WIDTHS = {"small": (64, 64), "large": (96, 192)}


class GaussianNoise(nn.Module):
    """Adds N(0, σ²) noise in training mode (DIRT-T's ``noise`` layer)."""

    def __init__(self, std: float = 1.0) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * self.std if self.training and self.std > 0 else x


def _convs(c_in: int, c_out: int, n: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1),
        ]
    return layers


class CNN32(Backbone):
    """DIRT-T's CIFAR/STL classifier without its last dense layer; see the module docstring."""

    def __init__(
        self,
        in_channels: int = 3,
        size: str = "small",
        instance_norm: bool = True,
        dropout: float = 0.5,
        noise: float = 1.0,
    ) -> None:
        super().__init__()
        if size not in WIDTHS:
            raise ValueError(f"cnn32: size must be one of {sorted(WIDTHS)}, got {size!r}")
        w1, w2 = WIDTHS[size]
        self.features = nn.Sequential(
            nn.InstanceNorm2d(in_channels) if instance_norm else nn.Identity(),
            *_convs(in_channels, w1),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            GaussianNoise(noise),
            *_convs(w1, w2),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            GaussianNoise(noise),
            *_convs(w2, w2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_features = w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("cnn32")
def cnn32(
    in_channels: int = 3,
    image_size: int = 32,
    size: str = "small",
    instance_norm: bool = True,
    dropout: float = 0.5,
    noise: float = 1.0,
) -> CNN32:
    """DIRT-T's 32-px conv net (Shu et al. 2018), from scratch; 64-d (large: 192-d).

    Options: ``size`` (small/large), ``instance_norm``, ``dropout``, ``noise`` (e.g. ``--set backbone.size=large``)."""
    return CNN32(
        in_channels,
        size=str(size),
        instance_norm=parse_bool(instance_norm, "backbone.instance_norm"),
        dropout=float(dropout),
        noise=float(noise),
    )
