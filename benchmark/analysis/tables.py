"""Leaderboard: methods × pairs, mean ± std over seeds with a 95% CI, average, rank, gain.

Cell statistics (per row and pair, over the seeds' selected accuracies):

* mean and sample standard deviation (ddof = 1; shown as "–" with one seed);
* 95% confidence interval of the mean from the t distribution,
  mean ± t_{0.975, n−1} · s / √n (undefined, "–", with one seed), clipped to [0, 100]
  (the true mean lies there, so clipping never lowers coverage). Under normal seed-to-seed
  noise it covers exactly 95% at any n ≥ 2 (at n = 2, t₁ = 12.7 makes it uninformative and
  the legend says so). See :func:`mean_interval`.

Rows are **configurations**, never pools: a row is a method, its label budget and every
setting of its run spec except the seed (see :func:`dabench.analysis.results.spec_settings`).
Configurations of one method that differ on some pair become separate rows named by what
differs, e.g. ``dann (steps=2000)``; a method with several budgets shows them, e.g.
``dann (0)`` / ``dann (5/class)``. Settings that differ only between pairs (pair-default
schedules, a hyperparameter set per pair) keep one row, and a note names them with each pair's
value (:func:`dabench.analysis.results.settings_across_pairs`). *Best* and *tied* marks, ranks and averages are computed
**within one budget**. A cell never holds the same seed twice.

Missing seeds. The planned seeds of a cell are those of the folder's ``matrix.json`` and of
every record of that configuration and pair, whatever its status. A cell with fewer
completed seeds than planned shows ``(k/n)``; its mean is over the k completed seeds, it is
never marked best or †, and its row's avg, rank and gain carry ``*`` (every gain does when
the source-only baseline misses seeds). It never moves another row's
rank: a complete cell's rank within a pair is over the complete cells only (a diverged method's
surviving seeds must not push the complete rows below them down a place), and a cell missing seeds
gets its place among all the pair's cells, complete or not (ranked among the complete cells alone,
cells missing seeds between the same two complete ones tied, and in a run cut short, where no cell
is complete, every row read rank 1; a note names such pairs). The runs left out are listed
(``Leaderboard.missing``) with their status and the first line of their error.

Marks: the best mean of each column (within its budget) is **bold** (every complete cell equal
to it, should several tie); an entry that is *not
significantly worse* than that best is marked too (underlined in HTML/LaTeX, "†" in
Markdown/text). The test is :func:`seed_test`, the same one the per-pair comparison of
:func:`dabench.analysis.stats.compare` uses, so the two never disagree on the same data: a
two-sided **paired** t-test by seed of each complete cell against the best, on the seeds both
have (a seed fixes the split, the few-shot draw and the initialisation for every method, so the
runs of one seed are a matched pair; Welch's unpaired t-test only when they share fewer than two
seeds), Holm-corrected over the column's cells (Holm 1979; the family is one column of one
budget). A cell is *significantly worse* (no †) when its Holm-adjusted p < 0.05 and its mean on
the runs tested is below the best's; otherwise it gets † (``p_vs_best``, ``p_vs_best_holm``,
``test_vs_best`` and ``seeds_vs_best`` in ``cells``; a note names the cells paired on only some
of their seeds). Two-sided because the best is picked by the same data: under equal methods
the old one-sided, uncorrected test left some cell of a column of 8 methods unmarked
("worse") 50–63% of the time; the two-sided Holm one 4–10% (measured when it was Welch's). Until this version the mark used Welch's
unpaired test while the per-pair table used the paired one: on 5 seeds whose methods move
together from seed to seed, the leaderboard could mark † what the per-pair table called
significantly different (``tests/test_stats_edges.py``).
Entries with fewer than two seeds, or whose best has fewer than two, cannot be tested and are
not marked.

Rules a protocol forbids. A rule that reads data the run's protocol forbids (``source-val`` and
``dev`` read source labels; a ``source-free`` run has none once adaptation starts) does not select
that run: its cells, avg, rank and gain show "n/a", a note says why (e.g. "source-val reads source
labels; source-free runs cannot use it"), and the row is never filled from another rule, never
counted as missing seeds, and leaves the bests, ranks and statistics of that rule
(:func:`dabench.analysis.selection.not_applicable`).

``avg`` is the mean over pairs of the per-pair means (shown only for rows that have every
pair of the table); ``rank`` is the average over pairs of the rank within the pair (1 =
best, ties share the mean rank); a row missing pairs of its budget averages other pairs than the
rest, so it is listed after the rows that have them all and is never the best rank (a note names it); ``gain`` is ``avg`` minus the ``source-only`` row's
``avg`` (over the pairs both have).
"""

from __future__ import annotations

import csv
import html
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..core.record import commit_label
from .render import html_grid, latex_grid, md_grid, md_text, tex_escape
from .results import entry_names, filter_runs, settings_across_pairs
from .selection import NOT_APPLICABLE, protocol_notes, rule_title, select

SOURCE_ONLY = ("source-only", "source_only")
ALPHA = 0.05
#: how † is decided (:func:`seed_test`, :func:`holm`): the legend's words
TEST_NAME = (
    "two-sided paired t-test by seed vs the column's best (seed_test: on the seeds both have; "
    "Welch t when they share < 2), Holm over the column; † unless adjusted p < 0.05 and worse"
)


def budget_key(labels: str) -> tuple[int, str]:
    """Sort key for label budgets: "0" first (then "0 (source-free)"), then k/class by k."""
    m = re.match(r"\d+", str(labels))
    return (int(m.group()), str(labels)) if m else (10**9, str(labels))


BOUNDS = (0.0, 100.0)

#: decimals a mean is rounded to before it is ranked, compared for the best or differenced
TIE_DECIMALS = 9


def tie_safe(x: Any) -> Any:
    """``x`` rounded to :data:`TIE_DECIMALS` decimals, so that equal means compare equal.

    A mean's last bits depend on the order of summation: (0.1 + 0.2 + 0.3)/3 ≠ (0.3 + 0.2 + 0.1)/3
    in floating point, and accuracies on a grid (k/n · 100) make mathematically equal means of
    different seeds common (97.1, 97.9 and 97.4, 97.6). Ranked raw, such a tie would be broken by
    rounding noise (ranks 2 and 3 instead of 2.5 each; a Wilcoxon difference of 1e-14 counted
    as a signed difference). 1e-9 points is far below any real difference of accuracies in %.
    """
    return np.round(np.asarray(x, dtype=float), TIE_DECIMALS)


def mean_interval(
    tasks: list[np.ndarray] | np.ndarray, level: float = 0.95, bounds: tuple[float, float] | None = BOUNDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over tasks of the per-task mean run score, with its t-interval.

    With P tasks (pairs), n_p runs (seeds) and sample variance s_p² on task p, the estimate
    is m = (1/P) Σ_p x̄_p with variance v = (1/P²) Σ_p s_p²/n_p, and the interval is
    m ± t_{(1+level)/2, ν} √v with Welch–Satterthwaite degrees of freedom
    ν = (Σ_p s_p²/n_p)² / Σ_p (s_p²/n_p)²/(n_p − 1) (Satterthwaite 1946). With one task this
    is the exact Student t-interval of the mean. Bounds clip the interval to the range the
    true mean lives in (accuracy in %). NaN interval when a task has fewer than 2 runs.

    Vectorised: each task may be an array (..., n_p) (e.g. replicates × runs of a simulation);
    the results then have the leading shape. This is the interval the leaderboard cells and
    :func:`dabench.analysis.stats.compare` report.
    """
    if isinstance(tasks, np.ndarray):
        tasks = [tasks]
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    mean = np.mean([t.mean(axis=-1) for t in tasks], axis=0)
    ns = [t.shape[-1] for t in tasks]
    if min(ns) < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    u = np.array([t.var(axis=-1, ddof=1) / t.shape[-1] for t in tasks])  # s_p² / n_p
    v = u.sum(axis=0) / len(tasks) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = u.sum(axis=0) ** 2 / np.sum([ui**2 / (n - 1) for ui, n in zip(u, ns)], axis=0)
    dof = np.where(np.isfinite(dof), dof, float(sum(n - 1 for n in ns)))  # zero spread: width 0 anyway
    half = sps.t.ppf(0.5 + level / 2, dof) * np.sqrt(v)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    return mean, lo, hi


def mean_ci(
    x: np.ndarray, level: float = 0.95, bounds: tuple[float, float] | None = BOUNDS
) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of ``x``: the t-interval of :func:`mean_interval`; std/CI NaN for n < 2."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    m = float(np.mean(x)) if n else math.nan
    if n < 2:
        return m, math.nan, math.nan, math.nan
    _, lo, hi = mean_interval([x], level, bounds)
    return m, float(np.std(x, ddof=1)), float(lo), float(hi)


def welch_less_p(x: np.ndarray, best: np.ndarray) -> float:
    """One-sided Welch p-value for H1: mean(x) < mean(best); NaN when it cannot be tested."""
    x, best = np.asarray(x, float), np.asarray(best, float)
    if len(x) < 2 or len(best) < 2:
        return math.nan
    if np.std(x) == 0 and np.std(best) == 0:  # no spread: the means decide exactly
        return 1.0 if np.mean(x) >= np.mean(best) else 0.0
    with warnings.catch_warnings():  # near-constant samples warn about precision; p is still fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(sps.ttest_ind(x, best, equal_var=False, alternative="less").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (Holm 1979; step-down; NaNs are kept and not counted).

    With the m p-values sorted p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j≤i} min(1, (m − j + 1) p_(j));
    rejecting p̃ < α controls the family-wise error rate at α.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


#: the names :func:`seed_test` gives its tests (``SeedTest.test``; the per-pair table's ``test`` column)
PAIRED, PAIRED_COMMON, WELCH = "paired t", "paired t (common seeds)", "Welch t"
#: fewest seeds two cells must share to be compared by a paired test (a paired t needs n − 1 ≥ 1 d.o.f.)
MIN_PAIRED = 2


@dataclass(frozen=True)
class SeedTest:
    """One two-sided comparison of two cells over seeds (:func:`seed_test`).

    ``test`` is :data:`PAIRED`, :data:`PAIRED_COMMON` (paired on the seeds both have; either has
    others, left out), :data:`WELCH` (fewer than :data:`MIN_PAIRED` shared seeds) or "" (cannot
    be tested: p is NaN); ``seeds`` the pairs of runs of a paired test (0 for Welch); ``n_a``,
    ``n_b``, ``mean_a``, ``mean_b`` the runs each side contributes and their means.
    """

    p: float
    test: str
    seeds: int
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float


def _by_seed(x: pd.Series | dict[int, float], side: str) -> pd.Series:
    s = pd.Series(x, dtype=float) if isinstance(x, dict) else x.astype(float)
    bad = s[~np.isfinite(s.to_numpy())]
    if len(bad):
        # a failed/diverged run's NaN must be reported as a missing seed, never dropped here or read as 0
        raise ValueError(
            f"seed_test: {side} has non-finite accuracies at seed(s) {', '.join(map(str, bad.index))} "
            f"({', '.join(map(str, bad.to_numpy()))}); pass only the completed runs' accuracies"
        )
    if s.index.has_duplicates:
        dup = sorted(set(s.index[s.index.duplicated()]))
        raise ValueError(f"seed_test: {side} has seed(s) {dup} twice; a cell holds one run per seed")
    return s


def seed_test(a: pd.Series | dict[int, float], b: pd.Series | dict[int, float]) -> SeedTest:
    """Two-sided test of "cells ``a`` and ``b`` have the same mean accuracy" over seeds.

    ``a`` and ``b`` map seed → accuracy (completed runs only; a non-finite value raises).
    The one test behind both the leaderboard's † mark and the per-pair tests of
    :func:`dabench.analysis.stats.compare`, so the two never disagree on the same data.

    **Paired by seed** on the seeds both cells have, when there are ≥ :data:`MIN_PAIRED`:
    Student's paired t-test, t = d̄ / (s_d / √n) with n − 1 d.o.f. on d_s = a_s − b_s
    (Student 1908). In dabench a seed fixes the data split and few-shot draw
    (:mod:`dabench.core.splits`), the batch order (the seed's data generator,
    :mod:`dabench.engine.data`) and the initialisation (``torch.manual_seed(seed)`` before the
    network is built, :func:`dabench.engine.train.execute`) for every method, so the runs of one
    seed are a matched pair: their accuracies share the seed's "luck" and are correlated.
    Welch's unpaired test (Welch 1947) assumes two independent samples; with positively
    correlated pairs its variance (s_a² + s_b²)/n overstates Var(d̄) = (σ_a² + σ_b² − 2σ_ab)/n
    and it loses power (with negative correlation it is anti-conservative). The paired test is
    the one for matched designs: Dietterich (1998, "Approximate statistical tests for comparing
    supervised classification learning algorithms", Neural Computation 10(7)) pairs the
    algorithms on the same splits; Bouthillier et al. (2021, "Accounting for variance in machine
    learning benchmarks", MLSys) pair on shared seeds of data split and initialisation.
    Seeds that only one cell has are left out (``test`` = :data:`PAIRED_COMMON` says so): never
    paired by position. With fewer shared seeds, Welch's t-test on all runs of each (Welch 1947,
    Welch–Satterthwaite d.o.f.); with fewer than 2 runs on a side, p = NaN (untestable).

    Degenerate cases: differences all zero (after :func:`tie_safe` rounding) → p = 1; constant
    non-zero differences → p = 0 (t is infinite); Welch with both sides constant → 1 if the
    means are equal, else 0.
    """
    sa, sb = _by_seed(a, "a"), _by_seed(b, "b")
    common = sa.index.intersection(sb.index).sort_values()
    if len(common) >= MIN_PAIRED:
        xa, xb = sa[common].to_numpy(), sb[common].to_numpy()
        d = tie_safe(xa - xb)  # a difference of summation noise is a zero, as in the Wilcoxon test
        if np.all(d == d[0]):
            p = 1.0 if d[0] == 0 else 0.0
        else:
            p = float(sps.ttest_rel(xa, xb).pvalue)
        test = PAIRED if len(common) == len(sa) == len(sb) else PAIRED_COMMON
        return SeedTest(p, test, len(common), len(common), len(common), float(xa.mean()), float(xb.mean()))
    xa, xb = sa.to_numpy(), sb.to_numpy()
    ma = float(xa.mean()) if len(xa) else math.nan
    mb = float(xb.mean()) if len(xb) else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return SeedTest(math.nan, "", 0, len(xa), len(xb), ma, mb)
    if np.ptp(tie_safe(xa)) == 0 and np.ptp(tie_safe(xb)) == 0:  # no spread: the means decide exactly
        p = 1.0 if tie_safe(ma) == tie_safe(mb) else 0.0
    else:
        with warnings.catch_warnings():  # near-constant samples warn about precision; p is still fine
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(sps.ttest_ind(xa, xb, equal_var=False).pvalue)
    return SeedTest(p, WELCH, 0, len(xa), len(xb), ma, mb)


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


@dataclass(frozen=True)
class Leaderboard:
    """A selected-accuracy leaderboard; ``table`` holds the display strings.

    ``cells`` is the numeric long table (entry, method, labels, pair, n, mean, std, ci_low,
    ci_high, p_vs_best, p_vs_best_holm, test_vs_best, seeds_vs_best, best, tied, not_applicable: why the rule may not select the cell's runs,
    or ""); ``summary`` the per-row avg/rank/gain (and not_applicable); ``best`` and
    ``tied`` are boolean frames shaped like ``table``.
    """

    rule: str
    title: str
    table: pd.DataFrame
    cells: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    tied: pd.DataFrame
    pairs: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())
    #: planned runs left out of the means (entry, method, labels, pair, seed, status, detail, run_id)
    missing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MISSING_COLUMNS))

    # ---- text exports -------------------------------------------------------------
    def legend(self) -> list[str]:
        lines = [
            "Cells: mean ± sample std (n−1) over seeds [95% Student t-interval of the mean over seeds, "
            "mean ± t(0.975, n−1)·std/√n, clipped to [0, 100]]; accuracy in %. "
            "A row is one configuration (method + every run setting but the seed).",
            f"Bold = best of the column within a label budget; † = not significantly worse "
            f"than the best ({TEST_NAME}).",
            "labels = target labels used per row (0 = unsupervised DA; (source-free) = the source-only network "
            "adapted without source data). Ranks and bests are within a budget.",
        ]
        return lines + list(self.notes)

    def _marked(self, style: str) -> pd.DataFrame:
        def mark(text: str, best: bool, tied: bool) -> str:
            if style == "md":
                return f"**{text}**" if best else (f"{text} †" if tied else text)
            if style == "html":
                t = html.escape(text)
                return f"<b>{t}</b>" if best else (f"<u>{t}</u>" if tied else t)
            t = tex_escape(text)
            return f"\\textbf{{{t}}}" if best else (f"\\underline{{{t}}}" if tied else t)

        out = self.table.copy().astype(object)
        for c in out.columns:
            out[c] = [mark(str(v), bool(b), bool(t)) for v, b, t in zip(self.table[c], self.best[c], self.tied[c])]
        return out

    def to_markdown(self) -> str:
        """A GitHub pipe table padded to align in a terminal, with title and legend."""
        head = [f"## {self.title}", ""]
        if self.table.empty:
            return "\n".join(head + ["(no complete runs)", *self.notes, *missing_markdown(self.missing)]) + "\n"
        t = self._marked("md")
        rows = [[str(i), *map(str, r)] for i, r in zip(t.index, t.to_numpy())]
        body = md_grid([t.index.name or "method", *t.columns], rows)
        return "\n".join(head + [body, ""] + self.legend() + missing_markdown(self.missing)) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def to_csv(self, path: str | Path) -> Path:
        """Machine-readable wide CSV, one header line (:data:`CSV_PAIR_COLUMNS` per pair, then
        :data:`CSV_SUMMARY_COLUMNS`): per row its
        name ``row`` (the configuration, as the other formats show it: two configurations of one
        method are two rows), ``method``, ``labels``, ``seeds``; per pair ``<pair> mean``, ``std``,
        ``ci95_low``, ``ci95_high`` (plain numbers, never "mean ± std" text), ``n`` (completed
        seeds) and ``planned``; then ``avg``, ``rank``, ``gain_vs_source_only``, ``incomplete``
        (``true`` when a cell misses planned seeds: the other formats' ``(k/n)`` and ``*``),
        ``rule``, ``note`` (why the rule may not select the row, whose numbers then read
        "n/a"; else empty) and ``provenance`` (empty when every run of the table was made by the
        same dabench version and commit, libraries and device, and each plugin method and pair by one
        version of its code; else the row's values of each kind that differs, with its runs, and
        ``plugin_method NAME=<sha> (n runs), ...`` for a plugin of several versions:
        :func:`row_provenance`, the other formats' "Mixed provenance" notes). A missing number is an empty field (read as NaN).

        The planned runs left out of the means (failed, diverged, pending ...) go to
        :func:`missing_csv_path` ``(path)`` beside it, one line per run (:data:`MISSING_CSV_COLUMNS`),
        written even when there are none so that a script can always read it.
        """
        path = Path(path)
        header = ["row", "method", "labels", "seeds"]
        for p in self.pairs:
            header += [f"{p} {c}" for c in CSV_PAIR_COLUMNS]
        header += CSV_SUMMARY_COLUMNS
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for entry, srow in self.summary.iterrows():
                row: list[object] = [entry, srow["method"], srow["labels"], srow["seeds"]]
                for p in self.pairs:
                    c = self.cells[(self.cells["entry"] == entry) & (self.cells["pair"] == p)]
                    if c.empty:
                        row += ["", "", "", "", 0, 0]
                    elif c.iloc[0]["not_applicable"]:  # the rule may not select these runs
                        row += [NOT_APPLICABLE, "", "", "", 0, int(c.iloc[0]["planned"])]
                    else:
                        c = c.iloc[0]
                        row += [
                            _num(c["mean"]),
                            _num(c["std"]),
                            _num(c["ci_low"]),
                            _num(c["ci_high"]),
                            int(c["n"]),
                            int(c["planned"]),
                        ]
                incomplete = "true" if srow["incomplete"] else "false"
                if srow["not_applicable"]:
                    row += [NOT_APPLICABLE] * 3 + [incomplete, self.rule, srow["not_applicable"]]
                else:
                    row += [_num(srow["avg"]), _num(srow["rank"]), _num(srow["gain"]), incomplete, self.rule, ""]
                row.append(srow.get("provenance", ""))
                w.writerow(row)
        with missing_csv_path(path).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(MISSING_CSV_COLUMNS)
            for r in self.missing.itertuples(index=False):
                w.writerow([r.entry, r.method, r.labels, r.pair, int(r.seed), r.status, r.detail, r.run_id, self.rule])
        return path

    def to_latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), written by hand.

        Title, legend and the runs left out of the means (row, pair, seed, status, why) lead as
        ``%`` comments, so the file can be ``\\input`` inside a ``table`` as it is; the cells carry
        the same ``(k/n)`` and ``*`` marks as the other formats."""
        # the legend as LaTeX shows the marks: † is an underline here, as in HTML
        legend = [x.replace("†", "underlined") for x in self.legend()]
        comments = [self.title, " ".join(legend), *_missing_lines(self.missing)]
        if self.table.empty:
            return latex_grid(["method"], [], "l", comments=[*comments, "(no complete runs)"])
        t = self._marked("tex")
        rows = [[tex_escape(str(i)), *map(str, r)] for i, r in zip(t.index, t.to_numpy())]
        first = t.index.name or "method"
        if self.rule == "oracle":  # visible in the typeset table: its comments vanish once \input
            first += " [ORACLE: selected on target test labels, an upper bound]"
        return latex_grid([first, *t.columns], rows, "l" + "c" * len(t.columns), comments=comments)

    def to_html(self, full_page: bool = False, left_out: bool = True) -> str:
        """An HTML ``<table>`` (with caption and legend); ``full_page`` wraps it in a document.

        ``left_out``: follow it with the table of runs left out of the means (row, pair, seed,
        status, why), which the legend announces; ``report.html`` has its own section for them."""
        if self.table.empty:
            parts = [f"<p><b>{html.escape(self.title)}</b></p>", "<p>No complete runs.</p>"]
        else:
            t = self._marked("html")
            rows = [[html.escape(str(i)), *map(str, r)] for i, r in zip(t.index, t.to_numpy())]
            parts = [
                html_grid(
                    [t.index.name or "method", *t.columns],
                    rows,
                    "leaderboard",
                    caption=self.title,
                    row_header=True,
                    sep="\n",
                )
            ]
        parts.append(
            '<p class="legend">'
            + "<br>".join(html.escape(x) for x in (self.legend() if not self.table.empty else self.notes))
            .replace("Bold", "<b>Bold</b>")
            .replace("†", "<u>underlined</u>")
            + "</p>"
        )
        if left_out and len(self.missing):
            cols = ["entry", "pair", "seed", "status", "detail", "run_id"]
            parts.append(f"<h3>Runs not in the means ({len(self.missing)})</h3>")
            parts.append(
                html_grid(
                    ["row", "pair", "seed", "status", "error / reason", "run_id"],
                    [[html.escape(str(v)) for v in r] for r in self.missing[cols].itertuples(index=False)],
                    "left-out",
                    sep="\n",
                )
            )
        body = "\n".join(parts)
        if not full_page:
            return body
        return (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
            f"{html.escape(self.title)}</title></head><body>{body}</body></html>\n"
        )


def _num(v: Any) -> object:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _per_pair(vals: dict[str, str], limit: int = 4) -> str:
    """``a=0.3, b=1.0``; past ``limit`` pairs only how many values over how many pairs (a note stays a line)."""
    if len(vals) > limit:
        return f"{len(set(vals.values()))} values over {len(vals)} pairs"
    return ", ".join(f"{p}={v}" for p, v in vals.items())


def _missing_detail(row: pd.Series, rule: str) -> str:
    """Why a planned run is not in the means, in one line."""
    status = str(row["status"])
    if status == "complete":
        return f"complete, but its curve has no score for rule {rule!r}"
    if status == "diverged":
        step = row.get("diverged_at_step")
        first = f"non-finite loss at step {int(step)}" if pd.notna(step) else "non-finite loss"
        err = row["error"] if isinstance(row.get("error"), str) and row["error"] else ""
        if first in err:  # the engine's own message already says it (and which loss part)
            return err
        return first + (f"; {err}" if err else "")
    # a sweep's seed whose trial has not run carries which trial it is (sweeps.select_config)
    why = f"; {row['error']}" if isinstance(row.get("error"), str) and row["error"] else ""
    if status == "pending":
        return "no record yet (planned in matrix.json)" + why
    if status == "running":
        return "running (no result yet)" + why
    return str(row["error"]) if isinstance(row.get("error"), str) and row["error"] else status


MISSING_COLUMNS: list[str] = ["entry", "method", "labels", "pair", "seed", "status", "detail", "run_id"]
#: leaderboard.csv: the columns of each pair (as ``"<pair> <column>"``), then of each row's summary
CSV_PAIR_COLUMNS: tuple[str, ...] = ("mean", "std", "ci95_low", "ci95_high", "n", "planned")
CSV_SUMMARY_COLUMNS: list[str] = ["avg", "rank", "gain_vs_source_only", "incomplete", "rule", "note", "provenance"]
#: leaderboard_missing.csv: one line per planned run left out of the means
MISSING_CSV_COLUMNS: list[str] = ["row", "method", "labels", "pair", "seed", "status", "detail", "run_id", "rule"]


def missing_csv_path(path: str | Path) -> Path:
    """Where :meth:`Leaderboard.to_csv` writes the runs left out of the means: ``<stem>_missing.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_missing.csv")


def _missing_lines(missing: pd.DataFrame) -> list[str]:
    """One plain-text line per run left out of the means (LaTeX comments)."""
    if missing.empty:
        return []
    head = f"Runs not in the means ({len(missing)}): row | pair | seed | status | why"
    return [head, *(f"{r.entry} | {r.pair} | seed {r.seed} | {r.status} | {r.detail}" for r in missing.itertuples())]


def prepare(
    df: pd.DataFrame, rule: str = "last", where: list[str] | dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """Shared by the leaderboard, the statistics and the figures.

    Returns ``(runs, planned, missing, notes)``: ``runs`` the complete runs with a selected
    ``accuracy`` and their row name ``entry`` (one run per entry, pair and seed); ``planned``
    one row per (entry, pair) with ``planned`` (sorted seed tuple), ``n_planned`` and
    ``not_applicable`` (why ``rule`` may not select the entry's runs, or "": its protocol
    forbids what the rule reads); ``missing`` one row per planned run not in ``runs`` (status and
    a one-line detail), never a run the rule may not select.
    """
    df = filter_runs(df, where)
    notes: list[str] = []
    if df.empty:
        empty = pd.DataFrame(columns=[*df.columns, "entry", "labels", "accuracy"])
        return (
            empty,
            pd.DataFrame(columns=["entry", "method", "labels", "pair", "planned", "n_planned", "not_applicable"]),
            pd.DataFrame(columns=MISSING_COLUMNS),
            notes,
        )
    allr = select(df, rule)
    allr["entry"] = entry_names(allr)
    ok = allr[(allr["status"] == "complete") & allr["accuracy"].notna()]
    dup = ok.duplicated(["entry", "pair", "seed"], keep="first")
    if dup.any():
        notes.append(
            "same configuration, pair and seed recorded twice (first kept): "
            + ", ".join(sorted(map(str, ok.loc[dup, "run_id"])))
        )
        ok = ok[~dup]
    across = settings_across_pairs(allr, list(allr["entry"]))
    if across:
        notes.append(
            "Rows whose settings differ between pairs (pair defaults or per-pair settings; each cell "
            "is one configuration, the row is not): "
            + "; ".join(
                f"{e}: " + ", ".join(f"{k} ({_per_pair(vals)})" for k, vals in d.items()) for e, d in across.items()
            )
            + "."
        )
    known = allr[allr["seed"].notna()]
    planned = (
        known.groupby(["entry", "method", "labels", "pair"], sort=False)["seed"]
        .agg(lambda s: tuple(sorted({int(x) for x in s})))
        .rename("planned")
        .reset_index()
    )
    planned["n_planned"] = planned["planned"].map(len)
    # an entry is one label budget, hence one protocol: the rule applies to all its runs or none
    barred = {e: why for e, why in zip(allr["entry"], allr["not_applicable"]) if why}
    planned["not_applicable"] = [barred.get(e, "") for e in planned["entry"]]
    notes += protocol_notes(
        allr[allr["entry"].isin(barred)],
        [rule],
        f"those rows show {NOT_APPLICABLE} (not selected by this rule, never filled from another one) "
        "and leave its bests, ranks, statistics and figures.",
    )
    if "left_out" in allr:  # sweeps.select_config: trials that were no candidates of the pick
        gone = [
            f"{e} on {p} seed {int(sd)} ({'; '.join(lo)})"
            for e, p, sd, lo in zip(allr["entry"], allr["pair"], allr["seed"], allr["left_out"])
            if isinstance(lo, list) and lo
        ]
        if gone:
            notes.append(
                "sweep trials that diverged or have no score of the rule were no candidates of the "
                "configuration choice (a rule sees a divergence without labels, and cannot rank a trial "
                "it has no score for): " + ", ".join(gone) + "."
            )
    notes += provenance_notes(ok)
    notes += source_weight_notes(ok, allr)
    done = set(zip(ok["entry"], ok["pair"], ok["seed"].astype(int)))
    miss = []
    order = {"complete": 9, "pending": 8}  # a failure explains a gap better than a pending spec
    for r in known.sort_values("status", key=lambda s: s.map(lambda x: order.get(x, 0))).itertuples():
        key = (r.entry, r.pair, int(r.seed))
        if r.entry in barred:  # not a missing seed: the rule may not select it at all
            continue
        if key in done:
            continue
        done.add(key)
        row = known.loc[r.Index]
        miss.append(
            {
                "entry": r.entry,
                "method": r.method,
                "labels": r.labels,
                "pair": r.pair,
                "seed": int(r.seed),
                "status": r.status,
                "detail": _missing_detail(row, rule),
                "run_id": r.run_id,
            }
        )
    missing = pd.DataFrame(miss, columns=MISSING_COLUMNS).sort_values(["entry", "pair", "seed"])
    return ok.copy(), planned, missing.reset_index(drop=True), notes


def source_weight_notes(runs: pd.DataFrame, every: pd.DataFrame) -> list[str]:
    """A note naming the shown runs trained from other source-only weights than those of the
    source-only record beside them (``[]`` when there are none).

    A linear probe or fine-tune names the weights it loaded (record ``source_weights``), a
    source-only run the weights it left (``weights_sha256``). They differ when the source-only run
    was recreated or rerun after its dependants finished and did not reproduce its weights (a GPU,
    a seed batch): the table would then pair rows of two sets of weights. ``dabench run`` on the
    folder reruns such dependants (running/scheduler.py ``stale_source``); records of an older
    dabench name no weights and are not judged. ``every``: all of the folder's runs (the source-only
    record looked up by run id, whether or not it is shown)."""
    if "source_sha256" not in runs or "weights_sha256" not in every:
        return []
    left = {
        (d, r): w
        for d, r, w in zip(every["source_dir"], every["run_id"], every["weights_sha256"])
        if isinstance(w, str)
    }
    other = sorted(
        str(r)
        for d, r, dep, w in zip(runs["source_dir"], runs["run_id"], runs["depends_on"], runs["source_sha256"])
        if isinstance(w, str) and isinstance(dep, str) and left.get((d, dep), w) != w
    )
    if not other:
        return []
    folders = sorted({str(d) for d, r in zip(runs["source_dir"], runs["run_id"]) if str(r) in other})
    return [
        f"{len(other)} run(s) were trained from other source-only weights than the source-only record shown "
        f"beside them (recreated or rerun since): {', '.join(other[:8])}{' ...' if len(other) > 8 else ''}; "
        f"a resume reruns them: " + "; ".join(f"dabench run --results {d} (same matrix)" for d in folders) + "."
    ]


#: how a provenance note names each kind of difference (other version keys: "<key> versions")
_PROVENANCE_LABELS = {"dabench": "dabench versions", "git_commit": "dabench git commits", "device": "devices"}
#: the kinds in the order the notes list them; the other recorded version keys follow, sorted
_PROVENANCE_FIRST = ("dabench", "git_commit", "torch", "device")
UNKNOWN = "unknown"


def run_provenance(versions: Any, device: Any) -> dict[str, str]:
    """What made one run's numbers, kind -> value: every recorded version (``dabench``, ``torch``,
    ``python``, ``numpy`` ...), the git commit (7 characters, ``+dirty`` when the record marks
    uncommitted changes: ``git_dirty``, since that code exists in no commit) and the device
    (``NVIDIA H100 80GB HBM3``, ``cpu (16 cores)``). A value the record lacks is ``unknown``:
    a run of unknown provenance is not known to agree with the others."""
    v = versions if isinstance(versions, dict) else {}
    out = {k: UNKNOWN if x is None else str(x) for k, x in v.items() if k not in ("git_commit", "git_dirty")}
    out["git_commit"] = commit_label(v) or UNKNOWN
    out["device"] = UNKNOWN if device is None or (isinstance(device, float) and math.isnan(device)) else str(device)
    return out


def _provenance_kinds(runs: pd.DataFrame) -> tuple[list[str], list[dict[str, str]]]:
    """(the kinds of provenance on which ``runs`` differ, in note order; every run's values)."""
    provs = [run_provenance(v, d) for v, d in zip(runs["versions"], runs["device"])]
    keys = set().union(*provs) if provs else set()
    order = [k for k in _PROVENANCE_FIRST if k in keys] + sorted(keys - set(_PROVENANCE_FIRST))
    return [k for k in order if len({p.get(k, UNKNOWN) for p in provs}) > 1], provs


def _ranked(values: list[str]) -> list[tuple[str, int]]:
    """(value, runs) most runs first; equal counts by value, so a note reads the same on every load."""
    return sorted(pd.Series(values).value_counts(sort=False).items(), key=lambda kv: (-kv[1], kv[0]))


def _runs(n: int) -> str:
    return f"{n} run{'s' if n != 1 else ''}"


def provenance_notes(runs: pd.DataFrame, limit: int = 4) -> list[str]:
    """One note per kind of provenance on which the runs in the means differ, [] when all agree.

    A leaderboard compares numbers; numbers made by different code (dabench version, git commit,
    a dirty work tree), libraries (torch, numpy ...) or hardware (cpu vs cuda, two GPU models)
    differ for reasons no table shows, so each such kind is named with how many runs each value
    has and, for every value but the most common, which rows hold them, e.g. "Mixed provenance:
    runs from 2 dabench git commits: a1b2c3d (12 runs), d4e5f6a (6 runs: dann, coral)."
    ``runs`` are the complete runs of the table with their row name ``entry``.
    """
    if runs.empty:
        return []
    notes = []
    entries = [str(e) for e in runs["entry"]] if "entry" in runs else [str(m) for m in runs["method"]]
    kinds, provs = _provenance_kinds(runs)
    for kind in kinds:
        values = [p.get(kind, UNKNOWN) for p in provs]
        ranked = _ranked(values)
        parts = []
        for i, (value, n) in enumerate(ranked):
            text = f"{value} ({_runs(n)}"
            if i:  # the rows holding a minority value: where the table mixes provenance
                rows = list(dict.fromkeys(e for e, x in zip(entries, values) if x == value))
                text += ": " + ", ".join(rows[:limit]) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
            parts.append(text + ")")
        label = _PROVENANCE_LABELS.get(kind, f"{kind} versions")
        notes.append(f"Mixed provenance: runs from {len(ranked)} {label}: {', '.join(parts)}.")
    return notes + plugin_code_notes(runs, limit)


#: a run of a plugin whose record names no ``plugin_code`` (an older dabench): not known to agree
UNRECORDED = "unrecorded"


def code_version(code: Any) -> str:
    """One version of a plugin's code as notes name it: the first 8 hex digits of its file's
    sha256, after the package's ``name version`` for an installed entry point."""
    if not isinstance(code, dict):
        return UNRECORDED
    sha = str(code.get("sha256") or UNKNOWN)[:8]
    return f"{code['package']} {sha}" if code.get("package") else sha


def _plugin_mixes(runs: pd.DataFrame) -> list[tuple[str, str, str, list[str]]]:
    """The plugin methods and pairs of ``runs`` whose runs were made by more than one version of
    their code: ``(kind, name, file, each run's version)`` with ``[]`` ... for the other runs.

    A method is grouped by its name (every row of it), a pair by its name (its column): two
    versions of either inside one table compare numbers of two different codes. A name with no
    ``plugin_code`` in any record (a built-in, or records of an older dabench) has nothing to mix."""
    if "plugin_code" not in runs or runs.empty:
        return []
    codes = [c if isinstance(c, dict) else {} for c in runs["plugin_code"]]
    out = []
    for kind in ("method", "pair"):
        names = [str(x) for x in runs[kind]]
        for name in dict.fromkeys(names):
            mine = [i for i, x in enumerate(names) if x == name]
            if not any(isinstance(codes[i].get(kind), dict) for i in mine):
                continue
            versions = [code_version(codes[i].get(kind)) if i in mine else "" for i in range(len(codes))]
            if len({versions[i] for i in mine}) > 1:
                files = [codes[i][kind].get("file") for i in mine if isinstance(codes[i].get(kind), dict)]
                out.append((kind, name, str(files[-1] or UNKNOWN), versions))
    return out


def plugin_code_notes(runs: pd.DataFrame, limit: int = 4) -> list[str]:
    """One note per plugin method or pair whose runs in the means were made by two or more versions
    of its code (record ``plugin_code``: the sha256 of the plugin's file, or its package version),
    [] when none is (built-ins carry no ``plugin_code``: a folder of built-ins gets nothing).

    A run id is its spec, not its code: after an edit of a plugin, a resume keeps the old version's
    runs (named when it resumes, ``scheduler.plugin_code_note``) and adds the new version's, and
    a row would average both silently. The note names each version with its runs and rows, the
    version of the most recently finished run, and the runs of the other versions to remake with
    ``dabench run --rerun`` (which runs them with the plugin code loaded then).
    """
    notes = []
    entries = [str(e) for e in runs["entry"]] if "entry" in runs else [str(m) for m in runs["method"]]
    finished = list(runs["finished_at"]) if "finished_at" in runs else [None] * len(runs)
    ids, dirs = [str(r) for r in runs["run_id"]], [str(d) for d in runs["source_dir"]]
    for kind, name, file, versions in _plugin_mixes(runs):
        mine = [i for i, v in enumerate(versions) if v]
        parts = []
        for value, n in _ranked([versions[i] for i in mine]):
            rows = list(dict.fromkeys(entries[i] for i in mine if versions[i] == value))
            more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
            parts.append(f"{value} ({_runs(n)}: {', '.join(rows[:limit])}{more})")
        # the version of the last run to finish: most likely the code loaded now
        dated = [i for i in mine if isinstance(finished[i], str)]
        # finished_at has whole seconds: runs of two versions finishing in the same second leave
        # the latest undecided, and the note then says so rather than guess which code is current
        top = max((str(finished[i]) for i in dated), default=None)
        newest = sorted({versions[i] for i in dated if str(finished[i]) == top})
        latest = newest[0] if len(newest) == 1 else (None if newest else _ranked(versions)[0][0])
        redo: dict[str, list[str]] = {}
        for i in mine:
            if latest is not None and versions[i] != latest:
                redo.setdefault(dirs[i], []).append(ids[i])
        fix = "; ".join(
            f"dabench run --results {d} "
            + " ".join(f"--rerun {r}" for r in rids[:3])
            + (" ..." if len(rids) > 3 else "")
            for d, rids in redo.items()
        )
        if latest is None:
            said = (
                f"the newest runs finished in the same second under versions {' and '.join(newest)}, so which "
                "is the plugin's current code is not known. To average one version, remake the other versions' "
                "runs (dabench run --rerun RUN_ID, with the plugin's current code), or rerun the matrix into a "
                "new --results folder."
            )
        else:
            said = (
                f"the latest run's version is {latest}. To average one version, remake the others' runs with "
                f"the plugin's current code: {fix}, or rerun the matrix into a new --results folder."
            )
        notes.append(
            f"Mixed provenance: runs from {len(parts)} versions of plugin {kind} '{name}' ({file}): "
            f"{', '.join(parts)}; {said}"
        )
    return notes


def row_provenance(runs: pd.DataFrame) -> dict[str, str]:
    """Per row name (``entry``): the values of each kind of provenance on which the table's runs
    differ, e.g. ``git_commit=d4e5f6a (3 runs); device=cpu (16 cores) (3 runs)``; "" when the
    table's runs all agree (leaderboard.csv's ``provenance`` column)."""
    if not len(runs):
        return {}
    kinds, provs = _provenance_kinds(runs)
    mixes = _plugin_mixes(runs)
    entries = [str(x) for x in runs["entry"]]
    out: dict[str, str] = {}
    for e in dict.fromkeys(entries):
        mine = [p for p, x in zip(provs, entries) if x == e]
        parts = [
            f"{kind}=" + ", ".join(f"{v} ({_runs(n)})" for v, n in _ranked([p.get(kind, UNKNOWN) for p in mine]))
            for kind in kinds
        ]
        # a plugin method or pair made by several versions of its code: this row's runs of it, by version
        for kind, name, _, versions in mixes:
            held = [v for v, x in zip(versions, entries) if x == e and v]
            if held:
                parts.append(f"plugin_{kind} {name}=" + ", ".join(f"{v} ({_runs(n)})" for v, n in _ranked(held)))
        out[e] = "; ".join(parts)
    return out


def missing_markdown(missing: pd.DataFrame, limit: int = 40) -> list[str]:
    """Lines listing the planned runs left out of the means (for the text report), one per run:
    ``- row | pair | seed N | status | error / reason``.

    Each field is plain text shown as it is (:func:`~dabench.analysis.render.md_text`): a failing
    run's error message may hold ``|`` (read as one more field), backticks, ``<``, ``*``, ``_`` or
    line breaks, which would otherwise open a code span or emphasis, pass as raw HTML, or end the
    line; escaped, the bars between the fields are the line's only bare ones."""
    if missing.empty:
        return []
    lines = ["", f"### Runs not in the means ({len(missing)})", ""]
    for r in missing.head(limit).itertuples():
        entry, pair, status, detail = (md_text(v) for v in (r.entry, r.pair, r.status, r.detail))
        lines.append(f"- {entry} | {pair} | seed {r.seed} | {status} | {detail}")
    if len(missing) > limit:
        lines.append(f"- … and {len(missing) - limit} more (see report.html)")
    return lines


def leaderboard(
    df: pd.DataFrame, rule: str = "last", level: float = 0.95, where: list[str] | dict | None = None
) -> Leaderboard:
    """Build the leaderboard of ``df`` (from :func:`~dabench.analysis.results.load_results`) under ``rule``.

    ``where`` (``["steps=2000"]`` or ``{"steps": 2000}``) keeps only matching configurations,
    see :func:`dabench.analysis.results.filter_runs`.
    """
    title = f"Target accuracy (%) — selection rule: {rule_title(rule)}"
    sel, planned, missing, notes = prepare(df, rule, where)
    if len(missing):
        # a complete run is missing only because its curve has no (finite) score for the rule
        counts = missing["status"].replace({"complete": f"complete without a score for rule {rule!r}"}).value_counts()
        notes.append(
            f"{len(missing)} planned run(s) without a result (failed/diverged/running/skipped/pending, "
            "or no score for the rule) are left out of the means: "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
            + "; listed below."
        )
    if sel.empty:
        empty = pd.DataFrame()
        return Leaderboard(rule, title, empty, pd.DataFrame(), pd.DataFrame(), empty, empty, (), tuple(notes), missing)

    pairs = tuple(sorted(planned["pair"].astype(str).unique()))

    # ---- per-cell statistics -------------------------------------------------------
    rows = []
    for r in planned.itertuples(index=False):
        g = sel[(sel["entry"] == r.entry) & (sel["pair"] == r.pair)]
        m, s, lo, hi = mean_ci(g["accuracy"].to_numpy(), level)
        rows.append(
            {
                "entry": r.entry,
                "method": r.method,
                "labels": r.labels,
                "pair": r.pair,
                "n": len(g),
                "planned": r.n_planned,
                # a cell the rule may not select misses no seed: it has nothing to complete
                "complete": len(g) == r.n_planned or bool(r.not_applicable),
                "not_applicable": r.not_applicable,  # why the rule may not select it; "" if it may
                "mean": m,
                "std": s,
                "ci_low": lo,
                "ci_high": hi,
                "by_seed": dict(zip(g["seed"].tolist(), g["accuracy"].tolist())),  # seed → accuracy
                "seeds": tuple(sorted(int(x) for x in g["seed"].dropna())),
            }
        )
    cells = pd.DataFrame(rows)
    cells["best"] = False
    cells["tied"] = False
    cells["p_vs_best"] = np.nan
    cells["p_vs_best_holm"] = np.nan
    cells["test_vs_best"] = ""  # seed_test's name: paired t, paired t (common seeds), Welch t
    cells["seeds_vs_best"] = 0  # seeds paired with the best's (0: Welch or untested)
    cells["rank"] = np.nan
    partial_pairing: list[str] = []
    unranked_columns: list[str] = []  # columns without a complete cell: ranked among incomplete ones
    budgets_shown = cells["labels"].nunique() > 1
    for key, g in cells.groupby(["labels", "pair"]):
        g = g[g["n"] > 0]
        if g.empty:
            continue
        eligible = g[g["complete"]]  # a cell missing seeds is never called best or tied
        cells.loc[g.index, "rank"] = _ranks_among(g["mean"], eligible["mean"])
        if eligible.empty:
            if len(g) > 1:  # a run cut short: ranks among survivors only, said in a note
                unranked_columns.append(f"{key[1]}" + (f" (budget {key[0]})" if budgets_shown else ""))
            continue
        top = eligible["mean"].max()
        # every complete cell equal to the best mean is best (bold), as the avg/rank columns mark ties
        bests = eligible.index[tie_safe(eligible["mean"]) == tie_safe(top)]
        cells.loc[bests, "best"] = True
        b = bests[0]
        others = [i for i in g.index if i not in bests]
        worse: dict[int, bool] = {}
        for i in others:
            # the same test as the per-pair comparison (seed_test): paired by seed on the seeds both have
            t = seed_test(cells.at[i, "by_seed"], cells.at[b, "by_seed"])
            cells.at[i, "p_vs_best"] = t.p
            cells.at[i, "test_vs_best"] = t.test
            cells.at[i, "seeds_vs_best"] = t.seeds
            # "worse" on the runs tested: paired on common seeds, a cell can beat the best there
            worse[i] = tie_safe(t.mean_a) < tie_safe(t.mean_b)
            if t.test != PAIRED and t.test and cells.at[i, "complete"]:
                how = (
                    f"paired on the {t.seeds} common seeds" if t.test == PAIRED_COMMON else "Welch t (< 2 common seeds)"
                )
                partial_pairing.append(
                    f"{cells.at[i, 'entry']} vs {cells.at[b, 'entry']} on {cells.at[i, 'pair']}: {how}"
                )
        # Holm over the column's comparisons with its best (its complete cells: a cell missing
        # seeds is never marked and never changes another's mark); † = not (adjusted p < α and
        # worse on the runs tested)
        family = [i for i in others if cells.at[i, "complete"] and not math.isnan(cells.at[i, "p_vs_best"])]
        for i, q in zip(family, holm([cells.at[i, "p_vs_best"] for i in family])):
            cells.at[i, "p_vs_best_holm"] = q
            cells.at[i, "tied"] = not (q < ALPHA and worse[i])  # q < α: as the per-pair table's "significant"

    # ---- per-row summary -----------------------------------------------------------
    summ = []
    for entry, c in cells.groupby("entry", sort=False):
        c = c[c["n"] > 0]
        if c.empty:
            c = cells[cells["entry"] == entry]
        allp = set(c["pair"]) == set(pairs) and (c["n"] > 0).all()
        seeds_n = sorted(set(c["n"]))
        summ.append(
            {
                "entry": entry,
                "method": c["method"].iloc[0],
                "labels": c["labels"].iloc[0],
                "seeds": str(seeds_n[0]) if len(seeds_n) == 1 else f"{seeds_n[0]}–{seeds_n[-1]}",
                "avg": float(c["mean"].mean()) if allp else math.nan,
                "rank": float(c["rank"].mean()) if c["rank"].notna().any() else math.nan,
                "n_pairs": int((c["n"] > 0).sum()),
                "incomplete": not bool(cells.loc[cells["entry"] == entry, "complete"].all()),
                "not_applicable": cells.loc[cells["entry"] == entry, "not_applicable"].iloc[0],
            }
        )
    summary = pd.DataFrame(summ).set_index("entry")
    prov = row_provenance(sel)  # what differs between the table's runs, per row (leaderboard.csv)
    summary["provenance"] = [prov.get(str(e), "") for e in summary.index]
    if (summary["avg"].isna() & (summary["not_applicable"] == "")).any():
        notes.append("avg is shown only for rows with results on every pair.")
    # a rank averages the pairs a row has: rows with fewer pairs than their budget are ranked on other
    # pairs, so they are never the best rank nor ordered above the rows that have every pair
    budget_pairs = cells[cells["n"] > 0].groupby("labels")["pair"].nunique()
    summary["all_pairs"] = [n == budget_pairs.get(lab, -1) for n, lab in zip(summary["n_pairs"], summary["labels"])]
    partial = summary[~summary["all_pairs"] & (summary["not_applicable"] == "") & (summary["n_pairs"] > 0)]
    if len(partial):
        notes.append(
            "rank averages only the pairs a row has; rows missing pairs of their budget ("
            + ", ".join(map(str, partial.index))
            + ") are listed after the others and never marked best rank."
        )
    # Gain over source-only: same pairs, source-only's UDA row (budget "0"); with several
    # source-only configurations the gain is against the first (named in a note).
    so_entry, so = source_only_baseline(cells)
    several = cells.loc[cells["method"].isin(SOURCE_ONLY) & (cells["labels"] == "0"), "entry"].nunique() > 1
    # one row of budget 0 for every budget: a few-shot row's gain includes what its target labels bring
    budgets = (cells["labels"] != "0").any()
    if so_entry is not None and (several or budgets):
        every = " (0 target labels) in every budget" if budgets else ""
        notes.append(f"gain vs source-only is against the row {so_entry!r}{every}.")
    has_gain = not so.empty
    gains = []
    for entry in summary.index:
        c = cells[(cells["entry"] == entry) & (cells["n"] > 0)].set_index("pair")["mean"]
        common = c.index.intersection(so.index)
        is_so = summary.at[entry, "method"] in SOURCE_ONLY and summary.at[entry, "labels"] == "0"
        gains.append(math.nan if (is_so or len(common) == 0) else float((c[common] - so[common]).mean()))
    summary["gain"] = gains
    summary = summary.loc[
        sorted(
            summary.index,
            key=lambda e: (
                budget_key(summary.at[e, "labels"]),
                summary.at[e, "method"] not in SOURCE_ONLY,
                not summary.at[e, "all_pairs"],
                float(tie_safe(summary.at[e, "rank"])) if not math.isnan(summary.at[e, "rank"]) else math.inf,
                e,
            ),
        )
    ]
    summary.index.name = "method"

    # ---- display strings + marks ---------------------------------------------------
    na_rows = summary["not_applicable"]
    table = pd.DataFrame(index=summary.index)
    table["labels"] = summary["labels"]
    table["seeds"] = summary["seeds"]
    best = pd.DataFrame(False, index=summary.index, columns=[])
    best["labels"] = False
    best["seeds"] = False
    tied = best.copy()
    for p in pairs:
        col, bcol, tcol = [], [], []
        for entry in summary.index:
            c = cells[(cells["entry"] == entry) & (cells["pair"] == p)]
            if c.empty:
                col.append("–")
                bcol.append(False)
                tcol.append(False)
                continue
            c = c.iloc[0]
            if c["not_applicable"]:
                col.append(NOT_APPLICABLE)
                bcol.append(False)
                tcol.append(False)
                continue
            frac = "" if c["complete"] else f" ({c['n']}/{c['planned']})"
            if c["n"] == 0:
                col.append(f"–{frac}")
                bcol.append(False)
                tcol.append(False)
                continue
            ci = "" if math.isnan(c["ci_low"]) else f" [{c['ci_low']:.1f}, {c['ci_high']:.1f}]"
            col.append(f"{c['mean']:.1f} ± {_fmt(c['std'])}{ci}{frac}")
            bcol.append(bool(c["best"]))
            tcol.append(bool(c["tied"]))
        table[p], best[p], tied[p] = col, bcol, tcol
    star = ["*" if inc else "" for inc in summary["incomplete"]]
    table["avg"] = [
        NOT_APPLICABLE if na else _fmt(v) + (s if not math.isnan(v) else "")
        for v, s, na in zip(summary["avg"], star, na_rows)
    ]
    table["rank"] = [
        NOT_APPLICABLE if na else _fmt(v, 2) + (s if not math.isnan(v) else "")
        for v, s, na in zip(summary["rank"], star, na_rows)
    ]
    ok_rows = ~summary["incomplete"]
    best["avg"] = [b and o for b, o in zip(_best_within(summary[ok_rows].reindex(summary.index), "avg", True), ok_rows)]
    rank_rows = ok_rows & summary["all_pairs"]
    best["rank"] = [
        b and o for b, o in zip(_best_within(summary[rank_rows].reindex(summary.index), "rank", False), rank_rows)
    ]
    tied["avg"] = tied["rank"] = False
    if has_gain:
        # a gain over a cell missing seeds (the row's or the baseline's) is over survivors: starred like avg
        so_incomplete = bool(summary.at[so_entry, "incomplete"]) if so_entry in summary.index else False
        table["gain vs source-only"] = [
            NOT_APPLICABLE if na else ("–" if math.isnan(v) else f"{v:+.1f}" + ("*" if inc or so_incomplete else ""))
            for v, na, inc in zip(summary["gain"], na_rows, summary["incomplete"])
        ]
        best["gain vs source-only"] = tied["gain vs source-only"] = False
    if (~cells["complete"]).any():
        notes.append(
            "(k/n) = k of the n planned seeds completed; the mean is over those k. Such a cell is "
            "never marked best or †, and its row's avg, rank and gain carry * (every gain does when "
            "the source-only row misses seeds)."
        )
    if unranked_columns:
        notes.append(
            "No cell of "
            + ", ".join(unranked_columns)
            + " completed all its planned seeds: ranks there are among those incomplete cells, each over its "
            "completed seeds (starred, never the best rank), not places among complete results."
        )
    ran = cells[cells["n"] > 0]
    if any((g["n"] == 1).any() and len(g) > 1 for _, g in ran.groupby(["labels", "pair"])):
        # no † is not "significantly worse" here: a one-seed mean has no spread to test with
        notes.append("A cell or best with one seed cannot be tested: its column shows no † either way.")
    if partial_pairing:
        notes.append(
            "† tests pair runs by seed on the seeds both cells have; cells with other seeds too: "
            + "; ".join(partial_pairing)
            + "."
        )
    if (cells["n"] == 2).any():
        notes.append(
            "With 2 seeds the 95% t-interval is mean ± 12.7·s/√2 (t with 1 d.o.f.): too wide to inform; run ≥ 3 seeds."
        )
    if ((cells["ci_low"] == BOUNDS[0]) | (cells["ci_high"] == BOUNDS[1])).any():
        notes.append("Intervals are clipped to [0, 100].")
    return Leaderboard(rule, title, table, cells, summary, best, tied, pairs, tuple(notes), missing)


def source_only_baseline(cells: pd.DataFrame) -> tuple[str | None, pd.Series]:
    """The row every gain is measured against, and its mean per pair: the first ``source-only``
    row of the UDA budget ("0") with results, or (None, empty) when there is none.

    One row, never a pool: with several source-only configurations (e.g. two ``steps``) the
    gain column, the gain figure and their note all name the same one.
    """
    so = cells[cells["method"].isin(SOURCE_ONLY) & (cells["labels"] == "0") & (cells["n"] > 0)]
    if so.empty:
        return None, pd.Series(dtype=float)
    entry = str(so["entry"].iloc[0])
    return entry, so[so["entry"] == entry].set_index("pair")["mean"]


def _ranks_among(means: pd.Series, complete: pd.Series) -> pd.Series:
    """Rank (1 = best, ties share the mean rank) of each of a column's ``means``; ``complete`` are
    the means of its complete cells.

    A complete cell's rank is its place among the complete cells only: a cell missing seeds never
    moves it (ranking the survivors of a diverged cell among the others would push every complete
    row below it down a place: its rank would depend on a result that does not exist). A cell
    missing seeds gets its place among all the column's cells, complete or not (1 + the cells
    above it + ½ per tie; starred where shown). Ranked among the complete cells alone, as before,
    incomplete cells between the same two complete ones all tied, and with no complete cell at all
    (a run cut short) every cell read rank 1.
    """
    ref_complete = tie_safe(complete.to_numpy(float))  # equal means tie, whatever their rounding noise
    ref_all = tie_safe(means.to_numpy(float))
    out = {}
    for i, m in means.items():
        m = tie_safe(m)
        ref = ref_complete if i in complete.index else ref_all
        ties = float(np.sum(ref == m)) - 1.0  # not counting itself (in its own reference either way)
        out[i] = 1.0 + float(np.sum(ref > m)) + ties / 2.0
    return pd.Series(out)


def _best_within(summary: pd.DataFrame, col: str, maximise: bool) -> list[bool]:
    """True for the best finite value of ``col`` within each label budget."""
    out = []
    for entry in summary.index:
        v = summary.at[entry, col]
        same = summary[summary["labels"] == summary.at[entry, "labels"]][col].dropna()
        if math.isnan(v) or same.empty:
            out.append(False)
        else:
            out.append(bool(tie_safe(v) == tie_safe(same.max() if maximise else same.min())))
    return out
