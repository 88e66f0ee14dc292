"""LeNet for 28x28 digits, as used by the DA digit benchmarks (conv20-conv50-fc500)."""

from __future__ import annotations

import torch
from torch import nn

from ..core.registry import register_backbone
from .base import Backbone


class LeNet(Backbone):
    """LeCun et al. 1998, in the variant of the Caffe MNIST example used by ADDA/CDAN on digits:
    conv(20, 5) - maxpool - conv(50, 5) - dropout - maxpool - fc(500) - dropout; 500-d features."""

    def __init__(self, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.Dropout2d(p=0.5),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Dropout(p=0.5))
        self.out_features = 500

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


@register_backbone("lenet")
def lenet(in_channels: int = 1, image_size: int = 28) -> LeNet:
    """LeNet (conv20-conv50-fc500) for 28-px digits, from scratch; 500-d features."""
    return LeNet(in_channels, image_size)
