"""Where a report's numbers come from: mixed provenance is named, merged folders are no sweep,
a resume over records of other code says so, and ``dabench report`` loads the folders once."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from dabench.analysis import report
from dabench.analysis.results import load_results
from dabench.analysis.tables import leaderboard
from fake_runs import write_run

V_OLD = {"dabench": "0.1.0", "torch": "2.14.1", "python": "3.11.7", "git_commit": "a1b2c3d4e5f6a7b8"}
V_NEW = {**V_OLD, "git_commit": "d4e5f6a7b8c9d0e1"}


def _two_commits(folder: Path) -> None:
    """source-only and dann on two pairs x 3 seeds: dann's mnist-usps runs made by another commit."""
    for m in ("source-only", "dann"):
        for pair in ("mnist-usps", "usps-mnist"):
            for seed in range(3):
                v = V_NEW if (m == "dann" and pair == "mnist-usps") else V_OLD
                write_run(folder, f"{m}-{pair}-{seed}", m, pair, seed, acc=60.0 + seed, extra={"versions": v})


def _rows_of(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return {r["row"]: r for r in csv.DictReader(fh)}


def test_mixed_commits_are_named_in_every_format(tmp_path: Path) -> None:
    _two_commits(tmp_path)
    paths = report.write_report(tmp_path, formats=("md", "csv", "tex", "html"), reps=50)
    line = "Mixed provenance: runs from 2 dabench git commits: a1b2c3d (9 runs), d4e5f6a (3 runs: dann)."
    for fmt in ("md", "tex", "html"):
        text = paths[fmt].read_text(encoding="utf-8")
        assert line in text, fmt
    assert line in paths["report"].read_text(encoding="utf-8")
    # one line per kind: torch, device, python agree, so only the commit is named
    assert report.report_text(tmp_path).count("Mixed provenance") == 1
    rows = _rows_of(paths["csv"])
    assert rows["dann"]["provenance"] == "git_commit=a1b2c3d (3 runs), d4e5f6a (3 runs)"
    assert rows["source-only"]["provenance"] == "git_commit=a1b2c3d (6 runs)"


def test_devices_torch_and_a_dirty_tree_each_get_their_line(tmp_path: Path) -> None:
    dirty = {**V_OLD, "git_dirty": True}
    write_run(tmp_path, "a0", "dann", "mnist-usps", 0, acc=60.0, extra={"versions": V_OLD})
    write_run(tmp_path, "a1", "dann", "mnist-usps", 1, acc=61.0, extra={"versions": dirty})
    write_run(tmp_path, "a2", "dann", "mnist-usps", 2, acc=62.0, extra={"versions": {**V_OLD, "torch": "2.5.0"}})
    write_run(tmp_path, "b0", "coral", "mnist-usps", 0, acc=60.0, device="NVIDIA H100 80GB HBM3")
    write_run(tmp_path, "b1", "coral", "mnist-usps", 1, acc=60.0, device="NVIDIA H100 80GB HBM3")
    notes = [n for n in leaderboard(load_results(tmp_path)).notes if n.startswith("Mixed provenance")]
    assert notes == [
        # the coral records name no commit: unknown is not known to agree
        "Mixed provenance: runs from 3 dabench git commits: a1b2c3d (2 runs), unknown (2 runs: coral), "
        "a1b2c3d+dirty (1 run: dann).",
        "Mixed provenance: runs from 2 torch versions: 2.14.1 (4 runs), 2.5.0 (1 run: dann).",
        "Mixed provenance: runs from 2 devices: cpu (3 runs), NVIDIA H100 80GB HBM3 (2 runs: coral).",
    ]


def test_agreeing_runs_get_no_note_and_an_empty_column(tmp_path: Path) -> None:
    for seed in range(2):
        write_run(tmp_path, f"d{seed}", "dann", "mnist-usps", seed, acc=60.0, extra={"versions": V_OLD})
        write_run(tmp_path, f"s{seed}", "source-only", "mnist-usps", seed, acc=50.0, extra={"versions": V_OLD})
    # a failed run of other code is not in the means: it does not make the numbers mixed
    write_run(tmp_path, "f", "dann", "mnist-usps", 2, status="failed", extra={"versions": V_NEW})
    paths = report.write_report(tmp_path, formats=("md", "csv"), reps=50)
    assert "provenance" not in paths["md"].read_text(encoding="utf-8").lower()
    assert {r["provenance"] for r in _rows_of(paths["csv"]).values()} == {""}


def test_a_resume_over_records_of_other_code_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real runs on the tiny pair; then two of the records are made to come from other code (another
    commit, another dabench version): the resume keeps them and names them."""
    from dabench.cli import main
    from dabench.running.unit import versions
    from tiny_runs import tiny_run

    out = tmp_path / "r"
    args = tiny_run(out, "source-only,dann", "0,1", "--set", "steps=4", "--set", "eval_every=2")
    assert main(args) == 0
    first = capsys.readouterr().err
    assert "made by other code" not in first
    here = versions()
    assert isinstance(here.get("git_dirty"), bool) or here.get("git_commit") is None  # records mark a dirty tree
    paths = sorted((out / "runs").glob("*.json"))
    assert len(paths) == 4
    for path, v in zip(paths[:2], ({**here, "git_commit": "0" * 40, "git_dirty": False}, {**here, "dabench": "0.0.9"})):
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["versions"] = v
        path.write_text(json.dumps(rec), encoding="utf-8")
    assert main(args) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "made by other code" in x]
    assert line.startswith("2 kept run(s) were made by other code than this dabench ")
    assert "dabench 0.0.9" in line and "at 0000000 (1 run)" in line
    assert f"dabench run --rerun RUN_ID --results {out}" in line and "new --results folder" in line
    # kept, not recomputed: the edited records are still there as edited
    assert json.loads(paths[1].read_text(encoding="utf-8"))["versions"]["dabench"] == "0.0.9"


def _tiny(out: Path, *more: str) -> list[str]:
    from tiny_runs import tiny_run

    return tiny_run(out, "dann", "0", "--set", "steps=4", "--set", "eval_every=2", *more)


def test_merged_folders_of_other_settings_are_no_sweep_but_one_sweep_is(tmp_path: Path, capsys) -> None:
    """Two real plain runs of dann in two folders (lr 0.01, 0.03) merged: no configuration-selection
    tables (no rule chose between them); the same two settings as one --sweep: the tables are there."""
    from dabench.analysis.sweeps import has_sweeps
    from dabench.cli import main

    a, b, sw = tmp_path / "a", tmp_path / "b", tmp_path / "sweep"
    assert main(_tiny(a, "--set", "lr=0.01")) == 0
    assert main(_tiny(b, "--set", "lr=0.03")) == 0
    assert main(_tiny(sw, "--sweep", "lr=0.01,0.03")) == 0
    # matrix.json says what was swept and which runs are its trials
    matrix = json.loads((sw / "matrix.json").read_text(encoding="utf-8"))
    assert matrix["sweep"] == {"lr": [0.01, 0.03]} and len(matrix["swept_runs"]) == 2
    assert json.loads((a / "matrix.json").read_text(encoding="utf-8"))["swept_runs"] == []
    capsys.readouterr()
    merged = load_results(a, b)
    assert merged["config"].nunique() == 2 and not has_sweeps(merged)
    text = report.report_text([a, b])
    assert "Configuration selection" not in text and "dann (lr=0.01)" in text and "dann (lr=0.03)" in text
    assert has_sweeps(load_results(sw)) and "Configuration selection" in report.report_text(sw)
    # a plain run added to the sweep's folder later keeps its trials a sweep (matrix.json keeps them)
    assert main(_tiny(sw, "--set", "lr=0.1")) == 0
    assert has_sweeps(load_results(sw))
    # a folder that does not say (no matrix.json: older dabench) counts its own configurations only
    (a / "matrix.json").unlink()
    (b / "matrix.json").unlink()
    assert not has_sweeps(load_results(a, b))


def test_report_reads_the_folders_once(tmp_path: Path, capsys) -> None:
    """``dabench report`` writes the files and prints the text from one reading: each bad record is
    named once (it was read, and warned about, twice)."""
    from dabench.cli import main

    write_run(tmp_path, "a", "dann", "mnist-usps", 0, acc=50.0)
    (tmp_path / "runs" / "torn.json").write_text("{bad", encoding="utf-8")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert sum("torn.json" in str(w.message) for w in seen) == 1
    assert "dann" in capsys.readouterr().out


# --- plugin code: two versions of one plugin method's code inside a row ---------------------------

CODE_A = {"method": {"file": "/plugins/mine.py", "sha256": "1a2b3c4d5e6f7a8b"}}
CODE_B = {"method": {"file": "/plugins/mine.py", "sha256": "9f8e7d6c5b4a3f2e"}}


def test_two_versions_of_a_plugin_method_in_one_row_are_named_with_the_fix(tmp_path: Path) -> None:
    """Seeds 0 and 1 of the plugin method 'mine' were made by one version of its file, seed 2 (the
    latest to finish) by an edited one: every run has the same spec, the same dabench commit and
    device, so only ``plugin_code`` tells. The note names the row, both versions and the runs to
    remake; the CSV's provenance column names the row's versions; built-in rows get nothing."""
    for seed, (code, done) in enumerate(
        [(CODE_A, "2025-01-01T00:00:02"), (CODE_A, "2025-01-01T00:00:04"), (CODE_B, "2025-01-02T00:00:00")]
    ):
        extra = {"versions": V_OLD, "plugin_code": code, "finished_at": done}
        write_run(tmp_path, f"mine-{seed}", "mine", "mnist-usps", seed, acc=60.0 + seed, extra=extra)
        write_run(tmp_path, f"so-{seed}", "source-only", "mnist-usps", seed, acc=50.0, extra={"versions": V_OLD})
    notes = [n for n in leaderboard(load_results(tmp_path)).notes if n.startswith("Mixed provenance")]
    assert notes == [
        "Mixed provenance: runs from 2 versions of plugin method 'mine' (/plugins/mine.py): "
        "1a2b3c4d (2 runs: mine), 9f8e7d6c (1 run: mine); the latest run's version is 9f8e7d6c. To average "
        "one version, remake the others' runs with the plugin's current code: "
        f"dabench run --results {tmp_path} --rerun mine-0 --rerun mine-1, or rerun the matrix into a new "
        "--results folder."
    ]
    paths = report.write_report(tmp_path, formats=("md", "csv"), reps=50)
    assert notes[0] in paths["md"].read_text(encoding="utf-8")
    rows = _rows_of(paths["csv"])
    assert rows["mine"]["provenance"] == "plugin_method mine=1a2b3c4d (2 runs), 9f8e7d6c (1 run)"
    assert rows["source-only"]["provenance"] == ""


def test_one_plugin_version_or_builtins_only_get_no_plugin_note(tmp_path: Path) -> None:
    """One version throughout (or built-ins, whose records carry no plugin_code): nothing new. A
    plugin's run whose record names no code (an older dabench) beside ones that do is not known to
    agree: named as 'unrecorded'. An entry point's package version is part of the version."""
    for seed in range(2):
        extra = {"versions": V_OLD, "plugin_code": CODE_A}
        write_run(tmp_path, f"mine-{seed}", "mine", "mnist-usps", seed, acc=60.0, extra=extra)
        write_run(tmp_path, f"dann-{seed}", "dann", "mnist-usps", seed, acc=60.0, extra={"versions": V_OLD})
    assert not [n for n in leaderboard(load_results(tmp_path)).notes if "provenance" in n.lower()]
    assert {r["provenance"] for r in _rows_of(report.write_report(tmp_path, formats=("csv",))["csv"]).values()} == {""}
    write_run(tmp_path, "mine-2", "mine", "mnist-usps", 2, acc=60.0, extra={"versions": V_OLD})
    pkg = {"method": {**CODE_A["method"], "package": "mine-plugin 1.2"}}
    write_run(tmp_path, "mine-3", "mine", "mnist-usps", 3, acc=60.0, extra={"versions": V_OLD, "plugin_code": pkg})
    (note,) = [n for n in leaderboard(load_results(tmp_path)).notes if n.startswith("Mixed provenance")]
    assert "1a2b3c4d (2 runs: mine), mine-plugin 1.2 1a2b3c4d (1 run: mine), unrecorded (1 run: mine)" in note


def test_a_real_resume_after_editing_a_plugin_names_both_versions_in_the_report(tmp_path: Path) -> None:
    """Real runs: the tiny plugin's 'slow' method on its 'tiny' pair, seed 0; the plugin file is
    edited; seeds 0,1: seed 0 is kept (old code), seed 1 runs with the new code. The report names
    the mix for the method (and the pair: the same file registers it)."""
    from dabench.cli import main
    from tiny_runs import TINY, tiny_run

    # the tiny plugin under names of its own (this process may have registered the original's)
    plugin = tmp_path / "plug.py"
    text = Path(TINY).read_text(encoding="utf-8")
    plugin.write_text(text.replace('"tiny"', '"tiny-prov"').replace('"slow"', '"slow-prov"'), encoding="utf-8")
    out = tmp_path / "r"

    def run(seeds: str) -> None:
        args = tiny_run(out, "slow-prov", seeds, "--set", "steps=4", "--set", "eval_every=2")
        args[args.index(TINY)] = str(plugin)
        args[args.index("tiny")] = "tiny-prov"
        assert main(args) == 0

    run("0")
    plugin.write_text(plugin.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    run("0,1")
    notes = [n for n in leaderboard(load_results(out)).notes if "versions of plugin" in n]
    assert [n.split(" (")[0] for n in notes] == [
        "Mixed provenance: runs from 2 versions of plugin method 'slow-prov'",
        "Mixed provenance: runs from 2 versions of plugin pair 'tiny-prov'",
    ]
    recs = {json.loads(p.read_text())["spec"]["seed"]: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    old, new = (recs[s]["plugin_code"]["method"]["sha256"][:8] for s in (0, 1))
    assert old != new
    # one run each: ordered by hash; the latest is the edited file's
    assert f"{min(old, new)} (1 run: slow-prov), {max(old, new)} (1 run: slow-prov)" in notes[0]
    assert str(plugin) in notes[0]
    if recs[0]["finished_at"] == recs[1]["finished_at"]:  # whole seconds: a fast machine finishes both in one
        assert f"same second under versions {min(old, new)} and {max(old, new)}" in notes[0]
    else:
        assert f"the latest run's version is {new}." in notes[0]
        assert f"--rerun {recs[0]['run_id']}" in notes[0]


def test_versions_whose_newest_runs_finished_in_the_same_second_are_not_guessed(tmp_path: Path) -> None:
    """finished_at has whole seconds: two versions' newest runs in one second leave the plugin's
    current code unknown; the note says so instead of naming one as the latest (it picked by order)."""
    for seed, sha in enumerate(("a" * 64, "b" * 64)):
        code = {"method": {"name": "mine", "file": "/p/mine.py", "sha256": sha}}
        extra = {"versions": V_OLD, "plugin_code": code, "finished_at": "2026-11-27T01:00:00+00:00"}
        write_run(tmp_path, f"mine-{seed}", "mine", "mnist-usps", seed, acc=60.0, extra=extra)
    (note,) = [n for n in leaderboard(load_results(tmp_path)).notes if "versions of plugin" in n]
    assert "same second under versions aaaaaaaa and bbbbbbbb" in note and "latest run's version" not in note
