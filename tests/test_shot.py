"""SHOT and the source-free protocol: the losses against hand computations, the clustering on
features with known clusters, the engine's refresh hook (whole target split, no source batch,
frozen head), resume equality with pseudo-labels in the checkpoint, and the protocol's matrix,
validation and table label."""

from __future__ import annotations

import math
import pathlib
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import dabench
from dabench import Batch, Method, Uses
from dabench.core.method import validate_method_class
from dabench.core.registry import PAIRS
from dabench.core.store import RunStore
from dabench.engine.data import DeviceData
from dabench.engine.options import EngineOptions
from dabench.engine.train import RunContext, build_method, execute
from dabench.methods.shot import SHOT, cluster_pseudo_labels, information_maximisation
from dabench.running.matrix import Matrix, MatrixError, expand
from dabench.running.unit import load_pair_data

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))


def _tiny_specs(**overrides):
    """[source-only, shot] on the tiny pair (80 adaptation images: batch 16 refreshes every 5 steps)."""
    over = {"steps": 12, "eval_every": 6, "log_every": 2, "batch_size": 16, **overrides}
    return expand(Matrix(methods=("shot",), pairs=("tiny",), seeds=(0,), overrides=over, plugins=(TINY,)))


# --- losses ----------------------------------------------------------------------------------
def test_information_maximisation_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    rows = [[math.exp(v) for v in r] for r in logits.tolist()]
    probs = [[e / sum(r) for e in r] for r in rows]
    ent = sum(-sum(p * math.log(p) for p in r) for r in probs) / len(probs)
    mean_p = [sum(r[k] for r in probs) / len(probs) for k in range(3)]
    div = -sum(p * math.log(p) for p in mean_p)
    got_ent, got_div = information_maximisation(logits)
    assert float(got_ent) == pytest.approx(ent, rel=1e-6) and float(got_div) == pytest.approx(div, rel=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_shot_loss_is_im_plus_beta_times_ce_to_the_stored_pseudo_labels():
    torch.manual_seed(0)
    pair = PAIRS.get("digits-offline")
    m = SHOT(dabench.BACKBONES.get("lenet")(in_channels=1, image_size=28), 10, {"beta": 0.7})
    m.pseudo_labels = torch.arange(20) % 10  # as a refresh over a 20-image split would leave them
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([3, 7, 11, 19, 0, 5])
    batch = Batch(x_target=torch.randn(6, pair.channels, 28, 28, generator=g), idx_target=idx)
    m.eval()  # fixed BatchNorm statistics: two forward passes give the same logits
    with torch.no_grad():
        out = m.loss(batch, 0.5)
    logits = m.predict(batch.x_target).double()
    p = logits.softmax(1)
    ent = -(p * p.log()).sum(1).mean()
    mean_p = p.mean(0)
    div = -(mean_p * mean_p.log()).sum()
    ce = -p.log()[torch.arange(6), (idx % 10)].mean()
    assert float(out.total) == pytest.approx(float(ent - div + 0.7 * ce), rel=1e-5)
    assert float(out.parts["pseudo_ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out.parts["da"]) == pytest.approx(float(ent - div), rel=1e-5, abs=1e-6)


# --- clustering ------------------------------------------------------------------------------
def test_pseudo_labels_come_from_the_clustering_not_the_predictions():
    """Three tight clusters along orthogonal directions; the classifier mislabels a third of each
    cluster (confidently). The softmax-weighted centroids still sit in the right cluster, so the
    cosine nearest-centroid labels (and the refinement) recover every cluster; class 3, which no
    image is predicted as, gets no image."""
    g = torch.Generator().manual_seed(0)
    n, k = 30, 4
    true = torch.arange(3 * n) // n
    feats = F.one_hot(true, 6).float() * 5 + 0.3 * torch.randn(3 * n, 6, generator=g)
    wrong = (torch.arange(3 * n) % 3) == 0  # every third image confidently predicted as the next class
    pred = torch.where(wrong, (true + 1) % 3, true)
    probs = F.one_hot(pred, k).float() * 0.9 + 0.1 / k
    probs[:, 3] = 0.0
    probs = probs / probs.sum(1, keepdim=True)
    assert (probs.argmax(1) == true).float().mean() < 0.7
    labels, centroids = cluster_pseudo_labels(feats, probs, rounds=1)
    assert torch.equal(labels, true)
    assert centroids.shape == (k, 7) and torch.isfinite(centroids).all() and 3 not in labels.tolist()
    # without refinement: the nearest softmax-weighted centroid, computed by hand
    f = F.normalize(torch.cat([feats, torch.ones(3 * n, 1)], 1), dim=1)
    c = (probs.T @ f) / probs.sum(0)[:, None].clamp_min(1e-8)
    sim = f @ F.normalize(c, dim=1).T
    sim[:, 3] = -math.inf
    assert torch.equal(cluster_pseudo_labels(feats, probs, rounds=0)[0], sim.argmax(1))


# --- the engine: refresh hook, no source data, frozen head -----------------------------------
@pytest.mark.usefixtures("one_thread")
def test_engine_refreshes_on_the_whole_target_split_never_draws_source_and_keeps_the_head():
    _, spec = _tiny_specs()
    pair = PAIRS.get("tiny")
    data = DeviceData(pair, load_pair_data("tiny", pathlib.Path(".")), torch.device("cpu"), 0, 0, 5)
    torch.manual_seed(0)
    m = build_method(spec, pair)
    assert spec.protocol == "source-free" and spec.target_shots == 0 and spec.depends_on
    head = {k: v.clone() for k, v in m.net.head.state_dict().items()}
    backbone = {k: v.clone() for k, v in m.net.backbone.state_dict().items()}
    refreshed, expected, batches, drawn = [], [], [], []
    orig_refresh, orig_loss, orig_batch_from = m.refresh, m.loss, data.batch_from

    def refresh(view, step):
        assert view.size == len(data.target) == 80 and not torch.is_grad_enabled()
        feats = view.predict("features")
        assert feats.shape == (80, 256)
        expected.append(cluster_pseudo_labels(feats, m.net.head(feats).softmax(1))[0])
        refreshed.append(step)
        orig_refresh(view, step)
        assert m.training  # the view restored train mode after predicting in eval mode

    def loss(batch, progress):
        batches.append(batch)
        return orig_loss(batch, progress)

    def batch_from(split, idx, train=True):
        if train:
            drawn.append(split)
        return orig_batch_from(split, idx, train)

    m.refresh, m.loss, data.batch_from = refresh, loss, batch_from  # type: ignore[method-assign]
    RunContext(spec, pair, data, torch.device("cpu")).train_steps(m)

    assert refreshed == [0, 5, 10]  # one pass over 80 images at batch 16 = 5 steps
    assert torch.equal(m.pseudo_labels, expected[-1])  # the last refresh's clustering, in the buffer
    assert len(batches) == 12 and all(b.x_source is None and b.y_source is None for b in batches)
    assert all(b.idx_target is not None and b.x_target is not None for b in batches)
    assert drawn and all(s is data.target for s in drawn)  # training never touched a source split
    assert all(torch.equal(v, m.net.head.state_dict()[k]) for k, v in head.items())  # frozen hypothesis
    assert any(not torch.equal(v, m.net.backbone.state_dict()[k]) for k, v in backbone.items())
    assert all(id(p) not in {id(q) for g in m.param_groups() for q in g["params"]} for p in m.net.head.parameters())


def test_check_method_passes_for_shot():
    torch.set_num_threads(1)
    from dabench.testing import check_method

    report = check_method("shot")
    assert set(report.frozen) == {"net.head.weight", "net.head.bias"}
    assert "beta" in report.hparams_used and {"ent", "div", "pseudo_ce"} <= set(report.loss_parts)


# --- resume ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_resumed_shot_run_equals_the_uninterrupted_run(tmp_path):
    """Interrupted after the step-8 checkpoint (pseudo-labels from the step-5 refresh, which the
    resumed steps 8-9 train on), the resumed run records what the uninterrupted one does, bit for bit."""
    so, shot = _tiny_specs(steps=20, eval_every=10)
    pair, data = PAIRS.get("tiny"), load_pair_data("tiny", pathlib.Path("."))
    cpu = torch.device("cpu")
    straight, killed = RunStore(tmp_path / "straight"), RunStore(tmp_path / "killed")
    execute(so, pair, data, cpu, straight)
    killed.checkpoint_path(so.run_id).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(straight.checkpoint_path(so.run_id), killed.checkpoint_path(so.run_id))
    partial = killed.checkpoint_path(shot.run_id, partial=True)

    class Killed(Exception):
        pass

    def kill_after_checkpoint(step, total):
        if partial.exists() and step >= 10:
            raise Killed

    a = execute(shot, pair, data, cpu, straight, engine=EngineOptions(checkpoint_every=4))
    with pytest.raises(Killed):
        execute(shot, pair, data, cpu, killed, on_step=kill_after_checkpoint, engine=EngineOptions(checkpoint_every=4))
    saved = torch.load(partial, weights_only=True)
    assert saved["step"] == 8 and saved["method"]["pseudo_labels"].shape == (80,)
    b = execute(shot, pair, data, cpu, killed, engine=EngineOptions(checkpoint_every=4))
    assert b.resumed_from_step == 8 and a.resumed_from_step is None
    assert a.curve == b.curve and a.final == b.final


# --- the protocol -----------------------------------------------------------------------------
def test_source_free_matrix_groups_and_shots():
    so, shot = _tiny_specs()
    assert so.method == "source-only" and shot.depends_on == so.run_id and shot.protocol == "source-free"
    assert "shot" in dabench.METHODS.expand("source-free") and "shot" in dabench.METHODS.expand("zoo")
    assert "shot" not in dabench.Matrix().methods
    with pytest.raises(MatrixError, match=r"shot.target_shots=2.*source-free"):
        _tiny_specs(**{"shot.target_shots": 2})


def test_a_source_free_method_must_declare_target_data_only_from_source_only():
    class Leaky(Method):
        """Claims source-free but draws labelled source batches."""

        protocol = "source-free"
        uses = Uses(source_labels=True, target_unlabeled=True, init="source-only")

        def loss(self, batch, progress):  # pragma: no cover - never built
            raise NotImplementedError

    with pytest.raises(TypeError, match="source-free method must declare uses = Uses"):
        validate_method_class(Leaky)


def test_leaderboard_labels_source_free_rows_as_their_own_budget(tmp_path):
    from dabench.analysis.report import report_text
    from dabench.analysis.results import label_budget, load_results
    from dabench.analysis.tables import leaderboard
    from fake_runs import write_matrix

    assert label_budget("source-free", 0) == "0 (source-free)" and label_budget("uda", 0) == "0"
    write_matrix(tmp_path, {("source-only", "a"): [60.0, 61.0], ("dann", "a"): [70.0, 71.0]})
    write_matrix(tmp_path, {("shot", "a"): [65.0, 66.0]}, protocol="source-free")
    lb = leaderboard(load_results(tmp_path))
    t = lb.table
    assert t.loc["shot", "labels"] == "0 (source-free)" and t.loc["dann", "labels"] == "0"
    assert list(t.index) == ["source-only", "dann", "shot"]  # the source-free budget after UDA's
    assert lb.best.loc["shot", "a"] and lb.best.loc["dann", "a"]  # best within its own budget
    assert lb.summary.loc["shot", "gain"] == pytest.approx(65.5 - 60.5)
    assert re.search(r"\| shot +\| 0 \(source-free\) +\|", report_text(tmp_path))
