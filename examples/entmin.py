"""A one-file dabench plugin: entropy minimisation on the target.

Use it without installing anything:

    dabench run --plugin examples/entmin.py --methods source-only,entmin --seeds 0,1,2

Grandvalet & Bengio. Semi-supervised Learning by Entropy Minimization. NeurIPS 2004:

    total = CE(source) + trade_off · (1/B) Σ_i H(p(x_t,i)),   H(p) = −Σ_k p_k log p_k

The paper chooses the weight λ by validation; 0.1 is this example's default.
"""

from __future__ import annotations

from dabench import Batch, Loss, Method, Uses, register_method


@register_method("entmin")
class EntropyMinimisation(Method):
    """Entropy minimisation (Grandvalet & Bengio 2004): confident predictions on the target.

    total = CE(source) + trade_off · mean H(softmax(target logits)).
    """

    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 0.1, "forward": "concat"}

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, _, _ = self.forward_source_target(batch)
        p = logits_t.float().softmax(1)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
        return self.combine(self.supervised_loss(batch, logits_s), entropy, self.hp["trade_off"])
