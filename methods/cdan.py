"""CDAN and CDAN+E: conditional adversarial adaptation on the multilinear map of features and predictions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench import (
    Batch,
    DomainDiscriminator,
    Loss,
    Method,
    Uses,
    entropy,
    grad_reverse,
    grl_coefficient,
    register_method,
)

#: above this d_f · C the full multilinear map is replaced by the randomized one (Long et al. 2018, §3.3)
MAX_MULTILINEAR_DIM = 4096
#: output dimension d of the randomized multilinear map (the paper's value)
RANDOMIZED_DIM = 1024


def multilinear_map(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """T⊗(f, g) = vec(g fᵀ) ∈ R^{C·d_f}: the flattened outer product of each row (eq. 5)."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)


class RandomizedMultilinearMap(nn.Module):
    """T⊙(f, g) = (1/√d) (R_f f) ⊙ (R_g g) (eq. 6), R_f ∈ R^{d×d_f}, R_g ∈ R^{d×C} fixed N(0, 1).

    Its inner products approximate the full map's, E[⟨T⊙(f,g), T⊙(f',g')⟩] = ⟨T⊗(f,g), T⊗(f',g')⟩.
    The matrices are sampled once in ``build`` (from the run's seeded RNG) and kept as buffers, so
    a checkpoint restores them; they are never trained.
    """

    r_f: torch.Tensor  # buffers (register_buffer): typed here, nn.Module's __getattr__ says Tensor | Module
    r_g: torch.Tensor

    def __init__(self, feature_dim: int, num_classes: int, output_dim: int = RANDOMIZED_DIM) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.register_buffer("r_f", torch.randn(feature_dim, output_dim))
        self.register_buffer("r_g", torch.randn(num_classes, output_dim))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (f.float() @ self.r_f) * (g.float() @ self.r_g) / math.sqrt(self.output_dim)


def entropy_weights(logits: torch.Tensor, n_source: int) -> torch.Tensor:
    """CDAN+E's w_i = 1 + e^{−H(g_i)} (eq. 9), normalised to sum 1 within each domain.

    Detached: a weight, not a loss term (as TLlib; the authors' code also sends a reversed
    gradient through the weights into the classifier). Each domain gets equal total weight, as in
    the authors' code, so the weighted loss is the mean of the two domains' weighted averages.
    """
    w = 1.0 + torch.exp(-entropy(logits.detach()))
    return torch.cat([w[:n_source] / w[:n_source].sum(), w[n_source:] / w[n_source:].sum()])


@register_method("cdan")
class CDAN(Method):
    """CDAN (Long et al. 2018, NeurIPS): a domain discriminator conditioned on the predictions.

    total = CE(source) + trade_off · BCE(D(R_λ(T(f, g))), d), with g = softmax(logits) (detached,
    as in the authors' code: the discriminator conditions on g, the gradient reaches f), T the
    multilinear map g ⊗ f when d_f · C ≤ 4096 and else the randomized map of output dimension 1024
    (``multilinear="auto"``; ``"full"`` / ``"randomized"`` force one), R_λ DANN's gradient reversal
    with λ_p = 2/(1+exp(−γp)) − 1 and D the discriminator DANN uses (two hidden layers of
    ``disc_hidden``). Source is label 1, target 0, as in DANN.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "disc_hidden": 1024, "grl_gamma": 10.0, "multilinear": "auto", "forward": "concat"}
    citation = "Long, Cao, Wang, Jordan. Conditional Adversarial Domain Adaptation. NeurIPS 2018."
    #: CDAN+E: weight each example's discriminator loss by its prediction's certainty
    entropy_conditioning = False

    def build(self, backbone, num_classes: int) -> None:
        super().build(backbone, num_classes)
        d_f = int(self.hp["bottleneck_dim"])
        mode = self.hp["multilinear"]
        if mode not in ("auto", "full", "randomized"):
            raise ValueError(f"{self.name}.multilinear must be 'auto', 'full' or 'randomized', got {mode!r}")
        randomized = mode == "randomized" or (mode == "auto" and d_f * num_classes > MAX_MULTILINEAR_DIM)
        self.random_map = RandomizedMultilinearMap(d_f, num_classes) if randomized else None
        in_features = RANDOMIZED_DIM if randomized else d_f * num_classes
        self.discriminator = DomainDiscriminator(in_features, int(self.hp["disc_hidden"]))

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, f_s, f_t = self.forward_source_target(batch)
        logits = torch.cat([logits_s, logits_t])
        f = torch.cat([f_s, f_t]).float()
        g = torch.softmax(logits.float().detach(), dim=1)
        h = self.random_map(f, g) if self.random_map is not None else multilinear_map(f, g)
        d_logits = self.discriminator(grad_reverse(h, grl_coefficient(progress, float(self.hp["grl_gamma"]))))
        n = len(f_s)
        d_labels = torch.cat([torch.ones(n, device=f.device), torch.zeros(len(f_t), device=f.device)])
        bce = F.binary_cross_entropy_with_logits(d_logits.float(), d_labels, reduction="none")
        if self.entropy_conditioning:
            adv = (entropy_weights(logits, n) * bce).sum() / 2
        else:
            adv = bce.mean()
        loss = self.combine(self.supervised_loss(batch, logits_s), adv, float(self.hp["trade_off"]))
        loss.parts["disc_acc"] = ((d_logits > 0).float() == d_labels).float().mean().detach()
        return loss


@register_method("cdan-e")
class CDANE(CDAN):
    """CDAN+E (Long et al. 2018, NeurIPS): CDAN with entropy conditioning.

    As :class:`CDAN`, with each example's discriminator loss weighted by w = 1 + e^{−H(g)}, the
    weights normalised to sum 1 within each domain (:func:`entropy_weights`): certain predictions,
    whose conditioning is trustworthy, count more (eq. 9).
    """

    entropy_conditioning = True
