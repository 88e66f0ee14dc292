"""Fine-tune: the whole source-trained network trained on the target shots at a small learning rate."""

from __future__ import annotations

import torch.nn.functional as F

from dabench import Batch, Loss, Method, Uses, register_method


@register_method("fine-tune")
class FineTune(Method):
    """Fine-tune: start from the source-only network and train all of it on k target shots per class.

    total = CE(h(g(x)), y) over batches of the shots, every parameter group at lr_scale × its
    source-only rate (new layers lr_scale × the pair's, a pretrained backbone lr_scale × 0.1 × it)
    (fine-tuning at a small learning rate keeps the source features; Yosinski et al. 2014,
    How transferable are features in deep neural networks? NeurIPS), for steps_fraction of its steps.

    Data: the source-only network of the same pair and seed (labelled source, no target label) and
    then the k labelled target images per class alone: no source batch, no unlabelled target batch.
    It uses k × C target labels, so its runs are recorded under the few-shot protocol and tabled in
    that label budget, never as a UDA row; compare it with the linear probe and with UDA methods
    given the same shots (``<method>.target_shots``), not with label-free UDA.
    """

    protocol = "few-shot"
    uses = Uses(source_labels=False, target_shots=True, init="source-only")
    defaults = {"lr_scale": 0.1, "steps_fraction": 0.5}
    citation = "Yosinski, Clune, Bengio, Lipson. How transferable are features in deep neural networks? NeurIPS 2014."

    def loss(self, batch: Batch, progress: float) -> Loss:
        assert batch.x_shots is not None and batch.y_shots is not None  # uses.target_shots: the engine fills them
        return self.combine({"ce_shots": F.cross_entropy(self.predict(batch.x_shots), batch.y_shots)})

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        for g in groups:
            g["lr_mult"] *= float(self.hp["lr_scale"])
        return groups

    def num_steps(self, scheduled: int) -> int:
        return max(1, round(scheduled * float(self.hp["steps_fraction"])))
