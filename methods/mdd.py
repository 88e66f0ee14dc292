"""MDD: margin disparity discrepancy with an adversarial auxiliary head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dabench import Batch, Loss, Method, Uses, grad_reverse, grl_coefficient, register_method


def mdd_loss(
    logits_s: torch.Tensor, logits_t: torch.Tensor, adv_s: torch.Tensor, adv_t: torch.Tensor, margin: float
) -> torch.Tensor:
    """γ · CE(f'(x_s), h_f(x_s)) − log(1 − σ_{h_f(x_t)}(f'(x_t))), averaged over each batch.

    The negated margin disparity discrepancy of Zhang et al. 2019 (eq. 29 with the modified log
    loss on the target, §4.2): h_f = argmax of the main head (a constant), f' the adversarial
    head, σ the softmax, γ = ``margin``. The adversarial head *minimises* it — agree with h_f on
    the source, disagree on the target — and the features, through gradient reversal, maximise it.
    log(1 − σ) rather than −log σ keeps the target term's gradient from vanishing once f'
    disagrees. Float32; 1 − σ is clamped at 1e-6 against log 0.
    """
    pred_s, pred_t = logits_s.detach().argmax(1), logits_t.detach().argmax(1)
    source = F.cross_entropy(adv_s.float(), pred_s)
    p_t = torch.softmax(adv_t.float(), dim=1).gather(1, pred_t.unsqueeze(1)).squeeze(1)
    target = -torch.log((1.0 - p_t).clamp_min(1e-6)).mean()  # −log(1 − σ): small once f' disagrees
    return margin * source + target


@register_method("mdd")
class MDD(Method):
    """MDD (Zhang, Liu, Long, Jordan 2019, ICML): minimise the margin disparity discrepancy.

    total = CE(source) + trade_off · [γ · CE(f'(ψ̃_s), h_f(x_s)) − log(1 − σ_{h_f(x_t)}(f'(ψ̃_t)))],
    ψ̃ = R_λ(ψ(x)) the bottleneck features through gradient reversal, f' an adversarial head of the
    main head's class (a linear layer on the bottleneck), see :func:`mdd_loss`. γ = 4 (``margin``,
    the value of the paper's experiments; its analysis of γ shows a larger margin helping until
    training becomes unstable). λ ramps as in the authors' code up to 0.1 (``grl_max``):
    λ_p = grl_max · (2/(1+exp(−γ_grl p)) − 1), so the features see a tenth of the adversary's signal.
    ``predict`` uses the main head only.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "margin": 4.0, "grl_max": 0.1, "grl_gamma": 10.0, "forward": "concat"}
    citation = "Zhang, Liu, Long, Jordan. Bridging Theory and Algorithm for Domain Adaptation. ICML 2019."

    def build(self, backbone, num_classes: int) -> None:
        super().build(backbone, num_classes)
        self.adv_head = nn.Linear(int(self.hp["bottleneck_dim"]), num_classes)

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, f_s, f_t = self.forward_source_target(batch)
        coeff = float(self.hp["grl_max"]) * grl_coefficient(progress, float(self.hp["grl_gamma"]))
        adv = self.adv_head(grad_reverse(torch.cat([f_s, f_t]), coeff))
        n = len(f_s)
        da = mdd_loss(logits_s, logits_t, adv[:n], adv[n:], float(self.hp["margin"]))
        return self.combine(self.supervised_loss(batch, logits_s), da, float(self.hp["trade_off"]))
