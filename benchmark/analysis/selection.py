"""Model-selection rules, applied after the fact to each run's logged evaluation curve.

Every run logs, per evaluation, the target accuracy together with scores that do not need
target labels. A *rule* picks one evaluation of the curve; the reported accuracy is the
target accuracy at that evaluation. Changing the rule never needs a rerun (docs/architecture.md,
"Evaluation and model selection").

Rules (score per evaluation → argmax/argmin over the curve):

* ``last``       – the final evaluation; honest and the default.
* ``source-val`` – max source validation accuracy (a held-out slice of source train).
* ``entropy``    – min mean prediction entropy  (1/N) Σ_i H(p_i)  on target (Grandvalet &
  Bengio 2005 as a criterion; a validator in Musgrave et al. 2022).
* ``im``         – max information maximisation  H(mean_i p_i) − (1/N) Σ_i H(p_i)
  (Shi & Sha 2012; validator in Musgrave et al. 2022).
* ``snd``        – max soft neighbourhood density (Saito et al. 2021).
* ``dev``        – min Deep Embedded Validation risk (You et al. 2019): source-validation losses
  importance-weighted by a domain classifier's density ratio on the run's saved features, with
  a control variate (analysis/dev.py). Features are saved for the final model only, so ``dev``
  scores each run's last evaluation: it chooses among configurations, not checkpoints.
* ``oracle``     – max target test accuracy: uses target test labels, an **upper bound**
  that many published tables report; always labelled as such.

Ties pick the *latest* evaluation (later checkpoints are the more trained ones).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard

import numpy as np
import pandas as pd

from .dev import DEV_FIELD, has_dev, with_dev_scores
from .results import label_budget

ORACLE_LABEL = "oracle (selects on target test labels — upper bound)"


class Rule(NamedTuple):
    """A selection rule: what it does, where it comes from, and how it picks."""

    description: str
    citation: str
    #: curve (list of evaluation dicts) → index of the selected evaluation, or None.
    pick: Callable[[list[dict[str, Any]]], int | None]


def _finite(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _arg_best(key: str, maximise: bool) -> Callable[[list[dict[str, Any]]], int | None]:
    """Index of the best finite ``entry[key]``; ties → latest; None when no entry has it."""

    def pick(curve: list[dict[str, Any]]) -> int | None:
        best_i, best_v = None, None
        for i, entry in enumerate(curve):
            v = entry.get(key)
            if not _finite(v):
                continue
            v = float(v) if maximise else -float(v)
            if best_v is None or v >= best_v:  # >= : ties go to the later evaluation
                best_i, best_v = i, v
        return best_i

    pick.__name__ = f"{'max' if maximise else 'min'}_{key}"
    return pick


def _last(curve: list[dict[str, Any]]) -> int | None:
    for i in range(len(curve) - 1, -1, -1):
        if _finite(curve[i].get("target_acc")):
            return i
    return None


#: the curve field each scored rule maximises (True) or minimises (False); ``last`` has no score, so
#: it cannot choose among the configurations of a sweep (analysis/sweeps.py)
SCORES: dict[str, tuple[str, bool]] = {
    "source-val": ("source_val_acc", True),
    "entropy": ("entropy", False),
    "im": ("im", True),
    "snd": ("snd", True),
    "dev": (DEV_FIELD, False),
    "oracle": ("target_acc", True),
}

RULES: dict[str, Rule] = {
    "last": Rule("last evaluation (honest default)", "—", _last),
    "source-val": Rule(
        "max source validation accuracy",
        "source accuracy validator in Musgrave et al. 2022",
        _arg_best(*SCORES["source-val"]),
    ),
    "entropy": Rule(
        "min mean target prediction entropy",
        "Grandvalet & Bengio 2005; Musgrave et al. 2022",
        _arg_best(*SCORES["entropy"]),
    ),
    "im": Rule(
        "max information maximisation H(mean p) − mean H(p)",
        "Shi & Sha 2012; Musgrave et al. 2022",
        _arg_best(*SCORES["im"]),
    ),
    "snd": Rule("max soft neighbourhood density", "Saito et al. 2021 (ICCV)", _arg_best(*SCORES["snd"])),
    "dev": Rule(
        "min deep embedded validation risk (final checkpoint; needs saved features)",
        "You et al. 2019 (ICML), DEV",
        _arg_best(*SCORES["dev"]),
    ),
    "oracle": Rule(ORACLE_LABEL, "best-epoch-on-test, as in many published tables", _arg_best(*SCORES["oracle"])),
}


def rule_title(rule: str) -> str:
    """One line naming the rule; the oracle is called out loudly."""
    check_rule(rule)
    if rule == "oracle":
        return "ORACLE — " + ORACLE_LABEL + "; NOT a fair comparison"
    return f"{rule} — {RULES[rule].description}"


def check_rule(rule: str) -> Rule:
    """The :class:`Rule` named ``rule``; ValueError listing the valid rules otherwise."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid rules: {', '.join(RULES)}")
    return RULES[rule]


def select(df: pd.DataFrame, rule: str = "last") -> pd.DataFrame:
    """Apply ``rule`` to every complete run of ``df`` (from :func:`~dabench.analysis.results.load_results`).

    Returns a copy with ``accuracy`` (target accuracy %, at the selected evaluation),
    ``selected_step`` and ``labels`` (the label budget, e.g. ``"0"`` or ``"5/class"``).
    Runs that are not complete, or whose curve lacks the rule's score, get NaN (and the
    latter a warning naming the runs).
    """
    r = check_rule(rule)
    out = (with_dev_scores(df, strict=True) if rule == "dev" else df).copy()
    acc = np.full(len(out), np.nan)
    step = np.full(len(out), np.nan)
    missing: list[str] = []
    for i, (status, curve, rid) in enumerate(zip(out["status"], out["curve"], out["run_id"])):
        if status != "complete":
            continue
        curve = list(curve or [])
        j = r.pick(curve) if curve else None
        if j is None or not _finite(curve[j].get("target_acc")):
            missing.append(str(rid))
            continue
        acc[i] = float(curve[j]["target_acc"])
        s = curve[j].get("step")
        step[i] = float(s) if _finite(s) else np.nan
    if missing:
        warnings.warn(
            f"rule {rule!r}: {len(missing)} complete run(s) have no usable score in their "
            f"curve and are left out: {', '.join(missing[:5])}"
            f"{' …' if len(missing) > 5 else ''}",
            stacklevel=2,
        )
    out["accuracy"] = acc
    out["selected_step"] = pd.array([None if math.isnan(s) else int(s) for s in step], dtype="Int64")
    out["labels"] = [label_budget(p, k) for p, k in zip(out["protocol"], out["target_shots"])]
    return out


def rule_regret(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (and label budget): mean over runs of (oracle accuracy − rule accuracy).

    Regret is in accuracy points; 0 means the rule found the best evaluation every time.
    Rows are ``method`` × ``labels``; one column per rule (``oracle`` is 0 by definition).
    """
    df = with_dev_scores(df)
    rules = available_rules(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing scores are shown as NaN in the table
        oracle = select(df, "oracle")
        frames = {}
        for name in rules:
            sel = oracle if name == "oracle" else select(df, name)
            frames[name] = oracle["accuracy"] - sel["accuracy"]
    reg = pd.DataFrame(frames)
    reg["method"] = oracle["method"].to_numpy()
    reg["labels"] = oracle["labels"].to_numpy()
    reg = reg[oracle["status"].to_numpy() == "complete"]
    if reg.empty:
        return pd.DataFrame(columns=["method", "labels", *rules]).set_index(["method", "labels"])
    return reg.groupby(["method", "labels"], sort=True)[rules].mean()


def available_rules(df: pd.DataFrame) -> list[str]:
    """The rules of :data:`RULES` that ``df`` can be judged by: ``dev`` only when some run has its
    score (after :func:`~dabench.analysis.dev.with_dev_scores`); the others always."""
    return [n for n in RULES if n != "dev" or has_dev(df)]
