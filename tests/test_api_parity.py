"""The Python API keeps step with the CLI: every option of a subcommand that changes what numbers
are produced or shown has its keyword in ``dabench.<function>`` (same meaning, same default), and
the two give the same table and the same errors, because they call the same functions.

The option lists are read from the CLI's own parser (``dabench.cli.build_parser``), so a flag added
there later fails :func:`test_every_cli_option_has_its_python_counterpart` until the API has it or
it is allow-listed below with the reason it makes no sense in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pathlib
from typing import Any

import pytest

import dabench
from dabench.cli import build_parser, main
from dabench.running.executors import ExecutorOptions
from dabench.speed.bench import run_bench
from tiny_runs import TINY

#: subcommand -> the Python function that is its counterpart
COUNTERPART: dict[str, Any] = {
    "run": dabench.run,
    "report": dabench.report,
    "status": dabench.status,
    # a speed measurement of this machine, not a result of the benchmark: its Python form is the
    # function the CLI calls, not a dabench.<name> of its own
    "bench": run_bench,
}
#: subcommands that neither produce nor show numbers
NOT_RESULT_PRODUCING = {
    "list": "prints the registries; dabench.list_methods/list_pairs/list_backbones are its Python form"
}

#: (subcommand, CLI dest) -> keyword, where the Python name differs from the flag's
RENAMED: dict[tuple[str, str], str] = {
    ("run", "set"): "overrides",  # --set KEY=VALUE (repeatable) is one dict
    ("run", "results"): "results_dir",
    ("run", "plugin"): "plugins",  # repeatable flag -> a list
    ("run", "no_progress"): "progress",  # inverted: a keyword says what it turns on
    ("run", "slurm_time"): "slurm_time_min",  # ExecutorOptions' field says its unit
    ("run", "run_timeout"): "run_timeout_s",
    ("report", "format"): "formats",
    ("report", "dirs"): "dirs",  # positional: *dirs
    ("status", "dir"): "results_dir",
    ("bench", "pair"): "pair_name",
}
#: (subcommand, CLI dest) -> why the option has no keyword of its own (reviewed, not forgotten)
NO_KEYWORD: dict[tuple[str, str], str] = {
    # dabench.run returns the summary, not a printed table: the table is
    # dabench.leaderboard(dabench.load_results(results_dir), rule=...), which has rule=
    ("run", "rule"): "leaderboard's rule",
    # the specs a matrix expands to are dabench.expand(dabench.Matrix(...)); dabench.run checks every
    # argument before anything runs, which is what a dry run is for on the command line
    ("run", "dry_run"): "dabench.expand",
    # where the table goes, not what it holds: write_result(run_bench(...), path) as the CLI does
    ("bench", "out"): "dabench.speed.bench.write_result",
}
#: (subcommand, CLI dest) -> why the defaults differ although the keyword exists
DEFAULT_DIFFERS: dict[tuple[str, str], str] = {
    ("run", "device"): "'auto' on the command line, None in Python: both mean CUDA when present",
    ("run", "no_progress"): "progress bars on in a terminal, off in a script (README, Python API)",
    (
        "bench",
        "cuda_graphs",
    ): "the CLI's None (not given) means on: run_bench(cuda_graphs=args.cuda_graphs is not False)",
    ("bench", "pair"): "same pair; run_bench also takes None (synthetic data)",
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, argparse._HelpAction)]


def _keywords(command: str) -> dict[str, inspect.Parameter]:
    params = dict(inspect.signature(COUNTERPART[command]).parameters)
    if command == "run":  # **executor_options: the fields of ExecutorOptions (dabench.run checks them)
        for f in dataclasses.fields(ExecutorOptions):
            if f.init and f.name not in params:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                params[f.name] = inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default)
    return params


def _nothing(v: Any) -> bool:
    return v is None or v == [] or v == ()


def test_every_subcommand_is_classified():
    """A new subcommand must say whether it produces numbers (and then name its Python counterpart)."""
    assert set(_subparsers()) == set(COUNTERPART) | set(NOT_RESULT_PRODUCING)


@pytest.mark.parametrize("command", sorted(COUNTERPART))
def test_every_cli_option_has_its_python_counterpart(command):
    """``dabench report --select-config`` had no ``dabench.leaderboard`` keyword; ``dabench report``
    and ``dabench status`` had no Python function at all. Each option of a result-producing
    subcommand maps to a keyword of its counterpart with the same default (or is allow-listed)."""
    keywords = _keywords(command)
    missing, defaults = [], []
    for action in _options(_subparsers()[command]):
        key = (command, action.dest)
        if key in NO_KEYWORD:
            continue
        name = RENAMED.get(key, action.dest)
        if name not in keywords:
            missing.append(f"{'/'.join(action.option_strings) or action.dest} -> {name}")
            continue
        if key in DEFAULT_DIFFERS or action.dest == "dirs":
            continue
        api = keywords[name].default
        if api is inspect.Parameter.empty and not action.option_strings:
            continue  # a positional argument: required both ways
        cli = str(action.default) if isinstance(action.default, pathlib.Path) else action.default
        if not (cli == api or (_nothing(cli) and _nothing(api))):
            defaults.append(f"{'/'.join(action.option_strings)}: CLI {cli!r}, Python {name}={api!r}")
    assert not missing, f"CLI options without a Python keyword in {COUNTERPART[command].__name__}: {missing}"
    assert not defaults, f"defaults differ: {defaults}"
    # the allow-lists name real options (a renamed or removed flag must leave them too)
    dests = {a.dest for a in _options(_subparsers()[command])}
    for table in (RENAMED, NO_KEYWORD, DEFAULT_DIFFERS):
        assert {d for c, d in table if c == command} <= dests


def test_cli_run_hands_every_executor_option_over():
    """The reverse: every field of ExecutorOptions (what dabench.run takes as **executor_options)
    is a ``dabench run`` flag, so a script's option can be written on the command line too."""
    dests = {RENAMED.get(("run", a.dest), a.dest) for a in _options(_subparsers()["run"])}
    fields = {f.name for f in dataclasses.fields(ExecutorOptions) if f.init}
    assert fields <= dests, f"ExecutorOptions fields without a dabench run flag: {sorted(fields - dests)}"


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> pathlib.Path:
    """Two seeds of source-only swept over two learning rates, and dann, on the tiny pair."""
    out = tmp_path_factory.mktemp("parity") / "r"
    fast = {"steps": 4, "eval_every": 2, "batch_size": 8}
    dabench.run(methods="source-only", pairs="tiny", seeds=[0, 1], sweep={"lr": [0.01, 0.1]}, plugins=[TINY],
                results_dir=out, device="cpu", overrides=fast)  # fmt: skip
    dabench.run(methods="dann", pairs="tiny", seeds=[0, 1], plugins=[TINY], results_dir=out, device="cpu",
                overrides=fast)  # fmt: skip
    return out


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize(
    "options",
    [
        {"rule": "last"},
        {"rule": "source-val", "select_config": True},
        {"rule": "oracle", "where": ["lr=0.01"]},
        {"rule": "entropy", "where": ["method=dann"], "select_config": True},
    ],
)
def test_api_and_cli_give_the_same_table(swept, tmp_path, capsys, options):
    """The leaderboard of ``dabench.leaderboard(df, **options)`` is the one ``dabench report`` prints
    with the same flags, and ``dabench.report`` returns exactly what the CLI prints."""
    argv = ["report", str(swept), "--rule", options["rule"], "--out", str(tmp_path / "cli"), "--format", "md"]
    argv += [f"--where={w}" for w in options.get("where", [])]
    argv += ["--select-config"] if options.get("select_config") else []
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    df = dabench.load_results(swept)
    table = dabench.leaderboard(df, **options).to_markdown()
    assert table in out
    if options.get("select_config"):  # one row per method: the sweep's two lr collapse into one
        assert "source-only (lr=" not in table and "Configurations chosen by rule" in out
    text, paths = dabench.report(swept, formats=["md"], out=tmp_path / "api", **options)
    assert out == text + "\n" + "".join(f"wrote {k}: {v}\n" for k, v in _moved(paths, tmp_path).items())
    assert (tmp_path / "api" / "leaderboard.md").read_text() == (tmp_path / "cli" / "leaderboard.md").read_text()


def _moved(paths: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    """The API's written paths as the CLI's run (into ``cli/`` instead of ``api/``) names them."""
    return {k: tmp_path / "cli" / v.relative_to(tmp_path / "api") for k, v in paths.items()}


@pytest.mark.parametrize(
    "flags, keywords",
    [
        (["--rule", "sourceval"], {"rule": "sourceval"}),
        (["--rule", "last", "--select-config"], {"rule": "last", "select_config": True}),
        (["--where", "nokey=1"], {"where": ["nokey=1"]}),
        (["--where", "method=mcd"], {"where": "method=mcd"}),
        (["--rule", "dev"], {"rule": "dev"}),  # no run saved features
    ],
)
def test_api_and_cli_refuse_alike(swept, tmp_path, capsys, flags, keywords):
    """One error, worded the same both ways but for how it names the setting (``--where X`` on the
    command line, ``where='X'`` in Python): the message after the name is the same function's."""
    code, _, err = _cli(capsys, "report", str(swept), "--out", str(tmp_path), *flags)
    assert code == 2 and err.startswith("dabench: error: ")
    cli_message = err.removeprefix("dabench: error: ").strip()
    df = dabench.load_results(swept)
    for call in (lambda: dabench.leaderboard(df, **keywords), lambda: dabench.report(swept, out=tmp_path, **keywords)):
        with pytest.raises(ValueError) as info:
            call()
        api_message = str(info.value)
        if "where" in keywords:  # "--where nokey=1: ..." and "where='nokey=1': ..."
            assert api_message.startswith("where=") and cli_message.startswith("--where ")
            assert api_message.split(": ", 1)[1] == cli_message.split(": ", 1)[1]
        else:
            assert api_message == cli_message


def test_report_formats_and_status_as_the_cli(swept, tmp_path, capsys):
    """``--format`` and ``formats=`` refuse an unknown format with the same words; ``dabench.status``
    is the text ``dabench status`` prints; a bad keyword type is one error naming it."""
    code, _, err = _cli(capsys, "report", str(swept), "--out", str(tmp_path), "--format", "md,pdf")
    assert code == 2 and "--format: unknown report format(s) pdf; valid: md, csv, tex, html" in err
    with pytest.raises(ValueError, match=r"^formats: unknown report format\(s\) pdf; valid: md, csv, tex, html$"):
        dabench.report(swept, out=tmp_path, formats=["md", "pdf"])
    assert not (tmp_path / "report.html").exists()  # refused before anything was written
    code, out, _ = _cli(capsys, "status", str(swept))
    assert code == 0 and out == dabench.status(swept) + "\n" and "done: every run of the matrix is complete" in out
    with pytest.raises(TypeError, match=r"leaderboard: select_config='yes': expected True or False"):
        dabench.leaderboard(dabench.load_results(swept), select_config="yes")
    with pytest.raises(TypeError, match=r"report: expected one or more results folders"):
        dabench.report()


@pytest.mark.parametrize(
    "flags, keywords",
    [
        (["--runs-per-gpu", "2"], {"runs_per_gpu": 2}),
        (["--gpus-per-job", "2", "--slurm-time", "10"], {"gpus_per_job": 2, "slurm_time_min": 10}),
        (["--slurm-partition", "gpu"], {"slurm_partition": "gpu"}),
        (["--executor", "local", "--ray-address", "auto"], {"executor": "local", "ray_address": "auto"}),
        (["--executor", "slurm", "--seed-batch"], {"executor": "slurm", "seed_batch": True}),
    ],
)
def test_ignored_executor_options_are_refused_alike(tmp_path, capsys, flags, keywords):
    """An option the chosen executor does not read is one refusal, the same line from ``dabench run``,
    its ``--dry-run`` and ``dabench.run`` (all pass through ``check_executor_options``); nothing is written."""
    base = ["run", "--methods", "source-only", "--seeds", "0", "--results", str(tmp_path / "cli"), *flags]
    lines = []
    for argv in (base, [*base, "--dry-run"]):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and err.startswith("dabench: error: ") and len(err.strip().splitlines()) == 1, err
        lines.append(err.removeprefix("dabench: error: ").strip())
    named = [f for f in flags if f.startswith("--") and f != "--executor"]
    assert lines[0] == lines[1] and all(f"{f}" in lines[0] for f in named), lines[0]
    with pytest.raises(dabench.MatrixError) as info:
        dabench.run(methods="source-only", seeds=[0], results_dir=tmp_path / "api", device="cpu", **keywords)
    assert str(info.value) == lines[0]
    assert not (tmp_path / "cli").exists() and not (tmp_path / "api").exists()


def test_sweep_seed_without_random_sweep_is_refused_alike(tmp_path, capsys):
    """``--sweep-seed`` / ``sweep_seed=`` with no distribution to draw: refused by ``plan.matrix_for``
    for both, as ``--trials`` / ``trials=`` are, each naming the option its own way."""
    code, _, err = _cli(capsys, "run", "--dry-run", "--methods", "source-only", "--seeds", "0", "--sweep-seed", "3")
    assert code == 2 and err.startswith("dabench: error: --sweep-seed 3: there is no random sweep to seed")
    with pytest.raises(dabench.MatrixError, match=r"^sweep_seed=3: there is no random sweep to seed"):
        dabench.run(methods="source-only", seeds=[0], results_dir=tmp_path / "api", device="cpu", sweep_seed=3)
    assert not (tmp_path / "api").exists()


def test_executor_options_not_given_resolve_to_the_documented_defaults():
    """The executor-specific options default to None (not given, so an executor that does not read
    them can refuse them); an executor reads the documented defaults (the ``--help`` text)."""
    opts = ExecutorOptions()
    assert (opts.runs_per_gpu, opts.runs_per_process, opts.gpus_per_job, opts.slurm_time_min) == (None,) * 4
    done = opts.resolved()
    assert (done.runs_per_gpu, done.runs_per_process, done.gpus_per_job, done.slurm_time_min) == (1, 0, 1, 240)
    given = ExecutorOptions(runs_per_gpu=3, gpus_per_job=0).resolved()
    assert (given.runs_per_gpu, given.gpus_per_job) == (3, 0)  # 0 (CPU jobs) kept, not taken as not given
