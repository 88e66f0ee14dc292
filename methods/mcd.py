"""MCD: maximum classifier discrepancy, trained in three phases per step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dabench import Batch, Loss, Method, Update, Uses, register_method


def classifier_discrepancy(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """d(p1, p2) = (1/K) Σ_k |p1_k − p2_k|, averaged over the batch (Saito et al. 2018, eq. 1).

    p1, p2 the softmax outputs of the two classifiers, K the number of classes: the mean absolute
    difference of their probabilities. Float32 (probabilities near 0 and 1 lose their difference
    at bf16's 8-bit mantissa).
    """
    return (F.softmax(logits_1.float(), dim=1) - F.softmax(logits_2.float(), dim=1)).abs().mean()


@register_method("mcd")
class MCD(Method):
    """MCD (Saito, Watanabe, Ushiku, Harada 2018, CVPR): two classifiers maximise their discrepancy on the target, the generator minimises it.

    Generator G = backbone + bottleneck; classifiers F1 (``net.head``) and F2 (``head2``), two
    linear heads on G's features. Each step takes, on one source and one target batch,
    (A) ``update(("generator", "classifiers"), CE(F1(G(x_s))) + CE(F2(G(x_s))))``;
    (B) ``update("classifiers", CE_s − trade_off · d(F1(G(x_t)), F2(G(x_t))))`` with G fixed;
    (C) ``num_k`` times ``update("generator", trade_off · d(F1(G(x_t)), F2(G(x_t))))`` with F fixed,
    d the mean absolute difference of the two softmax outputs (:func:`classifier_discrepancy`, eq. 1).
    num_k = 4 is the paper's value for digits. The engine's SGD and learning-rate annealing apply
    to both optimisers (the paper used Adam on digits). ``predict``: the log of the two heads'
    mean softmax (the ensemble; the authors' test code reports F1, F2 and the argmax of the summed
    logits); ``features``: G's output. Without the authors' entropy term.

    Target shots (``mcd.target_shots``, a few-shot row): the labelled shots join the source labels
    wherever the paper's objective has them, CE(F1(G(x))) + CE(F2(G(x))) over the shots added in
    (A) and (B) (``ce_shots``, ``ce_shots_b``), as :meth:`Method.supervised_loss` adds them for the
    single-loss methods. Before 2026-11-27 MCD's own ``step`` never read them: such a run was tabled
    with k·C target labels it had not trained on.

    BatchNorm: (A) passes the source batch alone and (C) the target batch alone. (B) passes source
    and target separately by default (``forward="separate"``, as the authors' code), so the target
    features the classifiers pull apart in (B) are normalised with the target batch's statistics,
    exactly as those G pulls together in (C). ``forward="concat"`` (one joint pass in (B), this
    method's behaviour before 2026-11-26) normalised them with the joint batch's statistics instead:
    the two adversaries then played on differently normalised target features.
    """

    protocol = "uda"
    uses = Uses(source_labels=True, target_unlabeled=True)
    defaults = {"trade_off": 1.0, "num_k": 4, "forward": "separate"}
    citation = (
        "Saito, Watanabe, Ushiku, Harada. Maximum Classifier Discrepancy for Unsupervised Domain Adaptation. CVPR 2018."
    )

    def build(self, backbone, num_classes: int) -> None:
        super().build(backbone, num_classes)
        self.head2 = nn.Linear(int(self.hp["bottleneck_dim"]), num_classes)

    def optimizers(self) -> dict[str, list[dict]]:
        """``generator``: the backbone (lr_mult 0.1 when pretrained) and bottleneck; ``classifiers``: both heads."""
        heads = {id(p) for p in (*self.net.head.parameters(), *self.head2.parameters())}
        generator = list(self.param_groups())
        for g in generator:
            g["params"] = [p for p in g["params"] if id(p) not in heads]
        classifiers = [{"params": [*self.net.head.parameters(), *self.head2.parameters()], "lr_mult": 1.0}]
        return {"generator": [g for g in generator if g["params"]], "classifiers": classifiers}

    def _logits(self, x: torch.Tensor, detach_features: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.net.features(x)
        if detach_features:  # phase B: G is fixed, no need to backpropagate into it
            f = f.detach()
        return self.net.head(f), self.head2(f)

    def _both_ce(self, x: torch.Tensor, y: torch.Tensor, detach_features: bool = False) -> torch.Tensor:
        """CE(F1(G(x)), y) + CE(F2(G(x)), y): the supervised term of (A) and (B) on one labelled batch."""
        l1, l2 = self._logits(x, detach_features)
        return F.cross_entropy(l1, y) + F.cross_entropy(l2, y)

    def step(self, batch: Batch, progress: float, update: Update) -> None:
        assert batch.x_source is not None and batch.y_source is not None and batch.x_target is not None
        trade_off, y = float(self.hp["trade_off"]), batch.y_source
        # (A) G, F1, F2 on the labelled source
        s1, s2 = self._logits(batch.x_source)
        ce = F.cross_entropy(s1, y) + F.cross_entropy(s2, y)
        parts_a, total_a = {"ce": ce}, ce
        if batch.x_shots is not None and batch.y_shots is not None:  # a few-shot run: the shots are labels too
            parts_a["ce_shots"] = self._both_ce(batch.x_shots, batch.y_shots)
            total_a = ce + parts_a["ce_shots"]
        update(("generator", "classifiers"), Loss(total=total_a, parts=parts_a))
        # (B) F1, F2 keep the source right and disagree on the target; G fixed
        mode = self.hp["forward"]
        if mode == "separate":  # the target batch alone through BatchNorm, as (C) passes it
            s1, s2 = self._logits(batch.x_source, detach_features=True)
            t1, t2 = self._logits(batch.x_target, detach_features=True)
        elif mode == "concat":
            n = len(batch.x_source)
            l1, l2 = self._logits(torch.cat([batch.x_source, batch.x_target]), detach_features=True)
            s1, s2, t1, t2 = l1[:n], l2[:n], l1[n:], l2[n:]
        else:
            raise ValueError(f"mcd.forward must be 'separate' or 'concat', got {mode!r}")
        ce_b = F.cross_entropy(s1, y) + F.cross_entropy(s2, y)
        disc_b = classifier_discrepancy(t1, t2)
        parts_b = {"ce_b": ce_b, "discrepancy_b": disc_b}
        total_b = ce_b - trade_off * disc_b
        if batch.x_shots is not None and batch.y_shots is not None:
            parts_b["ce_shots_b"] = self._both_ce(batch.x_shots, batch.y_shots, detach_features=True)
            total_b = total_b + parts_b["ce_shots_b"]
        update("classifiers", Loss(total=total_b, parts=parts_b))
        # (C) G makes them agree on the target, num_k times; F fixed (only G's optimiser steps)
        for _ in range(int(self.hp["num_k"])):
            t1, t2 = self._logits(batch.x_target)
            disc = classifier_discrepancy(t1, t2)
            update("generator", Loss(total=trade_off * disc, parts={"da": disc}))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        l1, l2 = self._logits(x)
        # log((p1 + p2) / 2) through logsumexp: finite where a probability underflows to 0
        both = torch.stack([F.log_softmax(l1.float(), dim=1), F.log_softmax(l2.float(), dim=1)])
        return torch.logsumexp(both, dim=0) - math.log(2.0)
