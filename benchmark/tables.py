"""Leaderboard: methods × pairs, mean ± std over seeds with a 95% CI, average, rank, gain.

Cell statistics (per method, label budget and pair, over the seeds' selected accuracies):

* mean and sample standard deviation (ddof = 1; shown as "–" with one seed);
* 95% confidence interval of the mean from the t distribution,
  mean ± t_{0.975, n−1} · s / √n (undefined, "–", with one seed).

Rows are (method, label budget): a method run with 0 and with 5 labels per class gives two
rows, and every row shows its budget in the ``labels`` column, so budgets never mix
silently. *Best* and *tied* marks, ranks and averages are computed **within one budget**.

Marks: the best mean of each column (within its budget) is **bold**; an entry that is *not
significantly worse* than that best is marked too (underlined in HTML/LaTeX, "†" in
Markdown/text). The test is a one-sided Welch t-test over seeds (unequal variances;
H1: the entry's mean is below the best's), p > 0.05 → not significantly worse. Entries with
fewer than two seeds, or whose best has fewer than two, cannot be tested and are not marked.

``avg`` is the mean over pairs of the per-pair means (shown only for rows that have every
pair of the table); ``rank`` is the average over pairs of the rank within the pair (1 =
best, ties share the mean rank); ``gain`` is ``avg`` minus the ``source-only`` row's
``avg`` (over the pairs both have).
"""
from __future__ import annotations

import csv
import html
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .selection import rule_title, select

SOURCE_ONLY = ("source-only", "source_only")
ALPHA = 0.05
TEST_NAME = "one-sided Welch t-test over seeds vs the column's best, p > 0.05"


def budget_key(labels: str) -> tuple[int, str]:
    """Sort key for label budgets: "0" first, then k/class by k."""
    try:
        return (int(str(labels).split("/")[0]), str(labels))
    except ValueError:
        return (10**9, str(labels))


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, ci_low, ci_high) of ``x`` with a t-distribution CI; std/CI NaN for n < 2."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    m = float(np.mean(x)) if n else math.nan
    if n < 2:
        return m, math.nan, math.nan, math.nan
    s = float(np.std(x, ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)
    return m, s, m - half, m + half


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


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


@dataclass(frozen=True)
class Leaderboard:
    """A selected-accuracy leaderboard; ``table`` holds the display strings.

    ``cells`` is the numeric long table (entry, method, labels, pair, n, mean, std, ci_low,
    ci_high, p_vs_best, best, tied); ``summary`` the per-row avg/rank/gain; ``best`` and
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

    # ---- text exports -------------------------------------------------------------
    def legend(self) -> list[str]:
        lines = [
            "Cells: mean ± std over seeds [95% t-interval of the mean]; accuracy in %.",
            f"Bold = best of the column within a label budget; † = not significantly worse "
            f"than the best ({TEST_NAME}).",
            "labels = target labels used per row (0 = unsupervised DA). Ranks, bests and gains "
            "are within a budget.",
        ]
        return lines + list(self.notes)

    def _marked(self, style: str) -> pd.DataFrame:
        def mark(text: str, best: bool, tied: bool) -> str:
            if style == "md":
                return f"**{text}**" if best else (f"{text} †" if tied else text)
            if style == "html":
                t = html.escape(text)
                return f"<b>{t}</b>" if best else (f"<u>{t}</u>" if tied else t)
            t = _tex_escape(text)
            return f"\\textbf{{{t}}}" if best else (f"\\underline{{{t}}}" if tied else t)

        out = self.table.copy().astype(object)
        for c in out.columns:
            out[c] = [mark(str(v), bool(b), bool(t))
                      for v, b, t in zip(self.table[c], self.best[c], self.tied[c])]
        return out

    def to_markdown(self) -> str:
        """A GitHub pipe table padded to align in a terminal, with title and legend."""
        head = [f"## {self.title}", ""]
        if self.table.empty:
            return "\n".join(head + ["(no complete runs)", *self.notes]) + "\n"
        t = self._marked("md")
        cols = [t.index.name or "method", *t.columns]
        rows = [[str(i), *map(str, r)] for i, r in zip(t.index, t.to_numpy())]
        widths = [max(len(c), *(len(r[j]) for r in rows)) for j, c in enumerate(cols)]
        fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [fmt(cols), sep, *(fmt(r) for r in rows)]
        return "\n".join(head + body + [""] + self.legend()) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def to_csv(self, path: str | Path) -> Path:
        """Machine-readable wide CSV: per pair mean/std/ci95 bounds/n, then avg, rank, gain."""
        path = Path(path)
        header = ["method", "labels", "seeds"]
        for p in self.pairs:
            header += [f"{p} mean", f"{p} std", f"{p} ci95_low", f"{p} ci95_high", f"{p} n"]
        header += ["avg", "rank", "gain_vs_source_only", "rule"]
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for entry, srow in self.summary.iterrows():
                row: list[object] = [srow["method"], srow["labels"], srow["seeds"]]
                for p in self.pairs:
                    c = self.cells[(self.cells["entry"] == entry) & (self.cells["pair"] == p)]
                    if c.empty:
                        row += ["", "", "", "", 0]
                    else:
                        c = c.iloc[0]
                        row += [_num(c["mean"]), _num(c["std"]), _num(c["ci_low"]),
                                _num(c["ci_high"]), int(c["n"])]
                row += [_num(srow["avg"]), _num(srow["rank"]), _num(srow["gain"]), self.rule]
                w.writerow(row)
        return path

    def to_latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), written by hand."""
        t = self._marked("tex")
        cols = [t.index.name or "method", *t.columns]
        spec = "l" + "c" * len(t.columns)
        lines = [
            f"% {self.title}",
            f"% {' '.join(self.legend())}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_tex_escape(str(c)) for c in cols) + " \\\\",
            "\\midrule",
        ]
        for i, r in zip(t.index, t.to_numpy()):
            lines.append(" & ".join([_tex_escape(str(i)), *map(str, r)]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def to_html(self, full_page: bool = False) -> str:
        """An HTML ``<table>`` (with caption and legend); ``full_page`` wraps it in a document."""
        t = self._marked("html")
        cols = [t.index.name or "method", *t.columns]
        parts = [f'<table class="leaderboard"><caption>{html.escape(self.title)}</caption>',
                 "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr></thead>",
                 "<tbody>"]
        for i, r in zip(t.index, t.to_numpy()):
            parts.append("<tr><th>" + html.escape(str(i)) + "</th>"
                         + "".join(f"<td>{v}</td>" for v in r) + "</tr>")
        parts.append("</tbody></table>")
        parts.append("<p class=\"legend\">" + "<br>".join(html.escape(x) for x in self.legend()).replace(
            "Bold", "<b>Bold</b>").replace("†", "<u>underlined</u>") + "</p>")
        body = "\n".join(parts)
        if not full_page:
            return body
        return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
                f"{html.escape(self.title)}</title></head><body>{body}</body></html>\n")


def _num(v: object) -> object:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
        "±": r"$\pm$", "–": "--", "—": "---", "†": r"$^\dagger$", "→": r"$\to$"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def _entry_names(pairs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Row names: the method, or "method (k/class)" when a method has several budgets."""
    counts = pairs.groupby("method")["labels"].nunique()
    return {(m, l): (m if counts[m] == 1 else f"{m} ({l})") for m, l in pairs.itertuples(index=False)}


def leaderboard(df: pd.DataFrame, rule: str = "last", level: float = 0.95) -> Leaderboard:
    """Build the leaderboard of ``df`` (from :func:`~dabench.results.load_results`) under ``rule``."""
    title = f"Target accuracy (%) — selection rule: {rule_title(rule)}"
    sel = select(df, rule)
    sel = sel[(sel["status"] == "complete") & sel["accuracy"].notna()]
    notes: list[str] = []
    n_other = int((df["status"] != "complete").sum()) if len(df) else 0
    if n_other:
        notes.append(f"{n_other} run(s) not complete (failed/diverged/running/skipped) are left out.")
    if sel.empty:
        empty = pd.DataFrame()
        return Leaderboard(rule, title, empty, pd.DataFrame(), pd.DataFrame(), empty, empty, (), tuple(notes))

    pairs = tuple(sorted(sel["pair"].astype(str).unique()))
    keys = sel[["method", "labels"]].drop_duplicates()
    names = _entry_names(keys)
    sel = sel.assign(entry=[names[(m, l)] for m, l in zip(sel["method"], sel["labels"])])

    # ---- per-cell statistics -------------------------------------------------------
    rows = []
    for (entry, method, labels, pair), g in sel.groupby(["entry", "method", "labels", "pair"], sort=False):
        m, s, lo, hi = mean_ci(g["accuracy"].to_numpy(), level)
        rows.append(dict(entry=entry, method=method, labels=labels, pair=pair, n=len(g), mean=m,
                         std=s, ci_low=lo, ci_high=hi, values=g["accuracy"].to_numpy(),
                         seeds=tuple(sorted(int(x) for x in g["seed"].dropna()))))
    cells = pd.DataFrame(rows)
    cells["best"] = False
    cells["tied"] = False
    cells["p_vs_best"] = np.nan
    cells["rank"] = np.nan
    for (labels, pair), g in cells.groupby(["labels", "pair"]):
        b = g["mean"].idxmax()
        cells.loc[b, "best"] = True
        cells.loc[g.index, "rank"] = g["mean"].rank(ascending=False, method="average")
        for i in g.index:
            if i == b:
                continue
            p = welch_less_p(cells.at[i, "values"], cells.at[b, "values"])
            cells.at[i, "p_vs_best"] = p
            cells.at[i, "tied"] = bool(p > ALPHA) if not math.isnan(p) else False

    # ---- per-row summary -----------------------------------------------------------
    summ = []
    for (method, labels), entry in names.items():
        c = cells[cells["entry"] == entry]
        complete = set(c["pair"]) == set(pairs)
        seeds_n = sorted(set(c["n"]))
        summ.append(dict(entry=entry, method=method, labels=labels,
                         seeds=str(seeds_n[0]) if len(seeds_n) == 1 else f"{seeds_n[0]}–{seeds_n[-1]}",
                         avg=float(c["mean"].mean()) if complete else math.nan,
                         rank=float(c["rank"].mean()), n_pairs=len(c)))
    summary = pd.DataFrame(summ).set_index("entry")
    if (~summary["avg"].notna()).any():
        notes.append("avg is shown only for rows with results on every pair.")
    # Gain over source-only: same pairs, source-only's UDA row (budget "0").
    so = cells[cells["method"].isin(SOURCE_ONLY) & (cells["labels"] == "0")].set_index("pair")["mean"]
    has_gain = not so.empty
    gains = []
    for entry in summary.index:
        c = cells[cells["entry"] == entry].set_index("pair")["mean"]
        common = c.index.intersection(so.index)
        is_so = summary.at[entry, "method"] in SOURCE_ONLY and summary.at[entry, "labels"] == "0"
        gains.append(math.nan if (is_so or len(common) == 0) else float((c[common] - so[common]).mean()))
    summary["gain"] = gains
    summary = summary.loc[sorted(summary.index, key=lambda e: (
        budget_key(summary.at[e, "labels"]), summary.at[e, "method"] not in SOURCE_ONLY,
        summary.at[e, "rank"], e))]
    summary.index.name = "method"

    # ---- display strings + marks ---------------------------------------------------
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
                col.append("–"); bcol.append(False); tcol.append(False)
                continue
            c = c.iloc[0]
            ci = "" if math.isnan(c["ci_low"]) else f" [{c['ci_low']:.1f}, {c['ci_high']:.1f}]"
            col.append(f"{c['mean']:.1f} ± {_fmt(c['std'])}{ci}")
            bcol.append(bool(c["best"])); tcol.append(bool(c["tied"]))
        table[p], best[p], tied[p] = col, bcol, tcol
    table["avg"] = [_fmt(v) for v in summary["avg"]]
    table["rank"] = [_fmt(v, 2) for v in summary["rank"]]
    best["avg"] = _best_within(summary, "avg", maximise=True)
    best["rank"] = _best_within(summary, "rank", maximise=False)
    tied["avg"] = tied["rank"] = False
    if has_gain:
        table["gain vs source-only"] = [("–" if math.isnan(v) else f"{v:+.1f}") for v in summary["gain"]]
        best["gain vs source-only"] = tied["gain vs source-only"] = False
    return Leaderboard(rule, title, table, cells, summary, best, tied, pairs, tuple(notes))


def _best_within(summary: pd.DataFrame, col: str, maximise: bool) -> list[bool]:
    """True for the best finite value of ``col`` within each label budget."""
    out = []
    for entry in summary.index:
        v = summary.at[entry, col]
        same = summary[summary["labels"] == summary.at[entry, "labels"]][col].dropna()
        if math.isnan(v) or same.empty:
            out.append(False)
        else:
            out.append(bool(v == (same.max() if maximise else same.min())))
    return out
