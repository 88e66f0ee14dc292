"""Leaderboard numbers, marks, budgets and exports on fake records with known numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats as sps

from dabench.analysis.results import load_results
from dabench.analysis.tables import leaderboard, mean_ci, welch_less_p
from fake_runs import write_matrix, write_run

UDA = {
    ("source-only", "a"): [60.0, 61.0, 62.0],
    ("source-only", "b"): [50.0, 51.0, 52.0],
    ("dann", "a"): [70.0, 71.0, 72.0],
    ("dann", "b"): [55.0, 56.0, 57.0],
    ("dan", "a"): [69.0, 71.0, 70.0],
    ("dan", "b"): [58.0, 60.0, 59.0],
}
SHOTS = {
    ("fine-tune", "a"): [90.0, 91.0, 92.0],
    ("fine-tune", "b"): [80.0, 81.0, 82.0],
    ("dann", "a"): [85.0, 86.0, 87.0],
    ("dann", "b"): [75.0, 76.0, 77.0],
}


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
    assert "mean ± sample std (n−1) over seeds" in lb.to_markdown()  # the legend names the ddof


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
    # rank within budget: pair a: dann(71)=1, so(61)=2 among the complete cells (dan's cell misses its
    # failed seed 9: it takes rank 2 there without displacing source-only); pair b: dan=1, dann=2, so=3
    assert lb.summary.loc["dann (0)", "rank"] == 1.5 and lb.summary.loc["source-only", "rank"] == 2.5
    assert lb.summary.loc["dan", "rank"] == 1.5
    assert lb.summary.loc["fine-tune", "rank"] == 1.0


def test_avg_and_gain_over_source_only(df):
    lb = leaderboard(df)
    s = lb.summary
    assert s.loc["dan", "avg"] == pytest.approx((70 + 59) / 2)
    assert s.loc["dan", "gain"] == pytest.approx((70 + 59) / 2 - (61 + 51) / 2)
    assert math.isnan(s.loc["source-only", "gain"])
    assert lb.table.loc["dan", "gain vs source-only"] == "+8.5*"  # dan's failed seed 9 on a: over survivors


def test_not_significantly_worse_mark_uses_two_sided_paired_t_with_holm(df, tmp_path):
    # Updated: the fixture's failed dan seed 9 on pair a now makes that cell 3/4 seeds, which is
    # never marked (the old test expected the mark, treating the failed seed as if never planned).
    # Updated again: two-sided (the best is picked by the same data) and Holm over the column.
    # Updated again: paired by seed (seed_test, the per-pair comparison's test), no longer Welch.
    clean = tmp_path / "clean"
    write_matrix(clean, UDA)
    lb = leaderboard(load_results(clean))
    # pair a: dann [70,71,72] best; dan [69,71,70] (seeds 0–2) mean 70 < 71 → paired t p;
    # source-only [60,61,62] is 10 below on every seed: constant differences, p = 0
    p = sps.ttest_rel([69, 71, 70], [70, 71, 72]).pvalue
    cell = lb.cells.set_index(["entry", "pair"]).loc[("dan", "a")]
    assert cell["p_vs_best"] == pytest.approx(p) and cell["test_vs_best"] == "paired t"
    assert cell["seeds_vs_best"] == 3
    assert cell["p_vs_best_holm"] == pytest.approx(p) and bool(cell["tied"]) == (p > 0.05)
    assert bool(lb.tied.loc["dan", "a"]) == (p > 0.05)
    inc = leaderboard(df).cells.set_index(["entry", "pair"]).loc[("dan", "a")]
    assert inc["p_vs_best"] == pytest.approx(p) and not inc["tied"] and (inc["n"], inc["planned"]) == (3, 4)
    assert math.isnan(inc["p_vs_best_holm"])  # a cell missing seeds is outside the column's family
    assert not lb.tied.loc["source-only", "a"]  # 10 points worse with sd 1: significant
    assert math.isnan(welch_less_p([1.0], [2.0, 3.0]))  # one seed: untestable, not marked


def test_markdown_is_aligned_and_marks_best(df):
    md = leaderboard(df).to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len({len(r) for r in rows}) == 1, "columns must align in a terminal"
    assert "**71.0 ± 1.0" in md and "labels" in rows[0]
    assert "paired t-test by seed" in md and "1 planned run(s) without a result" in md and "1 failed" in md
    assert "selection rule: last" in md


def test_oracle_title_is_loud(df):
    lb = leaderboard(df, rule="oracle")
    assert "ORACLE" in lb.title and "upper bound" in lb.title
    assert "ORACLE" in lb.to_markdown() and "ORACLE" in lb.to_html() and "ORACLE" in lb.to_latex()
    # in the typeset table too: the title is a % comment, gone once the file is \input in a paper
    typeset = [line for line in lb.to_latex().splitlines() if not line.startswith("%")]
    assert any("ORACLE: selected on target test labels" in line for line in typeset), typeset
    assert not any("ORACLE" in line for line in leaderboard(df).to_latex().splitlines() if not line.startswith("%"))


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
    assert "<b>71.0 ± 1.0" in html and html.split("</table>")[0].count("<tr>") == 1 + len(lb.table)
    assert "<h3>Runs not in the means (1)</h3>" in html  # the failed seed, listed as in Markdown
    assert lb.to_html(full_page=True).startswith("<!DOCTYPE html>")
    csv = pd.read_csv(lb.to_csv(tmp_path / "lb.csv"))
    row = csv[(csv["method"] == "dan") & (csv["labels"] == "0")].iloc[0]
    assert row["a mean"] == pytest.approx(70.0) and row["b n"] == 3 and row["rule"] == "last"
    assert set(csv["labels"].astype(str)) == {"0", "5/class"}


def test_no_complete_runs(tmp_path):
    write_run(tmp_path, "bad", "dan", "a", 0, status="failed", error={"type": "E", "message": "m"})
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.empty and "no complete runs" in lb.to_markdown()


# ---- a row is a configuration, never a pool ------------------------------------------------
def _two_configs(folder, seeds: int = 3):
    """`dabench run` then `dabench run --set steps=2000` into one folder (the README's example)."""
    base = {
        ("source-only", "a"): [60.0 + i for i in range(seeds)],
        ("dann", "a"): [70.0 + i for i in range(seeds)],
        ("source-only", "b"): [50.0 + i for i in range(seeds)],
        ("dann", "b"): [55.0 + i for i in range(seeds)],
    }
    write_matrix(folder, base)
    write_matrix(
        folder, {k: [v + 10 for v in vals] for k, vals in base.items()}, prefix="long-", schedule={"steps": 2000}
    )
    return load_results(folder)


def test_two_configurations_are_two_rows_never_pooled(tmp_path):
    lb = leaderboard(_two_configs(tmp_path))
    assert set(lb.table.index) == {
        "source-only (steps=600)",
        "source-only (steps=2000)",
        "dann (steps=600)",
        "dann (steps=2000)",
    }
    c = lb.cells.set_index(["entry", "pair"])
    assert c.loc[("dann (steps=2000)", "a"), "mean"] == 81.0 and c.loc[("dann (steps=600)", "a"), "mean"] == 71.0
    assert (lb.cells["n"] == 3).all() and all(len(set(s)) == len(s) == 3 for s in lb.cells["seeds"])


def test_where_selects_one_configuration_and_unknown_keys_list_valid_ones(tmp_path):
    df = _two_configs(tmp_path)
    lb = leaderboard(df, where=["steps=2000"])
    assert list(lb.table.index) == ["source-only", "dann"]  # one configuration each: plain names
    assert lb.cells.set_index(["entry", "pair"]).loc[("dann", "a"), "mean"] == 81.0
    assert list(leaderboard(df, where={"method": "dann", "steps": 600}).table.index) == ["dann"]
    # a hyperparameter constrains only the methods that have it: the baseline stays
    df2 = load_results(tmp_path)
    assert len(leaderboard(df2, where=["lr=0.01", "dann.lr=0.01"]).table) == 4
    with pytest.raises(ValueError, match=r"unknown key 'stepz'.*valid keys: .*steps"):
        leaderboard(df, where=["stepz=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        leaderboard(df, where=["steps"])


def test_python_api_names_its_where_keyword_not_the_cli_flag(tmp_path):
    """dabench.leaderboard(where=...) and dabench.compare(where=...) are called from Python: their
    errors name ``where=``, which the caller wrote, not ``--where``, which the CLI spells."""
    import dabench

    df = _two_configs(tmp_path)
    for call in (dabench.leaderboard, dabench.compare):
        with pytest.raises(ValueError, match=r"^where='stepz=1': unknown key 'stepz'") as bad:
            call(df, where=["stepz=1"])
        assert "--where" not in str(bad.value)
        with pytest.raises(ValueError, match=r"^where='steps': expected KEY=VALUE"):
            call(df, where=["steps"])
        with pytest.raises(ValueError, match=r"^where='steps=7': no run matches"):
            call(df, where={"steps": 7})
    # the analysis functions the CLI reaches keep its spelling
    with pytest.raises(ValueError, match=r"^--where stepz=1: unknown key"):
        leaderboard(df, where=["stepz=1"])


def test_pair_default_schedules_share_a_row(tmp_path):
    # defaults differ by pair (600 vs 5000 steps) but nothing varies within a pair: one row
    write_matrix(tmp_path, {("dann", "a"): [70.0, 71.0]})
    write_matrix(tmp_path, {("dann", "b"): [50.0, 51.0]}, schedule={"steps": 5000})
    lb = leaderboard(load_results(tmp_path))
    assert list(lb.table.index) == ["dann"] and lb.summary.loc["dann", "avg"] == pytest.approx(60.5)
    assert "dann: steps (a=600, b=5000)" in lb.to_markdown()  # the row is said to span two settings


def test_a_hyperparameter_set_per_pair_is_named_under_the_row(tmp_path):
    """trade_off=0.3 on pair a, 1.0 on pair b: one row (nothing varies within a pair), and the legend
    says "a row is one configuration". It used to say nothing more; the note names the setting
    and each pair's value, so per-pair tuning never reads as one configuration."""
    write_matrix(tmp_path, {("dann", "a"): [70.0, 71.0, 72.0]}, hparams={"trade_off": 0.3})
    write_matrix(tmp_path, {("dann", "b"): [60.0, 61.0, 62.0]}, hparams={"trade_off": 1.0}, prefix="x")
    write_matrix(tmp_path, {("dan", "a"): [70.0, 71.0, 72.0], ("dan", "b"): [60.0, 61.0, 62.0]})
    lb = leaderboard(load_results(tmp_path))
    assert list(lb.table.index) == ["dan", "dann"]
    (note,) = [n for n in lb.notes if n.startswith("Rows whose settings differ between pairs")]
    assert note.endswith("dann: dann.trade_off (a=0.3, b=1.0).") and "dan:" not in note


# ---- no seed vanishes ------------------------------------------------------------------------
@pytest.fixture()
def diverged(tmp_path):
    """DANN diverges on seed 1 of pair a; its two surviving seeds are the best numbers of the pair."""
    write_matrix(
        tmp_path,
        {
            ("source-only", "a"): [60.0, 61.0, 62.0],
            ("source-only", "b"): [50.0, 51.0, 52.0],
            ("dan", "a"): [80.0, 81.0, 82.0],
            ("dan", "b"): [58.0, 60.0, 59.0],
            ("dann", "b"): [55.0, 56.0, 57.0],
        },
    )
    write_run(tmp_path, "dann-a-0", "dann", "a", 0, acc=90.0)
    write_run(
        tmp_path,
        "dann-a-1",
        "dann",
        "a",
        1,
        status="diverged",
        diverged_at_step=300,
        error={"type": "Diverged", "message": "loss is nan at step 300\nmore"},
    )
    write_run(tmp_path, "dann-a-2", "dann", "a", 2, acc=91.0)
    return tmp_path


def test_a_diverged_seed_is_shown_and_never_wins(diverged):
    lb = leaderboard(load_results(diverged))
    assert lb.table.loc["dann", "a"].endswith("(2/3)") and lb.table.loc["dann", "a"].startswith("90.5")
    assert not lb.best.loc["dann", "a"] and lb.best.loc["dan", "a"]  # the complete 81.0 is best
    assert lb.table.loc["dann", "avg"].endswith("*") and lb.table.loc["dann", "rank"].endswith("*")
    # its gain is over the survivors too: starred (it used to read a plain "+17.2")
    assert (
        lb.table.loc["dann", "gain vs source-only"] == "+17.2*"
        and lb.table.loc["dan", "gain vs source-only"] == "+14.0"
    )
    assert lb.table.loc["dan", "a"].endswith("]")  # complete cells carry no fraction
    m = lb.missing
    assert len(m) == 1 and (m.iloc[0]["entry"], m.iloc[0]["pair"], m.iloc[0]["seed"], m.iloc[0]["status"]) == (
        "dann",
        "a",
        1,
        "diverged",
    )
    md = lb.to_markdown()
    assert "- dann | a | seed 1 | diverged | non-finite loss at step 300; Diverged: loss is nan at step 300" in md
    assert "(k/n)" in md


def test_planned_seeds_come_from_matrix_json(diverged):
    # matrix.json (as `dabench run` writes it) plans seed 3 of dan on b, which has no record yet
    spec = json.loads((diverged / "runs" / "dan-b-0-0.json").read_text())["spec"]
    specs = [dict(spec, seed=s) for s in range(4)]
    (diverged / "matrix.json").write_text(json.dumps({"format": 1, "specs": specs}))
    lb = leaderboard(load_results(diverged))
    assert lb.table.loc["dan", "b"].endswith("(3/4)")
    row = lb.missing[lb.missing["status"] == "pending"].iloc[0]
    assert (row["entry"], row["pair"], row["seed"]) == ("dan", "b", 3) and "matrix.json" in row["detail"]
    assert lb.to_csv(diverged / "x.csv").read_text().splitlines()[0].count("planned") == 2


def test_load_results_takes_any_path_like(tmp_path):
    """``dabench.load_results`` promises ``str | os.PathLike``: a path-like that is not a ``Path``
    is one folder, not an iterable of folders (it used to be iterated and raise TypeError)."""

    class Folder:  # an os.PathLike that is not a pathlib.Path (e.g. a py.path.local)
        def __fspath__(self) -> str:
            return str(tmp_path)

    write_matrix(tmp_path, UDA)
    df = load_results(Folder())
    assert len(df) == len(load_results(tmp_path)) == sum(len(v) for v in UDA.values())


def test_a_cell_missing_seeds_never_moves_the_ranks_of_complete_rows(diverged):
    """dann's two surviving seeds on pair a (90.5) beat dan's complete 81.0. Ranking them among the
    complete cells used to push dan to rank 2 and source-only to 3 on pair a (dan's rank 1.50,
    source-only 2.50 over the two pairs): complete rows' ranks depended on a diverged cell. Now the
    complete rows rank among themselves; dann's cell gets the rank it would take, starred."""
    lb = leaderboard(load_results(diverged))
    cells = lb.cells.set_index(["entry", "pair"])["rank"]
    assert cells[("dan", "a")] == 1.0 and cells[("source-only", "a")] == 2.0
    assert cells[("dann", "a")] == 1.0  # where it would stand; it displaces nobody
    # pair b (all complete): dan 59 > dann 56 > source-only 51
    assert lb.summary.loc["dan", "rank"] == 1.0 and lb.summary.loc["source-only", "rank"] == 2.5
    assert lb.table.loc["dan", "rank"] == "1.00" and lb.best.loc["dan", "rank"]
    assert lb.table.loc["dann", "rank"] == "1.50*"


def test_equal_best_means_are_all_bold(tmp_path):
    """Two complete rows with the same best mean are both best (the avg column already marked both);
    the cell mark used to bold the first and give the other a †."""
    write_matrix(
        tmp_path,
        {("dan", "a"): [70.0, 71.0, 72.0], ("dann", "a"): [72.0, 71.0, 70.0], ("coral", "a"): [60.0, 61.0, 62.0]},
    )
    lb = leaderboard(load_results(tmp_path))
    assert lb.best.loc["dan", "a"] and lb.best.loc["dann", "a"] and not lb.best.loc["coral", "a"]
    assert not lb.tied.loc["dan", "a"] and not lb.tied.loc["dann", "a"]
    assert lb.best.loc["dan", "avg"] and lb.best.loc["dann", "avg"]
    md = lb.to_markdown()
    assert md.count("**71.0 ± 1.0") == 2


def test_every_gain_is_starred_when_the_source_only_baseline_misses_seeds(tmp_path):
    write_matrix(tmp_path, {("dann", "a"): [70.0, 71.0, 72.0], ("source-only", "a"): [60.0, 61.0]})
    write_run(tmp_path, "so-2", "source-only", "a", 2, status="failed", error={"type": "E", "message": "m"})
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.loc["source-only", "a"].endswith("(2/3)")
    assert lb.table.loc["dann", "gain vs source-only"] == "+10.5*"


def test_a_row_missing_pairs_is_never_the_best_rank(tmp_path):
    """coral ran on pair b only and wins it: its rank 1.00 averages one pair, the others' average two.
    It used to be bold as the best rank and listed first; it is now listed after the rows with every
    pair, never the best rank, and a note says why."""
    write_matrix(
        tmp_path,
        {
            ("dan", "a"): [70.0, 71.0, 72.0],
            ("dan", "b"): [60.0, 61.0, 62.0],
            ("dann", "a"): [65.0, 66.0, 67.0],
            ("dann", "b"): [64.0, 65.0, 66.0],
            ("coral", "b"): [80.0, 81.0, 82.0],
        },
    )
    lb = leaderboard(load_results(tmp_path))
    assert list(lb.table.index) == ["dan", "dann", "coral"]
    assert lb.table.loc["coral", "rank"] == "1.00" and not lb.best.loc["coral", "rank"]
    assert lb.best.loc["dan", "rank"] and lb.best.loc["dann", "rank"]  # both 2.00 over the two pairs
    assert any("rows missing pairs of their budget (coral)" in n for n in lb.notes)


def test_a_divergence_is_said_once(tmp_path):
    msg = "non-finite loss at step 3 (loss part 'ce' first non-finite at step 3)"
    write_matrix(tmp_path, {("dann", "a"): [70.0, 71.0]})
    write_run(
        tmp_path, "d", "dann", "a", 2, status="diverged", diverged_at_step=3, error={"type": "Diverged", "message": msg}
    )
    (m,) = leaderboard(load_results(tmp_path)).missing.itertuples()
    assert m.detail == f"Diverged: {msg}"


def test_a_one_seed_cell_without_dagger_is_said_untested(tmp_path):
    """dan has one seed (70.5) beside dann's best 71 ± 1: no † because no test is possible, which
    the legend used to leave reading as "significantly worse"."""
    write_matrix(tmp_path, {("dann", "a"): [70.0, 71.0, 72.0], ("dan", "a"): [70.5]})
    lb = leaderboard(load_results(tmp_path))
    assert not lb.tied.loc["dan", "a"] and math.isnan(lb.cells.set_index("entry").loc["dan", "p_vs_best"])
    assert "cannot be tested: its column shows no † either way" in lb.to_markdown()
    write_matrix(tmp_path / "two", {("dann", "a"): [70.0, 71.0, 72.0], ("dan", "a"): [70.5, 70.0]})
    assert not any("cannot be tested" in n for n in leaderboard(load_results(tmp_path / "two")).notes)


def test_columns_without_a_complete_cell_rank_their_cells_among_themselves(tmp_path):
    """A 3-seed run cut short at 2 seeds of every cell: each cell used to be ranked among the complete
    cells, of which there were none, so every row read rank "1.00*". They are now ranked among
    themselves (starred, never bold) and a note says the ranks are not places among complete results."""
    write_matrix(tmp_path, {("source-only", "a"): [60.0, 61.0], ("dann", "a"): [70.0, 71.0]})
    spec = json.loads((tmp_path / "runs" / "dann-a-0-0.json").read_text())["spec"]
    specs = [dict(spec, method=m, seed=s) for m in ("source-only", "dann") for s in range(3)]
    (tmp_path / "matrix.json").write_text(json.dumps({"format": 1, "specs": specs}))
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.loc["dann", "a"].endswith("(2/3)") and lb.table.loc["source-only", "a"].endswith("(2/3)")
    assert lb.table.loc["dann", "rank"] == "1.00*" and lb.table.loc["source-only", "rank"] == "2.00*"
    assert not lb.best["rank"].any() and not lb.best["a"].any()
    md = lb.to_markdown()
    assert "No cell of a completed all its planned seeds: ranks there are among those incomplete cells" in md
    # a column with a complete cell keeps the rule: incomplete cells take the place they would have
    write_run(tmp_path, "dann-a-0-2", "dann", "a", 2, acc=72.0)
    lb = leaderboard(load_results(tmp_path))
    assert lb.table.loc["dann", "rank"] == "1.00" and lb.table.loc["source-only", "rank"] == "2.00*"
    assert "No cell of" not in lb.to_markdown()


def test_cells_missing_seeds_are_ranked_among_all_cells_and_never_move_the_complete_ones(tmp_path):
    """One complete cell (source-only 61) and two cut short above it (dann 71, dan 66): ranked among the
    complete cell alone, both read rank 1 (tied with each other and with source-only). Each incomplete
    cell now takes its place among all three; source-only keeps its rank among the complete cells."""
    write_matrix(
        tmp_path, {("source-only", "a"): [60.0, 61.0, 62.0], ("dann", "a"): [70.0, 72.0], ("dan", "a"): [65.0, 67.0]}
    )
    for m in ("dann", "dan"):
        write_run(tmp_path, f"{m}-a-x", m, "a", 2, status="failed", error={"type": "E", "message": "m"})
    lb = leaderboard(load_results(tmp_path))
    ranks = lb.cells.set_index(["entry", "pair"])["rank"]
    assert (ranks[("dann", "a")], ranks[("dan", "a")], ranks[("source-only", "a")]) == (1.0, 2.0, 1.0)
    assert lb.table.loc["dan", "rank"] == "2.00*" and lb.table.loc["source-only", "rank"] == "1.00"
    assert lb.best.loc["source-only", "rank"] and not lb.best.loc["dann", "rank"]
