"""Configuration selection over a sweep: each rule picks one configuration *and* one checkpoint.

A sweep (running/sweep.py) leaves several configurations of a method per pair and seed. Reporting
the best of them by target accuracy is the oracle; an honest protocol lets each selection rule of
:data:`~dabench.analysis.selection.RULES` choose using only what the rule may see (Musgrave et
al. 2022, "Benchmarking validation methods for unsupervised domain adaptation"):

    (c*, t*) = argmax_{c ∈ trials, t ∈ evaluations of c}  s_rule(c, t)

where ``s_rule`` is the rule's score (source validation accuracy, −entropy, IM, SND, or target
accuracy for the oracle) and the reported accuracy is the target accuracy of (c*, t*). Ties go to
the later evaluation, then to the smaller run id (deterministic). ``last`` has no score and
cannot choose a configuration.

Candidates: the complete runs of one **method × label budget × pair × seed of one results folder**
that are trials of a sweep (restrict with ``--where``). A run the folder's ``matrix.json`` names as
no sweep trial (a plain run added to the folder later) and a run of another, merged folder were
never among the sweep's trials (:func:`has_sweeps`): they are no candidates, keep their own rows
(``trials`` 1) in :func:`select_config` and are left out of :func:`rule_table`. A run both folders hold (one
run id) is both: a candidate of the sweep's folder and a seed of the other's plain row
(:func:`per_folder`). :func:`select_config` collapses them into
one row per method (the chosen run, its settings minus the swept keys, so the leaderboard shows
one row per method) and the leaderboard, statistics and figures then work on it unchanged.

A complete trial none of whose evaluations has the rule's score (``dev`` on a run that saved no
features, a score the engine did not log) cannot be ranked by the rule: it is no candidate either,
named in ``left_out`` ("… has no dev_risk score") and in a warning, and ``trials`` counts only the
candidates. (When no trial of the seed has a score, there is no pick: :func:`select` leaves the
accuracy NaN with its own warning.)

Trials that did not complete. A **diverged** trial is no candidate: a rule sees the divergence
without any label, as a practitioner would, so the pick is over the other trials, and the
leaderboard's notes name it (``left_out``). A trial that **failed**, was skipped, is running or
has not run means the seed's sweep is not over: a pick among the trials that happen to be done
would change as the rest finish, so the seed is *missing* (the leaderboard shows ``(k/n)``, and
lists the seed with the trial and its status/error), exactly as an unfinished seed of a plain run.

A rule that reads data the candidates' protocol forbids (``source-val`` and ``dev`` read source
labels; ``source-free`` runs have none) chooses nothing for them: the group keeps one row that
the leaderboard shows as "n/a", its accuracy, regret and Kendall tau cells are NaN (the report
prints "n/a" and a note), and no other rule's choice stands in.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pandas as pd
from scipy.stats import kendalltau

from .dev import with_dev_scores
from .results import Among, label_budget
from .selection import SCORES, available_rules, check_rule, not_applicable, pair_mean, select

GROUP = ["method", "labels", "pair", "seed"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _score(rule: str) -> tuple[str, bool]:
    """The curve field ``rule`` optimises and whether it maximises it; ValueError for ``last``."""
    check_rule(rule)
    if rule not in SCORES:
        raise ValueError(
            f"rule {rule!r} has no score, so it cannot choose among the configurations of a sweep; "
            f"use one of: {', '.join(SCORES)}"
        )
    return SCORES[rule]


def _with_labels(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["labels"] = [label_budget(p, k) for p, k in zip(out["protocol"], out["target_shots"])]
    return out


def has_sweeps(df: pd.DataFrame) -> bool:
    """Whether some method × label budget × pair × seed has more than one configuration **from one
    sweep**: trials of a ``--sweep``/``[sweep]`` matrix run into one results folder.

    Configurations from merged folders (folder A run with ``--set lr=0.01``, folder B with
    ``lr=0.03``) are no sweep: they are rows of their own, named by what differs, and no rule chose
    among them, so the configuration-selection tables would describe a choice nobody made. A
    folder's ``matrix.json`` lists its sweeps' runs (``swept_runs``; the row's ``sweep_trial``);
    a folder that does not say (no matrix file, or an older dabench's) counts its own
    configurations, as before, but never pools them with another folder's.
    """
    if df.empty:
        return False
    d = _with_labels(per_folder(df[df["seed"].notna()]))
    if "sweep_trial" in d:
        d = d[
            d["sweep_trial"].map(lambda x: x is None or pd.isna(x) or bool(x))
        ]  # True, or None: the folder does not say
    by = GROUP + (["source_dir"] if "source_dir" in d else [])
    return bool((d.groupby(by, sort=False, dropna=False)["config"].nunique() > 1).any())


def swept_keys(df: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """Per (method, labels): the settings whose values differ among the configurations of one pair."""
    d = _with_labels(df)
    out: dict[tuple[str, str], set[str]] = {}
    for (m, lab, _), g in d.groupby(["method", "labels", "pair"], sort=False):
        sts = list(g["settings"])
        keys = set().union(*sts)
        out.setdefault((m, lab), set()).update(
            k for k in keys if len({json.dumps(st.get(k), sort_keys=True, default=str) for st in sts}) > 1
        )
    return {k: sorted(v) for k, v in out.items()}


def select_config(df: pd.DataFrame, rule: str) -> pd.DataFrame:
    """One row per method × label budget × pair × seed: the run ``rule`` picks over trials × evaluations.

    Returns rows of ``df`` (the chosen runs) with ``settings``/``config`` reduced to what the
    candidates share (so the leaderboard names the row by its method), plus ``trials`` (the
    candidates), ``chosen`` (the swept settings of the pick), ``selected_step`` and ``labels``.
    Applying ``rule`` to the chosen run's curve gives the chosen evaluation again (the global
    argmax lies in it and ties break the same way). A group without a complete run keeps one
    row, so the leaderboard lists it as missing; a group whose protocol forbids what ``rule``
    reads is not scored (``chosen`` empty) and keeps one row that :func:`select` marks
    ``not_applicable``.
    """
    field, maximise = _score(rule)
    if rule == "dev":
        df = with_dev_scores(df, strict=True)
    d = _with_labels(per_folder(df[df["seed"].notna()]) if len(df) else df)
    if d.empty:
        return d.assign(trials=pd.Series(dtype=int), chosen=pd.Series(dtype=object))
    # a plain run (its folder's matrix.json says it is no sweep trial) or a run of another folder
    # was never among the sweep's trials (has_sweeps): it is no candidate, and keeps its own row
    d, plain = _trials_and_plain(d)
    sign = 1.0 if maximise else -1.0
    swept = swept_keys(d)
    grids = _grids(d, swept)
    rows = []
    missing_score: list[str] = []
    for key, g in d.groupby(_by(d), sort=False):
        best = None  # (score, step, -rank of run id) and the row index
        complete = g[g["status"] == "complete"]
        keys = swept.get((key[0], key[1]), [])
        barred = not_applicable(rule, g["protocol"].iloc[0])  # one budget, hence one protocol
        unfinished = g[~g["status"].isin(["complete", DIVERGED])]
        if len(unfinished) and len(complete) and not barred:
            # the sweep of this seed is not over: a pick among the trials that happen to be done would
            # change as the others finish, so the seed is missing (with the trial and its status),
            # exactly as an unfinished seed of a plain run
            rows.append(_unfinished_row(d, unfinished, keys, int(complete["config"].nunique()), grids[_grid_key(g)]))
            continue
        order = [] if barred else sorted(complete.index, key=lambda i: str(complete.at[i, "run_id"]))
        unscored = []  # complete trials with no evaluation the rule can score (e.g. dev without features)
        for rank, i in enumerate(order):
            scored = False
            for e in complete.at[i, "curve"] or []:
                v, acc = e.get(field), e.get("target_acc")
                if not (_finite(v) and _finite(acc)):
                    continue
                scored = True
                step = e.get("step") if _finite(e.get("step")) else -1
                k = (sign * float(v), float(step), -rank)
                if best is None or k > best[0]:
                    best = (k, i)
            if not scored:
                unscored.append(i)
        if best is not None and unscored:
            # the rule cannot rank a trial it has no score for: the pick is over the others, named
            # (as a diverged trial) so the leaderboard never reads as a choice over every trial
            missing_score.extend(
                f"{key[0]} on {key[2]} seed {int(key[3])}: {_trial_name(d.loc[i], keys)}" for i in unscored
            )
        # no scored trial: a complete one stands for the seed (select() then names it as having no
        # score), never a diverged one that would show the seed as diverged
        idx = best[1] if best is not None else (order[0] if order else g.index[0])
        row = _reduced(d.loc[idx], keys, grids[_grid_key(g)])
        if barred:
            row["chosen"] = {}
        candidates = complete.drop(index=unscored) if best is not None else complete
        row["trials"] = int(candidates["config"].nunique()) if len(complete) else int(g["config"].nunique())
        # diverged trials are no candidates (a rule sees the divergence without any label), nor are
        # trials without the rule's score; both are named: the leaderboard notes them (tables.prepare
        # reads ``left_out``)
        row["left_out"] = (
            [f"{_trial_name(r, keys)} diverged" + _at(r) for _, r in g[g["status"] == DIVERGED].iterrows()]
            + ([f"{_trial_name(d.loc[i], keys)} has no {field} score" for i in unscored] if best is not None else [])
            if len(complete) and not barred
            else []
        )
        rows.append(row)
    if missing_score:
        warnings.warn(
            f"rule {rule!r}: {len(missing_score)} complete sweep trial(s) have no {field} score and were no "
            f"candidates of the configuration choice: {'; '.join(missing_score[:5])}"
            f"{' …' if len(missing_score) > 5 else ''}",
            stacklevel=2,
        )
    out = pd.DataFrame(rows)
    if len(plain):
        out = pd.concat([out, plain.assign(trials=1, chosen=[{}] * len(plain), left_out=[[]] * len(plain))])
    if len(out) and "folders" in d:
        # a run two folders hold in the same role (plain in both, or the same pick of equal grids) is one
        # row of one configuration: counted once; in two roles (a sweep's pick, another folder's plain
        # run) it is in two configurations' rows, never twice in one
        out = out[~out.duplicated(["run_id", "config"], keep="first")]
    return out.reset_index(drop=True)


DIVERGED = "diverged"


def _by(d: pd.DataFrame) -> list[str]:
    """The candidates of one choice: one method x budget x pair x seed **of one folder** (merged
    folders' configurations are no sweep: :func:`has_sweeps`)."""
    return GROUP + (["source_dir"] if "source_dir" in d else [])


def per_folder(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a run that several merged folders hold (``folders``, one run id: one computation,
    one row in :func:`~dabench.analysis.results.load_results`) repeated once per folder, each copy
    with that folder's ``source_dir`` and ``sweep_trial``.

    A run of folder A's sweep that folder B ran as a plain run (the same spec) is then both a
    candidate of A's choice and a seed of B's plain row: reading it in one role only left B's row a
    seed short, with no mark. Only configuration selection reads folders; the plain leaderboard
    keeps one row per run, so nothing is pooled twice. A row without ``folders`` (or with one) is
    unchanged; the copies get a fresh index.
    """
    if "folders" not in df or not len(df):
        return df
    many = df["folders"].map(lambda f: isinstance(f, list) and len(f) > 1)
    if not many.any():
        return df
    copies = []
    for i, row in df.iterrows():
        roles = row["folders"] if many.at[i] else [None]
        for role in roles:
            r = row.copy()
            if role is not None:
                r["source_dir"], r["sweep_trial"], r["folders"] = role[0], role[1], [role]
            copies.append(r)
    return pd.DataFrame(copies).reset_index(drop=True)


def _trials_and_plain(d: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``d``'s rows split into sweep trials (``sweep_trial`` True, or None where the folder does not
    say) and plain runs (``sweep_trial`` False: run into the folder without a sweep)."""
    if "sweep_trial" not in d:
        return d, d.iloc[:0]
    plain = d["sweep_trial"].map(lambda x: x is not None and not pd.isna(x) and not bool(x)).astype(bool)
    return d[~plain], d[plain]


def _trial_name(row: pd.Series, keys: list[str]) -> str:
    """A trial by its swept settings, e.g. ``dann.trade_off=1.0``."""
    st = row["settings"]
    return ", ".join(f"{k}={st.get(k)}" for k in keys) or str(row["run_id"])


def _at(row: pd.Series) -> str:
    step = row.get("diverged_at_step")
    return f" at step {int(step)}" if _finite(step) else ""


def _grid_key(g: pd.DataFrame) -> tuple[str, str, str]:
    """The sweep a group of candidates belongs to: its method, label budget and folder."""
    return str(g["method"].iloc[0]), str(g["labels"].iloc[0]), str(g["source_dir"].iloc[0]) if "source_dir" in g else ""


def _grids(d: pd.DataFrame, swept: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str, str], dict[str, Among]]:
    """Per method x budget x folder: each swept key's values over its sweep trials (whatever their
    status: the grid the rule chose from), as the :class:`~dabench.analysis.results.Among` that
    stands for the key in the chosen rows' settings."""

    def order(v: Any) -> tuple[int, float, str]:
        return (0, float(v), "") if _finite(v) else (1, 0.0, json.dumps(v, sort_keys=True, default=str))

    out: dict[tuple[str, str, str], dict[str, Among]] = {}
    for (m, lab), g in d.groupby(["method", "labels"], sort=False, dropna=False):
        for _, f in g.groupby("source_dir", sort=False, dropna=False) if "source_dir" in g else [(None, g)]:
            vals: dict[str, Among] = {}
            for k in swept.get((str(m), str(lab)), []):
                seen = {json.dumps(st.get(k), sort_keys=True, default=str): st.get(k) for st in f["settings"]}
                shown = [
                    v if isinstance(v, str) else json.dumps(v, default=str) for v in sorted(seen.values(), key=order)
                ]
                vals[k] = Among(tuple(shown))
            out[_grid_key(f)] = vals
    return out


def _reduced(row: pd.Series, keys: list[str], grid: dict[str, Among]) -> pd.Series:
    """A copy of ``row`` with ``chosen`` (its swept settings) and, in ``settings``/``config``, each
    swept key replaced by the values the rule chose among (``grid``): the leaderboard then names the
    row by its method alone, or, beside a plain run of the method or another folder's choice over
    other values, as ``dann (trade_off∈{0.1, 1.0})`` (never by one trial's value, never ``=None``)."""
    row = row.copy()
    st = dict(row["settings"])
    row["chosen"] = {k: st.get(k) for k in keys}
    row["settings"] = {**{k: v for k, v in st.items() if k not in keys}, **{k: grid[k] for k in keys}}
    row["config"] = json.dumps(row["settings"], sort_keys=True, default=str, separators=(",", ":"))
    return row


#: which unfinished trial explains a missing seed best: an error before a run still to come
_EXPLAINS = {"failed": 0, "skipped": 1, "running": 2, "pending": 3}


def _unfinished_row(
    d: pd.DataFrame, unfinished: pd.DataFrame, keys: list[str], done: int, grid: dict[str, Among]
) -> pd.Series:
    """The row standing for a seed whose sweep has trials not finished (failed, skipped, running,
    pending): that trial's own status and error, prefixed with which trial it is, so the
    leaderboard counts the seed as missing and says why."""
    i = min(
        unfinished.index,
        key=lambda j: (_EXPLAINS.get(str(unfinished.at[j, "status"]), 9), str(unfinished.at[j, "run_id"])),
    )
    row = _reduced(d.loc[i], keys, grid)
    n = len(unfinished)
    err = row["error"] if isinstance(row["error"], str) and row["error"] else str(row["status"])
    row["error"] = (
        f"sweep trial {_trial_name(d.loc[i], keys)} {row['status']} ({n} of {n + done} trials unfinished): {err}"
    )
    row["chosen"] = {}
    row["trials"] = done
    row["left_out"] = []
    return row


def _accuracy(df: pd.DataFrame, rule: str) -> pd.DataFrame:
    """``select_config`` then the target accuracy at the chosen evaluation (complete picks only)."""
    sel = select(select_config(df, rule), rule)
    return sel[(sel["status"] == "complete") & sel["accuracy"].notna()]


def rule_table(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Methods × rules under configuration selection: mean accuracy and regret against the oracle.

    ``accuracy``: rows ``method`` × ``labels``, one column per scored rule, the target accuracy of
    each rule's pick averaged first over the seeds of a pair, then over pairs, so every pair counts
    once whatever its number of seeds (as the leaderboard's ``avg``: :func:`~dabench.analysis.selection.pair_mean`).
    ``regret``: (oracle's accuracy − the rule's) on the same method, pair and seed — ≥ 0, since the
    oracle maximises target accuracy over the same candidates — averaged the same way, plus
    ``trials`` (the most configurations a pair and seed of the row offered: the budget each rule
    chose from). A rule whose reads the row's protocol forbids has NaN there
    (:func:`~dabench.analysis.selection.mark_not_applicable`).
    """
    df = with_dev_scores(df)  # once, not per rule; dev's column only when some run saved features
    if len(df):
        df = _trials_and_plain(per_folder(df))[0]  # plain runs were no candidates of any choice
    rules = [n for n in available_rules(df) if n in SCORES]
    picks = {n: _accuracy(df, n).set_index(_by(df))["accuracy"] for n in rules}
    acc = pd.DataFrame(picks)
    if acc.empty:
        empty = pd.DataFrame(columns=["method", "labels", *rules]).set_index(["method", "labels"])
        return empty, empty
    by = ["method", "labels"]
    regret = pair_mean(acc.rsub(acc["oracle"], axis=0))
    # the most configurations any pair and seed of the row offered (a failed trial lowers one cell's)
    trials = select_config(df, "oracle").groupby(by, sort=True)["trials"].max()
    regret["trials"] = trials.reindex(regret.index).astype("Int64")
    return pair_mean(acc), regret


def ranking_change(acc: pd.DataFrame, regret: pd.DataFrame | None = None) -> pd.DataFrame:
    """Kendall's τ between the ranking of methods under ``oracle`` and under each honest rule.

    ``acc`` and ``regret`` are :func:`rule_table`'s tables (rows ``method`` × ``labels``). Per label
    budget, τ_b (Kendall 1945; ties counted as in :func:`scipy.stats.kendalltau`) between the
    methods' mean accuracies under the oracle and under the rule:

        τ_b = (P − Q) / sqrt((P + Q + T_x)(P + Q + T_y))

    with P / Q the concordant / discordant pairs of methods and T_x, T_y the pairs tied only in
    one ranking. 1: the rule ranks the methods as the oracle does; −1: in reverse.

    The two rankings must rest on the same runs. A rule may have no pick for some seeds (no trial
    has its score: ``dev`` where no run saved features), so its column of ``acc`` averages fewer
    seeds than the oracle's, and ranking those two means compares different runs. With ``regret``
    the oracle's mean for rule r is taken on r's cells only: ``acc[r] + regret[r]`` (regret is the
    pair-then-seed mean of oracle − rule over the cells where r picked, and that mean is linear).
    Without it, ``acc["oracle"]`` is used, which is the same whenever every rule picked everywhere.

    Rows: ``labels``; columns: one per honest rule (NaN where fewer than two methods have both
    accuracies, or one ranking is constant), plus ``methods`` (how many were ranked by the oracle).
    """
    honest = [c for c in acc.columns if c != "oracle"]
    rows = {}
    for lab, g in acc.groupby(level="labels", sort=True):
        row: dict[str, float | int] = {}
        for rule in honest:
            if regret is not None and rule in regret.columns:
                same = (g[rule] + regret[rule].reindex(g.index)).rename("oracle")
            else:
                same = g["oracle"]
            both = pd.concat([same, g[rule]], axis=1).dropna()
            tau = float("nan")
            if len(both) >= 2 and both["oracle"].nunique() > 1 and both[rule].nunique() > 1:
                tau = float(kendalltau(both["oracle"], both[rule]).statistic)
            row[rule] = tau
        row["methods"] = int(g["oracle"].notna().sum())
        rows[lab] = row
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[*honest, "methods"])
    out.index.name = "labels"
    return out


def chosen_table(chosen: pd.DataFrame, rule: str) -> pd.DataFrame:
    """What each choice of :func:`select_config` picked: one row per method × label budget × pair ×
    seed whose method had a sweep, with the swept settings of the pick (``chosen``), the evaluation
    step it picked (``step``; ``dev`` scores the final model only), ``trials`` (the configurations
    the rule chose from for that seed: a diverged trial or one without the rule's score is no
    candidate, so it may be fewer than the grid) and the target accuracy at the pick.

    ``chosen`` is :func:`select_config`'s output for ``rule``. Without this table the leaderboard
    says a configuration was chosen but not which, nor over how many trials: a pick among 2
    survivors of a 4-trial grid would read as a choice over all 4. Rows whose choice was not made
    (a seed whose sweep is unfinished, a protocol the rule may not read) have an empty ``chosen``
    and are left out here; the leaderboard lists them as missing or ``n/a``.
    """
    cols = ["method", "labels", "pair", "seed", "chosen", "step", "trials", "accuracy", "run_id"]
    if chosen.empty or "chosen" not in chosen:
        return pd.DataFrame(columns=cols)
    picked = chosen[chosen["chosen"].map(lambda c: isinstance(c, dict) and bool(c))]
    if picked.empty:
        return pd.DataFrame(columns=cols)
    # the rule's evaluation inside the chosen run: the global argmax over trials x evaluations lies
    # in it and ties break the same way (select_config), so select() finds the same step again
    sel = select(picked, rule)
    out = pd.DataFrame(
        {
            "method": sel["method"].astype(str),
            "labels": sel["labels"].astype(str),
            "pair": sel["pair"].astype(str),
            "seed": sel["seed"].astype(int),
            "chosen": [", ".join(f"{k}={v}" for k, v in c.items()) for c in sel["chosen"]],
            "step": sel["selected_step"],
            "trials": sel["trials"].astype(int),
            "accuracy": sel["accuracy"],
            "run_id": sel["run_id"].astype(str),
        }
    )
    return out.sort_values(["method", "labels", "pair", "seed"], kind="stable").reset_index(drop=True)
