"""Source-only: the no-adaptation baseline."""

from __future__ import annotations

from dabench import Batch, Loss, Method, Uses, register_method


@register_method("source-only")
class SourceOnly(Method):
    """Source-only baseline: cross-entropy on labelled source, no adaptation.

    total = CE(h(g(x_s)), y_s)  (+ CE on target shots when ``target_shots`` > 0).
    Its checkpoint is the starting point of the methods with ``uses.init = "source-only"`` (SHOT, ADDA,
    the linear probe, fine-tuning) of the same pair and seed; that starting run never takes target
    shots, even when ``source-only.target_shots`` gives the source-only row its own.
    """

    protocol = "uda"
    uses = Uses(source_labels=True)
    defaults = {}

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits, _ = self.net(batch.x_source)
        return self.combine(self.supervised_loss(batch, logits))
