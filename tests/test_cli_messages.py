"""What a newcomer's common mistakes print: one line naming the value and the fix (README, "Running benchmarks")."""

from __future__ import annotations

import pathlib

from dabench.cli import main


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
