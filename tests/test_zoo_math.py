"""The mathematics of DAN, JAN, CORAL, DANN, CDAN(+E), MDD and ADDA against independent
transcriptions of their papers' formulas (written out here element by element, not by calling
the code under test), plus the numerical edge cases where the code must keep the formula."""

from __future__ import annotations

import math

import pytest
import torch

from dabench.methods.mdd import mdd_loss

torch.set_num_threads(1)


# --- MDD (Zhang et al. 2019) ------------------------------------------------------------
def _mdd_by_hand(logits_s, logits_t, adv_s, adv_t, margin: float) -> float:
    """γ · mean_i CE(f'(x_s,i), h_f(x_s,i)) − mean_j log(1 − σ_{h_f(x_t,j)}(f'(x_t,j))), in float64
    with the softmax written out (the authors' ``F.nll_loss(log(1 − softmax))``)."""

    def softmax(row: list[float]) -> list[float]:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        return [v / sum(e) for v in e]

    def argmax(row: list[float]) -> int:
        return max(range(len(row)), key=lambda k: row[k])

    src = [-math.log(softmax(a)[argmax(h)]) for a, h in zip(adv_s, logits_s)]
    # 1 − σ_y = Σ_{k≠y} σ_k: summed (not subtracted from 1) so float64 keeps it at any margin
    tgt = [-math.log(sum(p for k, p in enumerate(softmax(a)) if k != argmax(h))) for a, h in zip(adv_t, logits_t)]
    return margin * sum(src) / len(src) + sum(tgt) / len(tgt)


def test_mdd_loss_matches_the_paper_at_ordinary_and_saturated_margins():
    g = torch.Generator().manual_seed(3)
    logits_s, logits_t = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g)
    adv_s, adv_t = torch.randn(5, 4, generator=g) * 3, torch.randn(6, 4, generator=g) * 3
    expected = _mdd_by_hand(logits_s.tolist(), logits_t.tolist(), adv_s.tolist(), adv_t.tolist(), 4.0)
    assert mdd_loss(logits_s, logits_t, adv_s, adv_t, 4.0).item() == pytest.approx(expected, rel=1e-5)
    # f' agrees with h_f on a target example by a logit margin of 25: 1 − σ = 3e^{-25}/(1 + 3e^{-25})
    adv_t[0] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    adv_t[0, int(logits_t[0].argmax())] = 25.0
    expected = _mdd_by_hand(logits_s.tolist(), logits_t.tolist(), adv_s.tolist(), adv_t.tolist(), 4.0)
    assert mdd_loss(logits_s, logits_t, adv_s, adv_t, 4.0).item() == pytest.approx(expected, rel=1e-5)


def test_mdd_target_term_keeps_its_gradient_where_the_adversary_agrees_most():
    """−log(1 − σ_y(z)) = log(1 + e^{z_y} / Σ_{k≠y} e^{z_k}) has ∂/∂z_y = σ_y → 1 as f' agrees:
    the push to disagree is strongest there. A clamped log(1 − softmax) gave it 0."""
    logits_s, adv_s = torch.zeros(1, 3), torch.zeros(1, 3)
    logits_t = torch.tensor([[1.0, 0.0, 0.0]])  # h_f says class 0
    adv_t = torch.tensor([[20.0, 0.0, 0.0]], requires_grad=True)  # f' agrees by a margin of 20
    loss = mdd_loss(logits_s, logits_t, adv_s, adv_t, 0.0)  # γ = 0: the target term alone
    loss.backward()
    assert loss.item() == pytest.approx(20.0 - math.log(2.0) + math.log1p(2 * math.exp(-20.0)), rel=1e-6)
    # ∂/∂z_0 = σ_0 = e^20 / (e^20 + 2), the others −σ_0 · e^0 / (e^0 + e^0) each
    s0 = 1.0 / (1.0 + 2.0 * math.exp(-20.0))
    assert adv_t.grad[0, 0].item() == pytest.approx(s0, rel=1e-6)
    assert adv_t.grad[0, 1].item() == pytest.approx(-s0 / 2, rel=1e-6)
