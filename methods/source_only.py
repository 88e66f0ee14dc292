"""Source-only: the no-adaptation baseline."""

from __future__ import annotations

from dabench import Batch, Loss, Method, Uses, register_method


@register_method("source-only")
class SourceOnly(Method):
    """Source-only baseline: cross-entropy on labelled source, no adaptation.

    total = CE(h(g(x_s)), y_s)  (+ CE on target shots when ``target_shots`` > 0).
    Its checkpoint is the starting point of the few-shot methods of the same pair and seed.
    """

    protocol = "uda"
    uses = Uses(source_labels=True)
    defaults = {}

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits, _ = self.net(batch.x_source)
        return self.combine(self.supervised_loss(batch, logits))
