"""Results loading and after-the-fact selection rules, on fake records with known numbers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from dabench.analysis.results import COLUMNS, load_results
from dabench.analysis.selection import (
    ORACLE_LABEL,
    READS,
    RULES,
    SOURCE_LABELS,
    TARGET_LABELS,
    rule_regret,
    rule_title,
    select,
)
from fake_runs import curve_from, write_failed, write_run

# One curve where every rule picks a different evaluation (steps 100..500).
ACCS = [60.0, 70.0, 65.0, 80.0, 62.0]  # oracle → step 400 (80.0); last → step 500
SCORES = {
    "source_val_acc": [90.0, 95.0, 91.0, 92.0, 93.0],  # → step 200 (70.0)
    "entropy": [0.9, 0.8, 0.2, 0.5, 0.6],  # min → step 300 (65.0)
    "im": [1.0, 1.1, 1.2, 1.3, 2.0],  # max → step 500 (62.0)
    "snd": [5.0, 1.0, 1.0, 1.0, 1.0],  # max → step 100 (60.0)
}
EXPECTED = {
    "last": (62.0, 500),
    "source-val": (70.0, 200),
    "entropy": (65.0, 300),
    "im": (62.0, 500),
    "snd": (60.0, 100),
    "oracle": (80.0, 400),
}


@pytest.fixture()
def folder(tmp_path):
    write_run(tmp_path, "r1", "dann", "p", 0, curve=curve_from(ACCS, **SCORES))
    write_failed(tmp_path, "r2", "dann", "p", 1, "CUDA out of memory\nsecond line")
    write_run(tmp_path, "r3", "dann", "p", 2, status="diverged", diverged_at_step=300)
    return tmp_path


def test_load_results_columns_and_error_first_line(folder):
    df = load_results(folder)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 3
    r2 = df.set_index("run_id").loc["r2"]
    assert r2["status"] == "failed" and r2["error"] == "RuntimeError: CUDA out of memory"
    assert df.set_index("run_id").loc["r3", "diverged_at_step"] == 300
    r1 = df.set_index("run_id").loc["r1"]
    assert r1["protocol"] == "uda" and r1["hparams"] == {"lr": 0.01} and len(r1["curve"]) == 5
    assert r1["source_dir"] == str(folder) and r1["wall_s"] == 1.5


def test_load_results_merges_and_warns_on_duplicates(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, "same", "dan", "p", 0, acc=50.0)
    write_run(b, "same", "dan", "p", 0, acc=99.0)
    write_run(b, "other", "dan", "p", 1, acc=51.0)
    with pytest.warns(UserWarning) as rec:
        df = load_results(a, b)
    msg = " ".join(str(w.message) for w in rec)
    assert str(a / "runs" / "same.json") in msg and str(b / "runs" / "same.json") in msg
    assert len(df) == 2
    assert select(df).set_index("run_id").loc["same", "accuracy"] == 50.0  # first dir wins


def test_corrupt_record_is_reported_and_skipped(tmp_path):
    write_run(tmp_path, "ok", "dan", "p", 0, acc=50.0)
    good = (tmp_path / "runs" / "ok.json").read_text()
    (tmp_path / "runs" / "truncated.json").write_text(good[: len(good) // 2])
    with pytest.warns(UserWarning, match="truncated.json"):
        df = load_results(tmp_path)
    assert list(df["run_id"]) == ["ok"]


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="runs"):
        load_results(tmp_path / "empty")


@pytest.mark.parametrize("rule", list(EXPECTED))
def test_each_rule_picks_its_evaluation(folder, rule):
    sel = select(load_results(folder), rule).set_index("run_id")
    acc, step = EXPECTED[rule]
    assert sel.loc["r1", "accuracy"] == acc and sel.loc["r1", "selected_step"] == step
    assert np.isnan(sel.loc["r2", "accuracy"]) and np.isnan(sel.loc["r3", "accuracy"])


def test_rules_registry_and_oracle_label():
    assert set(RULES) == {"last", "source-val", "entropy", "im", "snd", "dev", "oracle"}
    for desc, cite, fn, reads in RULES.values():  # (description, citation, function, what it reads)
        assert desc and cite and callable(fn) and reads in READS
    # what each rule reads decides where it applies (source-free runs have no source labels)
    assert {n for n, r in RULES.items() if r.reads == SOURCE_LABELS} == {"source-val", "dev"}
    assert RULES["oracle"].reads == TARGET_LABELS
    assert RULES["oracle"].description == ORACLE_LABEL
    assert "ORACLE" in rule_title("oracle") and "upper bound" in rule_title("oracle")


def test_unknown_rule_lists_valid_rules(folder):
    with pytest.raises(ValueError, match="valid rules: last, source-val, entropy, im, snd, dev, oracle"):
        select(load_results(folder), "best")


def test_missing_score_gives_nan_and_warning(tmp_path):
    curve = curve_from([50.0, 60.0])
    for e in curve:
        del e["snd"]
    write_run(tmp_path, "nosnd", "dan", "p", 0, curve=curve)
    with pytest.warns(UserWarning, match="nosnd"):
        sel = select(load_results(tmp_path), "snd")
    assert np.isnan(sel["accuracy"].iloc[0])


def test_ties_go_to_the_latest_evaluation(tmp_path):
    write_run(tmp_path, "t", "dan", "p", 0, curve=curve_from([50.0, 60.0, 55.0], source_val_acc=[9, 9, 9]))
    sel = select(load_results(tmp_path), "source-val")
    assert sel["selected_step"].iloc[0] == 300


def test_rule_regret(folder, tmp_path):
    write_run(folder, "r4", "dann", "p", 3, curve=curve_from([10.0, 20.0], entropy=[0.1, 0.2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = rule_regret(load_results(folder))
    row = reg.loc[("dann", "0")]
    # r1: oracle 80; r4: oracle 20 (step 200).
    assert row["oracle"] == 0
    assert row["last"] == pytest.approx(((80 - 62) + (20 - 20)) / 2)
    assert row["entropy"] == pytest.approx(((80 - 65) + (20 - 10)) / 2)
    assert row["source-val"] == pytest.approx(((80 - 70) + 0) / 2)  # r4 val acc ties → last step


def test_record_json_is_what_the_engine_writes(folder):
    rec = json.loads((folder / "runs" / "r1.json").read_text())
    assert rec["format"] == 1 and rec["spec"]["method"] == "dann"


@pytest.mark.parametrize("field,value", [("timings", "abc"), ("final", "x"), ("curve", "x"), ("curve", ["x"])])
def test_malformed_field_skips_the_record_naming_it(tmp_path, field, value):
    write_run(tmp_path, "ok", "dan", "p", 0, acc=50.0)
    write_run(tmp_path, "bad", "dan", "p", 1, acc=60.0, extra={field: value})
    with pytest.warns(UserWarning, match=rf"bad\.json.*{field}"):
        df = load_results(tmp_path)
    assert list(df["run_id"]) == ["ok"]
    from dabench.analysis.report import report_text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "| dan" in report_text(tmp_path)  # crashed with AttributeError before


def test_rule_regret_keeps_configurations_apart(tmp_path):
    """Two configurations of dann: source-val picks the oracle's evaluation on trade_off=0.1 (regret
    0) and the worse one on trade_off=1.0 (regret 20). The regret table used to pool them into one
    'dann' row reading 10 for both; each is its own row, named as in the leaderboard."""
    for s in range(3):
        for tag, accs, trade_off in (("a", [50.0, 60.0], 0.1), ("b", [70.0, 50.0], 1.0)):
            curve = curve_from(accs, source_val_acc=[80, 90])
            write_run(tmp_path, f"{tag}{s}", "dann", "p", s, curve=curve, hparams={"trade_off": trade_off})
    reg = rule_regret(load_results(tmp_path))
    assert list(reg.index) == [("dann (trade_off=0.1)", "0"), ("dann (trade_off=1.0)", "0")]
    assert reg.loc[("dann (trade_off=0.1)", "0"), "source-val"] == 0.0
    assert reg.loc[("dann (trade_off=1.0)", "0"), "source-val"] == pytest.approx(20.0)


def test_rule_regret_counts_every_pair_once_whatever_its_seeds(tmp_path):
    """source-val's regret is 10 on pair p1 (one seed) and 0 on p2 (three seeds): the row's regret is
    the mean of per-pair means (5), as the leaderboard's avg; a flat mean over the four runs read 2.5."""
    write_run(tmp_path, "p1-0", "dann", "p1", 0, curve=curve_from([70.0, 60.0], source_val_acc=[80, 90]))
    for s in range(3):
        write_run(tmp_path, f"p2-{s}", "dann", "p2", s, curve=curve_from([50.0, 60.0], source_val_acc=[80, 90]))
    reg = rule_regret(load_results(tmp_path))
    assert reg.loc[("dann", "0"), "source-val"] == pytest.approx(5.0)
    assert reg.loc[("dann", "0"), "oracle"] == 0.0
