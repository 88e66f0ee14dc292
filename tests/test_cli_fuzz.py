"""Bad values for every ``dabench`` subcommand's options: exit 2 and one line naming the option.

Each case is a command line a user may type by mistake (a non-integer, an empty string, commas
only, a huge number, a file where a folder is expected, a malformed ``--set``/``--sweep``/
``--where``, a malformed matrix file, a flag a ``--rerun`` does not take). Before the fixes the
cases marked in the comments ran (exit 0, the nonsense silently taken) or printed a traceback.
``dabench run`` cases use ``--dry-run``: nothing trains.
"""

from __future__ import annotations

import pathlib

import pytest

from dabench.cli import main
from fake_runs import write_run

HUGE = "99999999999999999999999"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, str]:
    """A results folder with one record (id ``abc123abc123``), a plain file, and matrix files."""
    root = tmp_path_factory.mktemp("fuzz")
    results = root / "results"
    write_run(results, "abc123abc123", "source-only", "digits-offline", 0, acc=50.0)
    (root / "afile").write_text("hi\n")
    files = {
        "binary.toml": b"\xff\xfe\x00",
        "syntax.toml": b"x = [1,\n",
        "empty.toml": b"",
        "unknown.toml": b"[matrix]\nfoo = 1\n",
        "seeds_dup.toml": b"[matrix]\nseeds = [0, 0]\n",
        "seeds_count.toml": b"[matrix]\nseeds = 99999999999\n",
        "seeds_str.toml": b'[matrix]\nseeds = "a"\n',
        "steps_str.toml": b'[set]\nsteps = "abc"\n',
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {"root": str(root), "results": str(results), "afile": str(root / "afile")}


def _exit_code(argv: list[str]) -> int:
    """``main``'s return, or argparse's exit status (it exits on a type or choice error)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _run(*extra: str) -> list[str]:
    return ["run", "--dry-run", "--results", "{root}/rd", "--methods", "source-only", "--seeds", "0", *extra]


# (argv with {root}/{results}/{afile} placeholders, text the one line must hold)
CASES: list[tuple[list[str], str]] = [
    # --seeds: duplicates ran one seed (was exit 0); a huge seed failed inside torch's seeding
    (_run("--seeds", "0,0"), "--seeds"),
    (_run("--seeds", HUGE), "--seeds"),
    (_run("--seeds", "x"), "--seeds"),
    (_run("--seeds", ","), "--seeds"),
    (_run("--seeds", "-1"), "--seeds"),
    # --methods '' ran the default matrix, --methods , a matrix of no run (exit 0)
    (["run", "--dry-run", "--results", "{root}/rd", "--methods", ""], "--methods"),
    (["run", "--dry-run", "--results", "{root}/rd", "--methods", ","], "--methods"),
    (_run("--pairs", ""), "--pairs"),
    (_run("--pairs", ","), "--pairs"),
    (_run("--pairs", "nosuch"), "nosuch"),
    # --set: a key given twice silently took the last (exit 0)
    (_run("--set", "steps=10", "--set", "steps=20"), "--set"),
    (_run("--set", "a="), "--set"),
    (_run("--set", "=1"), "--set"),
    (_run("--set", "a==1"), "--set"),
    (_run("--set", "steps=[1,"), "--set"),
    (_run("--set", "steps=x"), "--set"),
    (_run("--set", "noequals"), "--set"),
    (_run("--sweep", "lr=uniform(1)"), "--sweep"),
    (_run("--sweep", "a=[1,"), "--sweep"),
    (_run("--sweep", "lr="), "--sweep"),
    (_run("--sweep", "lr=1,1"), "--sweep"),
    (_run("--trials", "0"), "--trials"),
    (_run("--trials", "1.5"), "--trials"),
    (_run("--max-trials", "-1"), "--max-trials"),
    # --checkpoint-every -1 was named "EngineOptions.checkpoint_every"
    (_run("--checkpoint-every", "-1"), "--checkpoint-every"),
    # --wait-limit -1 / nan were taken (exit 0): every wait ended at once
    (_run("--wait-limit", "-1"), "--wait-limit"),
    (_run("--wait-limit", "nan"), "--wait-limit"),
    (_run("--executor", "local", "--workers", "0"), "--workers"),
    (_run("--workers", "2"), "--workers"),
    (_run("--executor", "local", "--runs-per-gpu", "1.5"), "--runs-per-gpu"),
    (_run("--executor", "local", "--runs-per-gpu", "0"), "--runs-per-gpu"),
    (_run("--executor", "local", "--run-timeout", "0"), "--run-timeout"),
    (_run("--executor", "nosuch"), "--executor"),
    (_run("--device", "gpu"), "gpu"),
    (_run("--rule", "nosuch"), "--rule"),
    # an empty path was the current folder: --results '' wrote the runs there (exit 0)
    (["run", "--dry-run", "--methods", "source-only", "--seeds", "0", "--results", ""], "--results"),
    (_run("--data-root", ""), "--data-root"),
    (_run("--matrix", ""), "--matrix"),
    # matrix files: a binary one was a UnicodeDecodeError traceback (exit 1)
    (["run", "--dry-run", "--matrix", "{root}/binary.toml"], "binary.toml"),
    (["run", "--dry-run", "--matrix", "{root}/syntax.toml"], "syntax.toml"),
    (["run", "--dry-run", "--matrix", "{root}/empty.toml"], "empty.toml"),
    (["run", "--dry-run", "--matrix", "{root}/unknown.toml"], "foo"),
    (["run", "--dry-run", "--matrix", "{root}/seeds_dup.toml"], "matrix.seeds"),
    (["run", "--dry-run", "--matrix", "{root}/seeds_count.toml"], "matrix.seeds"),
    (["run", "--dry-run", "--matrix", "{root}/seeds_str.toml"], "matrix.seeds"),
    (["run", "--dry-run", "--matrix", "{root}/steps_str.toml"], "steps"),
    (["run", "--dry-run", "--matrix", "{root}/nope.toml"], "nope.toml"),
    # --plugin: a file that is not Python was "AssertionError:", '' was "Empty module name"
    (_run("--plugin", "{afile}"), "afile"),
    (_run("--plugin", ""), "plugin ''"),
    (_run("--plugin", "{root}/nope.py"), "nope.py"),
    # --rerun: --methods/--seeds/--matrix beside it were ignored (exit 0)
    (["run", "--dry-run", "--results", "{results}", "--rerun", "abc123abc123", "--methods", "dann"], "--methods"),
    (["run", "--dry-run", "--results", "{results}", "--rerun", "abc123abc123", "--seeds", "3"], "--seeds"),
    (
        ["run", "--dry-run", "--results", "{results}", "--rerun", "abc123abc123", "--matrix", "{root}/x.toml"],
        "--matrix",
    ),
    (["run", "--dry-run", "--results", "{results}", "--rerun", "nosuch"], "--rerun nosuch"),
    (["run", "--dry-run", "--results", "{results}", "--rerun", "abc123abc123", "--set", "steps=3"], "--set"),
    # list
    (["list", "nosuch"], "nosuch"),
    (["list", "methods", "--plugin", "{afile}"], "afile"),
    # report: a file for DIR was a NotADirectoryError traceback, --out a file a FileExistsError
    (["report", "{afile}"], "afile"),
    (["report", "{root}/nope"], "nope"),
    (["report", "{results}", "--out", "{afile}"], "--out"),
    (["report", "{results}", "--out", ""], "--out"),
    # --format '' / ',' wrote no table (exit 0); --tsne '' was taken as no t-SNE
    (["report", "{results}", "--out", "{root}/o", "--format", ""], "--format"),
    (["report", "{results}", "--out", "{root}/o", "--format", ","], "--format"),
    (["report", "{results}", "--out", "{root}/o", "--format", "pdf"], "--format"),
    (["report", "{results}", "--out", "{root}/o", "--tsne", ""], "--tsne"),
    (["report", "{results}", "--out", "{root}/o", "--rule", "nosuch"], "nosuch"),
    (["report", "{results}", "--out", "{root}/o", "--where", "a="], "--where"),
    (["report", "{results}", "--out", "{root}/o", "--where", "=1"], "--where"),
    (["report", "{results}", "--out", "{root}/o", "--where", "noequals"], "--where"),
    (["report", "{results}", "--out", "{root}/o", "--where", "steps=x"], "--where"),
    # bench: a huge size failed in torch ("Overflow when unpacking long long", a traceback)
    (["bench", "--device", "cpu", "--batch-size", HUGE], "--batch-size"),
    (["bench", "--device", "cpu", "--image-size", HUGE], "--image-size"),
    (["bench", "--device", "cpu", "--synthetic", HUGE], "--synthetic"),
    (["bench", "--device", "cpu", "--seed-batch", HUGE], "--seed-batch"),
    (["bench", "--device", "cpu", "--steps", "0"], "--steps"),
    (["bench", "--device", "cpu", "--repeats", "x"], "--repeats"),
    (["bench", "--device", "cpu", "--seed-batch", "1"], "--seed-batch"),
    (["bench", "--device", "cpu", "--out", ""], "--out"),
    # status
    (["status", ""], "dir"),  # '' was the current folder
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a[:1] + a[-2:]) or "-" for a, _ in CASES])
def test_bad_value_is_one_line_naming_it(argv: list[str], names: str, fx: dict[str, str], capsys) -> None:
    argv = [a.format(**fx) for a in argv]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    if err and err[0].startswith("usage:"):  # argparse's own type/choice errors: usage, then one line
        assert len(err) >= 2 and "error:" in err[-1] and names in err[-1], err
    else:
        assert len(err) == 1 and err[0].startswith("dabench: error:"), err
        assert names in err[0].format(**fx), err


def test_status_of_a_file_or_nothing(fx: dict[str, str], capsys) -> None:
    for d in (fx["afile"], fx["root"] + "/nope"):
        assert _exit_code(["status", d]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dabench: error:") and pathlib.Path(d).name in err[0], err
