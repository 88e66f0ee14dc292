"""Deep CORAL: match second-order statistics of source and target activations."""
from __future__ import annotations

import torch

from dabench import Batch, Loss, Method, Uses, register_method


def covariance(x: torch.Tensor) -> torch.Tensor:
    """C = (X − 1x̄)ᵀ (X − 1x̄) / (n − 1), the sample covariance of Sun & Saenko 2016, eq. (2)–(3).

    The paper writes it as (XᵀX − (1ᵀX)ᵀ(1ᵀX)/n)/(n − 1): algebraically equal, but the two
    products are large and nearly equal when the features' means are large next to their
    spread, and under bf16 autocast on a GPU (8-bit mantissa for the matmul) their difference
    is lost to cancellation — 94–105 % relative error at logit means around 20. Centring in
    float32 first makes the matmul's inputs O(spread), so its bf16 rounding stays relative to
    the covariance itself (< 1 % there).
    """
    x = x.float()
    n = x.shape[0]
    centred = x - x.mean(0, keepdim=True)  # float32: autocast does not lower mean or subtraction
    return (centred.T @ centred).float() / (n - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_CORAL = ‖C_S − C_T‖²_F / (4 d²), Sun & Saenko 2016, eq. (1)."""
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4 * d * d)


@register_method("coral")
class DeepCORAL(Method):
    """Deep CORAL (Sun & Saenko 2016, ECCV workshops): align covariances of the last layer.

    total = CE(source) + trade_off · ‖C_S − C_T‖²_F / (4d²). As in the paper, the loss is applied
    to the classifier's output (``layer="logits"``, d = number of classes), where 1/(4d²) is
    small but not negligible; on 256-d bottleneck features it is ~1e-4 and the method silently
    equals source-only unless the trade-off is scaled up (``layer="features"``).
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "layer": "logits", "forward": "concat"}
    citation = "Sun, Saenko. Deep CORAL: Correlation Alignment for Deep Domain Adaptation. ECCV-W 2016."

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, f_s, f_t = self.forward_source_target(batch)
        if self.hp["layer"] == "logits":
            da = coral_loss(logits_s, logits_t)
        elif self.hp["layer"] == "features":
            da = coral_loss(f_s, f_t)
        else:
            raise ValueError(f"coral.layer must be 'logits' or 'features', got {self.hp['layer']!r}")
        return self.combine(self.supervised_loss(batch, logits_s), da, self.hp["trade_off"])
