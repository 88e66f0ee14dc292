"""The method zoo: each loss against a hand computation or its definition, the mechanics the
papers rely on (reversal, conditioning, weights, margins), the method groups, and a real run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dabench
from dabench.backbones.lenet import LeNet
from dabench.layers import entropy, gaussian_kernel_matrix, multi_kernel_mmd
from dabench.methods.afn import AFN, safn_loss
from dabench.methods.bnm import bnm_loss
from dabench.methods.cdan import CDAN, RANDOMIZED_DIM, RandomizedMultilinearMap, entropy_weights, multilinear_map
from dabench.methods.jan import joint_mmd
from dabench.methods.mdd import MDD, agreement, mdd_loss
from method_steps import random_batch

torch.set_num_threads(1)
ZOO = ("minent", "bnm", "afn", "jan", "cdan", "cdan-e", "mdd")


_batch = random_batch


# --- shared layers ----------------------------------------------------------------------
def test_layers_are_public_and_shared_by_the_methods_that_use_them():
    import dabench.methods.cdan as cdan
    import dabench.methods.dann as dann
    import dabench.methods.mdd as mdd

    assert dann.grad_reverse is cdan.grad_reverse is mdd.grad_reverse is dabench.layers.grad_reverse
    assert dann.DomainDiscriminator is cdan.DomainDiscriminator is dabench.DomainDiscriminator
    assert dabench.methods.dan.multi_kernel_mmd is dabench.multi_kernel_mmd
    assert dabench.methods.coral.covariance is dabench.layers.covariance


def test_dann_run_id_is_unchanged_by_the_move():
    """DANN's hyperparameters (names, defaults) and so its run ids stay those of earlier versions."""
    spec = dabench.expand(dabench.Matrix(methods=("dann",), seeds=(0,)))[0]
    assert spec.hparams == {
        "bottleneck_dim": 256,
        "trade_off": 1.0,
        "disc_hidden": 1024,
        "grl_gamma": 10.0,
        "forward": "concat",
    }
    assert spec.run_id == "e16feacac050"


def test_entropy_matches_the_definition_and_is_zero_when_certain():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.5, -1.0], [200.0, 0.0, 0.0, 0.0]])
    p = torch.tensor([math.exp(v) for v in (1.0, 2.0, 0.5, -1.0)])
    p = p / p.sum()
    h = entropy(logits)
    assert h[0].item() == pytest.approx(math.log(4), rel=1e-6)
    assert h[1].item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-5)
    assert h[2].item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(h).all()


# --- MinEnt, BNM, AFN -------------------------------------------------------------------
def test_minent_da_term_is_the_mean_target_entropy():
    torch.manual_seed(0)
    m = dabench.METHODS.get("minent")(LeNet(), 10)
    m.eval()  # deterministic forward passes (no dropout in LeNet, BatchNorm's running statistics)
    batch = _batch()
    loss = m.loss(batch, 0.5)
    _, logits_t, _, _ = m.forward_source_target(batch)
    assert loss.parts["da"].item() == pytest.approx(entropy(logits_t).mean().item(), rel=1e-5)
    assert loss.total.item() == pytest.approx((loss.parts["ce"] + 0.1 * loss.parts["da"]).item(), rel=1e-5)


def test_bnm_is_minus_the_sum_of_singular_values_over_batch():
    # softmax(log a) = a when the rows of a sum to 1: a known probability matrix
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # AᵀA = [[1.25, .25], [.25, 1.25]]: eigenvalues 1.5 and 1, singular values √1.5 and 1
    assert bnm_loss(torch.log(a.clamp_min(1e-30))).item() == pytest.approx(-(math.sqrt(1.5) + 1) / 3, rel=1e-5)
    # diverse confident predictions score better (lower) than one class for every row
    one_class = torch.tensor([[9.0, 0.0, 0.0]] * 3)
    diverse = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    assert bnm_loss(diverse).item() < bnm_loss(one_class).item()
    assert bnm_loss(diverse).item() == pytest.approx(-torch.linalg.matrix_norm(diverse.softmax(1), "nuc").item() / 3)


def test_safn_pushes_every_norm_up_by_delta_r():
    h = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)  # norms 5 and 2
    loss = safn_loss(h, 1.0)
    assert loss.item() == pytest.approx(1.0)  # (‖h‖ − (‖h‖ + Δr))² = Δr², whatever h
    loss.backward()
    # d/dh mean (‖h‖ − c)² = 2 (‖h‖ − c) h/‖h‖ / n = −Δr h/‖h‖ for n = 2: a step along h raises the norm
    assert torch.allclose(h.grad, -torch.tensor([[0.6, 0.8], [0.0, 1.0]]), atol=1e-6)


def test_afn_trains_with_dropout_and_predicts_without():
    torch.manual_seed(0)
    m = AFN(LeNet(), 10)
    batch = _batch()
    m.train()
    f_s, _ = m._dropped_features(batch)
    assert (f_s == 0).float().mean() > 0.4  # half of the (already ReLU-sparse) features dropped
    m.eval()
    assert torch.equal(m.predict(batch.x_target), m.net(batch.x_target)[0])


def test_afn_dropout_keeps_the_expected_squared_norm():
    """The authors' √(1 − p) after inverted dropout: E‖f_drop‖² = ‖f‖², the norm evaluation sees
    (inverted dropout alone gives ‖f‖²/(1 − p): twice it at p = 0.5)."""
    torch.manual_seed(0)
    m = AFN(LeNet(), 10)
    m.train()
    f = torch.ones(4000, 256)
    dropped = m._dropout(f)
    ratio = (dropped.pow(2).sum(1).mean() / f.pow(2).sum(1).mean()).item()
    assert ratio == pytest.approx(1.0, abs=0.02), ratio
    m.eval()
    assert torch.equal(m._dropout(f), f)


# --- JAN --------------------------------------------------------------------------------
def test_jmmd_is_mmd_of_the_product_kernel():
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) + 1
    ps, pt = torch.randn(4, 5, generator=g).softmax(1), torch.randn(4, 5, generator=g).softmax(1)
    kf = gaussian_kernel_matrix(torch.cat([fs, ft]))
    kp = gaussian_kernel_matrix(torch.cat([ps, pt]), (1.0,))
    k = kf * kp
    expected = k[:4, :4].mean() + k[4:, 4:].mean() - 2 * k[:4, 4:].mean()
    assert joint_mmd([fs, ps], [ft, pt], [(0.25, 0.5, 1.0, 2.0, 4.0), (1.0,)]).item() == pytest.approx(expected.item())
    # one layer: JMMD is DAN's MK-MMD
    assert joint_mmd([fs], [ft]).item() == pytest.approx(multi_kernel_mmd(fs, ft).item())
    with pytest.raises(ValueError, match="one source, target and multiplier set per layer"):
        joint_mmd([fs, ps], [ft])


# --- CDAN -------------------------------------------------------------------------------
def test_multilinear_map_is_the_outer_product_and_the_random_map_approximates_it():
    f = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.tensor([[0.25, 0.75]])
    assert torch.equal(multilinear_map(f, g), torch.tensor([[0.25, 0.5, 0.75, 0.75, 1.5, 2.25]]))
    # E⟨T⊙(a), T⊙(b)⟩ = ⟨T⊗(a), T⊗(b)⟩ (Long et al. 2018, §3.3): average over random maps
    torch.manual_seed(0)
    f2, g2 = torch.tensor([[0.5, 1.0, -1.0]]), torch.tensor([[0.5, 0.5]])
    exact = (multilinear_map(f, g) * multilinear_map(f2, g2)).sum().item()
    est = [(rm(f, g) * rm(f2, g2)).sum().item() for rm in (RandomizedMultilinearMap(3, 2) for _ in range(200))]
    assert sum(est) / len(est) == pytest.approx(exact, rel=0.15)


def test_cdan_randomizes_above_4096_and_keeps_its_random_matrices_in_the_state_dict():
    torch.manual_seed(0)
    small = CDAN(LeNet(), 10)  # 256 × 10 = 2560 ≤ 4096: the full map
    assert small.random_map is None and small.discriminator.layers[0].in_features == 2560
    big = CDAN(LeNet(), 31)  # 256 × 31 = 7936: randomized to 1024
    assert big.random_map is not None and big.discriminator.layers[0].in_features == RANDOMIZED_DIM
    assert {"random_map.r_f", "random_map.r_g"} <= set(big.state_dict())
    forced = CDAN(LeNet(), 10, {"multilinear": "randomized"})
    assert forced.random_map is not None
    with pytest.raises(ValueError, match="multilinear must be 'auto', 'full' or 'randomized', got 'x'"):
        CDAN(LeNet(), 10, {"multilinear": "x"})


def test_cdan_conditions_on_detached_predictions_and_reverses_the_gradient_to_features():
    torch.manual_seed(0)
    m = CDAN(LeNet(), 10, {"disc_hidden": 32})
    m.train()
    loss = m.loss(_batch(), 0.5)
    m.zero_grad()
    loss.parts["da"].backward()
    # the adversarial term reaches the features (bottleneck) but not the head: g is detached
    assert m.net.bottleneck[0].weight.grad.abs().sum() > 0
    assert m.net.head.weight.grad is None or m.net.head.weight.grad.abs().sum() == 0
    assert m.discriminator.layers[-1].weight.grad.abs().sum() > 0
    # the discriminator descends its loss while the features ascend it: the features' gradient is
    # −λ_p times the one without reversal
    from dabench.layers import grad_reverse, grl_coefficient

    f = torch.randn(16, 256).relu()
    g = torch.randn(16, 10).softmax(1)
    labels = torch.cat([torch.ones(8), torch.zeros(8)])

    def grad(coeff: float | None) -> torch.Tensor:
        x = f.clone().requires_grad_(True)
        h = multilinear_map(x, g)
        d = m.discriminator(grad_reverse(h, coeff) if coeff is not None else h)
        F.binary_cross_entropy_with_logits(d, labels).backward()
        return x.grad

    lam = grl_coefficient(0.5)
    assert torch.allclose(grad(lam), -lam * grad(None), atol=1e-6)


def test_cdan_e_weights_follow_certainty_and_sum_to_one_per_domain():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 0.0]])
    w = entropy_weights(logits, 2)
    h = entropy(logits)
    raw = 1 + torch.exp(-h)
    assert torch.allclose(w[:2], raw[:2] / raw[:2].sum()) and torch.allclose(w[2:], raw[2:] / raw[2:].sum())
    assert w[0] > w[1]  # the confident source example counts more
    assert w[:2].sum().item() == pytest.approx(1.0) and w[2:].sum().item() == pytest.approx(1.0)


def test_cdan_e_differs_from_cdan_only_by_the_weights():
    torch.manual_seed(0)
    cdan = dabench.METHODS.get("cdan")(LeNet(), 10, {"disc_hidden": 32})
    torch.manual_seed(0)
    cdan_e = dabench.METHODS.get("cdan-e")(LeNet(), 10, {"disc_hidden": 32})
    batch = _batch()
    # make the predictions uneven so that the weights are not uniform
    with torch.no_grad():
        cdan.net.head.weight.mul_(50)
        cdan_e.net.head.weight.mul_(50)
    cdan.train(), cdan_e.train()
    assert not torch.allclose(cdan.loss(batch, 0.5).parts["da"], cdan_e.loss(batch, 0.5).parts["da"])


# --- MDD --------------------------------------------------------------------------------
def test_mdd_loss_matches_a_hand_computation():
    logits_s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # h_f: classes 0 and 2
    logits_t = torch.tensor([[0.0, 1.0, 0.0]])  # h_f: class 1
    adv_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    adv_t = torch.tensor([[0.0, 2.0, 0.0]])
    e = math.exp
    ce_s = (-math.log(e(1) / (e(1) + 2)) - math.log(1 / (e(1) + 2))) / 2
    p_t = e(2) / (e(2) + 2)
    expected = 4.0 * ce_s - math.log(1 - p_t)  # γ·CE(f'_s, h_f) − log(1 − σ_{h_f}(f'_t))
    assert mdd_loss(logits_s, logits_t, adv_s, adv_t, 4.0).item() == pytest.approx(expected, rel=1e-5)


def test_mdd_adversary_learns_to_agree_on_source_and_disagree_on_target():
    """The adversarial head f' descending the MDD loss (features fixed) agrees more with h_f on
    the source and less on the target — the discrepancy the features are then trained to shrink.
    (An earlier sign error made f' agree on both domains: MDD then sat far below source-only.)"""
    torch.manual_seed(0)
    feats_s, feats_t = torch.randn(64, 16), torch.randn(64, 16)
    feats_s[:, -1], feats_t[:, -1] = 0.0, 4.0  # a domain feature the adversary can use
    head = torch.nn.Linear(16, 5)
    logits_s, logits_t = head(feats_s).detach(), head(feats_t).detach()
    adv = torch.nn.Linear(16, 5)
    opt = torch.optim.SGD(adv.parameters(), lr=0.1)

    def agreement(feats, logits):
        with torch.no_grad():
            return torch.softmax(adv(feats), 1).gather(1, logits.argmax(1, keepdim=True)).mean().item()

    before = agreement(feats_s, logits_s), agreement(feats_t, logits_t)
    for _ in range(50):
        opt.zero_grad()
        mdd_loss(logits_s, logits_t, adv(feats_s), adv(feats_t), 4.0).backward()
        opt.step()
    after = agreement(feats_s, logits_s), agreement(feats_t, logits_t)
    assert after[0] > before[0] + 0.2  # agrees with h_f on the source
    assert after[1] < before[1]  # and disagrees on the target


def test_mdd_adversary_descends_and_features_ascend_through_a_tenth_strength_reversal():
    torch.manual_seed(0)
    m = MDD(LeNet(), 10)
    m.train()
    batch = _batch()
    loss = m.loss(batch, 1.0)
    m.zero_grad()
    loss.parts["da"].backward()
    # the main head gets nothing from the discrepancy (argmax predictions are constants)
    assert m.net.head.weight.grad is None or m.net.head.weight.grad.abs().sum() == 0
    # compare the features' gradient with the reversal switched off: −grl_max · λ_p times it
    _, _, f_s, f_t = m.forward_source_target(batch)
    feats = torch.cat([f_s, f_t]).detach()

    def grad(coeff: float | None) -> torch.Tensor:
        f = feats.clone().requires_grad_(True)
        from dabench.layers import grad_reverse

        adv = m.adv_head(grad_reverse(f, coeff) if coeff is not None else f)
        logits = m.net.head(feats)
        mdd_loss(logits[:8], logits[8:], adv[:8], adv[8:], 4.0).backward()
        return f.grad

    lam = 0.1 * (2 / (1 + math.exp(-10.0)) - 1)
    assert torch.allclose(grad(lam), -lam * grad(None), atol=1e-7)


def test_mdd_logs_how_often_the_adversary_agrees_with_the_main_head_on_each_domain():
    """``agree_s``/``agree_t`` in the step's parts: the share of each batch where argmax f' = h_f
    (the curves then show which side of the min-max wins; ``da`` alone mixes both terms)."""
    logits_s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # h_f: 0, 2
    logits_t = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # 1, 0, 2, 1
    adv_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # f': 0, 1 → agrees on the first only
    adv_t = torch.tensor([[0.0, 2.0, 0.0]]).repeat(4, 1)  # f' says 1 throughout: agrees on 2 of 4
    out = agreement(logits_s, logits_t, adv_s, adv_t)
    assert out["agree_s"].item() == pytest.approx(0.5) and out["agree_t"].item() == pytest.approx(0.5)
    torch.manual_seed(0)
    m = MDD(LeNet(), 10)
    m.train()
    parts = m.loss(_batch(), 0.5).parts
    assert {"ce", "da", "agree_s", "agree_t"} <= set(parts)
    assert all(0.0 <= parts[k].item() <= 1.0 and not parts[k].requires_grad for k in ("agree_s", "agree_t"))


# --- groups, listing and a real run ------------------------------------------------------
def test_a_group_of_the_builtin_modules_expands_in_a_fresh_process():
    """``--methods zoo`` from the command line: ``zoo`` is registered by the built-in methods'
    package, which the registry imports lazily; expanding must load it first (it once said
    "unknown method 'zoo'" while listing zoo among the groups)."""
    import subprocess
    import sys

    code = "import dabench; print(','.join(dabench.METHODS.expand('zoo')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert set(ZOO) <= set(out.stdout.strip().split(","))


def test_method_groups_select_the_zoo_by_protocol():
    methods = dabench.METHODS
    assert set(ZOO) <= set(methods.expand("zoo")) and set(methods.expand("all")) == set(methods.names())
    # other tests of the session register plugin methods too: the groups follow every registered method
    by_protocol = {p: {n for n in methods.names() if methods.get(n).protocol == p} for p in ("uda", "few-shot")}
    assert set(methods.expand("uda")) == by_protocol["uda"] >= set(ZOO) | {"source-only", "dan", "dann", "coral", "mcd"}
    assert set(methods.expand("few-shot")) == by_protocol["few-shot"] >= {"fine-tune", "linear-probe"}
    assert [s.method for s in dabench.expand(dabench.Matrix(seeds=(0,)))] == list(dabench.Matrix().methods)
    assert "minent" not in dabench.Matrix().methods  # the default quick matrix stays the six


def test_list_methods_groups_by_protocol(capsys):
    from dabench.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert out.index("few-shot (2; --methods few-shot)") < out.index("fine-tune") < out.index("uda (")
    assert out.index("uda (") < out.index("cdan-e") and "groups for --methods: all (" in out and "zoo (" in out


def test_every_zoo_method_trains_above_chance_on_digits(tmp_path):
    """A tiny real schedule (100 steps, batch 32) on digits-offline: every new method learns."""
    from dabench.core.store import RunStore
    from dabench.running.executors import ExecutorOptions
    from dabench.running.scheduler import run_matrix

    specs = dabench.expand(
        dabench.Matrix(methods=ZOO, seeds=(0,), overrides={"steps": 100, "batch_size": 32, "eval_every": 100})
    )
    run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False))
    store = RunStore(tmp_path)
    accs = {s.method: store.read(s.run_id) for s in specs}
    print({name: round(rec["final"]["target_acc"], 1) for name, rec in accs.items() if rec["final"]})
    for name, rec in accs.items():
        assert rec["status"] == "complete", (name, rec["error"])
        assert rec["final"]["target_acc"] > 30.0, f"{name}: {rec['final']['target_acc']:.1f}% (chance is 10%)"


def test_every_builtin_method_but_the_baseline_cites_its_paper():
    """The project's style: a method names the paper it implements (class ``citation``) and its
    docstring states the loss; source-only is the baseline and cites none."""
    from dabench.methods import BUILTIN_METHODS

    for name in BUILTIN_METHODS:
        cls = dabench.METHODS.get(name)
        if name == "source-only":
            continue
        assert cls.citation and any(str(y) in cls.citation for y in range(2004, 2027)), name
        doc = cls.__doc__ or ""
        assert "=" in doc or "min_" in doc, f"{name}: the docstring states no equation"
