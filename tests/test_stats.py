"""Statistics against published worked examples and independent computations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dabench.analysis.results import load_results
from dabench.analysis.stats import (
    STAT_TESTS,
    StatOutput,
    StatTest,
    aggregate_iqm,
    aggregate_mean,
    cd_cliques,
    compare,
    friedman,
    friedman_exact_p,
    holm,
    nemenyi_cd,
    nemenyi_q,
    probability_of_improvement,
    rank_matrix,
    stratified_bootstrap_ci,
)
from dabench.analysis.tables import mean_ci, mean_interval
from fake_runs import write_matrix, write_run

# Demšar (2006), JMLR 7:1-30, Table 6: AUC of C4.5, C4.5+m, C4.5+cf, C4.5+m+cf on 14 data sets.
DEMSAR = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.654, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.975, 0.975],
        [0.957, 0.978, 0.946, 0.970],
    ]
)
NAMES = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]


def test_demsar_worked_example():
    # The paper's rank table orders the tied "voting" row (0.975, 0.975) as 2 and 3 rather than
    # 2.5/2.5; breaking that tie the same way reproduces its published numbers exactly.
    data = DEMSAR.copy()
    data[12, 2] = 0.97501
    f = friedman(pd.DataFrame(data, columns=NAMES))
    assert f.avg_ranks[NAMES].round(3).tolist() == [3.143, 2.000, 2.893, 1.964]
    assert f.chi2 == pytest.approx(9.28, abs=0.005)
    assert f.ff == pytest.approx(3.69, abs=0.005)
    assert f.q_alpha == pytest.approx(2.569, abs=0.0005)
    assert f.cd == pytest.approx(1.25, abs=0.005)
    assert f.p_ff < 0.05  # F(3, 39) critical value 2.85 < 3.69: the paper rejects H0
    # Best vs worst differ by 1.179 < CD: Nemenyi separates nobody, one clique of all four.
    assert f.cliques == (tuple(f.avg_ranks.index),)


def test_demsar_data_with_midranks():
    f = friedman(pd.DataFrame(DEMSAR, columns=NAMES))
    assert f.avg_ranks[NAMES].round(3).tolist() == [3.143, 2.000, 2.929, 1.929]


def test_friedman_matches_scipy():
    rng = np.random.default_rng(1)
    # no ties: Demšar's formula equals scipy's
    x = rng.normal(size=(9, 5)) + np.arange(5)
    assert friedman(x).chi2 == pytest.approx(sps.friedmanchisquare(*x.T).statistic)
    assert friedman(x).p_chi2 == pytest.approx(sps.friedmanchisquare(*x.T).pvalue)
    # with ties: the tie-corrected statistic equals scipy's
    y = rng.integers(0, 3, size=(12, 4)).astype(float)
    assert friedman(y, tie_correction=True).chi2 == pytest.approx(sps.friedmanchisquare(*y.T).statistic)


def test_nemenyi_q_table_values():
    # Demšar 2006, Table 5(a), alpha = 0.05
    for k, q in {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 10: 3.164}.items():
        assert nemenyi_q(k) == pytest.approx(q, abs=0.001)
    assert nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)


def test_holm_hand_worked_example():
    # p = (.01, .04, .03, .005); sorted .005×4 = .02, .01×3 = .03, .03×2 = .06, .04×1 = .04 → max .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])


def test_cd_cliques_equal_nemenyi_outcome():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 8))
        ranks = pd.Series(rng.uniform(1, k, size=k), index=[f"m{i}" for i in range(k)])
        cd = float(rng.uniform(0.2, 3))
        cliques = cd_cliques(ranks, cd)
        for a, b in itertools.combinations(ranks.index, 2):
            joined = any(a in c and b in c for c in cliques)
            assert joined == (abs(ranks[a] - ranks[b]) < cd)
        for c1, c2 in itertools.permutations(cliques, 2):  # maximal: none inside another
            assert not set(c1) <= set(c2)


def test_bootstrap_ci_covers_true_mean():
    rng = np.random.default_rng(42)
    true_means = np.array([50.0, 70.0, 30.0])
    hits = 0
    trials = 200
    for t in range(trials):
        x = rng.normal(true_means, 5.0, size=(10, 3))  # 10 runs × 3 tasks
        _, lo, hi = stratified_bootstrap_ci(x, aggregate_mean, reps=500, seed=t)
        hits += lo <= true_means.mean() <= hi
    assert 0.85 <= hits / trials <= 0.99  # percentile bootstrap undercovers a little at n = 10


def test_iqm_and_bootstrap_point_estimates():
    x = np.arange(1.0, 9.0).reshape(4, 2)  # pooled 1..8 → middle four 3..6
    assert aggregate_iqm([x[:, 0], x[:, 1]]) == pytest.approx(4.5)
    p, lo, hi = stratified_bootstrap_ci(x, aggregate_iqm, reps=200)
    assert p == pytest.approx(4.5) and lo <= p <= hi
    # constant runs: the CI collapses to the point
    assert stratified_bootstrap_ci(np.full((5, 2), 7.0), reps=50) == (7.0, 7.0, 7.0)


def test_probability_of_improvement():
    x = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([5.0, 6.0])}
    assert probability_of_improvement(x, x, reps=200)[0] == pytest.approx(0.5)
    better = {k: v + 100 for k, v in x.items()}
    assert probability_of_improvement(better, x, reps=200) == (1.0, 1.0, 1.0)
    assert probability_of_improvement(x, better, reps=200)[0] == 0.0
    # Mann-Whitney: P(X > Y) = U / (n m) per task
    a, b = np.array([1.0, 4.0, 6.0]), np.array([2.0, 3.0, 5.0, 7.0])
    u = sps.mannwhitneyu(a, b).statistic
    assert probability_of_improvement(a[:, None], b[:, None], reps=10)[0] == pytest.approx(u / 12)


@pytest.fixture()
def df(tmp_path):
    rng = np.random.default_rng(3)
    table = {}
    for pair, base in zip("abcdefg", [60, 50, 70, 40, 80, 65, 55]):
        for m, gain in [("source-only", 0.0), ("dan", 5.0), ("dann", 6.0), ("coral", 2.0)]:
            table[(m, pair)] = list(np.round(base + gain + rng.normal(0, 1, 5), 2))
    write_matrix(tmp_path, table)
    return load_results(tmp_path)


def test_compare_end_to_end(df):
    c = compare(df, reps=300)
    (f,) = c.friedman
    assert f.n_blocks == 7 and f.k == 4 and f.labels == "0"
    # independent check: Friedman on the per-pair means
    mat = df.assign(acc=[cv[-1]["target_acc"] for cv in df["curve"]]).pivot_table(
        index="pair", columns="method", values="acc", aggfunc="mean"
    )
    assert f.chi2 == pytest.approx(sps.friedmanchisquare(*mat.to_numpy().T).statistic)
    assert f.avg_ranks.index[-1] == "source-only"
    # Wilcoxon + Holm against scipy
    w = c.wilcoxon.set_index(["a", "b"])
    p = sps.wilcoxon(mat["dann"], mat["source-only"]).pvalue
    assert w.loc[("dann", "source-only"), "p"] == pytest.approx(p)
    assert (c.wilcoxon["p_holm"] >= c.wilcoxon["p"] - 1e-12).all()
    # per-pair tests exist with 5 seeds: paired t by seed, against scipy
    pp = c.per_pair.set_index(["pair", "a", "b"])
    one = df[df["pair"] == "a"].assign(acc=lambda d: [cv[-1]["target_acc"] for cv in d["curve"]])
    xs = one[one.method == "dann"].sort_values("seed")["acc"].to_numpy()
    ys = one[one.method == "source-only"].sort_values("seed")["acc"].to_numpy()
    row = pp.loc[("a", "dann", "source-only")]
    assert row["test"] == "paired t" and row["p"] == pytest.approx(sps.ttest_rel(xs, ys).pvalue)
    # Nemenyi table consistent with the cliques
    for r in c.nemenyi.itertuples():
        assert r.significant == (not any(r.a in q and r.b in q for q in f.cliques))
    poi = c.improvement.set_index(["a", "b"])
    assert poi.loc[("dann", "source-only"), "p_improvement"] == 1.0
    md = c.to_markdown()
    assert "Friedman" in md and "CD =" in md and "Holm" in md and "<table" in c.to_html()


def test_compare_with_one_pair_explains_instead_of_failing(tmp_path):
    write_matrix(tmp_path, {("dan", "a"): [1.0, 2.0], ("dann", "a"): [2.0, 3.0]})
    c = compare(load_results(tmp_path), reps=50)
    assert c.friedman == () and any("≥ 2 pairs" in n for n in c.notes)
    assert len(c.bootstrap) == 2 and "Statistical comparison" in c.to_markdown()
    with pytest.raises(ValueError, match="pair, pair-seed"):
        compare(load_results(tmp_path), blocks="seed")


def test_perfect_concordance_uses_the_exact_probability_not_an_infinite_f():
    """Two pairs ranking two methods the same way is what chance gives half the time."""
    two = pd.DataFrame({"a": [90.0, 80.0], "b": [85.0, 70.0]}, index=["p1", "p2"])
    res = friedman(two, labels="0")
    assert res.p_ff == pytest.approx(0.5) and not res.significant
    many = pd.DataFrame({"a": [4.0] * 5, "b": [3.0] * 5, "c": [2.0] * 5, "d": [1.0] * 5})
    res = friedman(many, labels="0")
    assert res.p_ff == pytest.approx(24.0**-4) and res.significant


# ---- intervals mean what they say -----------------------------------------------------------
@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("pairs", [1, 3])
def test_reported_95_interval_covers_95_percent(seeds, pairs):
    """The interval the leaderboard and compare() report (tables.mean_interval), on normal accuracies."""
    rng = np.random.default_rng(seeds * 10 + pairs)
    reps = 4000
    true = np.array([72.0, 55.0, 88.0])[:pairs]
    sds = np.array([1.5, 3.0, 0.8])[:pairs]
    tasks = [rng.normal(m, s, size=(reps, seeds)) for m, s in zip(true, sds)]
    _, lo, hi = mean_interval(tasks)
    cover = np.mean((lo <= true.mean()) & (true.mean() <= hi))
    assert 0.93 <= cover <= 0.97, cover
    # the cell statistic is the same construction
    _m, _s, clo, chi = mean_ci(tasks[0][0])
    assert (clo, chi) == pytest.approx(tuple(float(v[0]) for v in mean_interval([tasks[0][:1]])[1:]))


def test_percentile_bootstrap_undercovers_at_three_seeds():
    """Why the report no longer uses it: 1 pair × 3 seeds, nominal 95%."""
    rng = np.random.default_rng(0)
    hits = [
        lo <= 70.0 <= hi
        for lo, hi in (stratified_bootstrap_ci(rng.normal(70, 2, (3, 1)), reps=300, seed=i)[1:] for i in range(300))
    ]
    assert np.mean(hits) < 0.85


def test_intervals_stay_within_0_and_100():
    m, _s, lo, hi = mean_ci(np.array([99.0, 100.0]))
    assert hi == 100.0 and 0.0 <= lo < m
    assert mean_ci(np.array([0.0, 3.0]))[2] == 0.0


# ---- few pairs, exact tests -----------------------------------------------------------------
def test_exact_friedman_by_hand():
    # N = 2 blocks, k = 3: 6 × 6 equally likely rank orders; both blocks agree in 6 of the 36 → 1/6
    res = friedman(pd.DataFrame({"a": [3.0, 3.0], "b": [2.0, 2.0], "c": [1.0, 1.0]}))
    assert res.p_value == pytest.approx(1 / 6) and "exact" in res.test
    # N = 3, k = 2: a beats b in all three blocks; P(all three agree) = 2 / 8
    assert friedman(np.array([[2.0, 1.0]] * 3)).p_value == pytest.approx(0.25)


def test_exact_friedman_matches_enumeration_and_overrules_the_f_approximation():
    """N = 3, k = 4: the F approximation calls an outcome significant whose exact p is 0.075."""
    ranks = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 3, 4, 2]], float)
    perms = np.array(list(itertools.permutations(range(1, 5))), float)
    sums = perms[:, None, None, :] + perms[None, :, None, :] + perms[None, None, :, :]  # all 24³ outcomes
    exact = np.mean((sums**2).sum(-1) >= (ranks.sum(0) ** 2).sum())
    assert exact == pytest.approx(0.0747, abs=1e-4)
    assert friedman_exact_p(ranks) == pytest.approx(exact)
    res = friedman(pd.DataFrame(-ranks, columns=list("abcd")))  # scores: lower rank = higher score
    assert res.p_ff < 0.05 and res.p_value == pytest.approx(exact) and not res.significant
    assert "exact" in res.test
    # too large to enumerate: a permutation p-value close to the exact one, or F for many blocks
    rng = np.random.default_rng(0)
    r = rank_matrix(rng.normal(size=(3, 7)) + np.arange(7))
    res = friedman(r)
    assert "permutation" in res.test and 0 < res.p_value <= 1
    assert friedman(rng.normal(size=(40, 4))).test.startswith("Iman")


def test_compare_names_the_test_it_used(df):
    md = compare(df, reps=50).to_markdown()
    assert "significance decided on the exact permutation test" in md


# ---- configurations and missing seeds in compare() ------------------------------------------
def test_compare_keeps_configurations_apart_with_five_seeds(tmp_path):
    """Used to crash (paired t on 10 'seeds' with duplicates) when two settings shared a folder."""
    base = {("source-only", p): [50.0 + i for i in range(5)] for p in "ab"}
    base.update({("dann", p): [60.0 + i * 0.5 for i in range(5)] for p in "ab"})
    write_matrix(tmp_path, base)
    write_matrix(tmp_path, base, prefix="long-", schedule={"steps": 2000})
    c = compare(load_results(tmp_path), reps=50)
    assert set(c.bootstrap["method"]) == {
        "dann (steps=600)",
        "dann (steps=2000)",
        "source-only (steps=600)",
        "source-only (steps=2000)",
    }
    assert (c.per_pair["seeds"] == 5).all() and (c.per_pair["test"] == "paired t").all()
    assert (c.bootstrap["runs"] == 10).all()  # 2 pairs × 5 seeds, never 20


def test_compare_excludes_a_cell_with_a_diverged_seed_and_says_so(tmp_path):
    write_matrix(
        tmp_path,
        {
            ("source-only", "a"): [60.0, 61.0, 62.0],
            ("source-only", "b"): [50.0, 51.0, 52.0],
            ("dan", "a"): [65.0, 66.0, 67.0],
            ("dan", "b"): [58.0, 60.0, 59.0],
            ("dann", "b"): [55.0, 56.0, 57.0],
        },
    )
    write_run(tmp_path, "d0", "dann", "a", 0, acc=90.0)
    write_run(tmp_path, "d1", "dann", "a", 1, status="diverged", diverged_at_step=300)
    write_run(tmp_path, "d2", "dann", "a", 2, acc=91.0)
    c = compare(load_results(tmp_path), reps=50)
    (f,) = c.friedman
    assert set(f.avg_ranks.index) == {"source-only", "dan"}
    assert "dann" not in set(c.bootstrap["method"])
    assert any("dann on a (2/3 seeds; seed 1 diverged)" in n for n in c.notes)


def test_iqm_only_where_it_trims(tmp_path):
    write_matrix(tmp_path, {("dan", "a"): [1.0, 2.0, 30.0], ("dann", "a"): [1.0, 2.0, 3.0, 40.0, 5.0]})
    b = compare(load_results(tmp_path), reps=50).bootstrap.set_index("method")
    assert np.isnan(b.loc["dan", "iqm"]) and b.loc["dann", "iqm"] == pytest.approx(np.mean([2.0, 3.0, 5.0]))


# ---- a statistical test is one function + one table entry -----------------------------------
def _median_test(b, ctx):
    """Median over pairs of the per-pair mean (a stand-in for a test someone adds)."""
    rows = [
        {"labels": b.labels, "method": e, "median": float(np.median([v.mean() for v in b.scores[e].values()]))}
        for e in b.order
    ]
    return StatOutput(pd.DataFrame(rows), notes=(f"labels {b.labels}: medians at alpha {ctx.alpha}",))


def test_registering_a_test_adds_its_section(df, monkeypatch):
    before = compare(df, reps=50)
    monkeypatch.setitem(
        STAT_TESTS, "median", StatTest("Median over pairs", "Median of the per-pair means.", _median_test)
    )
    c = compare(df, reps=50)
    table = c.result("median").table.set_index("method")
    # the runs the test received are the budget's selected runs: dann's 7 pair means
    acc = df.assign(acc=[cv[-1]["target_acc"] for cv in df["curve"]])
    dann = acc[acc["method"] == "dann"].groupby("pair")["acc"].mean()
    assert table.loc["dann", "median"] == pytest.approx(float(np.median(dann)))
    assert list(table.index) == list(c.friedman[0].avg_ranks.index)  # rank order, as the other tables
    md, page = c.to_markdown(), c.to_html()
    assert "### Median over pairs\n\nMedian of the per-pair means.\n\n| labels | method" in md
    assert "<h3>Median over pairs</h3>\n<p>Median of the per-pair means.</p>\n<table" in page
    assert "labels 0: medians at alpha 0.05" in c.notes
    # the built-in sections are untouched: the new one sits after them, before the notes
    head, _new = md.split("### Median over pairs")
    assert before.to_markdown().startswith(head) and before.notes == c.notes[:-1]
    assert c.nemenyi.equals(before.nemenyi) and c.per_pair.equals(before.per_pair)
    with pytest.raises(KeyError, match=r"no statistical test 'nope'.*ran: friedman, wilcoxon"):
        c.result("nope")


def test_removing_a_test_removes_its_section_and_keeps_the_others(df, monkeypatch):
    monkeypatch.delitem(STAT_TESTS, "wilcoxon")
    c = compare(df, reps=50)
    assert "Wilcoxon" not in c.to_markdown() and c.wilcoxon.empty
    assert "Friedman / Nemenyi (labels 0)" in c.to_markdown() and len(c.bootstrap) == 4
