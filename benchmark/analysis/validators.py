"""Which validator to trust: rank correlation of each label-free score with target accuracy.

Musgrave, Belongie & Lim (2022), "Benchmarking Validation Methods for Unsupervised Domain
Adaptation" (and "Three New Validators and a Large-Scale Benchmark Ranking for Unsupervised
Domain Adaptation"), judge a validator by how well its score orders checkpoints by target
accuracy. Here every evaluation of every complete run of a results folder (all methods,
configurations, seeds and checkpoints) is one point (score, target accuracy), and

    ρ = Spearman(sign · score, target_acc)

per pair and pooled over all pairs, where ``sign`` is +1 for a score a rule maximises and −1
for one it minimises (:data:`~dabench.analysis.selection.SCORES`; e.g. entropy), so ρ > 0 always
means "higher by the rule's own ordering goes with higher accuracy". The oracle (target accuracy
itself) is left out. DEV scores only the final evaluation of runs that saved features
(:mod:`dabench.analysis.dev`), so its ρ rests on fewer points (the ``points`` column).
Pooling mixes pairs of different difficulty: a validator whose scale differs per pair can
correlate well within every pair and less when pooled. A run whose protocol forbids what a
validator reads (source labels for ``source-val`` and ``dev``; ``source-free`` runs) adds no
point to that validator: such a run could never select with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .dev import with_dev_scores
from .selection import SCORES, available_rules, not_applicable

POOLED = "pooled"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validator_points(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of (pair, validator, score, target_acc): one row per evaluation with both finite.

    ``score`` is already signed (higher = better by the rule's own ordering). A validator whose
    reads the run's protocol forbids (:func:`~dabench.analysis.selection.not_applicable`) gets no
    point from that run."""
    d = with_dev_scores(df)
    names = [n for n in available_rules(d) if n in SCORES and n != "oracle"]
    rows = []
    for status, pair, curve, protocol in zip(d["status"], d["pair"], d["curve"], d["protocol"]):
        if status != "complete":
            continue
        usable = [n for n in names if not not_applicable(n, protocol)]
        for e in curve or []:
            acc = e.get("target_acc")
            if not _finite(acc):
                continue
            for n in usable:
                field, maximise = SCORES[n]
                v = e.get(field)
                if _finite(v):
                    rows.append((str(pair), n, float(v) if maximise else -float(v), float(acc)))
    return pd.DataFrame(rows, columns=["pair", "validator", "score", "target_acc"])


def _rho(g: pd.DataFrame) -> float:
    if len(g) < 3 or g["score"].nunique() < 2 or g["target_acc"].nunique() < 2:
        return float("nan")
    return float(spearmanr(g["score"], g["target_acc"]).statistic)


def validator_correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Validators × (pairs…, ``pooled``, ``points``): Spearman ρ of the signed score with target accuracy.

    Rows in the order of :data:`~dabench.analysis.selection.SCORES`; NaN where a pair has fewer than
    three points or a constant score or accuracy; ``points`` is the pooled number of evaluations.
    """
    pts = validator_points(df)
    if pts.empty:
        return pd.DataFrame(columns=[POOLED, "points"])
    pairs = sorted(pts["pair"].unique())
    order = [n for n in SCORES if n in set(pts["validator"])]
    table = pd.DataFrame(index=pd.Index(order, name="validator"), columns=[*pairs, POOLED, "points"], dtype=float)
    for n, g in pts.groupby("validator", sort=False):
        for p, gp in g.groupby("pair", sort=False):
            table.at[n, p] = _rho(gp)
        table.at[n, POOLED] = _rho(g)
        table.at[n, "points"] = len(g)
    table["points"] = table["points"].astype(np.int64)
    return table
