"""Target shots given to a UDA method (``<method>.target_shots``) are trained on, or refused.

Such a run is recorded under the few-shot protocol with k·C target labels. A method whose own
``step`` never reads ``Batch.x_shots`` (MCD, ADDA before this fix) was tabled in that label budget
having trained on none of them; MCD now adds the shots' cross-entropy to the two phases that read
labels, ADDA (whose stage 2 reads no label) refuses the key.
"""

from __future__ import annotations

import math

import pytest
import torch

import dabench
from dabench import Batch
from dabench.methods import BUILTIN_METHODS
from dabench.methods.mcd import MCD
from dabench.running.matrix import Matrix, MatrixError, expand
from dabench.testing import check_shot_labels_trained
from method_steps import random_batch


def _lenet():
    return dabench.BACKBONES.get("lenet")(in_channels=1, image_size=28)


def _with_shots(seed: int = 0, labels: torch.Tensor | None = None) -> Batch:
    batch = random_batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    batch.idx_target = torch.arange(len(batch.x_target))
    batch.x_shots = torch.randn(10, 1, 28, 28, generator=g) + 1.0
    batch.y_shots = torch.arange(10) if labels is None else labels
    return batch


def _softmax_ce(logits: list[list[float]], y: list[int]) -> float:
    total = 0.0
    for row, k in zip(logits, y):
        m = max(row)
        total += -(row[k] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(y)


def _no_dropout(m: torch.nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            mod.p = 0.0


def test_mcd_adds_both_heads_shot_cross_entropy_to_the_phases_that_read_labels():
    """(A) CE₁ + CE₂ on source plus CE₁ + CE₂ on the shots; (B) the same minus d; (C) d alone."""
    torch.manual_seed(0)
    m = MCD(_lenet(), 10, {"num_k": 2})
    _no_dropout(m)
    m.train()
    batch = _with_shots()
    seen: list[tuple[float, set[str]]] = []
    m.step(batch, 0.5, lambda names, loss: seen.append((loss.total.item(), set(loss.parts))))
    with torch.no_grad():
        fs, ft, fk = (m.net.features(x) for x in (batch.x_source, batch.x_target, batch.x_shots))
        s1, s2, t1, t2, k1, k2 = (h(f) for f in (fs, ft, fk) for h in (m.net.head, m.head2))
    ys, yk = batch.y_source.tolist(), batch.y_shots.tolist()
    ce_s = _softmax_ce(s1.tolist(), ys) + _softmax_ce(s2.tolist(), ys)
    ce_k = _softmax_ce(k1.tolist(), yk) + _softmax_ce(k2.tolist(), yk)
    d = (t1.softmax(1) - t2.softmax(1)).abs().mean().item()
    assert seen[0][0] == pytest.approx(ce_s + ce_k, rel=1e-5) and "ce_shots" in seen[0][1]
    assert seen[1][0] == pytest.approx(ce_s + ce_k - d, rel=1e-5) and "ce_shots_b" in seen[1][1]
    assert [v for v, _ in seen[2:]] == pytest.approx([d, d], rel=1e-5)


@pytest.mark.parametrize("name", [n for n in BUILTIN_METHODS if dabench.METHODS.get(n).protocol == "uda"])
def test_a_uda_method_that_accepts_shots_trains_on_their_labels(name):
    """The shots' labels change what the step optimises, for every UDA method the matrix lets take
    ``<method>.target_shots``; a method that would ignore them must declare accepts_target_shots
    False (and is then refused, below)."""
    cls = dabench.METHODS.get(name)
    if not getattr(cls, "accepts_target_shots", True):
        pytest.skip(f"{name} refuses target shots")

    # the very check dabench.testing.check_method runs on a plugin that accepts shots
    check_shot_labels_trained(lambda: cls(_lenet(), 10), _with_shots())


def test_the_matrix_refuses_shots_for_a_method_that_never_reads_them():
    assert not getattr(dabench.METHODS.get("adda"), "accepts_target_shots", True)
    with pytest.raises(MatrixError, match=r"adda\.target_shots=3.*never trains on target shots"):
        expand(Matrix(methods=("adda",), seeds=(0,), overrides={"adda.target_shots": 3}))
    # 0 is no shots: still a UDA row
    specs = expand(Matrix(methods=("adda",), seeds=(0,), overrides={"adda.target_shots": 0}))
    assert specs[-1].method == "adda" and specs[-1].target_shots == 0 and specs[-1].protocol == "uda"
