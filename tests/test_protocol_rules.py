"""Selection rules a protocol forbids: ``source-val`` and ``dev`` read source labels, which a
``source-free`` run (SHOT) does not have once adaptation starts. Such runs are not selected by
those rules anywhere (leaderboard, exports, statistics, sweeps, validators, CLI), the output says
why, and the rules that read no source labels select them as before. Fake records with known
numbers (tests/fake_runs.py)."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from dabench.analysis.dev import DEV_FIELD
from dabench.analysis.report import config_selection_markdown, report_markdown, selection_latex, validator_markdown
from dabench.analysis.results import load_results
from dabench.analysis.selection import NOT_APPLICABLE, SOURCE_LABELS, not_applicable, rule_regret, select
from dabench.analysis.stats import compare
from dabench.analysis.sweeps import ranking_change, rule_table, select_config
from dabench.analysis.tables import leaderboard
from dabench.analysis.validators import validator_points
from dabench.cli import main
from fake_runs import curve_from, write_run

NOTE = "source-val reads source labels; source-free runs cannot use it"
DEV_NOTE = "dev reads source labels; source-free runs cannot use it"

# SHOT's curve (steps 100, 200, 300): source_val_acc peaks at the first evaluation (the source-only
# start: adapting away from the source lowers it), entropy at the second, target accuracy too.
SHOT_ACC = [60.0, 80.0, 70.0]
SHOT_SCORES = {"source_val_acc": [99.0, 90.0, 80.0], "entropy": [0.9, 0.1, 0.5]}
# what each rule picked for SHOT before (index into the curve); source-val and dev must pick nothing now
SHOT_PICK = {"last": 2, "entropy": 1, "oracle": 1}


def _curve(accs: list[float], seed: int, dev: float | None = None, **scores: list[float]) -> list[dict]:
    curve = curve_from([a + seed for a in accs], **scores)
    if dev is not None:  # DEV scores the final model only (analysis/dev.py): an already scored record
        curve[-1][DEV_FIELD] = dev
    return curve


def _write(folder, seeds=(0, 1, 2), pairs=("a", "b")) -> None:
    for seed in seeds:
        for pair in pairs:
            write_run(folder, f"so-{pair}-{seed}", "source-only", pair, seed, curve=_curve([50, 52, 51], seed, dev=1.0))
            write_run(
                folder,
                f"dann-{pair}-{seed}",
                "dann",
                pair,
                seed,
                curve=_curve([55, 58, 57], seed, dev=0.8, source_val_acc=[95.0, 90.0, 80.0]),
            )
            write_run(
                folder,
                f"shot-{pair}-{seed}",
                "shot",
                pair,
                seed,
                protocol="source-free",
                curve=_curve(SHOT_ACC, seed, dev=0.5, **SHOT_SCORES),
            )


@pytest.fixture()
def folder(tmp_path):
    _write(tmp_path / "r")
    return tmp_path / "r"


def _shot(sel: pd.DataFrame) -> pd.DataFrame:
    return sel[sel["method"] == "shot"].sort_values("run_id")


def test_rules_declare_what_they_read():
    assert not_applicable("source-val", "source-free") == NOTE
    assert not_applicable("dev", "source-free") == DEV_NOTE
    for rule in ("last", "entropy", "im", "snd", "oracle"):
        assert not_applicable(rule, "source-free") is None
    for protocol in ("uda", "few-shot"):
        assert not_applicable("source-val", protocol) is None and not_applicable("dev", protocol) is None
    with pytest.raises(ValueError, match="valid rules"):
        not_applicable("best", "uda")


@pytest.mark.parametrize("rule", ["source-val", "dev"])
def test_source_label_rules_do_not_select_source_free_runs(folder, rule):
    df = load_results(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded on purpose: not the "no usable score" warning
        sel = select(df, rule)
    shot = _shot(sel)
    assert len(shot) == 6 and shot["accuracy"].isna().all() and shot["selected_step"].isna().all()
    assert set(shot["not_applicable"]) == {NOTE if rule == "source-val" else DEV_NOTE}
    # a UDA run with source labels is still selected by them: source-val → its first evaluation
    dann = sel[sel["method"] == "dann"].sort_values("run_id")
    assert dann["accuracy"].notna().all() and (dann["not_applicable"] == "").all()
    if rule == "source-val":
        assert list(dann["selected_step"]) == [100] * 6


@pytest.mark.parametrize("rule", sorted(SHOT_PICK))
def test_other_rules_select_source_free_runs_as_before(folder, rule):
    shot = _shot(select(load_results(folder), rule))
    j = SHOT_PICK[rule]
    seeds = [int(r.split("-")[-1]) for r in shot["run_id"]]
    assert list(shot["accuracy"]) == [SHOT_ACC[j] + s for s in seeds]
    assert list(shot["selected_step"]) == [100 * (j + 1)] * 6
    assert (shot["not_applicable"] == "").all()


def test_leaderboard_shows_na_and_says_why(folder, tmp_path):
    lb = leaderboard(load_results(folder), "source-val")
    row = lb.table.loc["shot"]
    assert row["labels"] == "0 (source-free)"
    assert [row["a"], row["b"], row["avg"], row["rank"]] == [NOT_APPLICABLE] * 4
    assert not lb.best.loc["shot"].any() and not lb.tied.loc["shot"].any()
    assert lb.missing.empty  # the runs are not missing seeds: the rule may not select them
    md = lb.to_markdown()
    assert NOTE in md and "(0/3)" not in md and "not complete" not in md
    assert NOTE in lb.to_html() and "n/a" in lb.to_html()
    assert NOTE in lb.to_latex() and "n/a" in lb.to_latex()
    csv = pd.read_csv(lb.to_csv(tmp_path / "lb.csv"), keep_default_na=False).set_index("method")
    assert csv.at["shot", "a mean"] == "n/a" and csv.at["shot", "avg"] == "n/a"
    assert csv.at["shot", "note"] == NOTE and csv.at["dann", "note"] == ""
    # dann's numbers are source-val's picks (its first evaluation), untouched
    assert float(csv.at["dann", "a mean"]) == pytest.approx(56.0)


def test_leaderboard_under_an_honest_rule_is_unchanged(folder):
    lb = leaderboard(load_results(folder), "entropy")
    assert lb.table.loc["shot", "a"].startswith("81.0 ± 1.0")  # the entropy pick, 80 + mean seed
    assert not any(NOTE in n for n in lb.notes)


def test_compare_states_the_budget_it_cannot_compare(folder):
    df = load_results(folder)
    cmp_ = compare(df, "source-val", reps=50)
    text = cmp_.to_markdown()
    assert "labels 0 (source-free): not compared under rule 'source-val'" in text
    assert "Excluded:" not in text  # never reported as missing seeds
    assert set(cmp_.bootstrap["labels"]) == {"0"}
    # under a rule it may use, the source-free row is compared within its own budget
    last = compare(df, "last", reps=50)
    sf = last.bootstrap[last.bootstrap["labels"] == "0 (source-free)"]
    assert list(sf["method"]) == ["shot"] and sf["mean"].iloc[0] == pytest.approx(71.0)


def test_rule_regret_marks_na(folder):
    df = load_results(folder)
    reg = rule_regret(df)
    assert math.isnan(reg.loc[("shot", "0 (source-free)"), "source-val"])
    assert math.isnan(reg.loc[("shot", "0 (source-free)"), "dev"])
    assert reg.loc[("shot", "0 (source-free)"), "last"] == pytest.approx(10.0)
    assert reg.loc[("dann", "0"), "source-val"] == pytest.approx(3.0)  # 58 (step 200) − 55 (step 100)
    text = report_markdown(folder, "last", reps=50)
    regret = text.split("## Selection-rule regret")[1]
    shot_line = next(line for line in regret.splitlines() if line.startswith("| shot"))
    assert shot_line.count(NOT_APPLICABLE) == 2  # source-val and dev
    assert NOTE in regret and DEV_NOTE in regret


def _write_sweep(folder) -> None:
    """Two configurations per method, pair and seed: SHOT's source-val favours the worse one."""
    for seed in (0, 1):
        for pair in ("a", "b"):
            for lr, shift in ((0.01, 0.0), (0.1, 10.0)):
                # lr=0.1 adapts further: higher target accuracy, lower source validation accuracy
                sv = [99.0 - shift, 90.0 - shift, 80.0 - shift]
                write_run(
                    folder,
                    f"shot-{pair}-{seed}-{lr}",
                    "shot",
                    pair,
                    seed,
                    protocol="source-free",
                    hparams={"lr": lr},
                    curve=_curve(
                        [a + shift for a in SHOT_ACC],
                        seed,
                        dev=0.5 - shift / 100,
                        source_val_acc=sv,
                        entropy=[0.9, 0.1 - shift / 100, 0.5],
                    ),
                )
                write_run(
                    folder,
                    f"dann-{pair}-{seed}-{lr}",
                    "dann",
                    pair,
                    seed,
                    hparams={"lr": lr},
                    curve=_curve([55 + shift, 58 + shift, 57 + shift], seed, dev=0.8, source_val_acc=sv),
                )
                write_run(
                    folder,
                    f"dan-{pair}-{seed}-{lr}",
                    "dan",
                    pair,
                    seed,
                    hparams={"lr": lr},
                    curve=_curve([54 + shift, 56 + shift, 50 + shift], seed, dev=0.9, source_val_acc=sv[::-1]),
                )


def test_sweeps_exclude_source_free_runs_from_source_label_rules(tmp_path):
    _write_sweep(tmp_path)
    df = load_results(tmp_path)
    for rule in ("source-val", "dev"):
        picks = select_config(df, rule)
        shot = picks[picks["method"] == "shot"]
        assert len(shot) == 4 and all(c == {} for c in shot["chosen"])  # nothing chosen for SHOT
        lb = leaderboard(picks, rule)
        assert lb.table.loc["shot", "a"] == NOT_APPLICABLE and lb.missing.empty
    # the rules that read no source labels still choose SHOT's configuration: lr=0.1 at step 200
    for rule in ("entropy", "oracle"):
        picks = select_config(df, rule)
        assert [c["shot.lr"] for c in picks[picks["method"] == "shot"]["chosen"]] == [0.1] * 4
    # ... and source-val still chooses DANN's (by source labels: lr=0.01)
    sv = select_config(df, "source-val")
    assert [c["dann.lr"] for c in sv[sv["method"] == "dann"]["chosen"]] == [0.01] * 4

    acc, regret = rule_table(df)
    sf = ("shot", "0 (source-free)")
    assert math.isnan(acc.at[sf, "source-val"]) and math.isnan(acc.at[sf, "dev"])
    assert math.isnan(regret.at[sf, "source-val"]) and acc.at[sf, "oracle"] == pytest.approx(90.5)
    assert acc.at[("dann", "0"), "source-val"] == pytest.approx(55.5)  # UDA runs: source-val still chooses
    tau = ranking_change(acc)
    assert math.isnan(tau.at["0 (source-free)", "source-val"])

    md = config_selection_markdown(df)
    assert NOTE in md and DEV_NOTE in md
    acc_table = md.split("### Regret")[0]
    shot_line = next(line for line in acc_table.splitlines() if line.startswith("| shot"))
    assert shot_line.count(NOT_APPLICABLE) == 2
    tex = selection_latex(df)
    assert "n/a" in tex and NOTE in tex


def test_validator_correlations_leave_out_source_free_points(folder):
    df = load_results(folder)
    pts = validator_points(df)
    # 18 runs x 3 evaluations; SHOT's 6 runs add no source-val point, and dev (last evaluation only) none
    assert (pts["validator"] == "source-val").sum() == 12 * 3
    assert (pts["validator"] == "entropy").sum() == 18 * 3
    assert (pts["validator"] == "dev").sum() == 12
    text = validator_markdown(df)
    assert NOTE in text and "left out of its correlation" in text
    assert SOURCE_LABELS in text


def test_cli_report_prints_the_note(folder, tmp_path, capsys):
    rc = main(["report", str(folder), "--rule", "source-val", "--format", "md,csv", "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert rc == 0
    shot_line = next(line for line in text.splitlines() if line.startswith("| shot"))
    assert "0 (source-free)" in shot_line and shot_line.count(NOT_APPLICABLE) == 5  # a, b, avg, rank, gain
    assert NOTE in text
    assert NOTE in (tmp_path / "out" / "leaderboard.md").read_text()
    assert NOTE in (tmp_path / "out" / "report.html").read_text()
    # the same folder under entropy selects SHOT
    main(["report", str(folder), "--rule", "entropy", "--format", "md", "--out", str(tmp_path / "out2")])
    text = capsys.readouterr().out
    assert NOTE not in text and next(x for x in text.splitlines() if x.startswith("| shot")).count("81.0") == 3
