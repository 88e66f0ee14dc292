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
* ``snd``        – max soft neighbourhood density (Saito et al. 2021, ICCV):
  (1/N) Σ_i H(softmax_{j≠i}(⟨z_i, z_j⟩ / 0.05)) with z_i = p_i / ||p_i|| the L2-normalised
  prediction (engine/evaluate.py). It rewards dense neighbourhoods, so it also rewards predictions
  that collapse towards one shared vector: on digits-offline its ρ with target accuracy can be
  negative (the validator-correlation table shows it).
* ``dev``        – min Deep Embedded Validation risk (You et al. 2019): source-validation losses
  importance-weighted by a domain classifier's density ratio on the run's saved features, with
  a control variate (analysis/dev.py). Features are saved for the final model only, so ``dev``
  scores each run's last evaluation: it chooses among configurations, not checkpoints.
* ``oracle``     – max target test accuracy: uses target test labels, an **upper bound**
  that many published tables report; always labelled as such.

Ties pick the *latest* evaluation (later checkpoints are the more trained ones). All scores are
computed without target labels on a fixed sample of the unlabelled target *adaptation* split
(``engine/data.validator_sample``), except ``source-val`` (labelled source validation slice),
``dev`` (source validation labels and unlabelled features) and the oracle.

What a rule reads (:attr:`Rule.reads`) decides where it may be applied. A protocol forbids some
data at adaptation time (:data:`PROTOCOL_FORBIDS`): ``source-free`` runs (SHOT) adapt without any
source data, so a rule that reads **source labels** (``source-val``; ``dev``, which weights
source-validation losses) cannot select their checkpoints or configurations. Such a run is not
selected by that rule: :func:`select` leaves its accuracy NaN with the reason in
``not_applicable``, the tables show "n/a" with a note (:func:`protocol_notes`), and no other rule's
pick stands in for it. The engine may still log ``source_val_acc`` on a source-free curve for
diagnostics; it is never selected with. The oracle reads target test labels, which no protocol
allows: it stays applicable everywhere as the labelled upper bound it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeGuard

import numpy as np
import pandas as pd

from .dev import DEV_FIELD, has_dev, with_dev_scores
from .results import entry_names, label_budget

ORACLE_LABEL = "oracle (selects on target test labels — upper bound)"

#: what a rule reads to pick (:attr:`Rule.reads`): no labels at all (the step, or unlabelled target
#: predictions), the labelled source validation slice, or the target test labels (the oracle)
NO_LABELS = "no labels"
SOURCE_LABELS = "source labels"
TARGET_LABELS = "target test labels"
READS = (NO_LABELS, SOURCE_LABELS, TARGET_LABELS)

#: protocol → the labelled data its runs may not read once adaptation starts: a source-free run
#: has no source data then (it starts from the source-only checkpoint; methods/shot.py)
PROTOCOL_FORBIDS: dict[str, frozenset[str]] = {"source-free": frozenset({SOURCE_LABELS})}

#: what the tables show in a cell whose runs the rule may not select
NOT_APPLICABLE = "n/a"


class Rule(NamedTuple):
    """A selection rule: what it does, where it comes from, how it picks and what it reads."""

    description: str
    citation: str
    #: curve (list of evaluation dicts) → index of the selected evaluation, or None.
    pick: Callable[[list[dict[str, Any]]], int | None]
    #: the labelled data the rule reads (one of :data:`READS`); a run whose protocol forbids it
    #: (:data:`PROTOCOL_FORBIDS`) is not selected by the rule
    reads: str = NO_LABELS


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
        SOURCE_LABELS,
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
        SOURCE_LABELS,  # source-validation losses, importance-weighted
    ),
    "oracle": Rule(
        ORACLE_LABEL, "best-epoch-on-test, as in many published tables", _arg_best(*SCORES["oracle"]), TARGET_LABELS
    ),
}


def not_applicable(rule: str, protocol: Any) -> str | None:
    """Why ``rule`` may not select a run recorded under ``protocol``, or None when it may.

    E.g. ``"source-val reads source labels; source-free runs cannot use it"``.
    """
    reads = check_rule(rule).reads
    if isinstance(protocol, str) and reads in PROTOCOL_FORBIDS.get(protocol, frozenset()):
        return f"{rule} reads {reads}; {protocol} runs cannot use it"
    return None


def protocol_notes(df: pd.DataFrame, rules: list[str] | tuple[str, ...], effect: str) -> list[str]:
    """One note per (rule, protocol) of ``df``'s runs that the rule may not select: the reason and
    ``effect`` (what the table does about it), e.g. "source-val reads source labels; source-free
    runs cannot use it: …". Empty when every rule applies to every run."""
    if df.empty or "protocol" not in df:
        return []
    protocols = sorted({str(p) for p in df["protocol"] if isinstance(p, str)})
    out = []
    for rule in rules:
        for p in protocols:
            why = not_applicable(rule, p)
            if why:
                n = int((df["protocol"] == p).sum())
                out.append(f"{why} ({n} run(s)): {effect}")
    return out


def mark_not_applicable(table: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """A display copy of a rules table (index with a ``labels`` level, one column per rule) whose
    cells a rule may not fill, because the budget's protocol forbids what it reads, say "n/a".

    ``df`` holds the runs (``protocol``, ``target_shots``) the table was built from; it maps each
    label budget to its protocols. Numbers elsewhere are left as they are (NaN still shows "–").
    """
    if table.empty or df.empty or "labels" not in (table.index.names or []):
        return table
    protocols: dict[str, set[str]] = {}
    for p, k in zip(df["protocol"], df["target_shots"]):
        protocols.setdefault(label_budget(p, k), set()).add(str(p))
    out = table.astype(object)
    labels = table.index.get_level_values("labels")
    for col in table.columns:
        if col not in RULES:
            continue
        for i, lab in enumerate(labels):
            if any(not_applicable(str(col), p) for p in protocols.get(str(lab), ())):
                out.iat[i, out.columns.get_loc(col)] = NOT_APPLICABLE
    return out


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
    ``selected_step``, ``labels`` (the label budget, e.g. ``"0"`` or ``"5/class"``) and
    ``not_applicable`` ("", or why the rule may not select the run: its protocol forbids what
    the rule reads, see :func:`not_applicable`). Runs that are not complete, whose protocol
    forbids the rule, or whose curve lacks the rule's score get NaN (the last a warning naming
    the runs); a forbidden run is never given another rule's pick.
    """
    r = check_rule(rule)
    out = (with_dev_scores(df, strict=True) if rule == "dev" else df).copy()
    acc = np.full(len(out), np.nan)
    step = np.full(len(out), np.nan)
    missing: list[str] = []
    barred = [not_applicable(rule, p) or "" for p in out["protocol"]]  # "" not None: pandas would make it NaN
    for i, (status, curve, rid) in enumerate(zip(out["status"], out["curve"], out["run_id"])):
        if status != "complete" or barred[i]:
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
    out["not_applicable"] = barred
    return out


def rule_regret(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (and label budget): (oracle accuracy − rule accuracy), averaged over the
    seeds of each pair, then over pairs (every pair counts once whatever its number of seeds, as
    the leaderboard's ``avg``).

    Regret is in accuracy points; 0 means the rule found the best evaluation every time.
    Rows are ``method`` × ``labels``, where ``method`` is the configuration's row name as the
    leaderboard prints it (:func:`~dabench.analysis.results.entry_names`, e.g.
    ``dann (trade_off=0.3)``): two configurations of a method are two rows, never one pool (a
    rule that picks well for one and badly for the other would read as middling for both).
    One column per rule (``oracle`` is 0 by definition). A rule
    whose reads the budget's protocol forbids has NaN there (:func:`mark_not_applicable` shows it
    as "n/a"; :func:`protocol_notes` says why).
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
    reg["method"] = entry_names(oracle)
    reg["labels"] = oracle["labels"].to_numpy()
    reg["pair"] = oracle["pair"].to_numpy()
    reg = reg[oracle["status"].to_numpy() == "complete"]
    if reg.empty:
        return pd.DataFrame(columns=["method", "labels", *rules]).set_index(["method", "labels"])
    return pair_mean(reg.set_index(["method", "labels", "pair"])[rules])


def pair_mean(cells: pd.DataFrame) -> pd.DataFrame:
    """Per ``method`` × ``labels``: the mean over pairs of each pair's mean over seeds.

    ``cells`` is indexed by method, labels, pair (and seed): one row per cell. A flat mean
    over the rows would weigh a pair by its number of seeds (a pair run with 6 seeds would count
    twice as much as one run with 3); the leaderboard's ``avg`` is a mean of per-pair means, and
    the rules table says the same thing about the same runs. NaN cells (a rule with no pick
    there) are skipped in each mean."""
    per_pair = cells.groupby(level=["method", "labels", "pair"], sort=True).mean()
    return per_pair.groupby(level=["method", "labels"], sort=True).mean()


def available_rules(df: pd.DataFrame) -> list[str]:
    """The rules of :data:`RULES` that ``df`` can be judged by: ``dev`` only when some run has its
    score (after :func:`~dabench.analysis.dev.with_dev_scores`); the others always."""
    return [n for n in RULES if n != "dev" or has_dev(df)]
