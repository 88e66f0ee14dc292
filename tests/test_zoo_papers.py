"""The zoo's estimators against their papers, each formula transcribed here independently of the
code (loops, numpy, eigenvalues instead of the SVD, the authors' clustering step by step): MCD,
SHOT, AFN, BNM, MinEnt, the linear probe, fine-tuning and source-only. Then the labels each method
is handed: no method sees a target label it does not declare, and the network a dependant starts
from never trained on target labels."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dabench
from dabench import Batch
from dabench.core.registry import PAIRS
from dabench.core.store import RunStore
from dabench.engine.data import DeviceData
from dabench.engine.train import RunContext, execute, prepare_method
from dabench.methods.afn import AFN, safn_loss
from dabench.methods.bnm import bnm_loss
from dabench.methods.mcd import MCD, classifier_discrepancy
from dabench.methods.shot import cluster_pseudo_labels, information_maximisation
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import load_pair_data
from method_steps import random_batch

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
TINY_SCHEDULE = {"steps": 6, "eval_every": 6, "log_every": 2, "batch_size": 16}


def _lenet():
    return dabench.BACKBONES.get("lenet")(in_channels=1, image_size=28)


_batch = random_batch


def _softmax_rows(logits: list[list[float]]) -> list[list[float]]:
    out = []
    for row in logits:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out.append([v / sum(e) for v in e])
    return out


def _ce(logits: list[list[float]], y: list[int]) -> float:
    p = _softmax_rows(logits)
    return -sum(math.log(p[i][y[i]]) for i in range(len(y))) / len(y)


def _no_dropout(m: torch.nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0


# --- MCD (Saito et al. 2018) ---------------------------------------------------------------
def test_mcd_discrepancy_is_eq_1_the_mean_over_batch_and_classes_of_the_l1_softmax_gap():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    p1, p2 = _softmax_rows(l1.tolist()), _softmax_rows(l2.tolist())
    # d(p1, p2) = (1/K) Σ_k |p1_k − p2_k|, then the expectation over the target batch
    want = sum(sum(abs(a - b) for a, b in zip(r1, r2)) / 7 for r1, r2 in zip(p1, p2)) / 5
    assert classifier_discrepancy(l1, l2).item() == pytest.approx(want, rel=1e-6)


def test_mcd_step_takes_the_papers_three_objectives_with_their_signs():
    """(A) CE₁ + CE₂ on the source; (B) CE₁ + CE₂ − d on the target for the classifiers (d to
    maximise: its sign in the loss is −); (C) + d, num_k times, for the generator. Each loss is
    recomputed here from the heads' own logits with the formulas above, no update in between."""
    torch.manual_seed(0)
    m = MCD(_lenet(), 10, {"num_k": 3})
    _no_dropout(m)
    m.train()
    batch = _batch()
    seen: list[tuple[tuple[str, ...], float]] = []
    m.step(
        batch,
        0.5,
        lambda names, loss: seen.append(((names,) if isinstance(names, str) else tuple(names), loss.total.item())),
    )
    with torch.no_grad():
        fs, ft = m.net.features(batch.x_source), m.net.features(batch.x_target)
        s1, s2, t1, t2 = (h(f).tolist() for f in (fs, ft) for h in (m.net.head, m.head2))
    y = batch.y_source.tolist()
    ce = _ce(s1, y) + _ce(s2, y)
    p1, p2 = _softmax_rows(t1), _softmax_rows(t2)
    d = sum(sum(abs(a - b) for a, b in zip(r1, r2)) / 10 for r1, r2 in zip(p1, p2)) / len(p1)
    assert [n for n, _ in seen] == [("generator", "classifiers"), ("classifiers",)] + [("generator",)] * 3
    assert seen[0][1] == pytest.approx(ce, rel=1e-5)
    assert seen[1][1] == pytest.approx(ce - d, rel=1e-5)
    for _, value in seen[2:]:
        assert value == pytest.approx(d, rel=1e-5)


def test_mcd_predicts_the_ensemble_of_its_two_heads():
    torch.manual_seed(0)
    m = MCD(_lenet(), 10)
    m.eval()
    x = _batch().x_target
    with torch.no_grad():
        f = m.net.features(x)
        p = (m.net.head(f).softmax(1) + m.head2(f).softmax(1)) / 2
        got = m.predict(x)
    assert torch.allclose(got.exp(), p, atol=1e-6)  # log of the mean of the two softmaxes


# --- SHOT (Liang et al. 2020) --------------------------------------------------------------
def _authors_obtain_label(feats: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The authors' digit code's ``obtain_label`` transcribed: append 1, L2-normalise, softmax-
    weighted centroids, cosine distance, one refinement with one-hot weights."""
    f = np.concatenate([feats, np.ones((len(feats), 1))], 1)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)

    def cosine_argmin(centroids: np.ndarray) -> np.ndarray:
        dist = np.empty((len(f), len(centroids)))
        for i, a in enumerate(f):
            for k, c in enumerate(centroids):
                dist[i, k] = 1.0 - a.dot(c) / (np.linalg.norm(a) * np.linalg.norm(c))
        return dist.argmin(1)

    init = probs.T.dot(f) / (1e-8 + probs.sum(0)[:, None])
    labels = cosine_argmin(init)
    aff = np.eye(probs.shape[1])[labels]
    centroids = aff.T.dot(f) / (1e-8 + aff.sum(0)[:, None])
    return cosine_argmin(centroids)


def test_shot_pseudo_labels_equal_the_authors_clustering():
    """Random features and predictions where every class keeps at least one image after the
    first assignment (the authors' digit code has no centroid for an empty class)."""
    rng = np.random.default_rng(0)
    k = 4
    centres = rng.normal(size=(k, 6)) * 3
    true = np.arange(60) % k
    feats = centres[true] + rng.normal(size=(60, 6))
    logits = rng.normal(size=(60, k)) + 2.0 * np.eye(k)[(true + (np.arange(60) % 5 == 0)) % k]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = _authors_obtain_label(feats, probs)
    assert len(set(want.tolist())) == k
    got, _ = cluster_pseudo_labels(torch.tensor(feats, dtype=torch.float32), torch.tensor(probs, dtype=torch.float32))
    assert got.tolist() == want.tolist()


def test_shot_information_maximisation_signs_entropy_down_diversity_up():
    """L_IM = (1/B) Σ H(p_i) − H(p̄): the per-sample entropy is minimised and the entropy of the mean
    prediction maximised. Confident and diverse predictions score lowest, confident and collapsed
    ones are penalised by log K exactly, uncertain ones by the mean entropy."""
    k = 5
    diverse = torch.eye(k) * 30.0  # confident, one image per class
    collapsed = torch.zeros(k, k)
    collapsed[:, 0] = 30.0  # confident, every image the same class
    uniform = torch.zeros(k, k)

    def im(logits: torch.Tensor) -> float:
        ent, div = information_maximisation(logits)
        return (ent - div).item()

    assert im(diverse) == pytest.approx(-math.log(k), abs=1e-5)
    assert im(collapsed) == pytest.approx(0.0, abs=1e-5)
    assert im(uniform) == pytest.approx(math.log(k) - math.log(k), abs=1e-6)
    assert im(diverse) < im(collapsed)


# --- AFN (Xu et al. 2019) ------------------------------------------------------------------
def test_safn_loss_and_gradient_follow_the_authors_self_driven_norm_loss():
    """mean_i (‖h_i‖ − (‖h_i‖.detach() + Δr))²: its value is Δr², its gradient −2Δr h_i/(n‖h_i‖)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 5, generator=g).abs().requires_grad_(True)
    dr = 0.7
    loss = safn_loss(h, dr)
    loss.backward()
    rows = h.detach().tolist()
    for i, row in enumerate(rows):
        norm = math.sqrt(sum(v * v for v in row))
        for j, v in enumerate(row):
            assert h.grad[i, j].item() == pytest.approx(-2 * dr * v / (norm * len(rows)), rel=1e-5)
    assert loss.item() == pytest.approx(dr * dr, rel=1e-6)


def test_afn_total_is_source_ce_plus_lambda_times_both_domains_norm_terms():
    """total = CE(F(h_s), y_s) + λ (L_s + L_t) with λ = 0.05 and Δr = 1 (the authors' weight_L2norm
    and radius step); without dropout every L is Δr², so total = CE + 2λ."""
    torch.manual_seed(0)
    m = AFN(_lenet(), 10, {"dropout": 0.0})
    _no_dropout(m)
    m.eval()  # BatchNorm's running statistics: the same features in the check below
    batch = _batch()
    loss = m.loss(batch, 0.5)
    with torch.no_grad():
        ce = _ce(m.predict(batch.x_source).tolist(), batch.y_source.tolist())
    assert AFN.defaults["trade_off"] == 0.05 and AFN.defaults["delta_r"] == 1.0
    assert loss.parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert loss.total.item() == pytest.approx(ce + 0.05 * 2.0, rel=1e-5)


# --- BNM (Cui et al. 2020) -----------------------------------------------------------------
@pytest.mark.parametrize("b, c", [(7, 4), (3, 5)])
def test_bnm_is_minus_the_nuclear_norm_over_the_batch_size(b, c):
    """‖A‖_* = Σ √λ_i(AᵀA) (eigenvalues, not the SVD the code uses), divided by B, negated: the
    nuclear norm is maximised. Both B > C and B < C."""
    rng = np.random.default_rng(b)
    logits = rng.normal(size=(b, c)) * 2
    a = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    small = a.T @ a if b >= c else a @ a.T
    nuclear = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum()
    assert bnm_loss(torch.tensor(logits, dtype=torch.float32)).item() == pytest.approx(-nuclear / b, rel=1e-5)


def test_a_bnm_step_raises_the_nuclear_norm_of_the_target_predictions():
    torch.manual_seed(0)
    m = dabench.METHODS.get("bnm")(_lenet(), 10, {"trade_off": 1.0})
    m.train()
    batch = _batch(n=16)

    def nuclear() -> float:
        with torch.no_grad():
            _, lt, _, _ = m.forward_source_target(batch)
            return torch.linalg.matrix_norm(lt.softmax(1), "nuc").item()

    before = nuclear()
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        # the DA term alone, as it enters the total (+ trade_off · bnm_loss)
        _, lt, _, _ = m.forward_source_target(batch)
        (1.0 * bnm_loss(lt)).backward()
        opt.step()
    assert nuclear() > before


# --- MinEnt (Grandvalet & Bengio 2004) -----------------------------------------------------
def test_minent_total_is_source_ce_plus_lambda_times_mean_target_entropy():
    torch.manual_seed(0)
    m = dabench.METHODS.get("minent")(_lenet(), 10)
    m.eval()
    batch = _batch()
    loss = m.loss(batch, 0.5)
    with torch.no_grad():
        _, lt, _, _ = m.forward_source_target(batch)
        ls, _, _, _ = m.forward_source_target(batch)
    p = _softmax_rows(lt.tolist())
    h = sum(-sum(v * math.log(v) for v in row if v > 0) for row in p) / len(p)
    ce = _ce(ls.tolist(), batch.y_source.tolist())
    assert loss.parts["da"].item() == pytest.approx(h, rel=1e-5)
    assert loss.total.item() == pytest.approx(ce + 0.1 * h, rel=1e-5)


# --- source-only, linear probe, fine-tune --------------------------------------------------
def test_source_only_is_plain_cross_entropy_on_the_source():
    torch.manual_seed(0)
    m = dabench.METHODS.get("source-only")(_lenet(), 10)
    m.eval()
    batch = _batch()
    loss = m.loss(batch, 0.5)
    with torch.no_grad():
        ce = _ce(m.predict(batch.x_source).tolist(), batch.y_source.tolist())
    assert set(loss.parts) == {"ce"} and loss.total.item() == pytest.approx(ce, rel=1e-5)


def _tiny(methods: tuple[str, ...], **overrides) -> list:
    return expand(
        Matrix(methods=methods, pairs=("tiny",), seeds=(0,), overrides={**TINY_SCHEDULE, **overrides}, plugins=(TINY,))
    )


@pytest.mark.usefixtures("one_thread")
def test_linear_probe_keeps_the_source_network_and_fits_the_regularised_softmax_head(tmp_path):
    """Backbone, bottleneck and BatchNorm statistics are the source-only checkpoint's, bit for bit;
    the new head is the minimiser of mean CE + wd‖W‖² over the shots' frozen features (its gradient
    vanishes there), fitted on the shots only."""
    so, probe = _tiny(("linear-probe",), target_shots=3)
    pair, data = PAIRS.get("tiny"), load_pair_data("tiny", pathlib.Path("."))
    cpu, store = torch.device("cpu"), RunStore(tmp_path)
    execute(so, pair, data, cpu, store)
    saved = torch.load(store.checkpoint_path(so.run_id), weights_only=True)
    m = prepare_method(probe, pair, cpu, store)
    dev = DeviceData(pair, data, cpu, probe.seed, probe.target_shots, probe.eval_shots)
    m.fit(RunContext(probe, pair, dev, cpu, store))
    now = m.net.state_dict()
    for k, v in saved.items():
        if not k.startswith("head."):
            assert torch.equal(now[k], v), k  # weights and BatchNorm running statistics
    x, y = dev.batch_from(dev.shots, torch.arange(len(dev.shots)), train=False)
    assert len(y) == 3 * pair.num_classes
    with torch.no_grad():
        f = m.net.features(x)
    w = m.net.head.weight.detach().clone().requires_grad_(True)
    b = m.net.head.bias.detach().clone().requires_grad_(True)
    objective = F.cross_entropy(f @ w.T + b, y) + 1e-3 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(objective, (w, b))
    assert gw.abs().max().item() < 1e-3 and gb.abs().max().item() < 1e-3


@pytest.mark.usefixtures("one_thread")
def test_fine_tune_starts_from_source_only_and_trains_on_the_shots_alone(tmp_path):
    so, ft = _tiny(("fine-tune",), target_shots=2)
    assert ft.depends_on == so.run_id and ft.protocol == "few-shot" and so.target_shots == 0
    pair, data = PAIRS.get("tiny"), load_pair_data("tiny", pathlib.Path("."))
    cpu, store = torch.device("cpu"), RunStore(tmp_path)
    execute(so, pair, data, cpu, store)
    m = prepare_method(ft, pair, cpu, store)
    saved = torch.load(store.checkpoint_path(so.run_id), weights_only=True)
    assert all(torch.equal(m.net.state_dict()[k], v) for k, v in saved.items())  # starts from it
    dev = DeviceData(pair, data, cpu, ft.seed, ft.target_shots, ft.eval_shots)
    batches: list[Batch] = []
    step = m.step
    m.step = lambda batch, progress, update: (batches.append(batch), step(batch, progress, update))[1]  # type: ignore[method-assign]
    RunContext(ft, pair, dev, cpu, store).train_steps(m)
    assert len(batches) == round(TINY_SCHEDULE["steps"] * 0.5)  # steps_fraction
    for batch in batches:
        assert batch.x_source is None and batch.y_source is None and batch.x_target is None
        assert batch.x_shots is not None and len(batch.y_shots) <= 2 * pair.num_classes


# --- labels: what each method is handed ----------------------------------------------------
def test_a_batch_has_no_field_for_target_labels():
    names = {f.name for f in dataclasses.fields(Batch)}
    assert names == {"x_source", "y_source", "x_target", "x_shots", "y_shots", "idx_target"}


LANE = ("source-only", "mcd", "shot", "afn", "bnm", "minent", "fine-tune")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", LANE)
def test_each_method_is_handed_only_the_labels_it_declares(method, tmp_path):
    """Source labels only to a method with ``uses.source_labels``; target labels only as shots, only
    in a run with target shots; no source batch at all for SHOT (source-free)."""
    shots = 2 if method == "fine-tune" else 0
    specs = _tiny((method,), target_shots=shots)
    pair, data = PAIRS.get("tiny"), load_pair_data("tiny", pathlib.Path("."))
    cpu, store = torch.device("cpu"), RunStore(tmp_path)
    for spec in specs[:-1]:
        execute(spec, pair, data, cpu, store)
    spec = specs[-1]
    m = prepare_method(spec, pair, cpu, store)
    dev = DeviceData(pair, data, cpu, spec.seed, spec.target_shots, spec.eval_shots)
    batches: list[Batch] = []
    step = m.step
    m.step = lambda batch, progress, update: (batches.append(batch), step(batch, progress, update))[1]  # type: ignore[method-assign]
    RunContext(spec, pair, dev, cpu, store).train_steps(m)
    assert batches
    for batch in batches:
        assert (batch.y_source is not None) is m.uses.source_labels
        assert (batch.x_source is not None) is m.uses.source_labels
        assert (batch.x_target is not None) is m.uses.target_unlabeled
        assert (batch.y_shots is not None) is (spec.target_shots > 0)


def test_the_network_a_dependant_starts_from_never_trained_on_target_labels():
    """``source-only.target_shots`` makes a few-shot source-only row of its own; SHOT (source-free),
    the linear probe and fine-tuning must still start from the source-only run without target
    labels (before: that row's target-trained checkpoint, so a "source-free" run had seen 3
    labelled target images per class)."""
    for method, protocol in (("shot", "source-free"), ("linear-probe", "few-shot"), ("fine-tune", "few-shot")):
        specs = _tiny(("source-only", method), target_shots=2, **{"source-only.target_shots": 3})
        by_id = {s.run_id: s for s in specs}
        (dependant,) = [s for s in specs if s.method == method]
        base = by_id[dependant.depends_on]
        assert dependant.protocol == protocol
        assert base.method == "source-only" and base.target_shots == 0 and base.protocol == "uda"
        # the few-shot source-only row the user asked for is still there, as its own run
        assert any(s.method == "source-only" and s.target_shots == 3 for s in specs)
