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
    # options the chosen executor does not read were ignored (exit 0: the user believed them applied)
    (_run("--runs-per-gpu", "2"), "--runs-per-gpu 2: the inline executor does not use it"),
    (_run("--runs-per-gpu", "1"), "--runs-per-gpu 1: the inline executor"),  # given, even at its default
    (_run("--gpus-per-job", "2"), "--gpus-per-job 2: the inline executor does not use it"),
    (_run("--slurm-partition", "gpu"), "--slurm-partition gpu: the inline executor does not use it"),
    (_run("--slurm-time", "10"), "--slurm-time 10: the inline executor does not use it"),
    (_run("--slurm-cluster", "local"), "--slurm-cluster local: the inline executor"),
    (_run("--runs-per-process", "1"), "--runs-per-process 1: the inline executor"),
    (_run("--executor", "local", "--ray-address", "auto"), "--ray-address auto: the local executor does not use it"),
    (_run("--executor", "local", "--slurm-time", "10"), "--slurm-time 10: the local executor"),
    (_run("--executor", "ray", "--runs-per-process", "2"), "--runs-per-process 2: the ray executor"),
    (_run("--executor", "slurm", "--ray-address", "auto"), "--ray-address auto: the slurm executor"),
    # the SLURM job runs each seed as its own worker process: --seed-batch was only a note on stderr
    (_run("--executor", "slurm", "--seed-batch"), "--seed-batch: the slurm executor runs each seed separately"),
    (_run("--executor", "ray", "--seed-batch"), "--seed-batch: the ray executor runs each seed separately"),
    # --sweep-seed without a random sweep seeded nothing (exit 0), while --trials was refused
    (_run("--sweep-seed", "3"), "--sweep-seed 3: there is no random sweep to seed"),
    (_run("--sweep-seed", "3", "--sweep", "lr=0.1,0.2"), "--sweep-seed 3: there is no random sweep"),
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


def test_executor_options_that_apply_still_run_with_the_same_run_ids(fx: dict[str, str], capsys) -> None:
    """Each executor takes its own options (dry run: exit 0), and none changes the run ids: the
    specs printed are those of the plain command."""
    assert _exit_code([a.format(**fx) for a in _run()]) == 0
    plain = capsys.readouterr().out
    assert plain.strip()
    for extra in (
        ["--executor", "local", "--runs-per-gpu", "2", "--runs-per-process", "1", "--workers", "2", "--seed-batch"],
        ["--executor", "ray", "--ray-address", "auto", "--runs-per-gpu", "3"],
        ["--executor", "slurm", "--gpus-per-job", "0", "--slurm-time", "10", "--slurm-partition", "p"],
        ["--executor", "slurm", "--slurm-cluster", "local", "--runs-per-gpu", "2"],
        ["--seed-batch"],  # inline batches seeds
        ["--sweep-seed", "3", "--sweep", "lr=uniform(0.01,0.1)", "--trials", "1"],
    ):
        assert _exit_code([a.format(**fx) for a in _run(*extra)]) == 0, extra
        got = capsys.readouterr().out
        if "--sweep" not in extra:
            assert got == plain, extra
