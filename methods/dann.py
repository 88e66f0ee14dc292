"""DANN: domain-adversarial training through a gradient reversal layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench import Batch, Loss, Method, Uses, register_method


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by −coeff backward (Ganin et al. 2016, eq. 13)."""
    return _ReverseGrad.apply(x, coeff)


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """λ_p = 2 / (1 + exp(−γ p)) − 1, ramping 0 → 1 over training (Ganin et al. 2016, §5.2.2)."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Module):
    """features → 1 logit (source = 1, target = 0). A single *logit* with a sigmoid loss:
    a softmax over one output would be constant 1 and give no gradient at all."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.layers(f).squeeze(1)


@register_method("dann")
class DANN(Method):
    """DANN (Ganin et al. 2016, JMLR): a domain discriminator trained through gradient reversal.

    total = CE(source) + trade_off · BCE(D(R_λ(g(x))), d), with R_λ the gradient reversal layer,
    λ_p = 2/(1+exp(−10p)) − 1 and the engine's learning-rate annealing μ0/(1+10p)^0.75.
    The discriminator sees source and target in one concatenated batch (``forward="concat"``).
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "disc_hidden": 1024, "grl_gamma": 10.0, "forward": "concat"}
    citation = "Ganin et al. Domain-Adversarial Training of Neural Networks. JMLR 17(59), 2016."

    def build(self, backbone, num_classes: int) -> None:
        super().build(backbone, num_classes)
        self.discriminator = DomainDiscriminator(int(self.hp["bottleneck_dim"]), int(self.hp["disc_hidden"]))

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, _, f_s, f_t = self.forward_source_target(batch)
        coeff = grl_coefficient(progress, self.hp["grl_gamma"])
        d_logits = self.discriminator(grad_reverse(torch.cat([f_s, f_t]), coeff))
        d_labels = torch.cat([torch.ones(len(f_s), device=f_s.device), torch.zeros(len(f_t), device=f_t.device)])
        adv = F.binary_cross_entropy_with_logits(d_logits.float(), d_labels)
        loss = self.combine(self.supervised_loss(batch, logits_s), adv, self.hp["trade_off"])
        loss.parts["disc_acc"] = ((d_logits > 0).float() == d_labels).float().mean().detach()
        return loss
