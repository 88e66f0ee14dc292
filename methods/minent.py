"""MinEnt: entropy minimisation on the unlabelled target."""

from __future__ import annotations

from dabench import Batch, Loss, Method, Uses, entropy, register_method


@register_method("minent")
class MinEnt(Method):
    """MinEnt (Grandvalet & Bengio 2004, NeurIPS): make target predictions confident.

    total = CE(source) + trade_off · (1/B) Σ_i H(p(x_t,i)),  H(p) = −Σ_k p_k log p_k,
    p = softmax of the target logits (computed in float32, ``dabench.layers.entropy``).
    The paper picks the weight λ by validation; ``trade_off = 0.1`` is dabench's default (large
    weights early in training lock in the source classifier's mistakes on the target).
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 0.1, "forward": "concat"}
    citation = "Grandvalet, Bengio. Semi-supervised Learning by Entropy Minimization. NeurIPS 2004."

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, _, _ = self.forward_source_target(batch)
        return self.combine(
            self.supervised_loss(batch, logits_s), entropy(logits_t).mean(), float(self.hp["trade_off"])
        )
