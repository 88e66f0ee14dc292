"""AFN: stepwise adaptive feature norm (SAFN)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dabench import Batch, Loss, Method, Uses, register_method


def safn_loss(features: torch.Tensor, delta_r: float) -> torch.Tensor:
    """L_SAFN = (1/n) Σ_i (‖h_i‖₂ − (‖h_i‖₂.detach() + Δr))²  (Xu et al. 2019, eq. 6).

    The target norm is the *current* norm (a constant) plus Δr, so every step enlarges the
    feature norms by about Δr — stepwise — instead of pulling them to one fixed value R (HAFN).
    Its value is Δr² whatever h is; only its gradient, −2Δr · h_i/‖h_i‖ / n, acts.
    """
    norms = features.float().norm(p=2, dim=1)
    return (norms - (norms.detach() + delta_r)).pow(2).mean()


@register_method("afn")
class AFN(Method):
    """AFN / SAFN (Xu et al. 2019, ICCV): enlarge feature norms step by step on both domains.

    total = CE(source) + trade_off · (L_SAFN(h_s) + L_SAFN(h_t)), with L_SAFN of :func:`safn_loss`,
    Δr = 1 (``delta_r``) and λ = 0.05 (``trade_off``), the paper's values. h are the bottleneck
    features after dropout (``dropout = 0.5``): as in the authors' code, the head classifies and the
    norm loss sees the dropped-out features, which the paper finds helps larger norms transfer.
    dabench adds that dropout here (between bottleneck and head, training only) because the shared
    bottleneck has none; ``predict`` (evaluation) uses the features without dropout.

    As in the authors' code (and TLlib's AFN), the dropped-out features are multiplied by √(1 − p)
    in training: inverted dropout alone scales the kept units by 1/(1 − p), so
    E‖f_drop‖² = ‖f‖²/(1 − p); with the factor E‖f_drop‖² = ‖f‖², and the norms the SAFN term
    enlarges and the head trains on are the norms evaluation sees.

    Reductions and forward pass, against the authors' code and TLlib: each domain's L_SAFN is a mean
    over its batch and the two are summed before λ multiplies them (the authors'
    ``get_L2norm_loss_self_driven`` on source and on target, each already times ``weight_L2norm`` =
    0.05); one mean over the union of the two batches would be half of it at equal batch sizes.
    ``forward="concat"`` (one joint pass, BatchNorm on both domains at once) is TLlib's AFN and the
    other UDA methods' default; the authors' code passes source and target separately, which is
    ``forward="separate"``.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 0.05, "delta_r": 1.0, "dropout": 0.5, "forward": "concat"}
    citation = (
        "Xu, Li, Yang, Lin. Larger Norm More Transferable: An Adaptive Feature Norm Approach for "
        "Unsupervised Domain Adaptation. ICCV 2019."
    )

    def _dropped_features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.x_source is not None and batch.x_target is not None
        mode = self.hp["forward"]
        if mode == "concat":
            f = self.net.features(torch.cat([batch.x_source, batch.x_target]))
            f_s, f_t = f[: len(batch.x_source)], f[len(batch.x_source) :]
        elif mode == "separate":
            f_s, f_t = self.net.features(batch.x_source), self.net.features(batch.x_target)
        else:
            raise ValueError(f"afn.forward must be 'concat' or 'separate', got {mode!r}")
        return self._dropout(f_s), self._dropout(f_t)

    def _dropout(self, f: torch.Tensor) -> torch.Tensor:
        """Training: inverted dropout times √(1 − p), so that E‖f_drop‖² = ‖f‖² (the authors' code)."""
        p = float(self.hp["dropout"])
        if not self.training or p == 0.0:
            return f
        return F.dropout(f, p, True) * math.sqrt(1.0 - p)

    def loss(self, batch: Batch, progress: float) -> Loss:
        f_s, f_t = self._dropped_features(batch)
        delta_r = float(self.hp["delta_r"])
        da = safn_loss(f_s, delta_r) + safn_loss(f_t, delta_r)
        return self.combine(self.supervised_loss(batch, self.net.head(f_s)), da, float(self.hp["trade_off"]))
