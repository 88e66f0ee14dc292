"""BNM: batch nuclear-norm maximisation of the target predictions."""

from __future__ import annotations

import torch

from dabench import Batch, Loss, Method, Uses, register_method


def bnm_loss(logits: torch.Tensor) -> torch.Tensor:
    """L_BNM = −‖A‖_* / B, A = softmax(logits) ∈ R^{B×C} (Cui et al. 2020, eq. 11).

    ‖A‖_* is the nuclear norm, the sum of A's singular values; maximising it raises both the
    prediction's discriminability (a larger Frobenius norm, i.e. lower entropy) and its
    diversity (a higher rank: more classes predicted in the batch). Float32: the SVD under
    bf16 would be meaningless.
    """
    a = torch.softmax(logits.float(), dim=1)
    return -torch.linalg.svdvals(a).sum() / a.shape[0]


@register_method("bnm")
class BNM(Method):
    """BNM (Cui et al. 2020, CVPR): maximise the nuclear norm of the target prediction matrix.

    total = CE(source) + trade_off · (−‖softmax(h(g(x_t)))‖_* / B), the batch's B × C matrix
    of target class probabilities (see :func:`bnm_loss`); ``trade_off`` is the paper's λ,
    1.0 by default.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "forward": "concat"}
    citation = (
        "Cui, Wang, Zhuo, Li, Huang, Tian. Towards Discriminability and Diversity: Batch "
        "Nuclear-norm Maximization under Label Insufficient Situations. CVPR 2020."
    )

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, logits_t, _, _ = self.forward_source_target(batch)
        return self.combine(self.supervised_loss(batch, logits_s), bnm_loss(logits_t), float(self.hp["trade_off"]))
