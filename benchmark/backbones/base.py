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
    #: per-channel mean and std (of pixels in [0, 1]) that the pretrained weights were trained with;
    #: ``None``: no expectation (from scratch), the pair's normalisation is used as it is
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def match_input(backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Make ``backbone`` see inputs normalised as its weights expect when the pair normalises otherwise.

    The pair feeds ``x_p = (u − m_p)/s_p`` (u in [0, 1]); weights trained on ``x_b = (u − m_b)/s_b``
    get ``x_b = x_p · s_p/s_b + (m_p − m_b)/s_b``, one per-channel affine map that the backbone's
    ``renormalise`` applies first. Without it a backbone pretrained with mean = std = 0.5
    (tf_efficientnet_lite0) on an ImageNet-normalised pair sees inputs at about twice their contrast,
    shifted: features its weights never saw. No-op for backbones that declare no statistics
    (``input_mean is None``, e.g. from scratch) and when the statistics agree.
    """
    want_mean, want_std = getattr(backbone, "input_mean", None), getattr(backbone, "input_std", None)
    if want_mean is None or want_std is None or not isinstance(backbone, Backbone):
        return
    if len(want_mean) != len(mean) or len(want_std) != len(std):
        raise ValueError(
            f"{type(backbone).__name__}: the pair normalises {len(mean)} channel(s), "
            f"its weights expect {len(want_mean)}"
        )
    if tuple(map(float, mean)) == tuple(want_mean) and tuple(map(float, std)) == tuple(want_std):
        return
    m_p, s_p = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    m_b, s_b = torch.tensor(want_mean, dtype=torch.float32), torch.tensor(want_std, dtype=torch.float32)
    # non-persistent: constants of the pair, not weights (checkpoints keep their keys)
    backbone.register_buffer("input_scale", (s_p / s_b).view(1, -1, 1, 1), persistent=False)
    backbone.register_buffer("input_shift", ((m_p - m_b) / s_b).view(1, -1, 1, 1), persistent=False)


def renormalise(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` mapped to the normalisation of ``backbone``'s weights (see :func:`match_input`); else ``x``."""
    scale = getattr(backbone, "input_scale", None)
    if scale is None:
        return x
    shift: torch.Tensor = getattr(backbone, "input_shift")  # noqa: B009  (registered with input_scale)
    return torch.addcmul(shift, x, scale)
