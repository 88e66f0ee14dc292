"""Minimum Class Confusion (MCC) as a dabench plugin.

Jin, Wang, Long, Wang. Minimum Class Confusion for Versatile Domain Adaptation. ECCV 2020.
Written from the paper (Sec. 3): on each target batch of B images and K classes,

    Ŷ_ij = exp(Z_ij / T) / Σ_j' exp(Z_ij' / T)                  temperature rescaling (T = 2.5)
    H_i  = −Σ_j Ŷ_ij log Ŷ_ij                                   prediction entropy
    W_ii = B · (1 + e^{−H_i}) / Σ_i' (1 + e^{−H_i'})              uncertainty reweighting
    C    = Ŷᵀ W Ŷ                                               class correlation, K × K
    C̃_jj' = C_jj' / Σ_j'' C_jj''                                 category normalisation (rows sum to 1)
    L_MCC = (1/K) Σ_j Σ_{j'≠j} |C̃_jj'|                          between-class confusion

    total = CE(source) + trade_off · L_MCC                       (trade_off μ = 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dabench import Batch, Loss, Method, Uses, register_method


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """L_MCC of a batch of target logits ``[B, K]`` (the equations above)."""
    b, k = logits.shape
    probs = F.softmax(logits.float() / temperature, dim=1)
    # W: confident (low-entropy) images count more; a constant weighting, so no gradient flows
    # through it (the loss moves the predictions, not the weights of the examples).
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1).detach()
    w = 1.0 + torch.exp(-entropy)
    w = b * w / w.sum()
    confusion = probs.t() @ (w.unsqueeze(1) * probs)
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    # rows sum to 1, so the off-diagonal mass is K − trace; C̃ ≥ 0, so |·| is the identity
    return (confusion.sum() - confusion.trace()) / k


@register_method("mcc")
class MCC(Method):
    """MCC (Jin et al. 2020, ECCV): minimise the class confusion of target predictions.

    total = CE(source) + trade_off · L_MCC(target logits), with temperature T and entropy-based
    uncertainty reweighting; see the module docstring for the equations.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "temperature": 2.5, "forward": "concat"}
    citation = "Jin, Wang, Long, Wang. Minimum Class Confusion for Versatile Domain Adaptation. ECCV 2020."

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, _, _ = self.forward_source_target(batch)
        da = mcc_loss(logits_t, float(self.hp["temperature"]))
        return self.combine(self.supervised_loss(batch, logits_s), da, float(self.hp["trade_off"]))
