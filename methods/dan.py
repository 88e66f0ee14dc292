"""DAN: multi-kernel maximum mean discrepancy between source and target features."""
from __future__ import annotations

from typing import cast

import torch

from dabench import Batch, Loss, Method, Uses, register_method

KERNEL_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def multi_kernel_mmd(
    source: torch.Tensor, target: torch.Tensor, multipliers: tuple[float, ...] = KERNEL_MULTIPLIERS
) -> torch.Tensor:
    """Biased estimate of the multi-kernel MMD², Long et al. 2015 (ICML), eq. (2)–(3).

    MMD² = mean k(s, s') + mean k(t, t') − 2 mean k(s, t),  k = (1/m) Σ_u exp(−‖x−y‖² / (β_u σ²)),
    with the *squared* Euclidean distance, σ² the mean pairwise squared distance of the joint
    batch (detached: no gradient flows through the bandwidth) and β_u in ``multipliers``.
    Long et al. combine the kernels convexly, k = Σ_u β_u k_u with Σ_u β_u = 1, and learn β; we
    fix equal weights β_u = 1/m (the *mean* of the m = 5 kernels). TLlib's
    ``MultipleKernelMaximumMeanDiscrepancy`` *sums* its kernels instead (β_u = 1), so its loss
    is m times ours: dabench's ``trade_off=1`` equals TLlib's ``trade_off=0.2``.
    """
    x = torch.cat([source, target]).float()
    d2 = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    sigma2 = d2.detach().sum() / (n * n - n)
    # cast: a sum of tensors is a tensor (typeshed types sum()'s start, 0, into the result)
    k = cast(torch.Tensor, sum(torch.exp(-d2 / (m * sigma2)) for m in multipliers)) / len(multipliers)
    ns = source.shape[0]
    return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()


@register_method("dan")
class DAN(Method):
    """DAN (Long et al. 2015, ICML): align source and target features with multi-kernel MMD.

    total = CE(source) + trade_off · MK-MMD²(g(x_s), g(x_t)) on the bottleneck features, with
    MK-MMD² over the *mean* of five Gaussian kernels (equal β_u = 1/5 in the paper's convex
    combination). TLlib sums the five kernels, so its loss is 5× ours: ``trade_off=1`` here is
    TLlib's ``trade_off=0.2``; multiply a TLlib trade-off by 5 to reproduce its setting.
    Source and target go through the network in one batch by default (``forward="concat"``);
    TLlib's DAN example runs two separate passes (``forward="separate"``).
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "forward": "concat"}
    citation = "Long, Cao, Wang, Jordan. Learning Transferable Features with Deep Adaptation Networks. ICML 2015."

    def loss(self, batch: Batch, progress: float) -> Loss:
        logits_s, _, f_s, f_t = self.forward_source_target(batch)
        mmd = multi_kernel_mmd(f_s, f_t)
        return self.combine(self.supervised_loss(batch, logits_s), mmd, self.hp["trade_off"])
