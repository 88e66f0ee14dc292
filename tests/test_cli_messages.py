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
