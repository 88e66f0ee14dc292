"""DEV (deep embedded validation), Kendall's tau of the ranking change, and the validator
correlations (analysis/dev.py, analysis/sweeps.py, analysis/validators.py) with known answers."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dabench.analysis.dev import (
    DEV_FIELD,
    cross_entropy,
    dev_risk,
    fit_domain_classifier,
    importance_weights,
    with_dev_scores,
)
from dabench.analysis.report import report_text, selection_latex, write_report
from dabench.analysis.results import load_results
from dabench.analysis.selection import RULES, select
from dabench.analysis.sweeps import ranking_change, rule_table, select_config
from dabench.analysis.validators import validator_correlations
from dabench.cli import main
from fake_runs import curve_from, write_run

SHIFT = np.array([1.0, 0.0, 0.0, 0.0])


def _gaussians(rng: np.random.Generator, n: int = 1000, shift: np.ndarray = SHIFT):
    """Source ~ N(0, I), target ~ N(shift, I) in 4-d: the log density ratio is linear, so the
    logistic domain classifier is the right model and the true weights are known."""
    d = len(shift)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift, rng.normal(size=(n, d))


def _loss(x: np.ndarray) -> np.ndarray:
    return x[:, 0] ** 2  # E_source = 1, E_target = 1 + shift² = 2


def test_dev_weighted_source_loss_tracks_the_target_loss():
    rng = np.random.default_rng(0)
    devs, iws, plain = [], [], []
    for _ in range(20):
        src, tgt, val = _gaussians(rng)
        w = importance_weights(src, tgt, val)
        # the fitted ratio follows the true one, exp(x0 - 1/2), on the validation images
        true_w = np.exp(val[:, 0] - 0.5)
        assert np.corrcoef(np.log(w), np.log(true_w))[0, 1] > 0.95
        devs.append(dev_risk(w, _loss(val)))
        iws.append(float(np.mean(w * _loss(val))))
        plain.append(float(np.mean(_loss(val))))
    target = 2.0
    assert abs(np.mean(plain) - target) > 0.9  # the unweighted source loss misses the shift
    assert abs(np.mean(devs) - target) < 0.25 and abs(np.mean(devs) - target) < abs(np.mean(plain) - target) / 4
    # the control variate lowers the variance of plain importance weighting
    assert np.var(devs) < np.var(iws)


def test_dev_without_shift_is_the_plain_source_loss():
    rng = np.random.default_rng(1)
    src, tgt, val = _gaussians(rng, shift=np.zeros(4))
    w = importance_weights(src, tgt, val)
    assert abs(np.mean(w) - 1) < 0.05
    assert dev_risk(np.ones(50), np.arange(50.0)) == pytest.approx(24.5)  # Var(W) = 0: no correction
    assert abs(dev_risk(w, _loss(val)) - _loss(val).mean()) < 0.1
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert cross_entropy(logits, np.array([0, 1])) == pytest.approx([np.log1p(np.exp(-2)), np.log(2)])


def _dev_by_hand(w: list[float], ell: list[float]) -> float:
    """You et al. 2019, Algorithm 1, transcribed term by term with Python sums (no numpy)."""
    n = len(w)
    big_l = [wi * li for wi, li in zip(w, ell)]  # L = {w_j · ℓ_j}
    mean_l, mean_w = sum(big_l) / n, sum(w) / n
    cov = sum((a - mean_l) * (b - mean_w) for a, b in zip(big_l, w)) / (n - 1)
    var = sum((b - mean_w) ** 2 for b in w) / (n - 1)
    eta = -cov / var
    return mean_l + eta * mean_w - eta


def test_dev_risk_is_the_papers_formula_by_hand():
    rng = np.random.default_rng(3)
    for n in (2, 3, 17, 400):
        w, ell = rng.lognormal(0.0, 1.0, size=n), rng.exponential(size=n)
        assert dev_risk(w, ell) == pytest.approx(_dev_by_hand(list(w), list(ell)), rel=1e-10)
    # the density ratio of Algorithm 1 from the fitted domain classifier: (n_s / n_t) · d / (1 − d)
    src, tgt, val = _gaussians(rng, n=300)
    src = src[:200]  # unequal domain sizes: the n_s / n_t factor matters
    d = fit_domain_classifier(src, tgt)(val)
    assert importance_weights(src, tgt, val) == pytest.approx((200 / 300) * d / (1 - d), rel=1e-9)


def test_dev_with_constant_or_vanishing_weights_is_the_mean_loss():
    """Var(W) = 0 leaves η undefined; its limit is the plain mean loss, whatever the constant. The
    old code returned mean(W·ℓ): weights all ~1e-7 (a classifier that calls every validation image
    source) scored a near-zero risk, the best under "lower is better", for the worst-aligned model."""
    ell = np.arange(1.0, 51.0)
    for c in (1.0, 3.0, 1e-7):
        assert dev_risk(np.full(50, c), ell) == pytest.approx(25.5), c
    assert dev_risk(np.array([0.25]), np.array([4.0])) == pytest.approx(4.0)  # one validation image
    # domains the classifier separates: every source-val weight is tiny, the risk stays a loss
    rng = np.random.default_rng(4)
    src, tgt, val = _gaussians(rng, n=400, shift=np.full(4, 8.0))
    w = importance_weights(src, tgt, val)
    assert w.mean() < 0.05  # E_source[w] = 1 for a calibrated ratio
    losses = rng.exponential(size=len(val))
    assert dev_risk(w, losses) == pytest.approx(losses.mean(), rel=0.2)
    with pytest.raises(ValueError, match="one weight per validation loss"):
        dev_risk(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="at least one"):
        dev_risk(np.array([]), np.array([]))


def _write_features(folder: Path, run_id: str, slope: float, seed: int, step: int) -> None:
    """Features of a model whose source-val loss grows along x0 (slope > 0) or falls (slope < 0):
    the same mean on source, but under the target's shift along +x0 only slope < 0 is good."""
    rng = np.random.default_rng(seed)
    src, tgt, val = _gaussians(rng, n=600)
    logits = np.stack([np.zeros(len(val)), slope * val[:, 0]], 1)  # label 0: loss log(1 + e^{slope·x0})
    (folder / "features").mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "features" / f"{run_id}.npz",
        source_features=val.astype(np.float16),
        source_labels=np.zeros(len(val), dtype=np.int64),
        source_logits=logits.astype(np.float32),
        source_train_features=src.astype(np.float16),
        validator_features=tgt.astype(np.float16),
        target_features=tgt.astype(np.float16),  # the t-SNE's evaluation features: DEV must not read them
        target_labels=np.zeros(len(tgt), dtype=np.int64),
        step=np.array(step),
    )


def _dev_folder(tmp_path: Path) -> Path:
    """DANN × 2 trade-offs × 2 seeds; the trade-off 1.0 trial's features are the good ones (slope < 0)."""
    for seed in (0, 1):
        for t, slope in ((0.1, 2.0), (1.0, -2.0)):
            rid = f"dann-{t}-{seed}"
            write_run(
                tmp_path, rid, "dann", "digits-offline", seed, curve=curve_from([60.0, 70.0]), hparams={"trade_off": t}
            )
            _write_features(tmp_path, rid, slope, seed, step=200)
    return tmp_path


def test_dev_picks_the_configuration_whose_weighted_loss_is_low(tmp_path):
    df = load_results(_dev_folder(tmp_path))
    picks = select_config(df, "dev")
    assert sorted(picks["run_id"]) == ["dann-1.0-0", "dann-1.0-1"]
    assert [c["dann.trade_off"] for c in picks["chosen"]] == [1.0, 1.0]
    # DEV scores the final checkpoint only (the features are of the final model)
    scored = with_dev_scores(df)
    assert all(DEV_FIELD not in c[0] and DEV_FIELD in c[1] for c in scored["curve"])
    assert list(select(df, "dev")["selected_step"]) == [200] * 4
    assert all(DEV_FIELD not in e for c in df["curve"] for e in c)  # the caller's frame is not changed
    acc, regret = rule_table(df)
    assert "dev" in acc.columns and regret.loc[("dann", "0"), "trials"] == 2


def test_rule_dev_without_features_says_which_setting_saves_them(tmp_path, capsys):
    write_run(tmp_path, "a", "dann", "digits-offline", 0, acc=60.0)
    assert main(["report", str(tmp_path), "--rule", "dev"]) == 2
    err = capsys.readouterr().err
    assert "rule 'dev' needs the features" in err and "--set save_features=true" in err and "[set]" in err
    assert err.count("\n") == 1
    # another rule on the same folder is fine, and its tables have no dev column
    assert main(["report", str(tmp_path), "--rule", "snd"]) == 0
    assert "dev" not in RULES["snd"].description and "| dev" not in capsys.readouterr().out


def test_kendall_tau_of_the_ranking_change():
    idx = pd.MultiIndex.from_tuples([(m, "0") for m in "abcd"], names=["method", "labels"])
    acc = pd.DataFrame(
        {
            "source-val": [80.0, 70.0, 50.0, 60.0],  # one swapped pair of six: (5 - 1) / 6
            "entropy": [10.0, 20.0, 30.0, 40.0],  # reversed
            "snd": [4.0, 3.0, 2.0, 1.0],  # the oracle's order
            "oracle": [90.0, 80.0, 70.0, 60.0],
        },
        index=idx,
    )
    tau = ranking_change(acc)
    assert tau.loc["0", "snd"] == pytest.approx(1.0)
    assert tau.loc["0", "entropy"] == pytest.approx(-1.0)
    assert tau.loc["0", "source-val"] == pytest.approx(4 / 6)
    assert tau.loc["0", "methods"] == 4 and "oracle" not in tau.columns


def _tau_folder(tmp_path: Path) -> Path:
    """Three methods × two trials; snd picks each method's worse trial, and the worse trials rank
    the methods in reverse: tau(snd) = -1, while source-val (constant: ties → the smaller run id) ..."""
    for i, m in enumerate(("a", "b", "c")):
        good, bad = 80.0 - 5 * i, 50.0 + 5 * i  # oracle: a > b > c; snd's picks: c > b > a
        write_run(tmp_path, f"{m}-1", m, "digits-offline", 0, curve=curve_from([good], snd=[1.0]), hparams={"x": 1})
        write_run(tmp_path, f"{m}-2", m, "digits-offline", 0, curve=curve_from([bad], snd=[9.0]), hparams={"x": 2})
    return tmp_path


def test_report_shows_tau_and_validators_in_md_html_latex(tmp_path):
    folder = _tau_folder(tmp_path / "runs")
    df = load_results(folder)
    acc, _ = rule_table(df)
    assert ranking_change(acc).loc["0", "snd"] == pytest.approx(-1.0)
    text = report_text(folder, "snd", select_config=True)
    assert "Ranking change from oracle (Kendall's tau)" in text and "-1.00" in text
    assert "Which validator to trust" in text
    paths = write_report(folder, rule="snd", select_config=True, formats=("md", "tex"), out=tmp_path / "out", reps=50)
    page = paths["report"].read_text()
    assert "Kendall" in page and "Which validator to trust" in page and 'alt="validator_correlation"' in page
    assert (paths["figures"] / "validator_correlation.png").stat().st_size > 1000
    tex = paths["selection_tex"].read_text()
    assert tex == selection_latex(df) and tex.count("\\begin{tabular}") == 4 and "Kendall" in tex
    # the oracle's column says in its header that it read the target test labels, in every format
    # (a table copied into a paper without its prose or comments must not pass for an honest rule)
    headers = [line for line in tex.splitlines() if line.startswith("method & labels")]
    assert len(headers) == 2 and all("oracle (target test labels)" in h for h in headers), headers
    for shown in (text.split("Configuration selection")[1], page.split("Configuration selection")[1]):
        assert shown.count("oracle (target test labels)") >= 2  # accuracy and regret tables


def test_spearman_of_validators_with_a_known_monotone_relation(tmp_path):
    long_pair = "folder:source=/data/" + "deep/" * 12 + "src,target=/data/tgt"
    rng = np.random.default_rng(0)
    i = 0
    for pair in ("digits-offline", long_pair):
        for m in ("dann", "dan"):
            for seed in (0, 1):
                accs = list(rng.uniform(20, 90, size=4))
                curve = curve_from(
                    accs,
                    snd=[a / 10 for a in accs],  # monotone increasing: rho = +1
                    entropy=[5 - a / 50 for a in accs],  # lower entropy = higher accuracy: signed rho = +1
                    im=[-a for a in accs],  # IM falls as accuracy rises: rho = -1
                    source_val_acc=[90.0] * 4,  # constant: no rho
                )
                write_run(tmp_path, f"r{i}", m, pair, seed, curve=curve)
                i += 1
    corr = validator_correlations(load_results(tmp_path))
    assert list(corr.index) == ["source-val", "entropy", "im", "snd"]  # no dev (no features), no oracle
    assert len(corr.columns) == 4  # two pairs (the long one by its short label), pooled, points
    for col in corr.columns.drop("points"):
        assert corr.at["snd", col] == pytest.approx(1.0) and corr.at["entropy", col] == pytest.approx(1.0)
        assert corr.at["im", col] == pytest.approx(-1.0) and np.isnan(corr.at["source-val", col])
    assert corr.at["snd", "points"] == 32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(tmp_path, formats=("md",), reps=50)
    assert not [w for w in caught if "collapsed" in str(w.message)], [str(w.message) for w in caught]
    assert (out["figures"] / "validator_correlation.png").exists()
    assert "Which validator to trust" in out["report"].read_text()


def test_ranking_change_compares_the_oracle_on_the_rule_s_own_runs(tmp_path):
    """Method a's seed 1 has no snd score in any trial, so snd has no pick there; wherever snd
    picks, it picks the oracle's run (regret 0). τ must then be +1: the old code ranked snd's
    one-seed mean of a (80) against the oracle's two-seed mean (60) and reported −1."""
    cells = {  # (method, seed): [(accuracy, snd) of trial x=1, of trial x=2]
        ("a", 0): [(80.0, 9.0), (70.0, 1.0)],
        ("a", 1): [(40.0, None), (30.0, None)],
        ("b", 0): [(65.0, 9.0), (60.0, 1.0)],
        ("b", 1): [(64.0, 9.0), (60.0, 1.0)],
    }
    for (m, seed), trials in cells.items():
        for x, (a, snd) in enumerate(trials, 1):
            curve = curve_from([a])
            if snd is None:
                del curve[0]["snd"]
            else:
                curve[0]["snd"] = snd
            write_run(tmp_path, f"{m}-{seed}-{x}", m, "digits-offline", seed, curve=curve, hparams={"x": x})
    df = load_results(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a's seed 1 has no snd score: named in a warning
        acc, regret = rule_table(df)
    assert acc.loc[("a", "0"), "snd"] == 80.0 and acc.loc[("a", "0"), "oracle"] == 60.0
    assert regret.loc[("a", "0"), "snd"] == 0.0 and regret.loc[("b", "0"), "snd"] == 0.0
    assert ranking_change(acc, regret).loc["0", "snd"] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = report_text(tmp_path, "snd", select_config=True)
    tau_table = text.split("Ranking change from oracle")[1]
    assert "1.00" in tau_table and "-1.00" not in tau_table
