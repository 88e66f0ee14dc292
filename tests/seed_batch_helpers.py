"""What the seed-batching tests (tests/test_seed_batch.py, tests/test_seed_batch_graphs.py) share:
a dropout-free LeNet, a LeNet with a noise op the seed-batched step cannot name, and the seeds
that poison a test method (a module of its own: ``conftest`` is ambiguous to import,
tests/benchmarks has one too)."""

from __future__ import annotations

import torch
from torch import nn

from dabench.backbones.lenet import LeNet
from dabench.core.registry import PAIRS
from dabench.engine.train import build_method
from dabench.running.matrix import Matrix, expand


def lenet_nodrop(in_channels: int = 1, image_size: int = 28, **_: object) -> LeNet:
    """LeNet without its two dropout layers: a deterministic network that draws nothing random, so
    batched and separate runs (or captured and eager steps) are comparable exactly."""
    net = LeNet(in_channels, image_size)
    net.conv[4] = nn.Identity()
    net.fc[3] = nn.Identity()
    return net


class _AtenNoise(nn.Module):
    """Gaussian noise through ``torch.ops.aten`` (which no torch function mode sees): a random
    draw the seed-batched step can only notice by the global generator moving."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.ops.aten.randn_like.default(x) if self.training else x


def lenet_aten_noise(in_channels: int = 1, image_size: int = 28, **_: object) -> LeNet:
    """``lenet_nodrop`` with :class:`_AtenNoise` after its first fully connected layer."""
    net = lenet_nodrop(in_channels, image_size)
    net.fc[3] = _AtenNoise()
    return net


def poisoned_seeds(method: str) -> tuple[list[int], int]:
    """Two seeds whose draw ``u`` of the registered test method ``method`` is clean (u < 0.5) and
    one whose draw is poisoned, on digits-offline with the ``lenet-nodrop`` backbone."""
    spec = expand(Matrix(methods=(method,), pairs=("digits-offline",), seeds=(0,),
                         overrides={"backbone": "lenet-nodrop"}))[0]  # fmt: skip
    good, bad = [], []
    for seed in range(20):
        torch.manual_seed(seed)
        u = float(build_method(spec, PAIRS.get("digits-offline")).u)
        (good if u < 0.5 else bad).append(seed)
    return good[:2], bad[0]
