"""What a newcomer's common mistakes print: one line naming the value and the fix (README, "Running benchmarks")."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from dabench.cli import main
from dabench.core.parsing import parse_bool
from dabench.running.matrix import MatrixError
from fake_runs import write_matrix


def test_report_on_a_missing_folder_names_the_flag_that_makes_it(tmp_path: pathlib.Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    # 'dabench run' has no --out: the folder it writes is --results
    assert str(missing) in err and "the --results folder of 'dabench run'" in err and "--out" not in err


def test_misspelt_method_or_pair_suggests_the_close_names_and_the_plugin_flag(capsys) -> None:
    assert main(["run", "--dry-run", "--methods", "dnn,source-only"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'dnn' (did you mean 'dann' or 'dan'?)" in err and "valid methods: adda" in err
    # a plugin's method asked for without its plugin: the message names the flag that loads it
    assert "--plugin FILE.py|MODULE" in err
    assert main(["run", "--dry-run", "--pairs", "mnist-usp"]) == 2
    err = capsys.readouterr().err
    assert "unknown pair 'mnist-usp' (did you mean 'mnist-usps'?)" in err and "groups: office31" in err
    assert main(["run", "--dry-run", "--methods", "qqq"]) == 2
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess


@pytest.mark.parametrize("argv", [["list", "methods"], ["run", "--dry-run", "--methods", "zoo", "--seeds", "0,1,2,3"]])
def test_output_into_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """``dabench list methods | head`` (or quitting ``less``) stops without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dabench.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write: every write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_where_matching_no_run_names_the_values_present(tmp_path: pathlib.Path, capsys) -> None:
    """``--where steps=2000`` on a folder run at 600 steps used to print "(no complete runs)"
    (and a failed figure's warning); it is one error naming the filter and what the runs hold."""
    write_matrix(tmp_path, {("dann", "a"): [80.0, 81.0], ("source-only", "a"): [70.0, 71.0]}, schedule={"steps": 600})
    assert main(["report", str(tmp_path), "--where", "steps=2000", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--where steps=2000: no run matches" in err and "steps: 600" in err
    assert main(["report", str(tmp_path), "--where", "method=dann", "--where", "seed=7"]) == 2
    assert "seed: 0, 1" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--where", "steps=600", "--out", str(tmp_path / "out")]) == 0


def test_missing_data_run_shows_the_fix_where_users_look(tmp_path: pathlib.Path, capsys) -> None:
    """A pair whose files are missing fails its runs; the report and ``dabench status`` show the error's
    first line, which must carry the fix, and a failed run is no "older record" without validators."""
    results = tmp_path / "r"
    argv = ["run", "--pairs", "mnist-usps", "--methods", "source-only", "--seeds", "0", "--no-progress"]
    assert main([*argv, "--data-root", str(tmp_path / "no-data"), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "MissingDataError: MNIST not found under the data root" in out and "DABENCH_DOWNLOAD=1" in out
    assert "older records" not in out  # the failed run never computed validators: nothing is old
    assert main(["status", str(results)]) == 0
    assert "DABENCH_DOWNLOAD=1" in capsys.readouterr().out


def test_a_misspelt_set_key_gets_a_did_you_mean(capsys) -> None:
    """``--set stpes=10`` listed every valid key but named none; a misspelt method hyperparameter
    (``dann.tradeoff``) already got "did you mean"."""
    assert main(["run", "--set", "stpes=10", "--dry-run"]) == 2
    assert (
        "--set stpes: no method of this matrix has that hyperparameter; did you mean 'steps'?"
        in capsys.readouterr().err
    )
    assert main(["run", "--methods", "dann", "--set", "trade_of=1", "--dry-run"]) == 2
    assert "did you mean 'trade_off'?" in capsys.readouterr().err
    assert main(["run", "--set", "zzzz=1", "--dry-run"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_dabench_traceback_shows_where_an_error_line_came_from(monkeypatch, capsys) -> None:
    """A ValueError is one ``dabench: error:`` line (bad input), which also hid a scheduler defect
    ('list.remove(x): x not in list'); DABENCH_TRACEBACK=1 re-raises it with its traceback."""
    assert main(["run", "--set", "stpes=10", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("dabench: error:")
    monkeypatch.setenv("DABENCH_TRACEBACK", "1")
    with pytest.raises(MatrixError, match="stpes"):
        main(["run", "--set", "stpes=10", "--dry-run"])


def test_list_takes_its_pattern_after_the_plugin_option(capsys) -> None:
    """argparse fills an optional positional at the first positional it meets: `list methods
    --plugin X 'ent*'` refused its pattern ('unrecognized arguments')."""
    plugin = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "entmin.py")
    assert main(["list", "methods", "--plugin", plugin, "ent*"]) == 0
    out = capsys.readouterr().out
    assert "entmin" in out and "dann " not in out  # the pattern applied
    with pytest.raises(SystemExit) as exit_:
        main(["list", "methods", "dan*", "extra"])
    assert exit_.value.code == 2 and "unrecognized arguments: extra" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "gpu"], "device 'gpu' is not a device"),
        (["--executor", "local", "--workers", "0"], "--workers must be at least 1, got 0"),
        (["--executor", "local", "--runs-per-gpu", "0"], "--runs-per-gpu must be at least 1, got 0"),
        (["--executor", "local", "--run-timeout", "-5"], "--run-timeout must be a number of seconds > 0"),
        (
            ["--run-timeout", "60"],
            "the inline executor cannot stop a run that hangs (its runs are not processes of their own it may kill); use --executor local",
        ),
        (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be at least 1 minute, got 0"),
        (["--checkpoint-every", "-1"], "--checkpoint-every -1: expected a number of steps >= 0"),
    ],
)
def test_dry_run_refuses_the_options_the_run_would_refuse(
    flags: list[str], message: str, tmp_path: pathlib.Path, capsys
) -> None:
    """README: every value is checked before anything runs, ``--dry-run`` included. The dry run
    used to print the specs (exit 0) for a device or executor option the real run then refused."""
    argv = ["run", "--dry-run", "--methods", "source-only", "--seeds", "0", "--results", str(tmp_path), *flags]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "source-only | digits-offline" not in captured.out
    assert not (tmp_path / "matrix.json").exists()  # a dry run writes nothing, refused or not
    # the same dry run without the bad option lists the run
    assert main(["run", "--dry-run", "--methods", "source-only", "--seeds", "0", "--results", str(tmp_path)]) == 0
    assert "source-only | digits-offline" in capsys.readouterr().out


def test_an_error_dabench_did_not_write_gets_its_traceback_not_a_bad_input_line(monkeypatch, capsys) -> None:
    """A ValueError a builtin raised inside dabench's code (the scheduler's ``list.remove(x): x not
    in list`` once) is a defect, not bad input: the traceback and exit 1, not ``dabench: error:``
    and 2. A plugin's or a library's ValueError likewise; dabench's own ``raise`` stays one line."""
    from dabench import cli

    space: dict = {"__name__": "dabench.running.scheduler"}  # a builtin failing in dabench's own module
    exec(compile("def report(args):\n    [].remove(1)\n", "<dabench code>", "exec"), space)
    monkeypatch.setattr(cli, "_report", space["report"])
    assert main(["report", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "dabench: unexpected error: ValueError: list.remove(x): x not in list" in err
    assert "dabench: error:" not in err

    def plugin_report(args):  # a plugin's own ValueError (this test module is not dabench)
        raise ValueError("the plugin's own check")

    monkeypatch.setattr(cli, "_report", plugin_report)
    assert main(["report", "nowhere"]) == 1
    assert "unexpected error: ValueError: the plugin's own check" in capsys.readouterr().err

    monkeypatch.setattr(cli, "_report", lambda args: parse_bool("maybe", "--flag"))  # dabench's `raise ValueError`
    assert main(["report", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dabench: error: --flag: expected a boolean") and "Traceback" not in err


def test_warnings_are_one_line_each_without_pythons_file_and_source_line(tmp_path) -> None:
    """A warning printed by the CLI reads ``dabench: warning: ...``: Python's default format put
    the file and line that called ``warnings.warn`` and that source line before and after it
    (``.../results.py:123: UserWarning: ...`` then ``  warnings.warn(...)``), noise to a user."""
    from fake_runs import write_run

    for seed in range(2):
        write_run(tmp_path, f"ok{seed}", "dann", "p", seed, acc=70.0 + seed)
    (tmp_path / "runs" / "broken.json").write_text('{"spec": {', encoding="utf-8")  # a cut-short record
    proc = subprocess.run(
        [sys.executable, "-m", "dabench.cli", "report", str(tmp_path), "--format", "md"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines and all(x.startswith("dabench: warning") for x in lines), proc.stderr
    assert "broken.json" in proc.stderr and ".py:" not in proc.stderr
