"""Edge cases of the report's statistics: ties by rounding noise, exact Wilcoxon with ties and
zeros, what Wilcoxon–Holm can attain with few blocks, and pairing by seed when seed sets differ."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from dabench.analysis.results import load_results
from dabench.analysis.stats import compare, wilcoxon_min_blocks, wilcoxon_p, wilcoxon_signed_rank
from dabench.analysis.tables import leaderboard, seed_test
from fake_runs import curve_from, write_matrix, write_run

# the same three accuracies in another seed order: mathematically equal means, whose float sums differ
A, B = [90.1, 90.2, 90.4], [90.1, 90.4, 90.2]


def test_fixture_means_differ_by_rounding_noise_only():
    assert np.mean(A) != np.mean(B) and abs(np.mean(A) - np.mean(B)) < 1e-12


def test_equal_means_share_rank_and_bold_in_leaderboard_and_friedman(tmp_path):
    """Used to rank dann 1 and coral 2 on every pair (float noise), while both were bold."""
    t = {}
    for p in ("p1", "p2"):
        t[("source-only", p)] = [80.0, 81.0, 82.0]
        t[("dann", p)] = A
        t[("coral", p)] = B
    write_matrix(tmp_path, t)
    df = load_results(tmp_path)
    lb = leaderboard(df)
    cells = lb.cells.set_index(["entry", "pair"])
    for p in ("p1", "p2"):
        assert cells.loc[("dann", p), "rank"] == cells.loc[("coral", p), "rank"] == 1.5
        assert cells.loc[("dann", p), "best"] and cells.loc[("coral", p), "best"]
    assert lb.summary.loc["dann", "rank"] == lb.summary.loc["coral", "rank"] == 1.5
    assert lb.best.loc["dann", "rank"] and lb.best.loc["coral", "rank"]
    assert lb.best.loc["dann", "avg"] and lb.best.loc["coral", "avg"]
    c = compare(df)
    (f,) = c.friedman
    assert f.avg_ranks["dann"] == f.avg_ranks["coral"] == 1.5
    w = c.wilcoxon.set_index(["a", "b"])
    row = w.loc[("dann", "coral")] if ("dann", "coral") in w.index else w.loc[("coral", "dann")]
    assert row["nonzero"] == 0 and row["p"] == 1.0  # no signed noise difference


def _brute_wilcoxon(d: np.ndarray) -> float:
    """Two-sided p by enumerating every sign assignment of the ranked non-zero |d| (zeros dropped)."""
    d = d[d != 0]
    r = sps.rankdata(np.abs(d))
    obs = min(r[d > 0].sum(), r[d < 0].sum())
    tp = np.array([r[np.array(s, bool)].sum() for s in itertools.product([0, 1], repeat=len(d))])
    return min(1.0, 2 * float(np.mean(tp <= obs + 1e-9)))


@pytest.mark.parametrize(
    "d",
    [
        [1.0, 1.0, 2.0, 2.0, 3.0],  # ties, every sign alike: 2/2^5
        [1.0, 2.0, 3.0, 4.0, 5.0, 0.0],  # one zero: n = 5
        [1.0, -1.0, 2.0, 2.0, -3.0, 3.0, 4.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, -4.0, 5.0, 6.0, 6.0, -1.0, 2.0],  # n = 14 with ties
        [0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0, 4.0, 4.5, 5.0, -0.5],  # n = 15 with ties
    ],
)
def test_wilcoxon_is_exact_with_ties_and_zeros(d):
    """Used to take scipy's normal approximation above 13 differences with ties (and with any
    zero on scipy < 1.13); the exact conditional test is what the report calls p."""
    d = np.asarray(d)
    x = 60.0 + d
    w = wilcoxon_signed_rank(x, np.full(len(d), 60.0))
    assert w.p == pytest.approx(_brute_wilcoxon(d), abs=1e-12)
    assert w.n == int((d != 0).sum())
    assert wilcoxon_p(x, np.full(len(d), 60.0))[1] == pytest.approx(w.p, abs=1e-12)


def test_wilcoxon_matches_scipy_without_ties_and_the_edges():
    rng = np.random.default_rng(3)
    for n in (2, 3, 6, 9, 20):
        x, y = rng.normal(50, 2, n), rng.normal(51, 2, n)
        w = wilcoxon_signed_rank(x, y)
        r = sps.wilcoxon(x, y, method="exact")
        assert w.p == pytest.approx(r.pvalue, abs=1e-12) and w.statistic == r.statistic
    w = wilcoxon_signed_rank(np.ones(4), np.ones(4))  # every difference zero
    assert (w.statistic, w.p, w.n) == (0.0, 1.0, 0)
    assert np.isnan(wilcoxon_p(np.ones(1), np.zeros(1))[1])  # one block: no test
    assert wilcoxon_signed_rank(np.array([61.0, 62.0]), np.array([60.0, 60.0])).p == 0.5  # n=2: 2/4


def test_wilcoxon_min_blocks():
    assert [wilcoxon_min_blocks(m, 0.05) for m in (1, 3, 6, 10, 15)] == [6, 7, 8, 9, 10]


def _four_methods_on(tmp_path, pairs: int):
    t = {}
    for i in range(pairs):
        for j, m in enumerate(("source-only", "dan", "dann", "coral")):
            t[(m, f"p{i}")] = [50.0 + 5 * j + i, 50.5 + 5 * j + i, 51.0 + 5 * j + i]
    write_matrix(tmp_path, t)
    return compare(load_results(tmp_path))


def test_wilcoxon_holm_says_when_nothing_can_be_significant(tmp_path):
    """4 methods (6 comparisons) on 6 pairs, perfectly ordered: each p = 2/64, Holm's smallest
    6 · 2/64 = 0.19. The old note only spoke below N = 6 and so said nothing here."""
    c = _four_methods_on(tmp_path, 6)
    assert np.allclose(c.wilcoxon["p"], 2 / 64) and not c.wilcoxon["significant"].any()
    (note,) = [n for n in c.notes if "Wilcoxon" in n]
    assert "N = 6 blocks" in note and "2/2^6 = 0.0312" in note and "needs N ≥ 8" in note


def test_wilcoxon_holm_note_absent_when_significance_is_attainable(tmp_path):
    c = _four_methods_on(tmp_path, 8)
    assert c.wilcoxon["significant"].all()  # 6 · 2/256 = 0.047 < 0.05
    assert not [n for n in c.notes if "Wilcoxon" in n]


def test_per_pair_pairs_on_common_seeds_and_says_so(tmp_path):
    """dann has seeds 0–5, source-only 1–6 (both complete). The test must pair seed s with
    seed s on the 5 common seeds (1–5), not run Welch on all and report "seeds = 6"."""
    so = {s: 50.0 + s for s in range(1, 7)}
    da = {s: 52.0 + s + (0.1 if s % 2 else -0.1) for s in range(6)}
    for s, a in so.items():
        write_run(tmp_path, f"so{s}", "source-only", "a", s, acc=a)
    for s, a in da.items():
        write_run(tmp_path, f"da{s}", "dann", "a", s, acc=a)
    c = compare(load_results(tmp_path))
    (row,) = c.per_pair.to_dict("records")
    common = [1, 2, 3, 4, 5]
    assert row["test"] == "paired t (common seeds)" and row["seeds"] == 5
    assert (row["n_a"], row["n_b"]) == (5, 5)
    expected = sps.ttest_rel([da[s] for s in common], [so[s] for s in common]).pvalue
    assert row["p"] == pytest.approx(expected)
    assert row["mean_a"] == pytest.approx(np.mean([da[s] for s in common]))


def test_nemenyi_separates_nothing_when_friedman_does_not_reject(tmp_path):
    """Ranks 1.25 … 3.75 over N = 4 pairs (k = 4): the asymptotic CD (2.35) separates the first
    from the last, but the exact Friedman p is 0.052. Used to print "No significant difference"
    beside a Nemenyi row marked significant and separate groups (and draw them in the CD diagram)."""
    ranks = [[3, 1, 4, 2], [4, 1, 3, 2], [4, 2, 1, 3], [4, 1, 2, 3]]  # rows: pairs; columns: methods
    names = ("source-only", "dan", "dann", "coral")
    t = {
        (m, f"p{i}"): [80.0 - 5 * r[j] + d for d in (0.0, 0.5, 1.0)]
        for i, r in enumerate(ranks)
        for j, m in enumerate(names)
    }
    write_matrix(tmp_path, t)
    c = compare(load_results(tmp_path))
    (f,) = c.friedman
    assert f.p_value == pytest.approx(0.0517, abs=1e-4) and not f.significant
    assert f.avg_ranks["source-only"] - f.avg_ranks["dan"] >= f.cd  # what the CD alone would separate
    assert not c.nemenyi["significant"].any()
    assert f.cliques == (tuple(f.avg_ranks.index),)  # one group: the CD diagram joins every method
    md = c.to_markdown()
    assert "no Nemenyi post-hoc comparison" in md and "Groups not separated" not in md


def test_iqm_is_per_pair_never_runs_pooled_across_pairs(tmp_path):
    """A hard pair with 6 seeds and an easy one with 4: pooling the 10 runs trimmed the hard
    pair's lowest and the easy pair's highest runs and weighted the hard pair by its seeds
    (45.8, beside a mean over pairs of 57.0). Per pair: IQMs 22.5 and 91.5, averaged 57.0."""
    for s, a in enumerate([20.0, 21.0, 22.0, 23.0, 24.0, 25.0]):
        write_run(tmp_path, f"h{s}", "dann", "hard", s, acc=a)
    for s, a in enumerate([90.0, 91.0, 92.0, 93.0]):
        write_run(tmp_path, f"e{s}", "dann", "easy", s, acc=a)
    (row,) = compare(load_results(tmp_path)).bootstrap.to_dict("records")
    assert row["mean"] == pytest.approx(57.0)
    assert row["iqm"] == pytest.approx((22.5 + 91.5) / 2)


def test_a_complete_run_with_a_non_finite_accuracy_is_missing_and_named(tmp_path):
    """A NaN or infinite final accuracy never enters a mean; the note used to count such runs as
    "2 run(s) not complete …: 2 complete"."""
    write_matrix(tmp_path, {("source-only", "a"): [50.0, 51.0, 52.0], ("dann", "a"): [60.0, 61.0, 62.0]})
    write_run(tmp_path, "dann-a-0-1", "dann", "a", 1, curve=curve_from([float("nan")]))
    write_run(tmp_path, "dann-a-0-2", "dann", "a", 2, curve=curve_from([float("inf")]))
    with pytest.warns(UserWarning, match="no usable score"):
        lb = leaderboard(load_results(tmp_path))
    cell = lb.cells.set_index("entry").loc["dann"]
    assert (cell["n"], cell["planned"], cell["mean"]) == (1, 3, 60.0) and not cell["best"]
    (note,) = [n for n in lb.notes if "left out of the means" in n]
    assert "2 complete without a score for rule 'last'" in note


def test_pair_seed_blocks_are_the_seeds_every_method_ran(tmp_path):
    """dann ran seeds 0–4 (another folder), source-only and dan 0–2: the pair × seed blocks
    are seeds 0–2 of each pair, said in a note. dann used to leave the tests ("missing blocks")."""
    t = {}
    for p in ("a", "b"):
        t[("source-only", p)] = [50.0, 51.0, 52.0]
        t[("dan", p)] = [55.0, 57.0, 56.0]
        t[("dann", p)] = [60.0, 61.0, 59.0, 40.0, 41.0]
    write_matrix(tmp_path, t)
    c = compare(load_results(tmp_path), blocks="pair-seed")
    (f,) = c.friedman
    assert set(f.avg_ranks.index) == {"source-only", "dan", "dann"} and f.n_blocks == 6
    assert list(f.avg_ranks.index) == ["dann", "dan", "source-only"]  # seeds 3, 4 of dann not blocks
    assert any("left out (4 of 10): a seed 3, a seed 4, b seed 3, b seed 4" in n for n in c.notes)
    assert not any("missing blocks" in n for n in c.notes)


def test_dagger_is_two_sided_because_the_best_is_picked_by_the_data(tmp_path):
    """Two methods: dann beats dan with one-sided p between 0.025 and 0.05, i.e. two-sided
    p between 0.05 and 0.1. The old one-sided test (in the direction the data chose) called dan
    significantly worse (no †): a two-sided test at α = 0.10. (Paired by seed since the † and
    the per-pair table share seed_test.)"""
    dann, dan = [70.0, 71.0, 72.0], [69.0, 69.0, 69.0]  # differences −1, −2, −3 on seeds 0–2
    one = sps.ttest_rel(dan, dann, alternative="less").pvalue
    assert 0.025 < one < 0.05
    write_matrix(tmp_path, {("dann", "a"): dann, ("dan", "a"): dan})
    lb = leaderboard(load_results(tmp_path))
    cell = lb.cells.set_index("entry").loc["dan"]
    assert cell["p_vs_best"] == pytest.approx(2 * one) and cell["tied"] and lb.tied.loc["dan", "a"]
    assert "two-sided paired t-test by seed" in lb.to_markdown() and "Holm over the column" in lb.to_markdown()


def test_dagger_is_holm_corrected_over_the_column(tmp_path):
    """Three cells below the best, each with two-sided p just under 0.05: uncorrected, none would
    get †; Holm over the column's three comparisons (smallest × 3 > 0.05) marks all three."""
    best = [80.0, 81.0, 82.0]
    t = {("best", "a"): best}
    worse = [78.0, 78.0, 78.0]  # 2, 3, 4 below on seeds 0, 1, 2
    p = sps.ttest_rel(worse, best).pvalue
    assert 0.01 < p < 0.05 and 3 * p > 0.05
    for m in ("m1", "m2", "m3"):
        t[(m, "a")] = worse
    write_matrix(tmp_path, t)
    cells = leaderboard(load_results(tmp_path)).cells.set_index("entry")
    assert (cells.loc[["m1", "m2", "m3"], "p_vs_best"] < 0.05).all()
    assert cells.loc[["m1", "m2", "m3"], "tied"].all()
    assert cells.loc[["m1", "m2", "m3"], "p_vs_best_holm"].to_numpy() == pytest.approx([3 * p] * 3)


def _correlated_seeds(tmp_path):
    """5 seeds whose difficulty moves both methods alike (sd ≈ 3.2 across seeds), dan 0.9–1.1
    below dann on every seed: Welch's unpaired p ≈ 0.63, the paired p ≈ 2e-5."""
    dann = [70.0, 74.0, 66.0, 72.0, 68.0]
    dan = [a - d for a, d in zip(dann, [0.9, 1.1, 1.0, 0.9, 1.1])]
    write_matrix(tmp_path, {("dann", "a"): dann, ("dan", "a"): dan})
    return dann, dan, load_results(tmp_path)


def test_dagger_and_per_pair_test_agree_on_correlated_seeds(tmp_path):
    """The old † (Welch, unpaired) marked dan "not significantly worse" while the per-pair table
    (paired by seed) called the same two cells significantly different. Both now run seed_test."""
    dann, dan, df = _correlated_seeds(tmp_path)
    welch = sps.ttest_ind(dan, dann, equal_var=False).pvalue
    paired = sps.ttest_rel(dan, dann).pvalue
    assert welch > 0.5 and paired < 1e-3  # the data on which the two tests disagree
    cell = leaderboard(df).cells.set_index("entry").loc["dan"]
    (row,) = compare(df).per_pair.to_dict("records")
    assert cell["p_vs_best"] == pytest.approx(paired) == pytest.approx(row["p"])
    assert (cell["test_vs_best"], row["test"]) == ("paired t", "paired t")
    assert row["significant"] and not cell["tied"]  # one verdict: significantly worse, no †


def test_dagger_pairs_on_common_seeds_and_says_so(tmp_path):
    """dann ran seeds 0–4, dan (a complete cell of its own folder) seeds 0–2: the † test pairs
    seeds 0–2 and a note says so (it used to run Welch on 3 vs 5 runs without a word)."""
    dann, dan, _ = _correlated_seeds(tmp_path / "x")
    for s, a in enumerate(dann):
        write_run(tmp_path, f"dann{s}", "dann", "a", s, acc=a)
    for s, a in enumerate(dan[:3]):
        write_run(tmp_path, f"dan{s}", "dan", "a", s, acc=a)
    lb = leaderboard(load_results(tmp_path))
    cell = lb.cells.set_index("entry").loc["dan"]
    assert cell["complete"] and cell["test_vs_best"] == "paired t (common seeds)" and cell["seeds_vs_best"] == 3
    assert cell["p_vs_best"] == pytest.approx(sps.ttest_rel(dan[:3], dann[:3]).pvalue)
    assert any("dan vs dann on a: paired on the 3 common seeds" in n for n in lb.notes)


def test_seed_test_edges_match_scipy_and_refuse_nan():
    """seed_test on hand-made data: scipy's paired / Welch p, the degenerate cases, and a
    failed run's NaN refused with a message naming the seed (never dropped, never read as 0)."""
    a, b = {0: 70.0, 1: 72.0, 2: 75.0, 3: 71.0}, {0: 69.0, 1: 70.5, 2: 74.8, 3: 68.0}
    t = seed_test(a, b)
    assert (t.test, t.seeds) == ("paired t", 4)
    assert t.p == pytest.approx(sps.ttest_rel(list(a.values()), list(b.values())).pvalue)
    w = seed_test({0: 70.0, 1: 72.0, 2: 75.0}, {5: 69.0, 6: 70.5, 7: 74.8})  # no common seed
    assert (w.test, w.seeds) == ("Welch t", 0)
    assert w.p == pytest.approx(sps.ttest_ind([70, 72, 75], [69, 70.5, 74.8], equal_var=False).pvalue)
    assert math.isnan(seed_test({0: 70.0}, {0: 69.0, 1: 70.0}).p)  # one seed: untestable
    assert seed_test({0: 70.0, 1: 71.0}, {0: 70.0, 1: 71.0}).p == 1.0  # identical runs
    assert seed_test({0: 70.0, 1: 71.0}, {0: 69.0, 1: 70.0}).p == 0.0  # constant non-zero difference
    assert seed_test({0: 0.1 + 0.2, 1: 1.0}, {0: 0.3, 1: 1.0}).p == 1.0  # summation noise is no difference
    with pytest.raises(ValueError, match=r"seed\(s\) 1 \(nan\)"):
        seed_test({0: 70.0, 1: float("nan")}, b)
