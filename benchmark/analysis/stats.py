"""Statistical comparison of methods across tasks.

Blocks ("tasks"). A comparison across tasks needs one score per method and task. By
default a task is a **pair**, scored by the mean over seeds of the selected accuracy: seeds
of one pair share data and are not independent tasks, so counting them as blocks would
overstate N (Demšar 2006, §3: blocks are data sets). ``blocks="pair-seed"`` uses every
(pair, seed) as a block instead, for users who accept that: the seeds every method ran on the
pair (a seed means the same split and initialisation for every method; the notes name the
seeds left out).

Tests (all two-sided, level ``alpha``):

* **Friedman** (Demšar 2006, eq. in §3.2.2). Ranks r_ij within each block (1 = best,
  ties share the mean rank), average ranks R_j = (1/N) Σ_i r_ij, and
  χ²_F = 12N / (k(k+1)) · [Σ_j R_j² − k(k+1)²/4]   (χ² with k−1 d.o.f.),
  F_F = (N−1) χ²_F / (N(k−1) − χ²_F)               (F with k−1, (k−1)(N−1) d.o.f.).
  ``tie_correction=True`` divides χ²_F by 1 − Σ(t³−t)/(N k (k²−1)) as scipy does.
  With few blocks both approximations are anti-conservative (N = 3, k = 4: outcomes whose
  exact p is 0.075 get F-p < 0.05), so significance is decided on the **exact** p-value
  whenever it is computable: under H0 every block's ranking is equally likely to be any
  permutation of its ranks, and the distribution of the rank-sum vector is the N-fold
  convolution of the per-block permutation distributions (the (k!)^N outcomes, enumerated
  by dynamic programming over rank sums); p = P(Σ_j R_j² ≥ observed). When that is too large
  and N < 10, a Monte-Carlo permutation p-value (within-block shuffles, (1 + #≥)/(1 + B))
  is used; else the Iman–Davenport F. ``FriedmanResult.test`` names the one used.
* **Nemenyi** critical difference CD = q_α √(k(k+1)/(6N)), with q_α the studentized range
  quantile for k groups and infinite d.o.f. divided by √2. A post-hoc test, read only when
  Friedman rejects (Demšar 2006, §3.2.2): then two methods differ when their average ranks
  differ by at least CD, and a CD diagram joins by a bar the *cliques* of methods whose ranks
  are all within CD; when Friedman does not reject, no pair differs and one bar joins all.
* **Wilcoxon signed-rank** per pair of methods over the blocks, exact (the conditional sign-flip
  distribution, ties and zeros included: :func:`wilcoxon_signed_rank`), with **Holm**'s step-down
  correction (Holm 1979) over the m = k(k−1)/2 comparisons of one label budget: sort the m
  p-values p_(1) ≤ … ≤ p_(m), adjusted p̃_(i) = max_{j≤i} min(1, (m−j+1) p_(j)). The smallest
  p with n non-zero differences is 2/2ⁿ, so nothing can be significant below
  :func:`wilcoxon_min_blocks` blocks (6 for one comparison, 7 for three); the notes say so.
* **Mean over pairs with a 95% t-interval** (:func:`dabench.analysis.tables.mean_interval`: Welch–
  Satterthwaite degrees of freedom over the pairs' seed variances, exact Student t with one
  pair). The report no longer uses the stratified percentile bootstrap (Agarwal et al. 2021)
  for it: at 1 pair × 3 seeds its "95%" interval covers about 76% of the time (the resampled
  spread of 3 values underestimates the spread of the mean); the t-interval covers 95% at
  3 and at 10 seeds (tests/test_stats.py). :func:`stratified_bootstrap_ci` stays available.
  The **interquartile mean** (IQM, mean of the middle 50% of the runs of each pair, averaged
  over pairs: :func:`pair_iqm`; never runs pooled across pairs of different difficulty) is
  shown only where it trims something (≥ 4 runs on every pair; with 3 runs it *is* the mean),
  as a point estimate without interval.
* **Probability of improvement** P(X > Y) = (1/M) Σ_m (1/(N K)) Σ_i Σ_j S(x_mi, y_mj), with
  S = 1 if x > y, ½ if equal, 0 otherwise (Agarwal et al. 2021); the report shows the point
  estimate only (a percentile bootstrap of it from a few seeds is not a 95% interval).
* **Per pair, over seeds** (only with ≥ 5 seeds per method): :func:`~dabench.analysis.tables.seed_test`,
  the test behind the leaderboard's † too (one function, so the two never disagree on the same
  cells): a paired t-test by seed on the seeds both methods have, when ≥ 2 (a seed fixes the
  split, the few-shot draw and the initialisation, so runs pair up; never by position; seed_test
  cites why paired, not Welch), else Welch's t-test; Holm-corrected within the pair. A t-test
  rather than Wilcoxon: with 5 seeds the smallest two-sided Wilcoxon p is 2/2⁵ = 0.0625 > 0.05.
  The Holm families differ: the † compares each cell with its column's best (k − 1 tests), the
  per-pair table every pair of methods (k(k − 1)/2), so the raw p of a cell against the best is
  the same in both, its adjusted p may not be.

Comparisons are made within one label budget at a time; every table has a ``labels`` column.
A budget whose protocol forbids what the rule reads (``source-val``/``dev`` on ``0 (source-free)``:
:func:`dabench.analysis.selection.not_applicable`) has no selected run and is not compared; the
notes say so, and its runs are never counted as missing seeds.
The tests are a table, :data:`STAT_TESTS` (name → :class:`StatTest`): each is one function
``(Budget, Context) -> StatOutput(table, notes)`` run per budget by :func:`compare`, and
:class:`Comparison` renders one section per test (heading, text, table via
:mod:`dabench.analysis.render`). Adding a test is one function and one entry.
Methods are rows of the leaderboard: configurations, never pools (:func:`dabench.analysis.tables.entry_names`).

Missing seeds. A cell (row × pair) with fewer completed seeds than planned (failed, diverged,
skipped, running or not run) is **excluded**, never averaged over its survivors: such a row
leaves the across-pair tests and the intervals of its budget, and the cell leaves the per-pair
tests; ``notes`` name every excluded cell with its missing seeds and their status. Dropping a
diverged seed and keeping the rest would rank a method that fails on one seed of three above
one that completes all three.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from .render import html_table, md_table  # md_table/html_table: also re-exported for old imports
from .selection import rule_title
from .tables import (  # holm: also stats.holm
    MIN_PAIRED,
    TIE_DECIMALS,
    budget_key,
    holm,
    mean_interval,
    prepare,
    seed_test,
    tie_safe,
)

BLOCKS = ("pair", "pair-seed")
MIN_SEEDS_PER_PAIR = 5


# ---------------------------------------------------------------------------------------
# Building blocks on plain arrays
# ---------------------------------------------------------------------------------------
def rank_matrix(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks within each row (block) of an N×k matrix; 1 = best, ties get the mean rank.

    Scores are compared after :func:`~dabench.analysis.tables.tie_safe` rounding: equal means
    that differ only by floating-point summation noise share their mean rank.
    """
    s = tie_safe(scores)
    return sps.rankdata(-s if higher_is_better else s, axis=1, method="average")


EXACT_MAX_WORK = 4_000_000  # states × k! per convolution step above which the exact test is not tried
PERMUTATION_REPS = 20_000
PERMUTATION_MAX_BLOCKS = 10  # from N = 10 blocks on, the Iman–Davenport F approximation is used


def friedman_exact_p(ranks: np.ndarray, max_work: int = EXACT_MAX_WORK) -> float | None:
    """Exact P(Σ_j R_j² ≥ observed) under H0 for an N×k rank matrix; None when too large.

    Under H0 each block's ranking is a uniformly random permutation of its own rank values
    (midranks included), independently across blocks. The rank-sum vector's distribution
    is the convolution over blocks of the per-block distributions (k! equally likely
    permutations each); states are rank-sum vectors, encoded in one integer (ranks doubled
    so midranks are integers; the last sum is implied by the total). Equivalent to
    enumerating the (k!)^N outcomes, at a cost of (number of states) × k! per block.
    """
    r2 = np.rint(np.asarray(ranks, float) * 2).astype(np.int64)
    n, k = r2.shape
    if k > 8:
        return None
    base = int(r2.sum(axis=1).max()) * n + 1
    if base ** (k - 1) >= 2**62:
        return None
    # states never exceed the k! ** i outcomes nor the rank-sum vectors possible (each sum has
    # 2i(k−1) + 1 doubled values after i blocks): refuse up front what is far over the budget;
    # the loop below stops as soon as one step would exceed it
    if min(math.factorial(k) ** (n - 1), (2 * (n - 1) * (k - 1) + 1) ** (k - 1)) * math.factorial(k) > 20 * max_work:
        return None
    weights_pos = base ** np.arange(k - 1, dtype=np.int64)
    codes = np.zeros(1, dtype=np.int64)
    probs: np.ndarray = np.ones(1)
    for row in r2:
        perms = np.array(list(itertools.permutations(row.tolist())), dtype=np.int64)
        if len(codes) * len(perms) > max_work:
            return None
        pc = perms[:, : k - 1] @ weights_pos
        new = (codes[:, None] + pc[None, :]).ravel()
        w = np.repeat(probs / len(perms), len(perms))
        codes, inv = np.unique(new, return_inverse=True)
        probs = np.bincount(inv.ravel(), weights=w)
    total = int(r2.sum())
    sums = (codes[:, None] // weights_pos[None, :]) % base
    last = total - sums.sum(axis=1)
    stat = (sums.astype(float) ** 2).sum(axis=1) + last.astype(float) ** 2
    obs = float((r2.sum(axis=0).astype(float) ** 2).sum())
    return float(min(1.0, probs[stat >= obs - 1e-9].sum()))


def friedman_permutation_p(ranks: np.ndarray, reps: int = PERMUTATION_REPS, seed: int = 0) -> float:
    """Monte-Carlo permutation p-value of Σ_j R_j²: shuffle each block's ranks, (1 + #≥)/(1 + reps)."""
    r = np.asarray(ranks, float)
    n, k = r.shape
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((reps, n, k)), axis=-1)
    shuffled = np.take_along_axis(np.broadcast_to(r, (reps, n, k)), order, axis=-1)
    stat = (shuffled.sum(axis=1) ** 2).sum(axis=-1)
    obs = float((r.sum(axis=0) ** 2).sum())
    return float((1 + np.sum(stat >= obs - 1e-9)) / (1 + reps))


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test with the Nemenyi critical difference for one set of methods."""

    labels: str
    n_blocks: int
    k: int
    avg_ranks: pd.Series  # method → average rank, ascending (best first)
    chi2: float
    p_chi2: float
    ff: float
    p_ff: float
    alpha: float
    q_alpha: float
    cd: float
    cliques: tuple[tuple[str, ...], ...]
    #: the p-value significance is decided on, and the test that gave it
    p_value: float = math.nan
    test: str = "Iman–Davenport F"

    @property
    def significant(self) -> bool:
        if not math.isnan(self.p_value):
            return bool(self.p_value < self.alpha)
        return bool(self.p_ff < self.alpha) if not math.isnan(self.p_ff) else bool(self.p_chi2 < self.alpha)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """q_α of the Nemenyi test: studentized range quantile (k groups, ∞ d.o.f.) / √2."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Critical difference q_α √(k(k+1)/(6N)) (Demšar 2006, §3.2.2)."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n_blocks))


def cd_cliques(avg_ranks: pd.Series, cd: float) -> tuple[tuple[str, ...], ...]:
    """Maximal groups of methods whose average ranks all lie within less than ``cd``.

    Sorted by rank, each group is a contiguous run [i..j] with r_j − r_i < cd; groups
    contained in another are dropped, as are single methods. Two methods share a group
    exactly when the Nemenyi test does not separate them.
    """
    r = avg_ranks.sort_values()
    names, vals = list(r.index), r.to_numpy(dtype=float)
    spans: list[tuple[int, int]] = []
    for i in range(len(vals)):
        j = i
        while j + 1 < len(vals) and vals[j + 1] - vals[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return tuple(tuple(names[i : j + 1]) for i, j in spans)


def friedman(
    scores: pd.DataFrame | np.ndarray,
    alpha: float = 0.05,
    tie_correction: bool = False,
    labels: str = "",
    higher_is_better: bool = True,
) -> FriedmanResult:
    """Friedman test on an N(blocks)×k(methods) score matrix, with Nemenyi's CD (Demšar 2006).

    ``cliques`` are :func:`cd_cliques` when the test rejects at ``alpha``, else one group of all
    methods: the Nemenyi post-hoc test is read only after the omnibus test rejects."""
    if isinstance(scores, pd.DataFrame):
        names = [str(c) for c in scores.columns]
        x = scores.to_numpy(dtype=float)
    else:
        x = np.asarray(scores, dtype=float)
        names = [f"m{j}" for j in range(x.shape[1])]
    n, k = x.shape
    if n < 2 or k < 2:
        raise ValueError(f"Friedman needs at least 2 blocks and 2 methods, got {n} blocks × {k} methods")
    if np.isnan(x).any():
        raise ValueError("Friedman needs a complete score matrix (no missing method × block)")
    ranks = rank_matrix(x, higher_is_better)
    rbar = ranks.mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(rbar**2) - k * (k + 1) ** 2 / 4)
    if tie_correction:
        ties = 0.0
        for row in ranks:
            _, t = np.unique(row, return_counts=True)
            ties += float(np.sum(t**3 - t))
        c = 1 - ties / (n * k * (k * k - 1))
        chi2 = chi2 / c if c > 0 else math.nan
    chi2 = float(chi2)
    p_chi2 = float(sps.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    ff = float((n - 1) * chi2 / denom) if denom > 0 else math.inf
    if math.isfinite(ff):
        p_ff = float(sps.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    else:
        # every block ranks the methods identically: F_F is infinite and its F-distribution p-value
        # (0) would call two pairs "significant". The exact probability of this most extreme
        # outcome under H0 (all N rankings equal to the first, each of k! orders equally likely) is
        # (1/k!)^(N−1), which is the honest p-value here.
        p_ff = float(math.factorial(k) ** -(n - 1))
    exact = friedman_exact_p(ranks)
    if exact is not None:
        p_value, test = (
            exact,
            (f"exact permutation test (all ({k}!)^{n} = {math.factorial(k) ** n:,} within-block rank orders)"),
        )
    elif n < PERMUTATION_MAX_BLOCKS:
        p_value = friedman_permutation_p(ranks)
        test = f"Monte-Carlo permutation test ({PERMUTATION_REPS:,} within-block shuffles)"
    else:
        p_value, test = p_ff, "Iman–Davenport F approximation"
    q = nemenyi_q(k, alpha)
    cd = q * math.sqrt(k * (k + 1) / (6 * n))
    avg = pd.Series(rbar, index=names).sort_values()
    # Nemenyi is a post-hoc test: only once Friedman rejects (Demšar 2006, §3.2.2). Its CD is
    # asymptotic and can separate two methods where the exact Friedman p is above α; then no
    # pair is called different and one group holds every method.
    rejects = bool(p_value < alpha) if not math.isnan(p_value) else bool(p_ff < alpha)
    cliques = cd_cliques(avg, cd) if rejects else (tuple(avg.index),)
    return FriedmanResult(labels, n, k, avg, chi2, p_chi2, ff, p_ff, alpha, q, cd, cliques, p_value, test)


@dataclass(frozen=True)
class Wilcoxon:
    """A two-sided Wilcoxon signed-rank test: ``statistic`` min(T⁺, T⁻), ``p``, and ``n``, the
    number of non-zero differences it ranks (zero differences are dropped)."""

    statistic: float
    p: float
    n: int


def wilcoxon_signed_rank(x: np.ndarray, y: np.ndarray) -> Wilcoxon:
    """Exact two-sided Wilcoxon signed-rank test of the paired differences d = x − y (Wilcoxon 1945).

    Zero differences are dropped (Wilcoxon's ``zero_method="wilcox"``, scipy's default); the
    n remaining |d_i| are ranked, ties sharing their mean rank r_i, and T⁺ = Σ_{d_i>0} r_i,
    T⁻ = Σ_{d_i<0} r_i. Under H0 each sign is + or − with probability ½ independently given
    the |d_i| (the conditional, permutation distribution; exact with ties too), so the
    distribution of T⁺ is the convolution over i of {0, r_i} with weights ½, computed on the
    doubled ranks (integers) by dynamic programming; p = min(1, 2 P(T⁺ ≤ min(T⁺_obs, T⁻_obs))).

    Exact at every n, with ties and zeros, whatever the scipy version: scipy ≥ 1.13 gives the
    same p for n ≤ 13 (a complete permutation test) but the normal approximation above 13
    with ties, and scipy < 1.13 the normal approximation whenever a difference is zero, which
    at n = 6 can print p < 0.05 where no outcome is that extreme. The smallest attainable p
    is 2/2ⁿ (every sign alike), so two-sided p < 0.05 needs n ≥ 6 non-zero differences.
    Differences are rounded (:func:`~dabench.analysis.tables.tie_safe`) so that a difference
    of floating-point noise is a zero and equal differences tie.
    """
    d = tie_safe(np.asarray(x, float) - np.asarray(y, float))
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return Wilcoxon(0.0, 1.0, 0)
    r2 = np.rint(2 * sps.rankdata(np.abs(d))).astype(np.int64)  # midranks doubled: integers
    total = int(r2.sum())
    dist = np.zeros(total + 1)
    dist[0] = 1.0
    for v in r2:  # add rank v with sign + (shift by v) or − (stay), each with probability ½
        shifted = np.zeros_like(dist)
        shifted[v:] = dist[: total + 1 - v]
        dist = 0.5 * (dist + shifted)
    t_plus = int(r2[d > 0].sum())
    t_min = min(t_plus, total - t_plus)
    p = float(min(1.0, 2 * dist[: t_min + 1].sum()))
    return Wilcoxon(t_min / 2, p, n)


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p) of :func:`wilcoxon_signed_rank`; NaN with fewer than 2 pairs of values."""
    if len(np.asarray(x)) < 2:
        return math.nan, math.nan
    w = wilcoxon_signed_rank(x, y)
    return w.statistic, w.p


def wilcoxon_min_blocks(m: int, alpha: float) -> int:
    """The fewest non-zero differences n with which one of ``m`` Holm-corrected Wilcoxon tests
    can reach p̃ < alpha: the smallest p is 2/2ⁿ, and Holm multiplies the smallest by m, so
    n is the least with m · 2^(1−n) < alpha."""
    n = 1
    while m * 2.0 ** (1 - n) >= alpha:
        n += 1
    return n


def _as_tasks(scores: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Runs per task: a dict task → runs, or a runs×tasks matrix (columns are tasks)."""
    if isinstance(scores, dict):
        return [np.asarray(v, float) for v in scores.values()]
    a = np.asarray(scores, float)
    if a.ndim == 1:
        a = a[:, None]
    return [a[:, j] for j in range(a.shape[1])]


def _resample(tasks: list[np.ndarray], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """For each task, ``reps`` bootstrap resamples of its runs: arrays of shape (reps, n_task)."""
    return [t[rng.integers(0, len(t), size=(reps, len(t)))] for t in tasks]


def aggregate_mean(tasks: list[np.ndarray]) -> np.ndarray | float:
    """Mean over tasks of the per-task mean run score (works on resampled (reps, n) arrays)."""
    return np.mean([t.mean(axis=-1) for t in tasks], axis=0)


def aggregate_iqm(tasks: list[np.ndarray]) -> np.ndarray | float:
    """Interquartile mean of all run scores pooled over tasks (25% trimmed each side)."""
    pooled = np.concatenate(tasks, axis=-1)
    return sps.trim_mean(pooled, 0.25, axis=-1)


def pair_iqm(tasks: list[np.ndarray]) -> float:
    """Mean over tasks (pairs) of each task's interquartile mean of its runs (seeds).

    IQM_p = trim_mean(x_p, 0.25): the mean of x_p without its ⌊n_p/4⌋ lowest and highest runs
    (Agarwal et al. 2021); the result is (1/P) Σ_p IQM_p, weighting every pair alike as the mean
    over pairs does. Agarwal et al. pool the runs of all tasks (:func:`aggregate_iqm`), which
    suits scores normalised across tasks; raw accuracies of pairs at different levels pooled
    would trim whole pairs (the hardest pair's runs as "low outliers") and weight each pair by
    its number of seeds. Here a trimmed run is an outlying seed of its own pair.
    """
    return float(np.mean([sps.trim_mean(np.asarray(t, float), 0.25) for t in tasks]))


def stratified_bootstrap_ci(
    scores: dict[str, np.ndarray] | np.ndarray,
    statistic: Callable[[list[np.ndarray]], np.ndarray | float] = aggregate_mean,
    reps: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """(point estimate, low, high): percentile CI of ``statistic`` under stratified bootstrap.

    Runs are resampled with replacement within each task (the strata), tasks are kept.
    """
    tasks = _as_tasks(scores)
    rng = np.random.default_rng(seed)
    point = float(statistic(tasks))
    boot = np.asarray(statistic(_resample(tasks, reps, rng)), float)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def _poi(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray | float:
    """Probability of improvement averaged over tasks; works on (reps, n) arrays too."""
    per_task = []
    for x, y in zip(xs, ys):
        gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
        eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
        per_task.append(gt + 0.5 * eq)
    return np.mean(per_task, axis=0)


def probability_of_improvement(
    x: dict[str, np.ndarray] | np.ndarray,
    y: dict[str, np.ndarray] | np.ndarray,
    reps: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """(P(X > Y), low, high) with a stratified-bootstrap percentile CI (Agarwal et al. 2021).

    ``x`` and ``y`` hold the run scores of two methods on the same tasks (same order/keys).
    """
    xs, ys = _as_tasks(x), _as_tasks(y)
    if len(xs) != len(ys):
        raise ValueError(f"probability of improvement needs the same tasks: {len(xs)} vs {len(ys)}")
    rng = np.random.default_rng(seed)
    point = float(_poi(xs, ys))
    boot = np.asarray(_poi(_resample(xs, reps, rng), _resample(ys, reps, rng)), float)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


# ---------------------------------------------------------------------------------------
# The comparison of a results table: a table of tests
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Section:
    """One block of the rendered comparison: a heading, a paragraph and an optional table."""

    heading: str
    text: str
    table: pd.DataFrame | None = None


@dataclass(frozen=True)
class Budget:
    """The selected runs of one label budget, as every statistical test receives them.

    ``runs_all`` holds every complete run of the budget; ``runs`` drops the rows (entries) with
    a cell missing planned seeds (those leave the across-pair tests and intervals);
    ``matrix`` is blocks × entries of mean accuracy over the methods that have every block
    (pair × seed blocks: the seeds every such method ran);
    ``ranking`` their average Friedman rank, best first (None when ``matrix`` is smaller than
    2 × 2, i.e. no across-task test applies); ``scores`` entry → pair → run accuracies of
    ``runs``; ``order`` the entries of ``runs`` by ``ranking`` then by name.
    """

    labels: str
    runs_all: pd.DataFrame
    runs: pd.DataFrame
    matrix: pd.DataFrame
    ranking: pd.Series | None
    scores: dict[str, dict[str, np.ndarray]]
    order: tuple[str, ...]


@dataclass(frozen=True)
class Context:
    """What every test of one :func:`compare` call shares: its options and the excluded cells."""

    rule: str
    blocks: str
    alpha: float
    tie_correction: bool
    reps: int
    seed: int
    #: (entry, pair) cells with fewer completed seeds than planned (left out of per-pair tests)
    bad_cells: frozenset[tuple[str, str]]
    #: every label budget compared, in order
    budgets: tuple[str, ...]


@dataclass(frozen=True)
class StatOutput:
    """What one test returns for one budget.

    ``table`` (rows for this budget, with a ``labels`` column; its index is not kept) and
    ``notes``. ``sections`` replaces the test's single default section (heading + text + the
    table of all budgets) where a test renders per budget (Friedman: one rank table and verdict
    per budget); ``details`` carries result objects beyond the table (Friedman: the
    :class:`FriedmanResult`, read by the CD diagram).
    """

    table: pd.DataFrame
    notes: tuple[str, ...] = ()
    sections: tuple[Section, ...] = ()
    details: tuple[object, ...] = ()


#: a statistical test: (selected runs of one budget, context) -> its table and notes
StatFn = Callable[[Budget, Context], StatOutput]


@dataclass(frozen=True)
class StatTest:
    """One entry of :data:`STAT_TESTS`.

    ``heading`` and ``text`` (a string, or a function of the :class:`Context`) title the
    test's section, shown when its table over all budgets has rows; ``finish`` (optional)
    adds notes once every budget ran, from the table of all budgets.
    """

    heading: str
    text: str | Callable[[Context], str]
    run: StatFn
    finish: Callable[[pd.DataFrame, Context], list[str]] | None = None


@dataclass(frozen=True)
class StatResult:
    """One test's outcome over all budgets: its table, rendered sections and details."""

    name: str
    table: pd.DataFrame
    sections: tuple[Section, ...]
    details: tuple[object, ...] = ()


def _with_holm(rows: list[dict], alpha: float) -> list[dict]:
    """Add Holm-adjusted ``p_holm`` and ``significant`` (p_holm < alpha) to test rows in place."""
    for r, q in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = q
        r["significant"] = bool(q < alpha) if not math.isnan(q) else False
    return rows


def friedman_nemenyi_test(b: Budget, ctx: Context) -> StatOutput:
    """Friedman over the budget's blocks with Nemenyi's CD (Demšar 2006, §3.2.2).

    Table: one row per pair of methods (average ranks, their difference, CD, significant when
    the difference ≥ CD); one section per budget with the rank table and the verdict.
    """
    if b.ranking is None:
        return StatOutput(pd.DataFrame())
    f = friedman(b.matrix, ctx.alpha, ctx.tie_correction, labels=b.labels)
    nem = []
    for a, c in itertools.combinations(f.avg_ranks.index, 2):
        diff = abs(f.avg_ranks[a] - f.avg_ranks[c])
        nem.append(
            {
                "labels": b.labels,
                "a": a,
                "b": c,
                "rank_a": f.avg_ranks[a],
                "rank_b": f.avg_ranks[c],
                "diff": diff,
                "cd": f.cd,
                # post-hoc: a pair differs only when Friedman rejects and their ranks are ≥ CD apart
                "significant": bool(diff >= f.cd) and f.significant,
            }
        )
    blocks = "pairs (mean over seeds per pair)" if ctx.blocks == "pair" else "pair × seed blocks"
    txt = (
        f"Labels {f.labels}: Friedman over N = {f.n_blocks} {blocks}, k = {f.k} methods: "
        f"χ²_F = {f.chi2:.3f} (p = {f.p_chi2:.3g}), F_F = {f.ff:.3f} (p = {f.p_ff:.3g}); "
        f"significance decided on the {f.test}: p = {f.p_value:.3g}. "
        f"Nemenyi q_{ctx.alpha} = {f.q_alpha:.3f}, CD = {f.cd:.3f}. "
        + (
            "The methods differ significantly. Groups not separated by Nemenyi: "
            + ("; ".join("{" + ", ".join(c) + "}" for c in f.cliques) or "none")
            + "."
            if f.significant
            else "No significant difference among the methods, so no Nemenyi post-hoc comparison "
            "(Demšar 2006, §3.2.2: only after Friedman rejects); the CD is shown for reference and "
            "no pair is called different."
        )
    )
    ranks = f.avg_ranks.rename("average rank").rename_axis("method").reset_index()
    return StatOutput(
        pd.DataFrame(nem), sections=(Section(f"Friedman / Nemenyi (labels {f.labels})", txt, ranks),), details=(f,)
    )


def wilcoxon_holm_test(b: Budget, ctx: Context) -> StatOutput:
    """Wilcoxon signed-rank test per pair of methods over the blocks, Holm-corrected (Holm 1979)."""
    if b.ranking is None:
        return StatOutput(pd.DataFrame())
    mat, rows = b.matrix, []
    for a, c in itertools.combinations(b.ranking.index, 2):
        w = wilcoxon_signed_rank(mat[a].to_numpy(), mat[c].to_numpy())
        rows.append(
            {
                "labels": b.labels,
                "a": a,
                "b": c,
                "n": len(mat),
                "nonzero": w.n,  # the differences ranked: zeros are dropped
                "mean_diff": float((mat[a] - mat[c]).mean()),
                "statistic": w.statistic,
                "p": w.p,
            }
        )
    notes: tuple[str, ...] = ()
    m, n = len(rows), len(mat)
    need = wilcoxon_min_blocks(m, ctx.alpha)
    if n < need:
        # say it before a reader takes "not significant" for evidence of no difference
        notes = (
            f"labels {b.labels}: no pair of methods can be significant by Wilcoxon–Holm whatever the "
            f"results: with N = {n} blocks the smallest two-sided p is 2/2^{n} = {2.0 ** (1 - n):.3g}, "
            f"and Holm over the {m} comparison{'s' if m != 1 else ''} multiplies the smallest p by {m} "
            f"(≥ {min(1.0, m * 2.0 ** (1 - n)):.3g}, not < {ctx.alpha}); that needs N ≥ {need} blocks "
            "with non-zero differences.",
        )
    return StatOutput(pd.DataFrame(_with_holm(rows, ctx.alpha)), notes)


def mean_interval_test(b: Budget, ctx: Context) -> StatOutput:
    """Mean over pairs with its 95% t-interval (:func:`dabench.analysis.tables.mean_interval`),
    and the IQM (:func:`pair_iqm`) where it trims something (≥ 4 runs on every pair)."""
    pairs_all = b.runs_all["pair"].nunique()
    rows = []
    for e in b.order:
        r = b.scores[e]
        tasks = list(r.values())
        m, lo, hi = (float(v) for v in mean_interval(tasks))
        n_runs = sum(map(len, tasks))
        # trim_mean(0.25) drops int(0.25 n) runs per side: nothing below 4 runs, where IQM = mean;
        # per pair, then averaged over pairs (never runs pooled across pairs: pair_iqm)
        q = pair_iqm(tasks) if tasks and min(map(len, tasks)) >= 4 else math.nan
        rows.append(
            {
                "labels": b.labels,
                "method": e,
                "pairs": len(r),
                "runs": n_runs,
                "mean": m,
                "ci95_low": lo,
                "ci95_high": hi,
                "iqm": q,
                "all_pairs": len(r) == pairs_all,
            }
        )
    return StatOutput(pd.DataFrame(rows))


def improvement_test(b: Budget, ctx: Context) -> StatOutput:
    """Probability of improvement P(a > b) over the pairs both methods have (Agarwal et al. 2021)."""
    rows = []
    for a, c in itertools.combinations(b.order, 2):
        common = sorted(set(b.scores[a]) & set(b.scores[c]))
        if not common:
            continue
        p = float(_poi([b.scores[a][t] for t in common], [b.scores[c][t] for t in common]))
        rows.append({"labels": b.labels, "a": a, "b": c, "pairs": len(common), "p_improvement": p})
    return StatOutput(pd.DataFrame(rows))


def per_pair_test(b: Budget, ctx: Context) -> StatOutput:
    """Per pair, over seeds: :func:`~dabench.analysis.tables.seed_test` per pair of methods; Holm within the pair.

    seed_test is the leaderboard's † test: paired (Student 1908; t = d̄ / (s_d/√n), n − 1
    d.o.f., on the differences d of the runs of the same seed) on the seeds both methods have
    when there are ≥ :data:`~dabench.analysis.tables.MIN_PAIRED` of them ("paired t (common
    seeds)" when either has other seeds too, which that test leaves out); else Welch's
    unequal-variance t-test on all runs of each (Welch 1947). ``seeds`` is the number of pairs
    of runs (0 for Welch), ``n_a``/``n_b`` the runs of each method the test uses,
    ``mean_a``/``mean_b`` their means. Only cells with ≥ :data:`MIN_SEEDS_PER_PAIR` seeds and no
    missing planned seed take part; Holm's family is the comparisons within one pair and budget.
    """
    out = []
    for pair, g in b.runs_all.groupby("pair"):
        vals = {
            e: ge.set_index("seed")["accuracy"]
            for e, ge in g.groupby("entry")
            if len(ge) >= MIN_SEEDS_PER_PAIR and (e, pair) not in ctx.bad_cells
        }
        rows = []
        for a, c in itertools.combinations(sorted(vals, key=lambda e: -vals[e].mean()), 2):
            # the leaderboard's † runs the same test (seed_test): the two never disagree on one pair of cells
            t = seed_test(vals[a], vals[c])
            rows.append(
                {
                    "labels": b.labels,
                    "pair": pair,
                    "a": a,
                    "b": c,
                    "seeds": t.seeds,  # pairs of runs the test uses (0 for Welch)
                    "n_a": t.n_a,
                    "n_b": t.n_b,
                    "mean_a": t.mean_a,  # over the runs the test uses
                    "mean_b": t.mean_b,
                    "test": t.test,
                    "p": t.p,
                }
            )
        out += _with_holm(rows, ctx.alpha)
    return StatOutput(pd.DataFrame(out))


def _per_pair_finish(table: pd.DataFrame, ctx: Context) -> list[str]:
    if ctx.budgets and table.empty:
        return [f"per-pair tests skipped: they need ≥ {MIN_SEEDS_PER_PAIR} seeds per method and pair."]
    return []


#: The statistical tests :func:`compare` runs, in report order: name -> :class:`StatTest`.
#: Adding a test is one function ``(Budget, Context) -> StatOutput`` and one entry here; its
#: table then shows in ``Comparison.result(name)`` and as a section of the Markdown and HTML.
STAT_TESTS: dict[str, StatTest] = {
    "friedman": StatTest("Friedman / Nemenyi", "", friedman_nemenyi_test),
    "wilcoxon": StatTest(
        "Pairwise Wilcoxon signed-rank, Holm-corrected",
        lambda ctx: (
            "Exact two-sided test over the same blocks (zero differences dropped; nonzero = the "
            "differences ranked); Holm over every pair of methods of one label budget (that budget's "
            f"comparisons are the family); significant = Holm-adjusted p < {ctx.alpha}."
        ),
        wilcoxon_holm_test,
    ),
    "intervals": StatTest(
        "Mean over pairs with 95% t-intervals",
        "Mean = mean over pairs of the per-pair mean over seeds; 95% interval = "
        "mean ± t·√(Σ s²/n)/P with Welch–Satterthwaite degrees of freedom (the Student "
        "t-interval with one pair), clipped to [0, 100]; it is about these pairs (seed noise "
        "only: the pairs are fixed, not a sample of tasks) and covers 95% under normal seed "
        "noise at 3 and at 10 seeds (a stratified percentile bootstrap covers only ~76% at "
        "1 pair × 3 seeds, so it is not used). IQM = mean over pairs of each pair's "
        "interquartile mean over seeds, shown only with ≥ 4 runs on every pair (with 3 runs it "
        "trims nothing and equals the mean); no interval.",
        mean_interval_test,
    ),
    "improvement": StatTest(
        "Probability of improvement P(a > b)",
        "Averaged over pairs, ties count ½ (Agarwal et al. 2021). Point estimate only: a "
        "bootstrap interval from a few seeds per pair would not cover 95%.",
        improvement_test,
    ),
    "per_pair": StatTest(
        "Per-pair tests over seeds",
        f"Pairs with ≥ {MIN_SEEDS_PER_PAIR} seeds per method; two-sided paired t-test by seed on the "
        f"seeds both methods have when ≥ {MIN_PAIRED} (seeds = pairs of runs, n − 1 d.o.f.; n_a, n_b, "
        "mean_a, mean_b over the runs tested), else Welch on all runs; Holm within each pair and "
        "budget. The leaderboard's † uses the same test against each column's best (Holm over the column).",
        per_pair_test,
        _per_pair_finish,
    ),
}


@dataclass(frozen=True)
class Comparison:
    """All statistics of one results table under one selection rule.

    ``results`` maps each test of :data:`STAT_TESTS` (as it was when :func:`compare` ran) to
    its :class:`StatResult`; the Markdown and HTML renderings walk it in order. The attributes
    ``friedman``, ``nemenyi``, ``wilcoxon``, ``bootstrap`` (the mean t-intervals; the name is
    historical), ``improvement`` and ``per_pair`` read the built-in tests' results.
    """

    rule: str
    blocks: str
    alpha: float
    results: dict[str, StatResult]
    notes: tuple[str, ...] = field(default=())

    def result(self, name: str) -> StatResult:
        """The result of test ``name``; an unknown name raises naming the tests that ran."""
        if name not in self.results:
            raise KeyError(f"no statistical test {name!r} in this comparison; ran: {', '.join(self.results)}")
        return self.results[name]

    def _table(self, name: str) -> pd.DataFrame:
        r = self.results.get(name)
        return r.table if r is not None else pd.DataFrame()

    @property
    def friedman(self) -> tuple[FriedmanResult, ...]:
        r = self.results.get("friedman")
        return tuple(d for d in r.details if isinstance(d, FriedmanResult)) if r is not None else ()

    @property
    def nemenyi(self) -> pd.DataFrame:
        return self._table("friedman")

    @property
    def wilcoxon(self) -> pd.DataFrame:
        return self._table("wilcoxon")

    @property
    def bootstrap(self) -> pd.DataFrame:
        return self._table("intervals")

    @property
    def improvement(self) -> pd.DataFrame:
        return self._table("improvement")

    @property
    def per_pair(self) -> pd.DataFrame:
        return self._table("per_pair")

    def _sections(self) -> list[Section]:
        """The sections of every test, in table order (shared by Markdown and HTML)."""
        return [s for r in self.results.values() for s in r.sections]

    def title(self) -> str:
        return f"Statistical comparison — selection rule: {rule_title(self.rule)}"

    def to_markdown(self) -> str:
        parts = [f"## {self.title()}", ""]
        for s in self._sections():
            parts += [f"### {s.heading}", "", s.text, ""]
            if s.table is not None and not s.table.empty:
                parts += [md_table(s.table), ""]
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def to_html(self) -> str:
        parts = []
        for s in self._sections():
            parts += [f"<h3>{html.escape(s.heading)}</h3>", f"<p>{html.escape(s.text)}</p>"]
            if s.table is not None and not s.table.empty:
                parts.append(html_table(s.table))
        if self.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in self.notes) + "</ul>")
        return "\n".join(parts)


def selected_runs(df: pd.DataFrame, rule: str = "last", where: list[str] | dict | None = None) -> pd.DataFrame:
    """Complete runs with a selected accuracy and an ``entry`` name (as in the leaderboard)."""
    return prepare(df, rule, where)[0]


def _excluded_cells(planned: pd.DataFrame, sel: pd.DataFrame, missing: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(entry, pair, description) of every cell with fewer completed seeds than planned."""
    done = sel.groupby(["entry", "pair"]).size()
    out = []
    for r in planned.itertuples(index=False):
        if r.not_applicable:  # the rule may not select these runs: not a missing seed (compare notes it)
            continue
        k = int(done.get((r.entry, r.pair), 0))
        if k < r.n_planned:
            m = missing[(missing["entry"] == r.entry) & (missing["pair"] == r.pair)]
            # a complete run is missing only because its curve lacks the rule's score: say so
            why = ", ".join(f"seed {x.seed} {x.status if x.status != 'complete' else x.detail}" for x in m.itertuples())
            out.append((r.entry, r.pair, f"{r.entry} on {r.pair} ({k}/{r.n_planned} seeds; {why})"))
    return out


def _budget(sel: pd.DataFrame, labels: str, blocks: str, bad_rows: set[str], notes: list[str]) -> Budget:
    """The runs of one budget, its complete block matrix and ranking; notes what leaves the tests."""
    s_all = sel[sel["labels"] == labels]
    s = s_all[~s_all["entry"].isin(bad_rows)]
    index = "pair" if blocks == "pair" else ["pair", "seed"]
    # rounded (tie_safe): equal means tie in the ranks and give zero Wilcoxon differences
    mat = s.pivot_table(index=index, columns="entry", values="accuracy", aggfunc="mean").round(TIE_DECIMALS)
    if blocks == "pair-seed" and len(mat):
        # a seed pairs runs across methods (same split, draw, initialisation): a block is one
        # (pair, seed) that every method ran. Methods missing a whole pair leave (below, as with
        # pair blocks); of the rest, seeds that only some ran leave as blocks, never as methods,
        # and never misaligned (runs of different seeds are not one block).
        whole = [c for c in mat.columns if mat[c].isna().groupby(level="pair").all().any()]
        rest = mat.drop(columns=whole)
        partial = rest.index[rest.isna().any(axis=1)]
        if len(partial) and len(rest.columns):
            notes.append(
                f"labels {labels}: pair × seed blocks are the seeds every method ran; left out "
                f"({len(partial)} of {len(rest)}): " + ", ".join(f"{p} seed {int(sd)}" for p, sd in partial) + "."
            )
            mat = mat.drop(index=partial)
    incomplete = [c for c in mat.columns if mat[c].isna().any()]
    if incomplete:
        notes.append(
            f"labels {labels}: left out of the across-task tests (missing blocks): {', '.join(map(str, incomplete))}"
        )
        mat = mat.drop(columns=incomplete)
    ranking = None
    if mat.shape[0] >= 2 and mat.shape[1] >= 2:
        # the same average ranks (and tie order) as friedman() computes on this matrix
        ranking = pd.Series(
            rank_matrix(mat.to_numpy(dtype=float)).mean(axis=0), index=[str(c) for c in mat.columns]
        ).sort_values()
    else:
        notes.append(
            f"labels {labels}: across-task tests need ≥ 2 pairs/blocks and ≥ 2 methods "
            f"with all of them (have {mat.shape[0]} × {mat.shape[1]})."
        )
    scores = {e: {p: g["accuracy"].to_numpy() for p, g in ge.groupby("pair")} for e, ge in s.groupby("entry")}
    order = list(ranking.index) if ranking is not None else sorted(scores)
    order += [e for e in sorted(scores) if e not in order]
    return Budget(labels, s_all, s, mat, ranking, scores, tuple(order))


def _stack(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One table from the per-budget tables, typed as if built from all rows at once."""
    return pd.DataFrame([r for t in tables for r in t.to_dict("records")])


def compare(
    df: pd.DataFrame,
    rule: str = "last",
    blocks: str = "pair",
    alpha: float = 0.05,
    reps: int = 2000,
    seed: int = 0,
    tie_correction: bool = False,
    where: list[str] | dict | None = None,
) -> Comparison:
    """Run every test of :data:`STAT_TESTS` on each label budget of ``df``.

    The built-ins: Friedman/Nemenyi, Wilcoxon–Holm, mean t-intervals, P(improvement) and
    per-pair tests. Each label budget is compared on its own. Methods missing a block, or with
    a cell that misses planned seeds, are left out of the across-task tests of that budget
    (named in ``notes``). ``reps`` and ``seed`` reach the tests through the :class:`Context`
    (the built-in intervals no longer bootstrap; kept for API compatibility).
    """
    if blocks not in BLOCKS:
        raise ValueError(f"unknown blocks {blocks!r}; valid: {', '.join(BLOCKS)}")
    # alpha=5 made every test "significant", alpha=0 none: refused rather than tabled
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"compare: alpha={alpha!r}: expected a significance level in (0, 1), such as 0.05")
    sel, planned, missing, notes = prepare(df, rule, where)
    excluded = _excluded_cells(planned, sel, missing)
    bad_cells = frozenset((e, p) for e, p, _ in excluded)
    bad_rows = {e for e, _ in bad_cells}
    if excluded:
        notes.append(
            "Cells missing planned seeds are excluded, not averaged over their surviving seeds: "
            "their row leaves the across-pair tests and intervals, the cell leaves the per-pair "
            "tests. Excluded: " + "; ".join(d for _, _, d in excluded) + "."
        )
    budgets = tuple(sorted(sel["labels"].unique(), key=budget_key)) if len(sel) else ()
    # a budget whose protocol forbids what the rule reads has no selected run: say it leaves the
    # comparison rather than let it vanish from the tables
    barred = planned[planned["not_applicable"] != ""].drop_duplicates("labels")
    for r in barred.sort_values("labels", key=lambda c: c.map(budget_key)).itertuples(index=False):
        if r.labels not in budgets:
            notes.append(f"labels {r.labels}: not compared under rule {rule!r} ({r.not_applicable}).")
    ctx = Context(rule, blocks, alpha, tie_correction, reps, seed, bad_cells, budgets)
    tests = dict(STAT_TESTS)  # as registered now: a test added mid-run does not half-apply
    outs: dict[str, list[StatOutput]] = {name: [] for name in tests}
    for labels in budgets:
        b = _budget(sel, labels, blocks, bad_rows, notes)
        for name, t in tests.items():
            o = t.run(b, ctx)
            outs[name].append(o)
            notes += o.notes
    results = {}
    for name, t in tests.items():
        table = _stack([o.table for o in outs[name]])
        sections = tuple(s for o in outs[name] for s in o.sections)
        if not sections and not table.empty:
            sections = (Section(t.heading, t.text(ctx) if callable(t.text) else t.text, table),)
        if t.finish is not None:
            notes += t.finish(table, ctx)
        results[name] = StatResult(name, table, sections, tuple(d for o in outs[name] for d in o.details))
    return Comparison(rule, blocks, alpha, results, tuple(notes))
