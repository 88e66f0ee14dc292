"""The Python API (``dabench.run``) against ``dabench run``: the same folder, checks and errors."""

from __future__ import annotations

import json

import pytest

import dabench
from dabench.running.matrix import Matrix, MatrixError, expand
from dabench.running.status import status_text
from tiny_runs import TINY

FAST = {"steps": 2, "eval_every": 2, "batch_size": 8}


def test_api_run_writes_matrix_json_resumes_and_reruns(tmp_path):
    """``dabench.run`` wrote no ``matrix.json``: ``dabench status`` saw "no matrix.json", counted no
    pending run, and ``--rerun`` could not find the plugins. Now it leaves the CLI's folder; a
    second call recomputes nothing; ``rerun=`` repeats one run as ``--rerun`` does."""
    out = tmp_path / "res"
    kw = {"pairs": "tiny", "seeds": "0", "results_dir": out, "device": "cpu", "overrides": FAST}
    summary = dabench.run(methods="source-only,slow", plugins=[TINY], **kw)  # strings: comma lists, as the flags
    assert sorted((r["spec"]["method"], r["status"]) for r in summary.ran) == [
        ("slow", "complete"),
        ("source-only", "complete"),
    ]
    matrix = json.loads((out / "matrix.json").read_text())
    expected = expand(Matrix(methods=("source-only", "slow"), pairs=("tiny",), seeds=(0,), overrides=FAST))
    assert [s["method"] for s in matrix["specs"]] == [s.method for s in expected]
    assert {s.run_id for s in expected} == {r.run_id for r in summary.ran}
    assert matrix["plugins"] == [TINY] and matrix["executor"] == "inline"
    text = status_text(out)
    assert "matrix.json written" in text and "matrix: 2 runs = 2 complete" in text and "done:" in text

    again = dabench.run(methods=["source-only", "slow"], plugins=[TINY], **kw)
    assert again.ran == [] and sorted(again.skipped_complete) == sorted(r.run_id for r in summary.ran)

    slow_id = next(r.run_id for r in summary.ran if r["spec"]["method"] == "slow")
    before = (out / "matrix.json").read_text()
    repeated = dabench.run(rerun=slow_id, results_dir=out, device="cpu")  # plugins from matrix.json
    assert [(r.run_id, r["status"]) for r in repeated.ran] == [(slow_id, "complete")]
    assert len(list((out / "previous").glob(f"{slow_id}.*.json"))) == 1
    assert (out / "matrix.json").read_text() == before  # a rerun keeps the folder's matrix


def test_api_sweep_and_matrix_file_as_the_cli(tmp_path):
    """``--matrix`` and ``--sweep`` had no Python form; arguments beside the file win over it."""
    toml = tmp_path / "exp.toml"
    toml.write_text(
        f'[matrix]\nmethods = ["dann"]\npairs = ["tiny"]\nseeds = [0]\nplugins = ["{TINY}"]\n'
        "[set]\nsteps = 2\neval_every = 2\nbatch_size = 8\n"
    )
    summary = dabench.run(
        matrix=toml, methods=["slow"], sweep={"slow.sleep": [0.0, 0.001]}, results_dir=tmp_path / "r", device="cpu"
    )
    assert sorted(r["spec"]["hparams"]["sleep"] for r in summary.ran) == [0.0, 0.001]
    matrix = json.loads((tmp_path / "r" / "matrix.json").read_text())
    assert matrix["sweep"] == {"slow.sleep": [0.0, 0.001]}
    assert sorted(matrix["swept_runs"]) == sorted(r.run_id for r in summary.ran)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # a string was iterated by character: "unknown method 'd'"
        ({"methods": ""}, MatrixError, r"methods: expected at least one name, got ''"),
        ({"methods": []}, MatrixError, r"methods: expected at least one"),  # ran nothing, silently
        ({"seeds": 3}, MatrixError, r"seeds: expected an iterable .* got 3"),  # TypeError: 'int' object
        ({"seeds": [1.5]}, MatrixError, r"seeds: .*1\.5 is not one"),  # became seed 1
        ({"seeds": "0,x"}, MatrixError, r"seeds: .*'x' is not one"),  # ValueError: invalid literal
        ({"pairs": [1]}, MatrixError, r"pairs: expected names \(strings\), got 1"),
        ({"overrides": {"stepz": 1}}, MatrixError, r"^overrides stepz: no method"),  # said --set
        ({"worker": 2}, TypeError, r"unknown executor option\(s\) worker; valid: .*workers"),
        ({"workers": 2}, MatrixError, r"workers=2: the inline executor runs one run at a time"),  # ignored
        (
            {"rerun": "abc", "methods": ["dann"]},
            MatrixError,
            r"rerun repeats runs exactly as recorded; it takes no methods",
        ),
        ({"wait_limit": -1}, MatrixError, r"wait_limit=-1: expected a number of seconds >= 0"),
        # each failed deep inside (TypeError / ValueError from pathlib, dict(), '<'), or was taken
        ({"methods": 3}, MatrixError, r"methods=3: expected a name, a comma list"),  # 'int' object is not iterable
        ({"pairs": 5}, MatrixError, r"pairs=5: expected a name"),
        ({"rerun": 5}, MatrixError, r"rerun=5: expected a name"),
        ({"plugins": 5}, MatrixError, r"plugins=5: expected a name"),
        ({"results_dir": None}, MatrixError, r"results_dir=None: expected a folder's path"),
        ({"matrix": {"methods": ["dann"]}}, MatrixError, r"matrix=\{'methods'.*expected a dabench.Matrix or a TOML"),
        ({"overrides": "steps=3"}, MatrixError, r"overrides='steps=3': expected a dict"),
        ({"sweep": "dann.trade_off=0.1,1"}, MatrixError, r"sweep='dann.trade_off=0.1,1': expected a dict"),
        ({"device": 3}, MatrixError, r"device=3: expected a name: auto, cpu, cuda or cuda:N"),
        ({"progress": "yes"}, MatrixError, r"progress='yes': expected True or False"),
        ({"trials": "3"}, MatrixError, r"trials='3': expected an integer >= 1"),
        ({"sweep_seed": -2}, MatrixError, r"sweep_seed=-2: expected an integer >= 0"),  # ran
        ({"max_trials": 0}, MatrixError, r"max_trials=0: expected an integer >= 1"),  # ran
        ({"workers": "2", "executor": "local"}, MatrixError, r"workers='2': expected int or None"),
        ({"seed_batch": "no"}, MatrixError, r"seed_batch='no': expected bool"),  # batched
        # an option the executor does not read was ignored (the run went on without it)
        ({"runs_per_gpu": 2}, MatrixError, r"^--runs-per-gpu 2: the inline executor does not use it"),
        ({"gpus_per_job": 2}, MatrixError, r"^--gpus-per-job 2: the inline executor does not use it"),
        ({"slurm_partition": "gpu"}, MatrixError, r"^--slurm-partition gpu: the inline executor"),
        ({"slurm_time_min": 10}, MatrixError, r"^--slurm-time 10: the inline executor"),
        ({"ray_address": "auto", "executor": "local"}, MatrixError, r"^--ray-address auto: the local executor"),
        ({"seed_batch": True, "executor": "slurm"}, MatrixError, r"^--seed-batch: the slurm executor runs each seed"),
        ({"sweep_seed": 3}, MatrixError, r"^sweep_seed=3: there is no random sweep to seed"),  # seeded nothing
        ({"sweep_seed": 3, "sweep": {"lr": [0.1, 0.2]}}, MatrixError, r"^sweep_seed=3: there is no random sweep"),
    ],
)
def test_api_bad_input_is_refused_before_anything_runs(tmp_path, kwargs, error, match):
    out = tmp_path / "res"
    with pytest.raises(error, match=match):
        dabench.run(**{"results_dir": out, "device": "cpu", "overrides": FAST, **kwargs})
    assert not out.exists()


def test_cli_trials_zero_is_refused(tmp_path, capsys):
    """``--trials 0`` beside a random sweep ran a sweep of no trial ("0 runs") and said nothing."""
    from dabench.cli import main

    out = tmp_path / "r"
    argv = ["run", "--methods", "dann", "--pairs", "tiny", "--seeds", "0", "--plugin", TINY, "--results", str(out)]
    assert main([*argv, "--sweep", "dann.trade_off=log_uniform(0.1,1)", "--trials", "0"]) != 0
    assert "--trials 0: expected an integer >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_api_session_registered_method_is_refused_for_worker_executors(tmp_path):
    """A method registered with @register_method in the session (a notebook cell, the script) is
    in no worker's registry: ``executor='local'`` recorded its run ``failed: unknown method``."""
    from dabench.methods.source_only import SourceOnly
    from dabench.testing import isolated_registries

    with isolated_registries():

        @dabench.register_method("session-method")
        class SessionMethod(SourceOnly):
            """Source-only under another name, defined in this process only."""

        for methods in (["session-method"], [SessionMethod]):
            with pytest.raises(
                ValueError, match=r"method 'session-method' is registered in this process only .*'local'"
            ):
                dabench.run(
                    methods=methods,
                    pairs="tiny",
                    seeds=[0],
                    plugins=[TINY],
                    results_dir=tmp_path / "r",
                    device="cpu",
                    executor="local",
                    workers=1,
                    overrides=FAST,
                )
    assert not (tmp_path / "r").exists()


def test_api_tables_refuse_what_is_not_a_runs_table_and_read_one_where_string(tmp_path):
    """``leaderboard("DIR")`` failed with "'str' object has no attribute 'empty'"; ``where="steps=2"``
    was read character by character ("where='s': expected KEY=VALUE"); ``compare(alpha=5)`` called
    every difference significant."""
    out = tmp_path / "res"
    dabench.run(
        methods="source-only,slow",
        pairs="tiny",
        seeds=[0, 1],
        plugins=[TINY],
        results_dir=out,
        device="cpu",
        overrides=FAST,
    )
    df = dabench.load_results(out)
    one = dabench.leaderboard(df, where="method=slow").table
    assert one.equals(dabench.leaderboard(df, where=["method=slow"]).table) and len(one) == 1
    both = dabench.leaderboard(df, where={"method": ["slow", "source-only"]}).table  # a list: any of
    assert len(both) == 2
    with pytest.raises(
        TypeError,
        match=r"leaderboard: expected the runs table .* got '.*res'; e.g. dabench.leaderboard\(dabench.load_results",
    ):
        dabench.leaderboard(str(out))
    with pytest.raises(TypeError, match=r"compare: expected the runs table"):
        dabench.compare([1, 2])
    with pytest.raises(ValueError, match=r"alpha=5: expected a significance level in \(0, 1\)"):
        dabench.compare(df, alpha=5)


def test_every_public_name_imports_and_has_a_docstring():
    """``help(dabench.list_methods)`` said nothing: every public function and class documents itself
    (``Update`` is a type alias and the registries/constants are objects: no docstring of their own)."""
    objects = {"__version__", "METHODS", "PAIRS", "BACKBONES", "KERNEL_MULTIPLIERS", "Update"}
    missing = [n for n in dabench.__all__ if n not in objects and not (getattr(dabench, n).__doc__ or "").strip()]
    assert missing == []


def test_a_results_folder_with_a_matrix_but_no_record_yet_lists_its_planned_runs(tmp_path):
    """A folder ``dabench run`` has just started (matrix.json, no runs/ yet): its planned runs are
    pending rows. Before, the folder itself was taken for a folder of records and matrix.json was
    warned about as "not a run record"."""
    import warnings

    from dabench.running.scheduler import write_matrix_file

    specs = expand(Matrix(methods=("dann",), pairs=("digits-offline",), seeds=(0, 1)))
    write_matrix_file(tmp_path, specs, workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        df = dabench.load_results(tmp_path)
    assert sorted(df["seed"].tolist()) == [0, 1] and set(df["status"]) == {"pending"}


def test_load_results_passes_planned_on(tmp_path):
    """``dabench.load_results(DIR, planned=False)`` leaves out the pending rows of matrix.json
    (the keyword existed only on the analysis function)."""
    from dabench.running.scheduler import write_matrix_file

    write_matrix_file(tmp_path, expand(Matrix(methods=("dann",), pairs=("digits-offline",), seeds=(0,))), workers=1)
    assert len(dabench.load_results(tmp_path)) == 1
    assert len(dabench.load_results(tmp_path, planned=False)) == 0
    with pytest.raises(MatrixError, match="planned='no'"):
        dabench.load_results(tmp_path, planned="no")
