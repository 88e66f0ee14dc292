"""The adaptation losses against hand computations, and the pitfalls other libraries fell into."""

from __future__ import annotations

import math

import pytest
import torch

from dabench.backbones.lenet import LeNet
from dabench.core.method import Batch
from dabench.layers import KERNEL_MULTIPLIERS, gaussian_kernel_matrix
from dabench.methods.coral import coral_loss, covariance
from dabench.methods.dan import multi_kernel_mmd
from dabench.methods.dann import DANN, grad_reverse, grl_coefficient


def test_mmd_matches_a_hand_computation():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    pts = [p.tolist() for p in torch.cat([s, t])]
    d2 = [[(a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 for b in pts] for a in pts]
    sigma2 = sum(sum(row) for row in d2) / (4 * 4 - 4)
    mults = (0.25, 0.5, 1.0, 2.0, 4.0)

    def k(i, j):
        return sum(math.exp(-d2[i][j] / (m * sigma2)) for m in mults) / len(mults)

    kss = sum(k(i, j) for i in (0, 1) for j in (0, 1)) / 4
    ktt = sum(k(i, j) for i in (2, 3) for j in (2, 3)) / 4
    kst = sum(k(i, j) for i in (0, 1) for j in (2, 3)) / 4
    assert multi_kernel_mmd(s, t).item() == pytest.approx(kss + ktt - 2 * kst, rel=1e-5)


def test_mmd_vanishes_for_identical_batches_and_grows_with_shift():
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert multi_kernel_mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_kernel_mmd(x, x + 3).item() > multi_kernel_mmd(x, x + 0.5).item() > 0


def test_coral_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 4.0], [0.0, 1.0]])

    def cov(x):
        n = len(x)
        mean = [sum(r[j] for r in x) / n for j in range(2)]
        return [[sum((r[a] - mean[a]) * (r[b] - mean[b]) for r in x) / (n - 1) for b in range(2)] for a in range(2)]

    cs, ct = cov(s.tolist()), cov(t.tolist())
    expected = sum((cs[a][b] - ct[a][b]) ** 2 for a in range(2) for b in range(2)) / (4 * 2 * 2)
    assert coral_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(covariance(s), torch.cov(s.T))


def test_coral_vanishes_for_identical_batches():
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(1))
    assert coral_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # shifting the mean leaves covariances equal: CORAL is blind to it
    assert coral_loss(x, x + 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (grad_reverse(x, 0.7) * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)


def test_grl_ramp_follows_ganin():
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert 0 < grl_coefficient(0.1) < grl_coefficient(0.5) < 1


def _dann_and_batch(seed=0):
    torch.manual_seed(seed)
    m = DANN(LeNet(), 10, {"disc_hidden": 32})
    g = torch.Generator().manual_seed(seed)
    batch = Batch(
        x_source=torch.randn(8, 1, 28, 28, generator=g),
        y_source=torch.randint(0, 10, (8,), generator=g),
        x_target=torch.randn(8, 1, 28, 28, generator=g) + 1.0,
    )
    return m, batch


def test_dann_reversed_gradient_reaches_features_with_opposite_sign():
    m, batch = _dann_and_batch()
    m.train()
    _, _, f_s, f_t = m.forward_source_target(batch)
    feats = torch.cat([f_s, f_t])
    d_labels = torch.cat([torch.ones(8), torch.zeros(8)])
    import torch.nn.functional as F

    def grad_through(reverse: bool) -> torch.Tensor:
        f = feats.detach().requires_grad_(True)
        inp = grad_reverse(f, 1.0) if reverse else f
        F.binary_cross_entropy_with_logits(m.discriminator(inp), d_labels).backward()
        return f.grad

    plain, reversed_ = grad_through(False), grad_through(True)
    assert reversed_.abs().sum() > 0, "no adversarial gradient reaches the features"
    assert torch.allclose(reversed_, -plain, atol=1e-6)


def test_dann_discriminator_learns_and_is_not_a_constant_softmax():
    m, batch = _dann_and_batch()
    before = [p.detach().clone() for p in m.discriminator.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = m.loss(batch, progress=0.5)
    assert "da" in loss.parts and loss.parts["da"].item() > 0
    loss.total.backward()
    grads = [p.grad for p in m.discriminator.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, m.discriminator.parameters()))


def test_losses_are_combined_by_sum_with_trade_off():
    m, batch = _dann_and_batch()
    m.hp["trade_off"] = 0.5
    loss = m.loss(batch, 0.5)
    assert loss.total.item() == pytest.approx((loss.parts["ce"] + 0.5 * loss.parts["da"]).item(), rel=1e-5)


def _paper_form_covariance(x: torch.Tensor) -> torch.Tensor:
    """The uncentred form of Sun & Saenko's eq. (2)-(3), as dabench computed it before."""
    x = x.float()
    n = x.shape[0]
    col_sum = x.sum(0, keepdim=True)
    return (x.T @ x - col_sum.T @ col_sum / n) / (n - 1)


def test_coral_covariance_survives_bf16_autocast_at_large_logit_means():
    """bf16 autocast (a GPU's fast path) emulated on the CPU: CPU autocast lowers the matmul to
    bfloat16 exactly as CUDA autocast does. Logits of mean ~20 and spread ~2 (a confident
    classifier): the uncentred product loses the covariance to cancellation, the centred one keeps it."""
    g = torch.Generator().manual_seed(0)
    s64 = 20 + 2 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    t64 = 21 + 1.5 * torch.randn(64, 10, generator=g, dtype=torch.float64)

    def rel_err(cov_fn, x64):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = cov_fn(x64.float()).double()
        ref = torch.cov(x64.T)
        return ((c - ref).norm() / ref.norm()).item()

    assert rel_err(_paper_form_covariance, s64) > 0.5  # the pitfall is real under this emulation
    assert rel_err(covariance, s64) < 0.01
    assert rel_err(covariance, t64) < 0.01
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = coral_loss(s64.float(), t64.float()).double()
    d = s64.shape[1]
    expected = (torch.cov(s64.T) - torch.cov(t64.T)).pow(2).sum() / (4 * d * d)
    assert loss.item() == pytest.approx(expected.item(), rel=0.02)


def test_kernel_matrix_is_float32_under_autocast_and_vmap_and_equals_cdist():
    """DAN's and JAN's Gaussian kernels compute in float32 with autocast off, also inside
    ``torch.func.vmap`` (seed-batched training), and equal the cdist formulation they replaced."""
    from dabench.layers import gaussian_kernel_matrix

    torch.manual_seed(0)
    x = torch.randn(40, 16) * 3
    ref_d2 = torch.cdist(x, x).pow(2)
    sigma2 = ref_d2.sum() / (40 * 39)
    ref = sum(torch.exp(-ref_d2 / (m * sigma2)) for m in (0.25, 0.5, 1.0, 2.0, 4.0)) / 5
    torch.testing.assert_close(gaussian_kernel_matrix(x), ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = gaussian_kernel_matrix(x.bfloat16())
    assert k.dtype == torch.float32
    # batched over 3 "seeds" with gradients, as the seed-batched step takes them
    xs = torch.randn(3, 40, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ks = torch.func.vmap(gaussian_kernel_matrix)(xs)
    assert ks.dtype == torch.float32
    ks.sum().backward()
    assert xs.grad is not None and torch.isfinite(xs.grad).all()
    torch.testing.assert_close(ks[1], gaussian_kernel_matrix(xs[1].detach()), rtol=1e-4, atol=1e-5)


def test_mmd_of_identical_rows_is_zero_not_nan():
    """A batch whose rows are all equal (JAN's softmax layer when every prediction saturates to the
    same one-hot; dead ReLU features) has bandwidth σ² = 0. The kernel is then 1 whatever the
    bandwidth, so MMD² = 0 exactly; 0/0 made it (and the run) NaN before the floor."""
    from dabench.methods.jan import joint_mmd

    x = torch.zeros(6, 4, requires_grad=True)
    mmd = multi_kernel_mmd(x[:3], x[3:])
    assert mmd.item() == 0.0
    mmd.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    f = torch.randn(6, 4)
    p = torch.zeros(6, 3)
    p[:, 1] = 1.0  # every prediction the same one-hot
    jm = joint_mmd([f[:3], p[:3]], [f[3:], p[3:]], [KERNEL_MULTIPLIERS, (1.0,)])
    assert torch.isfinite(jm) and jm.item() >= 0.0
    # a spread batch keeps its own bandwidth: the floor changes nothing there
    y = torch.randn(6, 4)
    d2 = torch.cdist(y, y).pow(2)
    k = gaussian_kernel_matrix(y, (1.0,))
    torch.testing.assert_close(k, torch.exp(-d2 / (d2.sum() / 30)), rtol=1e-4, atol=1e-5)
