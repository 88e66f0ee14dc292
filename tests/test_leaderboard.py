"""Leaderboard numbers, marks, budgets and exports on fake records with known numbers."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as sps

from dabench.tables import leaderboard, mean_ci, welch_less_p
from dabench.results import load_results
from fake_runs import write_matrix, write_run

UDA = {("source-only", "a"): [60.0, 61.0, 62.0], ("source-only", "b"): [50.0, 51.0, 52.0],
       ("dann", "a"): [70.0, 71.0, 72.0], ("dann", "b"): [55.0, 56.0, 57.0],
       ("dan", "a"): [69.0, 71.0, 70.0], ("dan", "b"): [58.0, 60.0, 59.0]}
SHOTS = {("fine-tune", "a"): [90.0, 91.0, 92.0], ("fine-tune", "b"): [80.0, 81.0, 82.0],
         ("dann", "a"): [85.0, 86.0, 87.0], ("dann", "b"): [75.0, 76.0, 77.0]}


@pytest.fixture()
def df(tmp_path):
    write_matrix(tmp_path, UDA)
    write_matrix(tmp_path, SHOTS, shots=5)
    write_run(tmp_path, "bad", "dan", "a", 9, status="failed", error={"type": "E", "message": "m"})
    return load_results(tmp_path)


def test_cell_statistics_match_hand_computation(df):
    lb = leaderboard(df)
    c = lb.cells.set_index(["entry", "pair"]).loc[("source-only", "a")]
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # s = 1 for 60, 61, 62
    assert (c["n"], c["mean"], c["std"]) == (3, 61.0, 1.0)
    assert c["ci_low"] == pytest.approx(61 - half) and c["ci_high"] == pytest.approx(61 + half)
    assert lb.table.loc["source-only", "a"] == f"61.0 ± 1.0 [{61 - half:.1f}, {61 + half:.1f}]"


def test_budgets_are_separate_rows_and_never_mixed(df):
    lb = leaderboard(df)
    t = lb.table
    assert t.loc["dann (0)", "labels"] == "0" and t.loc["dann (5/class)", "labels"] == "5/class"
    assert t.loc["fine-tune", "labels"] == "5/class"
    # Best is per budget: dann (0) wins pair a among UDA rows although few-shot rows are higher.
    assert lb.best.loc["dann (0)", "a"] and lb.best.loc["fine-tune", "a"]
    assert not lb.best.loc["dann (5/class)", "a"]
    # Budget "0" first (source-only leading, then by rank, ties by name), then 5/class.
    assert list(t.index) == ["source-only", "dan", "dann (0)", "fine-tune", "dann (5/class)"]
    # rank within budget: pair a: dann(71)=1, dan(70)=2, so(61)=3; pair b: dan=1, dann=2, so=3
    assert lb.summary.loc["dann (0)", "rank"] == 1.5 and lb.summary.loc["source-only", "rank"] == 3.0
    assert lb.summary.loc["fine-tune", "rank"] == 1.0


def test_avg_and_gain_over_source_only(df):
    lb = leaderboard(df)
    s = lb.summary
    assert s.loc["dan", "avg"] == pytest.approx((70 + 59) / 2)
    assert s.loc["dan", "gain"] == pytest.approx((70 + 59) / 2 - (61 + 51) / 2)
    assert math.isnan(s.loc["source-only", "gain"])
    assert lb.table.loc["dan", "gain vs source-only"] == "+8.5"


def test_not_significantly_worse_mark_uses_one_sided_welch(df, tmp_path):
    # Updated: the fixture's failed dan seed 9 on pair a now makes that cell 3/4 seeds, which is
    # never marked (the old test expected the mark, treating the failed seed as if never planned).
    clean = tmp_path / "clean"
    write_matrix(clean, UDA)
    lb = leaderboard(load_results(clean))
    # pair a: dann [70,71,72] best; dan [69,71,70] equal mean 70 < 71 → Welch p
    p = sps.ttest_ind([69, 71, 70], [70, 71, 72], equal_var=False, alternative="less").pvalue
    cell = lb.cells.set_index(["entry", "pair"]).loc[("dan", "a")]
    assert cell["p_vs_best"] == pytest.approx(p) and bool(cell["tied"]) == (p > 0.05)
    assert bool(lb.tied.loc["dan", "a"]) == (p > 0.05)
    inc = leaderboard(df).cells.set_index(["entry", "pair"]).loc[("dan", "a")]
    assert inc["p_vs_best"] == pytest.approx(p) and not inc["tied"] and (inc["n"], inc["planned"]) == (3, 4)
    assert not lb.tied.loc["source-only", "a"]  # 10 points worse with sd 1: significant
    assert math.isnan(welch_less_p([1.0], [2.0, 3.0]))  # one seed: untestable, not marked


def test_markdown_is_aligned_and_marks_best(df):
    md = leaderboard(df).to_markdown()
    rows = [l for l in md.splitlines() if l.startswith("|")]
    assert len({len(r) for r in rows}) == 1, "columns must align in a terminal"
    assert "**71.0 ± 1.0" in md and "labels" in rows[0]
    assert "Welch" in md and "1 run(s) not complete" in md
    assert "selection rule: last" in md


def test_oracle_title_is_loud(df):
    lb = leaderboard(df, rule="oracle")
    assert "ORACLE" in lb.title and "upper bound" in lb.title
    assert "ORACLE" in lb.to_markdown() and "ORACLE" in lb.to_html() and "ORACLE" in lb.to_latex()


def test_one_seed_one_pair_does_not_crash(tmp_path):
    write_run(tmp_path, "x", "dann", "only", 0, acc=42.0)
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.loc["dann", "only"] == "42.0 ± –"
    assert lb.best.loc["dann", "only"]
    for text in (lb.to_markdown(), lb.to_latex(), lb.to_html()):
        assert "42.0" in text
    lb.to_csv(tmp_path / "x.csv")


def test_mean_ci_single_value():
    m, s, lo, hi = mean_ci([5.0])
    assert m == 5.0 and all(math.isnan(v) for v in (s, lo, hi))


def test_exports(df, tmp_path):
    lb = leaderboard(df)
    tex = lb.to_latex()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{71.0 $\\pm$ 1.0" in tex and "source-only" in tex
    assert tex.count("\\\\") == 1 + len(lb.table)  # header + one line per row
    html = lb.to_html()
    assert "<b>71.0 ± 1.0" in html and html.count("<tr>") == 1 + len(lb.table)
    assert lb.to_html(full_page=True).startswith("<!DOCTYPE html>")
    csv = pd.read_csv(lb.to_csv(tmp_path / "lb.csv"))
    row = csv[(csv["method"] == "dan") & (csv["labels"] == "0")].iloc[0]
    assert row["a mean"] == pytest.approx(70.0) and row["b n"] == 3 and row["rule"] == "last"
    assert set(csv["labels"].astype(str)) == {"0", "5/class"}


def test_no_complete_runs(tmp_path):
    write_run(tmp_path, "bad", "dan", "a", 0, status="failed", error={"type": "E", "message": "m"})
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.empty and "no complete runs" in lb.to_markdown()
