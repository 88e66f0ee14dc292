"""The command lines and matrix files the README and docs/ show parse as written.

A newcomer copies these blocks; a flag renamed in cli.py, or a matrix key renamed in
running/matrix.py, must fail here rather than in their terminal. Parsing only (argparse and the
matrix-file reader): nothing trains, so the whole file takes well under a second.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import shlex

import pytest

from dabench.cli import build_parser
from dabench.running.executors.worker import _parser as worker_parser
from dabench.running.matrix import load_matrix_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "dabench-mcc" / "README.md"]


def _blocks(path: pathlib.Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def _command_lines() -> list[tuple[str, str]]:
    """Every ``dabench ...`` line of a bash block (continuations joined, comments dropped)."""
    found = []
    for path in DOCS:
        for block in _blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("dabench "):
                    found.append((f"{path.relative_to(ROOT)}: {line}", line))
    # the indented usage lines of examples/dabench-mcc/README.md and examples/entmin.py's docstring
    for path in (ROOT / "examples" / "dabench-mcc" / "README.md", ROOT / "examples" / "entmin.py"):
        for line in path.read_text().splitlines():
            if line.startswith("    dabench "):
                found.append((f"{path.relative_to(ROOT)}: {line.strip()}", line.strip()))
    return found


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    # the extraction itself must find the blocks, or every parametrised test passes vacuously
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("line", [c[1] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_documented_command_parses(line: str):
    words = shlex.split(line, comments=True)[1:]
    words = [w for w in words if w != "..."]  # "dabench run --methods mcc ..." elides the rest
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:  # argparse's error exit: a flag or choice the CLI no longer has
        pytest.fail(f"{line!r} does not parse (exit {exc.code})")


#: flags the docs name that belong to other tools' command lines, each with its tool
OTHER_TOOLS_FLAGS = {
    "--check": "ruff format --check (make lint)",
    "--fix": "ruff check --fix",
    "--head": "ray start --head",
    "--no-build-isolation": "pip install",
    "--no-deps": "pip install",
    "--write": "python -m dabench.core.listing --write",
}


def _parser_flags() -> set[str]:
    """Every option string of dabench's parsers: each subcommand's, and the pool worker's
    (``--max-runs``, which docs/architecture.md names)."""
    flags: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    walk(worker_parser())
    return flags


def test_every_flag_the_docs_name_exists():
    """A ``--flag`` named anywhere in the README or docs/ (prose included, not only the command
    blocks) is one dabench's parsers define, spelt as they spell it, or another tool's listed in
    OTHER_TOOLS_FLAGS; a flag renamed or removed in cli.py fails here with the page that names it."""
    known = _parser_flags() | set(OTHER_TOOLS_FLAGS)
    stale = sorted(
        (str(path.relative_to(ROOT)), flag)
        for path in DOCS
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", path.read_text()))
        if flag not in known
    )
    assert not stale, f"flags no dabench parser defines: {stale}"


def _matrix_blocks() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}#{i}", block)
        for path in DOCS
        for i, block in enumerate(_blocks(path, "toml"))
        if "[matrix]" in block
    ]


@pytest.mark.parametrize("block", [b[1] for b in _matrix_blocks()], ids=[b[0] for b in _matrix_blocks()])
def test_documented_matrix_file_loads(block: str, tmp_path: pathlib.Path):
    path = tmp_path / "experiment.toml"
    path.write_text(block)
    matrix = load_matrix_file(path)  # raises MatrixError naming the key on a stale example
    assert matrix.methods and matrix.pairs and matrix.seeds


def _code(source: str, name: str) -> str:
    """The AST of the top-level function or class ``name``, docstrings and annotations of the
    class body's attributes kept (they are code), docstrings themselves removed."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            for sub in ast.walk(node):
                body = getattr(sub, "body", None)
                if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                    if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                        sub.body = body[1:]  # type: ignore[attr-defined]
            return ast.dump(node)
    raise AssertionError(f"{name} not found")


def test_tutorial_mcc_is_the_example_package():
    """docs/adding-a-method.md shows dabench_mcc.py's loss and method; the file may add
    ``protocol`` and ``citation`` but must compute the same thing."""
    doc = next(b for b in _blocks(ROOT / "docs" / "adding-a-method.md", "python") if "def mcc_loss" in b)
    example = (ROOT / "examples" / "dabench-mcc" / "dabench_mcc.py").read_text()
    assert _code(doc, "mcc_loss") == _code(example, "mcc_loss")
    doc_loss = next(n for n in ast.walk(ast.parse(doc)) if isinstance(n, ast.FunctionDef) and n.name == "loss")
    ex_loss = next(n for n in ast.walk(ast.parse(example)) if isinstance(n, ast.FunctionDef) and n.name == "loss")
    assert ast.dump(doc_loss) == ast.dump(ex_loss)


def test_readme_python_api_example_runs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys):
    """README's Python API block runs as written in a fresh folder (shortened: 3 steps instead
    of 300, in the run and in its ``where=``), and ``summary.counts()`` prints what its comment
    says. Its ``where=["steps=600"]`` matched no run of the block itself (ValueError)."""
    block = next(b for b in _blocks(ROOT / "README.md", "python") if "dabench.run(" in b)
    assert '"steps": 300' in block and "steps=300" in block, "the example's steps changed: update this test"
    source = block.replace('"steps": 300', '"steps": 3').replace("steps=300", "steps=3")
    monkeypatch.chdir(tmp_path)  # its results_dir="results/default" lands in tmp_path
    exec(compile(source, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    promised = re.search(r"print\(summary\.counts\(\)\)\s*#\s*(\{[^}]*\})", block)
    assert promised, "the counts comment is gone: update this test"
    assert out.splitlines()[0] == promised.group(1)
    assert (tmp_path / "results" / "default" / "matrix.json").exists()


def test_record_table_lists_the_record_fields():
    """docs/architecture.md's run-record table names exactly RunRecord's JSON fields."""
    import dataclasses

    from dabench.core.record import RunRecord

    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## The run record", 1)[1].split("\n\n| field |", 1)[1].split("\n\n", 1)[0]
    documented = {
        name for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M) for name in re.findall(r"`(\w+)`", cell)
    }
    fields = {f.name for f in dataclasses.fields(RunRecord)} - {"extra"}  # extra: unknown keys, kept
    assert documented == fields, (sorted(fields - documented), sorted(documented - fields))


def test_readme_csv_columns_are_the_writers():
    """README's leaderboard.csv and leaderboard_missing.csv columns are the ones tables.py writes."""
    from dabench.analysis.tables import CSV_PAIR_COLUMNS, CSV_SUMMARY_COLUMNS, MISSING_CSV_COLUMNS

    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    assert f"`<pair> {'|'.join(CSV_PAIR_COLUMNS)}`" in readme
    summary = readme.split(f"`<pair> {'|'.join(CSV_PAIR_COLUMNS)}`", 1)[1]
    named = re.findall(r"`(\w+)`", summary.split("`leaderboard_missing.csv`", 1)[0])
    assert [c for c in named if c in CSV_SUMMARY_COLUMNS] == CSV_SUMMARY_COLUMNS
    assert f"`{', '.join(MISSING_CSV_COLUMNS)}`" in readme
