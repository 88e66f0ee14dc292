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


# --- JAN (Long et al. 2017) -------------------------------------------------------------
def test_jmmd_matches_a_transcription_of_the_product_kernel_estimate():
    """JMMD² = (1/n²)Σ_ij ∏_l k^l(s_i, s_j) + (1/n²)Σ ∏_l k^l(t_i, t_j) − (2/n²)Σ ∏_l k^l(s_i, t_j)
    (eq. 9 with the full batch), k^l the mean of Gaussians exp(−d²/(β σ_l²)), σ_l² layer l's mean
    squared distance over the joint batch's distinct pairs."""
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g) + 0.7
    ps, pt = torch.randn(3, 4, generator=g).softmax(1), torch.randn(3, 4, generator=g).softmax(1)
    layers = [(torch.cat([fs, ft]).tolist(), (0.25, 0.5, 1.0, 2.0, 4.0)), (torch.cat([ps, pt]).tolist(), (1.0,))]

    def kernel(rows: list[list[float]], mults: tuple[float, ...]):
        d2 = [[sum((a - b) ** 2 for a, b in zip(x, y)) for y in rows] for x in rows]
        n = len(rows)
        sigma2 = sum(d2[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)
        return lambda i, j: sum(math.exp(-d2[i][j] / (m * sigma2)) for m in mults) / len(mults)

    ks = [kernel(rows, mults) for rows, mults in layers]

    def k(i, j):
        return math.prod(kl(i, j) for kl in ks)

    src, tgt = range(3), range(3, 6)
    expected = (
        sum(k(i, j) for i in src for j in src) / 9
        + sum(k(i, j) for i in tgt for j in tgt) / 9
        - 2 * sum(k(i, j) for i in src for j in tgt) / 9
    )
    from dabench.methods.jan import SOFTMAX_MULTIPLIERS, joint_mmd

    got = joint_mmd([fs, ps], [ft, pt], [(0.25, 0.5, 1.0, 2.0, 4.0), SOFTMAX_MULTIPLIERS])
    assert got.item() == pytest.approx(expected, rel=1e-5)


# --- DANN (Ganin et al. 2016) -------------------------------------------------------------
def _capture(module: torch.nn.Module) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, _i, o: out.append(o.detach().double()))
    return out


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return -torch.log1p(torch.exp(-x))


def test_dann_domain_loss_is_the_mean_over_both_domains_and_lambda_reaches_only_the_features():
    """L_d = ½[−mean_i log D(f_s,i) − mean_j log(1 − D(f_t,j))] (source 1, target 0; TLlib's
    DomainAdversarialLoss), and λ_p scales the features' gradient only: "λ_p is used only for
    updating the feature extractor" (§5.2.2) — the discriminator's gradient is λ-free."""
    from dabench.backbones.lenet import LeNet
    from dabench.methods.dann import DANN
    from test_zoo import _batch

    torch.manual_seed(0)
    m = DANN(LeNet(), 10, {"disc_hidden": 32})
    m.train()
    logits = _capture(m.discriminator)
    batch = _batch()
    da = m.loss(batch, 0.5).parts["da"]
    d = logits[-1]
    expected = 0.5 * (-_log_sigmoid(d[:8]).mean() - _log_sigmoid(-d[8:]).mean())
    assert da.item() == pytest.approx(expected.item(), rel=1e-5)

    def grads(progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        m.zero_grad()
        torch.manual_seed(1)  # the same dropout masks in both passes
        m.loss(batch, progress).parts["da"].backward()
        return m.discriminator.layers[0].weight.grad.clone(), m.net.bottleneck[0].weight.grad.clone()

    disc_a, feat_a = grads(0.1)
    disc_b, feat_b = grads(0.9)
    assert torch.allclose(disc_a, disc_b, atol=1e-6)  # the discriminator: no λ
    lam_a, lam_b = 2 / (1 + math.exp(-1.0)) - 1, 2 / (1 + math.exp(-9.0)) - 1
    assert torch.allclose(feat_a / lam_a, feat_b / lam_b, atol=1e-5, rtol=1e-4)  # the features: λ_p


# --- CDAN (Long et al. 2018) --------------------------------------------------------------
def test_cdan_e_loss_is_the_authors_entropy_weighted_bce():
    """CDAN+E: w_i = 1 + e^{−H(g_i)}, H(g) = −Σ_c g_c log g_c of the softmax; each domain's weights
    divided by their sum; loss = Σ_i w_i · BCE_i / Σ_i w_i (Σ w = 2: the authors' code). Plain
    CDAN is the unweighted mean over both domains."""
    import dabench
    from dabench.backbones.lenet import LeNet
    from test_zoo import _batch

    batch = _batch(seed=2)
    for name in ("cdan", "cdan-e"):
        torch.manual_seed(0)
        m = dabench.METHODS.get(name)(LeNet(), 10, {"disc_hidden": 32})
        with torch.no_grad():
            m.net.head.weight.mul_(30)  # uneven certainties, so the weights differ from uniform
        m.train()
        d_out, head_out = _capture(m.discriminator), _capture(m.net.head)
        da = m.loss(batch, 0.5).parts["da"].item()
        d, z = d_out[-1], head_out[-1]
        bce = torch.cat([-_log_sigmoid(d[:8]), -_log_sigmoid(-d[8:])])
        if name == "cdan":
            assert da == pytest.approx(bce.mean().item(), rel=1e-5)
            continue
        p = z.softmax(1)
        w = 1 + torch.exp((p * p.log()).sum(1))  # e^{−H}
        w = torch.cat([w[:8] / w[:8].sum(), w[8:] / w[8:].sum()])
        assert w.std() > 0.01
        assert da == pytest.approx(((w * bce).sum() / w.sum()).item(), rel=1e-5)


def test_cdan_random_matrices_are_fixed_buffers_drawn_per_seed():
    """The randomized multilinear map's R_f, R_g: sampled once from the run's seed, never trained
    (buffers, not parameters), the same on every step, different for another seed."""
    from dabench.backbones.lenet import LeNet
    from dabench.methods.cdan import CDAN
    from test_zoo import _batch

    def build(seed: int) -> CDAN:
        torch.manual_seed(seed)
        return CDAN(LeNet(), 31, {"disc_hidden": 32})

    a, a2, b = build(0), build(0), build(1)
    assert a.random_map is not None and a2.random_map is not None and b.random_map is not None
    assert torch.equal(a.random_map.r_f, a2.random_map.r_f) and torch.equal(a.random_map.r_g, a2.random_map.r_g)
    assert not torch.equal(a.random_map.r_f, b.random_map.r_f)
    assert not any(p is a.random_map.r_f or p is a.random_map.r_g for p in a.parameters())
    before = a.random_map.r_f.clone()
    opt = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.1)
    batch = _batch()
    batch.y_source = batch.y_source % 31
    for _ in range(2):
        opt.zero_grad()
        a.loss(batch, 0.5).total.backward()
        opt.step()
    assert torch.equal(a.random_map.r_f, before)
