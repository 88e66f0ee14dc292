"""DANN: domain-adversarial training through a gradient reversal layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the GRL, its ramp and the discriminator live in dabench.layers (shared with CDAN, MDD and
# plugins); re-exported here because code written against earlier versions imports them from dann
from dabench import Batch, DomainDiscriminator, Loss, Method, Uses, grad_reverse, grl_coefficient, register_method

__all__ = ["DANN", "DomainDiscriminator", "grad_reverse", "grl_coefficient"]


@register_method("dann")
class DANN(Method):
    """DANN (Ganin et al. 2016, JMLR): a domain discriminator trained through gradient reversal.

    total = CE(source) + trade_off · BCE(D(R_λ(g(x))), d), with R_λ the gradient reversal layer,
    λ_p = 2/(1+exp(−10p)) − 1 and the engine's learning-rate annealing μ0/(1+10p)^0.75.
    The discriminator sees source and target in one concatenated batch (``forward="concat"``);
    the BCE is the mean over its 2n rows, ½(mean over source + mean over target) as TLlib's
    ``DomainAdversarialLoss``. λ_p scales only the gradient reaching the features, never the
    discriminator's (§5.2.2: "λ_p is used only for updating the feature extractor").
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
