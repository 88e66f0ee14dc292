"""Hyperparameter sweeps (running/sweep.py, running/matrix.py) and configuration selection
(analysis/sweeps.py): real runs on digits-offline, bad input refused before anything runs."""

from __future__ import annotations

import json
import pathlib

import pytest

from dabench.analysis.results import load_results
from dabench.analysis.selection import RULES, select
from dabench.analysis.sweeps import has_sweeps, rule_table, select_config
from dabench.analysis.tables import leaderboard
from dabench.cli import main
from dabench.running.matrix import Matrix, MatrixError, expand, load_matrix_file, sweep_plan

TINY_SCHEDULE = {"steps": 30, "eval_every": 10, "log_every": 10}


def _sweep_matrix(seeds=(0, 1)) -> Matrix:
    return Matrix(
        methods=("dann", "linear-probe"),
        pairs=("digits-offline",),
        seeds=seeds,
        overrides=dict(TINY_SCHEDULE),
        sweep={"dann.trade_off": [0.1, 1.0]},
    )


def test_grid_sweep_distinct_runs_one_source_only_per_seed():
    specs = expand(_sweep_matrix())
    by = {}
    for s in specs:
        by.setdefault(s.method, []).append(s)
    assert len(by["dann"]) == 4  # 2 trials x 2 seeds, each its own configuration
    assert {s.hparams["trade_off"] for s in by["dann"]} == {0.1, 1.0}
    assert len({s.run_id for s in specs}) == len(specs)
    # a DANN sweep does not multiply source-only: one per seed, and the probe starts from it
    assert sorted(s.seed for s in by["source-only"]) == [0, 1]
    src = {s.seed: s.run_id for s in by["source-only"]}
    assert all(s.depends_on == src[s.seed] for s in by["linear-probe"]) and len(by["linear-probe"]) == 2
    # a schedule sweep gives a source-only run per schedule, and each probe depends on its own
    specs = expand(
        Matrix(methods=("linear-probe",), seeds=(0,), overrides={"eval_every": 10}, sweep={"steps": [20, 30]})
    )
    src = {s.schedule.steps: s.run_id for s in specs if s.method == "source-only"}
    assert len(src) == 2
    assert {s.schedule.steps: s.depends_on for s in specs if s.method == "linear-probe"} == src


def test_grids_multiply_and_file_matches_flags(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text(
        '[matrix]\nmethods = ["dann"]\nseeds = [0]\n[set]\nsteps = 30\n'
        '[sweep]\n"dann.trade_off" = [0.1, 1.0]\nlr = [0.01, 0.02, 0.03]\n'
    )
    m = load_matrix_file(f)
    assert len(sweep_plan(m)) == 6
    from_file = {s.run_id for s in expand(m)}
    flags = Matrix(
        methods=("dann",),
        seeds=(0,),
        overrides={"steps": 30},
        sweep={"dann.trade_off": [0.1, 1.0], "lr": [0.01, 0.02, 0.03]},
    )
    assert from_file == {s.run_id for s in expand(flags)} and len(from_file) == 6


def test_random_search_reproducible(tmp_path):
    def draws(seed):
        m = Matrix(
            methods=("dann",),
            seeds=(0,),
            sweep={"dann.trade_off": "log_uniform(1e-3, 1)", "steps": "uniform(20, 40)"},
            trials=5,
            sweep_seed=seed,
        )
        return [t for t, _ in sweep_plan(m)], [s.run_id for s in expand(m)]

    a, ids = draws(7)
    assert (a, ids) == draws(7)
    assert a != draws(8)[0]
    assert len(a) == 5 and len(set(ids)) == 5
    assert all(1e-3 <= t["dann.trade_off"] <= 1 and isinstance(t["steps"], int) and 20 <= t["steps"] <= 40 for t in a)
    # the matrix file's [sweep.random] gives the same trials as the flags
    f = tmp_path / "r.toml"
    f.write_text(
        '[matrix]\nmethods = ["dann"]\nseeds = [0]\n[sweep.random]\n'
        '"dann.trade_off" = "log_uniform(1e-3, 1)"\nsteps = "uniform(20, 40)"\ntrials = 5\nsweep_seed = 7\n'
    )
    assert [t for t, _ in sweep_plan(load_matrix_file(f))] == a


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sweep", "dann.nope=1,2"], "no hyperparameter(s) ['nope']"),
        (["--sweep", "nope=1,2"], "nope: no method of this matrix has that hyperparameter"),
        (["--sweep", "dann.trade_off="], "sweep key 'dann.trade_off': expected a non-empty list"),
        (["--sweep", "lr=log_uniform(0.1, 0.001)", "--trials", "2"], "bounds in the wrong order"),
        (["--sweep", "dann.trade_off=uniform(1, 0)", "--trials", "2"], "bounds in the wrong order"),
        (["--sweep", "dann.forward=uniform(0, 1)", "--trials", "2"], "'dann.forward' is not a numeric hyperparameter"),
        (["--sweep", "dann.trade_off=gauss(0, 1)", "--trials", "2"], "unknown distribution 'gauss'"),
        (["--sweep", "dann.trade_off=uniform(0, 1)"], "needs trials"),
        (["--sweep", "lr=-1,0.1"], "lr=-1"),
        (
            ["--sweep", "dann.trade_off=1,2,3", "--sweep", "lr=0.1,0.2", "--max-trials", "4"],
            "sweep of 6 trials (dann.trade_off (3 values) x lr (2 values)) is larger than max_trials=4",
        ),
        (["--sweep", "dann.trade_off=uniform(0, 1)", "--trials", "65"], "larger than max_trials=64"),
    ],
)
def test_bad_sweeps_refused_before_anything_runs(tmp_path, capsys, flags, message):
    out = tmp_path / "res"
    rc = main(["run", "--methods", "dann", "--seeds", "0", "--results", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_bad_sweep_table_in_file(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('[matrix]\nmethods = ["dann"]\n[sweep]\n"dann.trade_off" = []\n')
    with pytest.raises(MatrixError, match=r"m.toml \[sweep\]: sweep key 'dann.trade_off': expected a non-empty list"):
        expand(load_matrix_file(f))
    f.write_text('[matrix]\nmethods = ["dann"]\n[sweep.random]\n"dann.trade_off" = "uniform(2, 1)"\ntrials = 3\n')
    with pytest.raises(MatrixError, match=r"m.toml \[sweep.random\]: sweep key 'dann.trade_off'.*wrong order"):
        expand(load_matrix_file(f))
    # a typo of a random-search setting is named with the keys [sweep.random] takes
    f.write_text('[matrix]\nmethods = ["dann"]\n[sweep.random]\nlr = "uniform(0.01, 0.1)"\ntrial = 4\n')
    with pytest.raises(
        MatrixError, match=r"'sweep.random.trial'.*the other keys of \[sweep.random\]: trials, sweep_seed"
    ):
        expand(load_matrix_file(f))
    # trials in [sweep] (not [sweep.random]) was read as a swept key named "trials"
    f.write_text('[matrix]\nmethods = ["dann"]\n[sweep]\ntrials = 8\n[sweep.random]\nlr = "uniform(0.01, 0.1)"\n')
    with pytest.raises(
        MatrixError, match=r"'sweep.trials': trials belongs to the random search: put it in \[sweep.random\]"
    ):
        expand(load_matrix_file(f))
    f.write_text('[matrix]\nmethods = ["dann"]\nmax_trials = 2\n[sweep]\nlr = [0.1, 0.2, 0.3]\n')
    with pytest.raises(MatrixError, match="larger than max_trials=2"):
        expand(load_matrix_file(f))


def test_dry_run_prints_trial_table(capsys):
    rc = main(["run", "--methods", "dann,linear-probe", "--seeds", "0", "--sweep", "dann.trade_off=0.1,1", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "sweep: 2 trial(s)" in out and "trial  dann.trade_off" in out
    assert "budget (configurations per pair and seed): dann 2, source-only 1, linear-probe 1" in out


@pytest.fixture(scope="module")
def swept_results(tmp_path_factory):
    """The two-value DANN sweep with a linear probe, seed 0, trained for real (30 steps)."""
    import torch

    from dabench.running.executors import ExecutorOptions
    from dabench.running.scheduler import run_matrix

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("sweep")
        specs = expand(_sweep_matrix(seeds=(0,)))
        first = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False))
        again = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False))
    finally:
        torch.set_num_threads(before)
    return out, specs, first, again


def test_sweep_runs_for_real_and_resumes(swept_results):
    out, specs, first, again = swept_results
    assert [r["status"] for r in first.ran] == ["complete"] * len(specs) == ["complete"] * 4
    assert again.ran == []  # a rerun recomputes nothing
    df = load_results(out)
    dann = df[df["method"] == "dann"]
    assert len(dann) == 2 and dann["run_id"].nunique() == 2 and dann["config"].nunique() == 2
    assert (df["method"] == "source-only").sum() == 1
    assert has_sweeps(df)


def test_selection_oracle_bounds_honest_rules(swept_results):
    out, *_ = swept_results
    df = load_results(out)
    keys = ["method", "pair", "seed"]
    oracle = select(select_config(df, "oracle"), "oracle").set_index(keys)["accuracy"]
    # the oracle's pick is the best target accuracy over trials x evaluations
    dann_best = max(e["target_acc"] for c in df.loc[df["method"] == "dann", "curve"] for e in c)
    assert oracle[("dann", "digits-offline", 0)] == dann_best
    for rule in ("source-val", "entropy", "im", "snd"):
        honest = select(select_config(df, rule), rule).set_index(keys)["accuracy"]
        assert list(honest.index) == list(oracle.index) and honest.notna().all()
        assert (oracle >= honest).all(), rule
    acc, regret = rule_table(df)
    assert list(acc.columns) == [n for n in RULES if n not in ("last", "dev")]  # dev: only with saved features
    assert (regret.drop(columns="trials") >= 0).all().all() and (regret["oracle"] == 0).all()
    assert regret.loc[("dann", "0"), "trials"] == 2 and regret.loc[("source-only", "0"), "trials"] == 1
    # the collapsed leaderboard has one row per method
    lb = leaderboard(select_config(df, "snd"), "snd")
    assert "dann (trade_off=" not in lb.to_markdown()
    assert "dann (trade_off=" in leaderboard(df, "snd").to_markdown()  # uncollapsed: one row per trial


def test_source_val_blind_to_target_labels(swept_results, tmp_path):
    out, *_ = swept_results
    df = load_results(out)
    before = select_config(df, "source-val")[["method", "run_id"]].values.tolist()
    oracle_before = select_config(df, "oracle")[["method", "run_id"]].values.tolist()
    # rewrite the records' target accuracies: the worst DANN trial by source-val becomes the best on target
    copy_dir = tmp_path / "copy"
    (copy_dir / "runs").mkdir(parents=True)
    dann_pick = dict(before)["dann"]
    for p in (out / "runs").glob("*.json"):
        rec = json.loads(p.read_text())
        for e in rec.get("curve") or []:
            e["target_acc"] = 99.0 if rec["run_id"] != dann_pick and rec["spec"]["method"] == "dann" else 1.0
        if rec.get("final"):
            rec["final"]["target_acc"] = rec["curve"][-1]["target_acc"]
        (copy_dir / "runs" / p.name).write_text(json.dumps(rec))
    changed = load_results(copy_dir)
    assert select_config(changed, "source-val")[["method", "run_id"]].values.tolist() == before
    # ... while the oracle, which sees target labels, moves to the other DANN trial
    after = dict(select_config(changed, "oracle")[["method", "run_id"]].values.tolist())
    assert after["dann"] != dann_pick and dict(oracle_before)["dann"] in set(df["run_id"])


def test_report_select_config_and_rule_section(swept_results, tmp_path, capsys):
    out, *_ = swept_results
    rc = main(["report", str(out), "--rule", "snd", "--select-config", "--format", "md", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Configuration selection" in text and "regret" in text.lower()
    assert "dann (trade_off=" not in text  # collapsed: one row per method
    assert main(["report", str(out), "--rule", "last", "--select-config"]) == 2
    assert "cannot choose among the configurations" in capsys.readouterr().err


def test_example_sweep_files_expand():
    examples = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sweeps"
    grid = expand(load_matrix_file(examples / "dann_trade_off.toml"))
    assert sum(s.method == "dann" for s in grid) == 12 and sum(s.method == "source-only" for s in grid) == 3
    assert all(s.save_features for s in grid)  # what --rule dev reads
    gpu = expand(load_matrix_file(examples / "mnist_usps_gpu.toml"))
    assert {s.pair for s in gpu} == {"mnist-usps"} and len(gpu) == 3 * 4 * 3 + 3
    assert all(s.save_features and s.schedule.steps == 5000 for s in gpu)  # the pair's full schedule
    rnd = load_matrix_file(examples / "random_search.toml")
    assert len(sweep_plan(rnd)) == 8 and rnd.sweep_seed == 0


def test_rerun_takes_no_sweep(tmp_path, capsys):
    rc = main(["run", "--results", str(tmp_path), "--rerun", "abc", "--sweep", "lr=0.1,0.2"])
    assert rc == 2 and "it takes no --sweep" in capsys.readouterr().err


def test_a_set_or_sweep_item_without_equals_is_named_with_its_form():
    from dabench.running.matrix import parse_overrides, parse_sweeps

    assert parse_overrides([" steps = 300", "dann.trade_off=0.5"]) == {"steps": 300, "dann.trade_off": 0.5}
    assert parse_sweeps([" lr = 0.1, 0.01"]) == {"lr": [0.1, 0.01]}
    with pytest.raises(MatrixError) as e:
        parse_overrides(["steps:300"])
    assert str(e.value) == "--set: expected key=value, got 'steps:300' (e.g. --set steps=300 --set dann.trade_off=0.5)"
    with pytest.raises(MatrixError) as e:
        parse_sweeps(["lr"], where="sweep.toml")
    assert str(e.value) == (
        "sweep.toml: expected key=v1,v2,... or key=log_uniform(a, b), got 'lr' (e.g. --sweep dann.trade_off=0.1,0.3,1,3)"
    )


def _two_trials(folder: pathlib.Path, status: str, **kw) -> None:
    """dann on pair p, seeds 0-2, trials trade_off=0.1 (complete) and 1.0 (complete except seed 1)."""
    from fake_runs import curve_from, write_run

    for s in range(3):
        write_run(folder, f"a{s}", "dann", "p", s, curve=curve_from([50.0 + s, 60.0 + s]), hparams={"trade_off": 0.1})
        if s == 1:
            write_run(folder, f"b{s}", "dann", "p", s, status=status, hparams={"trade_off": 1.0}, **kw)
        else:
            write_run(folder, f"b{s}", "dann", "p", s, curve=curve_from([70.0, 50.0]), hparams={"trade_off": 1.0})


def test_a_failed_trial_leaves_its_seed_missing_not_silently_unpicked(tmp_path):
    """Seed 1's trial trade_off=1.0 failed. The choice used to be made over the other trial alone and
    the leaderboard showed 3/3 complete seeds with no trace of the failure; the seed's sweep is not
    over, so the seed is missing (2/3), named with the trial and its error."""
    _two_trials(tmp_path, "failed", error={"type": "RuntimeError", "message": "CUDA out of memory"})
    lb = leaderboard(select_config(load_results(tmp_path), "source-val"), "source-val")
    assert lb.table.loc["dann", "p"].endswith("(2/3)") and not lb.best.loc["dann", "p"]
    (m,) = lb.missing.itertuples()
    assert (m.seed, m.status) == (1, "failed")
    assert "sweep trial dann.trade_off=1.0 failed" in m.detail and "CUDA out of memory" in m.detail
    assert "seed 1 | failed | sweep trial" in lb.to_markdown()


def test_a_diverged_trial_is_no_candidate_and_is_named(tmp_path):
    """A diverged trial is an outcome a rule sees without labels: the pick is over the other trials
    (seed 1 keeps its complete trial), and a note names the diverged trial instead of dropping it."""
    _two_trials(tmp_path, "diverged", diverged_at_step=300)
    lb = leaderboard(select_config(load_results(tmp_path), "source-val"), "source-val")
    assert lb.table.loc["dann", "p"].startswith("61.0") and lb.missing.empty
    assert any("dann on p seed 1 (dann.trade_off=1.0 diverged at step 300)" in n for n in lb.notes)


def test_the_oracle_column_of_the_rules_table_is_labelled_as_such(tmp_path):
    """The methods x rules table puts the oracle beside the honest rules; its text must say that
    column reads the target test labels."""
    from dabench.analysis.report import config_selection_markdown

    _two_trials(tmp_path, "diverged", diverged_at_step=300)
    md = config_selection_markdown(load_results(tmp_path))
    assert "oracle" in md and "selects on the target test labels: an upper bound, not a result" in md


def test_rules_table_counts_every_pair_once_whatever_its_seeds(tmp_path):
    """Pair p1 has one seed (90 %), pair p2 three (60 %): the rules table is a mean of per-pair means
    (75), as the leaderboard's avg; a flat mean over (pair, seed) cells gave p2 three times p1's
    weight (67.5). Regret is averaged the same way: p1's regret 10, p2's 0 -> 5 (flat: 2.5)."""
    from fake_runs import curve_from, write_run

    for pair, seeds, good in (("p1", [0], 90.0), ("p2", [0, 1, 2], 60.0)):
        for s in seeds:
            # snd prefers trial x=2, which is 10 points worse on p1 and as good on p2
            bad = good - 10.0 if pair == "p1" else good
            write_run(tmp_path, f"{pair}-1-{s}", "dann", pair, s, curve=curve_from([good], snd=[1.0]), hparams={"x": 1})
            write_run(tmp_path, f"{pair}-2-{s}", "dann", pair, s, curve=curve_from([bad], snd=[2.0]), hparams={"x": 2})
    acc, regret = rule_table(load_results(tmp_path))
    assert acc.loc[("dann", "0"), "oracle"] == pytest.approx(75.0)
    assert acc.loc[("dann", "0"), "snd"] == pytest.approx(70.0)
    assert regret.loc[("dann", "0"), "snd"] == pytest.approx(5.0)
    lb = leaderboard(select_config(load_results(tmp_path), "oracle"), "oracle")
    assert float(lb.summary.loc["dann", "avg"]) == pytest.approx(acc.loc[("dann", "0"), "oracle"])


def test_a_trial_without_the_rules_score_is_named_not_silently_dropped(tmp_path):
    """Seed 1's trial trade_off=1.0 has no snd score (say, a run of an older dabench): snd cannot rank
    it, so the pick is over the other trial. That used to happen silently, the row reading as a
    choice over both trials; now a warning and the leaderboard's notes name the trial, and
    ``trials`` counts the one candidate."""
    from fake_runs import curve_from, write_run

    for s in range(3):
        write_run(tmp_path, f"a{s}", "dann", "p", s, curve=curve_from([60.0], snd=[1.0]), hparams={"trade_off": 0.1})
        snd = [None] if s == 1 else [2.0]
        write_run(tmp_path, f"b{s}", "dann", "p", s, curve=curve_from([70.0], snd=snd), hparams={"trade_off": 1.0})
    with pytest.warns(UserWarning, match=r"1 complete sweep trial\(s\) have no snd score.*dann on p seed 1"):
        picks = select_config(load_results(tmp_path), "snd")
    assert sorted(picks["run_id"]) == ["a1", "b0", "b2"]
    assert dict(zip(picks["seed"], picks["trials"])) == {0: 2, 1: 1, 2: 2}
    lb = leaderboard(picks, "snd")
    assert any("dann on p seed 1 (dann.trade_off=1.0 has no snd score)" in n for n in lb.notes), lb.notes


def test_a_seed_with_no_scored_trial_is_not_shown_as_diverged(tmp_path):
    """Seed 0: trade_off=0.1 diverged, the two others completed without an snd score. There is no
    pick; the seed used to be represented by its first row, the diverged trial, so the leaderboard
    said the seed diverged. It is listed as complete without a score for the rule."""
    from fake_runs import curve_from, write_run

    write_run(tmp_path, "a0", "dann", "p", 0, status="diverged", diverged_at_step=10, hparams={"trade_off": 0.1})
    for tag, t in (("b0", 1.0), ("c0", 3.0)):
        write_run(tmp_path, tag, "dann", "p", 0, curve=curve_from([70.0], snd=[None]), hparams={"trade_off": t})
    (pick,) = select_config(load_results(tmp_path), "snd").itertuples()
    assert (pick.run_id, pick.status) == ("b0", "complete")
    with pytest.warns(UserWarning, match="no usable score"):
        lb = leaderboard(select_config(load_results(tmp_path), "snd"), "snd")
    (m,) = lb.missing.itertuples()
    assert m.status == "complete" and "no score for rule 'snd'" in m.detail


def test_ties_go_to_the_later_evaluation_then_the_smaller_run_id(tmp_path):
    """The documented tie-break of select_config: equal scores → the later evaluation, then the
    smaller run id (whatever order the records are read in)."""
    from fake_runs import curve_from, write_run

    same = curve_from([60.0, 70.0], snd=[1.0, 1.0])
    for rid, t in (("z", 0.1), ("m", 1.0), ("q", 3.0)):
        write_run(tmp_path, rid, "dann", "p", 0, curve=same, hparams={"trade_off": t})
    (pick,) = select_config(load_results(tmp_path), "snd").itertuples()
    assert pick.run_id == "m"
    assert select(select_config(load_results(tmp_path), "snd"), "snd")["selected_step"].tolist() == [200]


@pytest.mark.parametrize(
    "table, message",
    [
        # the same value twice: the trial table listed 3 trials for 2 configurations
        ('"dann.trade_off" = [0.1, 0.1, 1]', "sweep key 'dann.trade_off': 0.1 is given twice in [0.1, 0.1, 1]"),
        # 1 and 1.0 are one float hyperparameter value, 10 and 10.0 one step count: the same runs
        ('"dann.trade_off" = [1, 1.0]', "sweep key 'dann.trade_off': 1 and 1.0 are the same configuration"),
        ("steps = [10, 10.0]", "sweep key 'steps': 10 and 10.0 are the same configuration"),
        ('[sweep.random]\n"dann.forward" = "choice(concat, concat)"\ntrials = 2', "'concat' is given twice"),
        # TOML's true for a float hyperparameter was read as 1.0 (float(True))
        ('"dann.trade_off" = [true, 0.5]', "dann.trade_off: expected a finite float like 1.0, got True"),
        # an empty [sweep] table ran the matrix unswept without a word
        ("", "[sweep] has no keys"),
    ],
)
def test_a_sweep_file_with_duplicate_bool_or_no_values_is_refused_by_key(tmp_path, table, message):
    f = tmp_path / "m.toml"
    f.write_text(f'[matrix]\nmethods = ["dann"]\npairs = ["digits-offline"]\n[sweep]\n{table}\n')
    with pytest.raises(MatrixError) as e:
        expand(load_matrix_file(f))
    assert message in str(e.value) and str(e.value).startswith(str(f)), str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_sweep_values_on_the_command_line_are_refused(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["run", "--methods", "dann", "--seeds", "0", "--results", str(out), "--sweep", "lr=0.01,0.010"])
    err = capsys.readouterr().err
    assert rc == 2 and "--sweep: sweep key 'lr': 0.01 is given twice" in err, err
    assert not out.exists()


def test_random_draws_that_coincide_are_not_refused():
    """A random search may draw one value twice (choice over two values, 4 trials): that is sampling,
    not a mistake in the file; only a list or choice() naming one value twice is refused."""
    m = Matrix(
        methods=("dann",),
        pairs=("digits-offline",),
        seeds=(0,),
        overrides=dict(TINY_SCHEDULE),
        sweep={"dann.forward": "choice(concat, separate)"},
        trials=4,
    )
    assert len(sweep_plan(m)) == 4


def test_a_run_of_another_folder_or_a_plain_run_is_no_candidate_of_the_sweeps_choice(tmp_path):
    """Folder A holds a sweep (x=1, x=2); folder B one plain run (x=3) with the best snd. Merged, the
    choice used to pool B's run with A's trials and pick it (snd 20 % with regret 50): a choice
    among configurations no sweep made (has_sweeps says merged folders are no sweep). B's run keeps
    its own row; the choice and the rules table are over A's trials only."""
    from fake_runs import curve_from, write_run

    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        write_run(a, f"a{s}", "dann", "p", s, curve=curve_from([60.0], snd=[1.0]), hparams={"x": 1})
        write_run(a, f"b{s}", "dann", "p", s, curve=curve_from([70.0], snd=[2.0]), hparams={"x": 2})
        write_run(b, f"c{s}", "dann", "p", s, curve=curve_from([20.0], snd=[3.0]), hparams={"x": 3})
    (a / "matrix.json").write_text(json.dumps({"format": 1, "specs": [], "swept_runs": ["a0", "a1", "b0", "b1"]}))
    (b / "matrix.json").write_text(json.dumps({"format": 1, "specs": [], "swept_runs": []}))
    df = load_results(a, b)
    picks = select_config(df, "snd")
    assert sorted(picks["run_id"]) == ["b0", "b1", "c0", "c1"]
    assert dict(zip(picks["run_id"], picks["trials"])) == {"b0": 2, "b1": 2, "c0": 1, "c1": 1}
    acc, regret = rule_table(df)
    assert acc.loc[("dann", "0"), "snd"] == pytest.approx(70.0) and regret.loc[("dann", "0"), "snd"] == 0.0
    assert int(regret.loc[("dann", "0"), "trials"]) == 2
    lb = leaderboard(picks, "snd")
    cells = sorted(str(v)[:4] for v in lb.table["p"])
    assert cells == ["20.0", "70.0"] and lb.table.loc["dann (x=3)", "p"].startswith("20.0")


def test_chosen_row_beside_a_plain_run_or_another_folders_choice_is_named_by_its_grid(tmp_path):
    """--select-config: the chosen row's swept key was dropped from its settings, so beside a plain
    run of the method (which has the key) entry_names named it ``dann (x=None)``; and two folders'
    choices over other grids had equal settings, became one row ``dann`` and dropped one folder's
    seeds as duplicates. The choice is named by the values it was made among, in every format."""
    from fake_runs import curve_from, write_run

    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        write_run(a, f"a{s}", "dann", "p", s, curve=curve_from([60.0], snd=[1.0]), hparams={"x": 1})
        write_run(a, f"b{s}", "dann", "p", s, curve=curve_from([70.0], snd=[2.0]), hparams={"x": 2})
        write_run(a, f"p{s}", "dann", "p", s, curve=curve_from([20.0], snd=[3.0]), hparams={"x": 2.5})
        write_run(b, f"c{s}", "dann", "p", s, curve=curve_from([40.0], snd=[1.0]), hparams={"x": 10})
        write_run(b, f"d{s}", "dann", "p", s, curve=curve_from([45.0], snd=[2.0]), hparams={"x": 30})
    (a / "matrix.json").write_text(json.dumps({"format": 1, "specs": [], "swept_runs": ["a0", "a1", "b0", "b1"]}))
    (b / "matrix.json").write_text(json.dumps({"format": 1, "specs": [], "swept_runs": ["c0", "c1", "d0", "d1"]}))
    lb = leaderboard(select_config(load_results(a), "snd"), "snd")
    assert sorted(lb.table.index) == ["dann (x=2.5)", "dann (x∈{1, 2})"]
    assert lb.table.loc["dann (x∈{1, 2})", "p"].startswith("70.0") and "None" not in lb.to_markdown()
    assert r"dann (x$\in$\{1, 2\})" in lb.to_latex()
    # a sweep alone keeps its method's name
    assert list(leaderboard(select_config(load_results(b), "snd"), "snd").table.index) == ["dann"]
    # two folders' choices over other grids: two rows, each with its 2 seeds (none dropped as duplicates)
    lb = leaderboard(select_config(load_results(a, b), "snd"), "snd")
    assert sorted(lb.table.index) == ["dann (x=2.5)", "dann (x∈{1, 2})", "dann (x∈{10, 30})"]
    assert set(lb.table["seeds"]) == {"2"} and not any("recorded twice" in n for n in lb.notes)
    assert lb.table.loc["dann (x∈{10, 30})", "p"].startswith("45.0")


@pytest.mark.parametrize("order", ["sweep first", "plain first"])
def test_a_run_both_a_sweeps_trial_and_another_folders_plain_run_counts_in_both_rows(tmp_path, order):
    """``dabench report sw a --select-config``: folder ``a``'s plain ``dann`` (trade_off=1.0) run of
    seed 0 has the run id of ``sw``'s trade_off=1.0 trial (same spec, same computation). It was read
    once, as ``sw``'s trial only, and ``a``'s plain row silently showed one seed fewer, with no
    (k/n) mark (``a`` first: ``sw``'s choice silently lost that trial). It now serves both roles,
    and without ``--select-config`` it is still one run, never pooled as two seeds."""
    import shutil

    import torch

    from dabench import api

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    sw, a = tmp_path / "sw", tmp_path / "a"
    tiny = {"steps": 4, "eval_every": 2, "log_every": 2}
    try:
        api.run("dann", "digits-offline", [0], sw, dict(tiny), device="cpu", sweep={"dann.trade_off": [0.1, 1.0]})
        shared = next(
            p for p in (sw / "runs").glob("*.json") if json.loads(p.read_text())["spec"]["hparams"]["trade_off"] == 1.0
        )
        (a / "runs").mkdir(parents=True)
        shutil.copy(shared, a / "runs" / shared.name)  # the same run, also in a (a skips it: complete)
        api.run("dann", "digits-offline", [0, 1], a, {**tiny, "dann.trade_off": 1.0}, device="cpu")
    finally:
        torch.set_num_threads(before)
    dirs = [sw, a] if order == "sweep first" else [a, sw]
    with pytest.warns(UserWarning, match=f"run {shared.stem} is recorded twice"):
        df = load_results(*dirs)
    assert len(df) == 3 and df["run_id"].is_unique  # one run, one row
    lb = leaderboard(select_config(df, "source-val"), "source-val")
    assert sorted(lb.table.index) == ["dann (trade_off=1.0)", "dann (trade_off∈{0.1, 1.0})"]
    assert lb.table.loc["dann (trade_off=1.0)", "seeds"] == "2"  # a's plain row: both its seeds
    assert lb.table.loc["dann (trade_off∈{0.1, 1.0})", "seeds"] == "1"
    assert select_config(df, "oracle").set_index("seed").loc[0, "trials"].max() == 2  # sw chose over both trials
    assert rule_table(df)[1].loc[("dann", "0"), "trials"] == 2
    # without --select-config: one row per trial, the shared run counted once
    plain = leaderboard(df, "source-val")
    assert sorted(plain.table.index) == ["dann (trade_off=0.1)", "dann (trade_off=1.0)"]
    assert plain.table.loc["dann (trade_off=1.0)", "seeds"] == "2" and not any(
        "recorded twice" in n for n in plain.notes
    )


def test_a_run_two_folders_hold_is_one_row_its_complete_record_first(tmp_path):
    """One run id in two merged folders is one row (never two seeds); where one folder's record of
    it failed and the other's completed, the complete record is the row, whichever folder comes first."""
    from fake_runs import curve_from, write_run

    x, y = tmp_path / "x", tmp_path / "y"
    write_run(x, "r0", "dann", "p", 0, status="failed", hparams={"x": 1})
    write_run(y, "r0", "dann", "p", 0, curve=curve_from([60.0]), hparams={"x": 1})
    for dirs in ([x, y], [y, x]):
        with pytest.warns(UserWarning, match="run r0 is recorded twice"):
            df = load_results(*dirs)
        assert list(df["status"]) == ["complete"] and df.at[0, "source_dir"] == str(y)
        assert sorted(f for f, _ in df.at[0, "folders"]) == [str(x), str(y)]


def test_report_names_each_seeds_pick_and_the_trials_it_chose_from(tmp_path, capsys):
    """`--select-config` said "Configurations chosen by rule ..." but never which ones, nor over how
    many trials: seed 1's pick below is over 1 candidate (its other trial has no snd score), which the
    leaderboard's row reads as a choice over both. The printed report, report.html and
    selection_choices.csv list each seed's chosen settings, step, trials and accuracy."""
    from dabench.analysis.sweeps import chosen_table
    from fake_runs import curve_from, write_run

    for s in range(3):
        write_run(
            tmp_path,
            f"a{s}",
            "dann",
            "p",
            s,
            curve=curve_from([55.0, 60.0], snd=[3.0, 1.0]),
            hparams={"trade_off": 0.1},
        )
        snd = [None, None] if s == 1 else [2.0, 2.5]
        write_run(
            tmp_path, f"b{s}", "dann", "p", s, curve=curve_from([70.0, 65.0], snd=snd), hparams={"trade_off": 1.0}
        )
    with pytest.warns(UserWarning, match="no snd score"):
        t = chosen_table(select_config(load_results(tmp_path), "snd"), "snd")
    rows = {int(r.seed): (r.chosen, int(r.step), int(r.trials), r.accuracy, r.run_id) for r in t.itertuples()}
    # seed 0/2: trial 0.1 at its first evaluation (snd 3.0) beats trial 1.0's best (2.5); seed 1: one candidate
    step0 = int(curve_from([55.0, 60.0])[0]["step"])
    assert rows[0] == ("dann.trade_off=0.1", step0, 2, 55.0, "a0")
    assert rows[1][0] == "dann.trade_off=0.1" and rows[1][2] == 1
    out = tmp_path / "rep"
    assert (
        main(["report", str(tmp_path), "--rule", "snd", "--select-config", "--format", "csv", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "## Configurations chosen by snd" in text
    assert "| dann   | 0      | p    | 1    | dann.trade_off=0.1 |" in text
    csv = (out / "selection_choices.csv").read_text().splitlines()
    assert csv[0] == "method,labels,pair,seed,chosen,step,trials,accuracy,run_id" and len(csv) == 4
    assert "Configurations chosen by snd" in (out / "report.html").read_text()
