"""Layers and losses that several domain-adaptation methods share (public: ``dabench.layers``).

One implementation of each piece, used by the built-in methods and open to plugins::

    from dabench.layers import DomainDiscriminator, grad_reverse, grl_coefficient, entropy

- gradient reversal and its λ ramp (DANN, CDAN, MDD): :func:`grad_reverse`, :func:`grl_coefficient`
- the domain discriminator (DANN, CDAN): :class:`DomainDiscriminator`
- Gaussian kernel matrices and MMD (DAN, JAN): :func:`gaussian_kernel_matrix`, :func:`mmd_from_kernel`,
  :func:`multi_kernel_mmd`
- prediction entropy (MinEnt, CDAN+E): :func:`entropy`
- sample covariance (Deep CORAL): :func:`covariance`

This module imports nothing from dabench (a leaf), so any layer of the package may use it.
Every loss here is computed in float32, also under bf16 autocast: kernels, logarithms and
covariances lose their meaning at an 8-bit mantissa.
"""

from __future__ import annotations

import math
from typing import cast, overload

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DomainDiscriminator",
    "KERNEL_MULTIPLIERS",
    "covariance",
    "entropy",
    "gaussian_kernel_matrix",
    "grad_reverse",
    "grl_coefficient",
    "mmd_from_kernel",
    "multi_kernel_mmd",
]

#: DAN's bandwidth multipliers β_u: σ²/4 … 4σ² around the batch's mean squared distance
KERNEL_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: the least bandwidth σ² of :func:`gaussian_kernel_matrix` (a batch of identical rows has σ² = 0)
SIGMA2_FLOOR = 1e-12


# --- gradient reversal ------------------------------------------------------------------
class _ReverseGrad(torch.autograd.Function):
    # forward/setup_context split + generate_vmap_rule: torch.func.vmap can batch it (seed-batched
    # training, engine/seed_batch.py); eager behaviour is the same as a forward that saves coeff
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, coeff: float | torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.coeff = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by −coeff backward (Ganin et al. 2016, eq. 13).

    ``coeff`` may be a 0-d tensor (from a tensor ``progress``): no host sync, so a CUDA graph can
    capture it and replay it with a new value."""
    return _ReverseGrad.apply(x, coeff)


@overload
def grl_coefficient(progress: float, gamma: float = 10.0) -> float: ...
@overload
def grl_coefficient(progress: torch.Tensor, gamma: float = 10.0) -> torch.Tensor: ...
def grl_coefficient(progress: float | torch.Tensor, gamma: float = 10.0) -> float | torch.Tensor:
    """λ_p = 2 / (1 + exp(−γ p)) − 1, ramping 0 → 1 over training (Ganin et al. 2016, §5.2.2).

    A float ``progress`` gives a float; a 0-d tensor (the engine's CUDA-graph steps, see
    ``dabench.engine.graphs``) gives a 0-d tensor on its device, computed there without a host sync.
    """
    if isinstance(progress, torch.Tensor):
        return 2.0 / (1.0 + torch.exp(-gamma * progress)) - 1.0
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Module):
    """features → 1 logit (source = 1, target = 0). A single *logit* with a sigmoid loss:
    a softmax over one output would be constant 1 and give no gradient at all.

    Two hidden layers of ``hidden`` units with BatchNorm and ReLU: the 1024-1024 adversary of
    Ganin et al. 2016 §5.2.2 with BatchNorm where the paper has dropout (as TLlib's
    ``DomainDiscriminator``); DANN and CDAN share it, CDAN feeding it the multilinear map instead of f.
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.layers(f).squeeze(1)


# --- kernels and MMD --------------------------------------------------------------------
def gaussian_kernel_matrix(x: torch.Tensor, multipliers: tuple[float, ...] = KERNEL_MULTIPLIERS) -> torch.Tensor:
    """K_ij = (1/m) Σ_u exp(−‖x_i − x_j‖² / (β_u σ²)), the mean of m Gaussian kernels.

    ``x`` is the joint batch (source rows first, then target), the distance is the *squared*
    Euclidean one, σ² the batch's mean pairwise squared distance off the diagonal (detached: no
    gradient flows through the bandwidth, as in Long et al. 2015) and β_u the ``multipliers``.
    """
    # float32 throughout, autocast off: under torch.func.vmap (seed-batched training) with CUDA
    # bf16 autocast, cdist's batched decomposition reached a bf16 matmul and its backward failed
    # ("expected scalar type BFloat16 but found Float", DAN and JAN on an H200). The squared
    # distances are written out, ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j (the formula cdist itself uses for
    # batches above 25 rows), clamped at 0 against rounding.
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        sq = x.pow(2).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
        n = x.shape[0]
        # floored: a batch of identical rows (JAN's softmax layer once every prediction saturates
        # to the same one-hot, dead ReLU features) has σ² = 0, and 0/0 made the whole loss NaN.
        # Its kernel is 1 at any bandwidth (d² = 0), so the floor gives the exact MMD² = 0, and
        # 1/σ² ≤ 1e12 keeps the backward finite; any batch with a spread above 1e-6 is unchanged
        sigma2 = (d2.detach().sum() / (n * n - n)).clamp_min(SIGMA2_FLOOR)
        # sum() starts from the int 0, so its type is Tensor | int; with any multiplier it is a Tensor
        total = cast(torch.Tensor, sum(torch.exp(-d2 / (m * sigma2)) for m in multipliers))
        return total / len(multipliers)


def mmd_from_kernel(k: torch.Tensor, n_source: int) -> torch.Tensor:
    """Biased (quadratic-time, V-statistic) MMD² from a joint kernel matrix: the source rows first.

    MMD² = mean K_ss + mean K_tt − 2 mean K_st (Gretton et al. 2012, eq. 5, diagonals included).
    """
    ns = n_source
    return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()


def multi_kernel_mmd(
    source: torch.Tensor, target: torch.Tensor, multipliers: tuple[float, ...] = KERNEL_MULTIPLIERS
) -> torch.Tensor:
    """Biased estimate of the multi-kernel MMD², Long et al. 2015 (ICML), eq. (2)–(3).

    MMD² = mean k(s, s') + mean k(t, t') − 2 mean k(s, t),  k = (1/m) Σ_u exp(−‖x−y‖² / (β_u σ²)),
    with the *squared* Euclidean distance, σ² the mean pairwise squared distance of the joint
    batch (detached: no gradient flows through the bandwidth) and β_u in ``multipliers``.
    Long et al. combine the kernels convexly, k = Σ_u β_u k_u with Σ_u β_u = 1, and learn β; we
    fix equal weights β_u = 1/m (the *mean* of the m = 5 kernels). Two further choices differ from
    the paper. (a) The estimator: the paper trains with the linear-time *unbiased* estimate (§3.2,
    a sum over disjoint quad-tuples); ours is the quadratic-time *biased* V-statistic over all
    pairs, within-domain diagonals k(x, x) = 1 included. It is the estimator of the widely used
    ``MMDLoss`` of jindongwang/transferlearning (its ``kernel_mul=2, kernel_num=5`` are our σ²/4 …
    4σ² with the same off-diagonal mean σ²; it sums the kernels, so its loss is 5× ours). TLlib's
    quadratic default (``linear=False``) is instead the *unbiased* U-statistic (within-domain sums
    over i ≠ j divided by n(n − 1), plus a constant 2/(n − 1)) with σ² averaged over all n² pairs.
    The diagonals are constants (σ² is detached), so against the U-statistic our gradient differs
    only by a factor (n − 1)/n on the within-domain terms (0.97 at 32 per domain); in exchange the
    V-statistic is ‖μ̂_s − μ̂_t‖² in the RKHS, never negative. (b) The kernel family: the paper's
    spans bandwidths 2⁻⁸γ … 2⁸γ (§4) where ours is the five multipliers 1/4 … 4 (TLlib's 2^k for
    k = −3 … 1, doubled by its 2σ² denominator). TLlib's ``MultipleKernelMaximumMeanDiscrepancy``
    *sums* its kernels (β_u = 1), so its loss is m times ours: dabench's ``trade_off=1`` equals
    TLlib's ``trade_off=0.2``.
    """
    k = gaussian_kernel_matrix(torch.cat([source, target]), multipliers)
    return mmd_from_kernel(k, source.shape[0])


# --- entropy and covariance -------------------------------------------------------------
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p_i) = −Σ_k p_ik log p_ik of p_i = softmax(logits_i), one value per row, in nats.

    From ``log_softmax`` (float32), so a confident row gives 0 log 0 = 0, never NaN.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1)


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
