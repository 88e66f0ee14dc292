"""Plugins: the three ways in (installed package, --plugin / matrix file, Python API) and their errors.

The installed-package test really pip-installs ``examples/dabench-mcc`` (offline, no build
isolation) into a temporary ``--target`` folder and runs the ``dabench`` console script with that
folder on ``PYTHONPATH``: the entry point is discovered exactly as for a venv install, without
changing the venv the other tests share.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import dabench
from dabench import METHODS, Domain, DomainPair, Method, PairData, PluginError, RegistryError, Uses
from dabench.cli import main
from dabench.core.method import validate_method_class
from dabench.core.registry import PluginWarning, Registry, load_plugin
from dabench.testing import isolated_registries

torch.set_num_threads(1)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DABENCH = pathlib.Path(sys.executable).with_name("dabench")
TINY = [
    "--seeds",
    "0",
    "--set",
    "steps=2",
    "--set",
    "eval_every=2",
    "--set",
    "batch_size=8",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(autouse=True)
def _isolated():
    with isolated_registries():
        yield


def _records(folder: pathlib.Path) -> list[dict]:
    return [r for r in (json.loads(p.read_text()) for p in folder.rglob("*.json")) if "spec" in r]


# --- (a) an installed package with an entry point -------------------------------------------
def test_installed_package_is_listed_and_runs_beside_builtins(tmp_path):
    src = tmp_path / "pkg"
    shutil.copytree(EXAMPLES / "dabench-mcc", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (
        "mcc = dabench_mcc:MCC" in next(target.glob("dabench_mcc-*.dist-info")).joinpath("entry_points.txt").read_text()
    )
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    listed = subprocess.run([str(DABENCH), "list", "methods"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]  # tables per protocol
    assert "mcc" in names and {"source-only", "dann", "dan", "coral"} <= set(names)
    assert "Jin et al. 2020" in listed.stdout and "temperature=2.5" in listed.stdout

    res = tmp_path / "res"
    ran = subprocess.run(
        [str(DABENCH), "run", "--methods", "source-only,mcc", "--results", str(res), *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = [line for line in ran.stdout.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| mcc ") for r in rows) and any(r.startswith("| source-only ") for r in rows)
    recs = {r["spec"]["method"]: r for r in _records(res)}
    assert recs["mcc"]["status"] == "complete"
    assert recs["mcc"]["spec"]["hparams"] == {
        "bottleneck_dim": 256,
        "trade_off": 1.0,
        "temperature": 2.5,
        "forward": "concat",
    }
    assert "da" in recs["mcc"]["curve"][-1]["loss"]  # the MCC term was computed and logged


# --- (b) --plugin FILE.py | MODULE, and plugins = [...] in a matrix file ------------------------
def test_plugin_file_and_module_on_the_cli(tmp_path, capsys, monkeypatch):
    assert main(["list", "methods", "--plugin", str(EXAMPLES / "entmin.py")]) == 0
    assert "entmin" in capsys.readouterr().out

    (tmp_path / "my_dabench_plugin.py").write_text(
        textwrap.dedent('''
        """A plugin importable as a module."""
        from dabench import Batch, Loss, Method, register_method

        @register_method("module-method")
        class ModuleMethod(Method):
            """Source-only under another name (Plugin test)."""

            def loss(self, batch: Batch, progress: float) -> Loss:
                return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = tmp_path / "res"
    rc = main(
        [
            "run",
            "--plugin",
            "my_dabench_plugin",
            "--plugin",
            str(EXAMPLES / "entmin.py"),
            "--methods",
            "module-method,entmin",
            "--results",
            str(res),
            *TINY,
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert {r["spec"]["method"]: r["status"] for r in _records(res)} == {
        "module-method": "complete",
        "entmin": "complete",
    }
    sys.modules.pop("my_dabench_plugin", None)


def test_matrix_file_plugins(capsys):
    from dabench import expand, load_matrix_file

    matrix = load_matrix_file(EXAMPLES / "mcc_matrix.toml")
    assert matrix.plugins == (str((EXAMPLES / "dabench-mcc" / "dabench_mcc.py").resolve()),)
    specs = expand(matrix)
    assert {s.method for s in specs} == {"source-only", "dann", "mcc"} and {s.seed for s in specs} == {0, 1, 2}
    assert "mcc" in METHODS
    # the same through the CLI, from another working directory
    assert main(["run", "--matrix", str(EXAMPLES / "mcc_matrix.toml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("mcc |") == 3


def test_plugin_file_already_imported_as_a_module_is_not_imported_twice(monkeypatch):
    """An editable install imports dabench_mcc via its entry point; --plugin of the same file is then a no-op."""
    monkeypatch.syspath_prepend(str(EXAMPLES / "dabench-mcc"))
    import dabench_mcc

    load_plugin(str(EXAMPLES / "dabench-mcc" / "dabench_mcc.py"))  # no "registered twice"
    assert METHODS.get("mcc") is dabench_mcc.MCC
    sys.modules.pop("dabench_mcc")


# --- (c) the Python API with a class ----------------------------------------------------------
def test_python_api_runs_an_unregistered_class(tmp_path):
    from dabench.methods.source_only import SourceOnly

    class Notebook(SourceOnly):
        """A method under development in a notebook."""

    summary = dabench.run(
        methods=[Notebook, "source-only"],
        seeds=[0],
        results_dir=tmp_path / "res",
        device="cpu",
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
    )
    assert sorted(r["spec"]["method"] for r in summary.ran) == ["notebook", "source-only"]
    assert all(r["status"] == "complete" for r in summary.ran)
    importlib.import_module("dabench.analysis.report")  # imports the table module: the function must stay callable

    board = dabench.leaderboard(dabench.load_results(tmp_path / "res"))
    assert "notebook" in str(board)

    class Other(SourceOnly):
        """Another class claiming the same name."""

        name = "notebook"

    with pytest.raises(RegistryError, match="'notebook' is registered twice"):
        dabench.run(methods=[Other], seeds=[0], results_dir=tmp_path / "res2", device="cpu", overrides={"steps": 1})


def test_python_api_refuses_an_unregistered_class_for_worker_executors(tmp_path):
    """A class registered on the fly exists in this process only: the local pool's workers used to
    train every other run, then record this method's runs ``failed: unknown method``. It is refused
    before anything runs, naming the class and the two ways out (a plugin file, executor='inline')."""
    from dabench.methods.source_only import SourceOnly
    from dabench.testing import isolated_registries

    class Draft(SourceOnly):
        """A method under development in a notebook."""

    with isolated_registries():
        with pytest.raises(
            ValueError, match=r"Draft .*'local' executor.*plugins=\['path/to/file.py'\].*executor='inline'"
        ):
            dabench.run(
                methods=[Draft, "source-only"],
                seeds=[0],
                results_dir=tmp_path / "res",
                device="cpu",
                executor="local",
                workers=1,
                overrides={"steps": 1},
            )
        assert "draft" not in METHODS  # refused before registering it
    assert not (tmp_path / "res").exists()  # nothing ran


def test_python_api_plugins_are_imported_here_and_by_the_workers(tmp_path):
    """``dabench.run(..., plugins=[file])`` (an ExecutorOptions field, as the docs show for worker
    executors) was only handed to the workers: this process expanded the matrix without it and
    stopped at "unknown method". Now both import it, and the run completes in a worker."""
    from tiny_runs import TINY

    plugin = tmp_path / "api_plugin_method.py"
    plugin.write_text(
        "from dabench import register_method\n"
        "from dabench.methods.source_only import SourceOnly\n\n\n"
        "@register_method('api-plugin-method')\n"
        "class ApiPluginMethod(SourceOnly):\n"
        '    """Source-only under another name, from a plugin file."""\n'
    )
    summary = dabench.run(
        methods=["api-plugin-method"],
        pairs=["tiny"],
        seeds=[0],
        results_dir=tmp_path / "res",
        device="cpu",
        executor="local",
        workers=1,
        plugins=[str(plugin), TINY],
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
    )
    assert [(r["spec"]["method"], r["status"]) for r in summary.ran] == [("api-plugin-method", "complete")]


# --- clear errors -----------------------------------------------------------------------------
def test_plugin_that_fails_to_import_names_itself(tmp_path, capsys):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import dabench\nraise ZeroDivisionError('boom in the plugin')\n")
    with pytest.raises(PluginError, match=r"plugin '.*bad_plugin.py' failed to import: ZeroDivisionError: boom"):
        load_plugin(str(bad))
    assert main(["list", "methods", "--plugin", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad_plugin.py" in err and "ZeroDivisionError: boom in the plugin" in err
    with pytest.raises(PluginError, match="plugin 'no_such_plugin_module' failed to import: ModuleNotFoundError"):
        load_plugin("no_such_plugin_module")


def test_broken_entry_point_warns_once_and_fails_only_when_its_method_is_asked_for(tmp_path, monkeypatch, capsys):
    """A hand-made dist-info on sys.path whose module is gone (an uninstalled-but-listed package).

    It must not block ``dabench list`` or runs of other methods: one warning naming the package
    and ``pip uninstall``; asking for its method is a clear error."""
    _dist_info(tmp_path, "broken-dabench-plugin", "dabench.test_broken", "cdan-gone = missing_module_xyz:CDAN")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "group", "dabench.test_broken")
    METHODS._entry_points_loaded = False
    with pytest.warns(PluginWarning) as caught:
        assert main(["list", "methods"]) == 0
        assert main(["run", "--methods", "dann", "--seeds", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dann" in out and "source-only" in out
    assert len(caught) == 1  # once per process, not once per lookup
    msg = str(caught[0].message)
    for piece in (
        "'cdan-gone'",
        "missing_module_xyz:CDAN",
        "package broken-dabench-plugin",
        "ModuleNotFoundError",
        "pip uninstall broken-dabench-plugin",
    ):
        assert piece in msg, msg
    assert main(["run", "--methods", "cdan-gone", "--seeds", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "method 'cdan-gone' is unavailable" in err and "pip uninstall broken-dabench-plugin" in err
    with pytest.raises(PluginError, match=r"'cdan-gone' is unavailable.*ModuleNotFoundError"):
        METHODS.get("cdan-gone")
    # a name the broken package may have provided (a module entry point registers several)
    with pytest.raises(RegistryError, match=r"unknown method 'nonexistent-xyz'.*broken plugins.*broken-dabench-plugin"):
        METHODS.get("nonexistent-xyz")  # (not 'jan': that is a built-in now)


CLASH_MODULE = '''
from dabench.methods.source_only import SourceOnly
from dabench import register_method


@register_method("cdan-clash")
class CDAN(SourceOnly):
    """The package's CDAN (stand-in)."""


@register_method("minent-clash")
class MinEnt(SourceOnly):
    """The package's MinEnt (stand-in)."""
'''

CLASH_PLUGIN = '''
from dabench.methods.source_only import SourceOnly
from dabench import register_method


@register_method("minent-clash")
class MyMinEnt(SourceOnly):
    """The researcher's own MinEnt."""
'''


def test_clash_between_a_plugin_file_and_an_installed_package_names_only_the_two_sources(tmp_path, monkeypatch, capsys):
    """The package has two entry points; only one of its classes clashes with the --plugin file.
    The message names the file and the package's class, not the package's other entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "clash_pkg_mod.py").write_text(CLASH_MODULE)
    _dist_info(
        site,
        "dabench-cdan",
        "dabench.test_clash",
        "cdan-clash = clash_pkg_mod:CDAN\nminent-clash = clash_pkg_mod:MinEnt",
    )
    plugin = tmp_path / "jan.py"
    plugin.write_text(CLASH_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(METHODS, "group", "dabench.test_clash")
    METHODS._entry_points_loaded = False
    assert main(["list", "methods", "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert "method 'minent-clash' is registered twice" in err, err
    assert "jan.py" in err and "clash_pkg_mod.py" in err and "installed package dabench-cdan" in err
    assert "cdan-clash" not in err and "entry point" not in err  # the innocent entry point is not blamed
    sys.modules.pop("clash_pkg_mod", None)


def test_entry_point_class_is_never_silently_replaced_by_a_plugin_file(tmp_path, monkeypatch):
    """An entry point naming a class whose name a --plugin file already took is a clash, named."""
    (tmp_path / "ep_shadow_mod.py").write_text(
        'from dabench.methods.source_only import SourceOnly\n\n\nclass Shadow(SourceOnly):\n    """Installed."""\n'
    )
    _dist_info(tmp_path, "dabench-shadow", "dabench.test_shadow", "shadow = ep_shadow_mod:Shadow")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "from dabench.methods.source_only import SourceOnly\nfrom dabench import register_method\n"
        "register_method('shadow')(type('Mine', (SourceOnly,), {'__doc__': 'mine'}))\n"
    )
    monkeypatch.setattr(METHODS, "group", "dabench.test_shadow")
    METHODS._entry_points_loaded = False
    load_plugin(str(plugin))
    with pytest.raises(
        RegistryError,
        match=r"'shadow' is registered twice: first by .*mine.py.*again by entry "
        r"point ep_shadow_mod:Shadow \(installed package dabench-shadow\)",
    ):
        METHODS.names()
    sys.modules.pop("ep_shadow_mod", None)


def test_two_registrations_of_one_name_are_refused_naming_both(tmp_path):
    for stem in ("first", "second"):
        (tmp_path / f"{stem}.py").write_text(
            textwrap.dedent(f'''
            from dabench import Method, register_method

            @register_method("twin")
            class Twin(Method):
                """Registered by {stem}.py."""

                def loss(self, batch, progress):
                    return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))
        ''')
        )
    load_plugin(str(tmp_path / "first.py"))
    with pytest.raises(RegistryError) as err:
        load_plugin(str(tmp_path / "second.py"))
    msg = str(err.value)
    assert "'twin' is registered twice" in msg and "first.py" in msg and "second.py" in msg
    # the same name as a built-in
    with pytest.raises(RegistryError, match=r"'dann' is registered twice: first by .*dann.py"):
        dabench.register_method("dann")(type("Fake", (Method,), {"__doc__": "x", "loss": lambda s, b, p: None}))


def test_same_stem_different_files_are_two_plugins(tmp_path):
    for d, name in (("a", "stem-a"), ("b", "stem-b")):
        (tmp_path / d).mkdir()
        (tmp_path / d / "plugin.py").write_text(
            f"from dabench.methods.source_only import SourceOnly\nfrom dabench import register_method\n"
            f"register_method({name!r})(type('M', (SourceOnly,), {{'__doc__': 'same stem'}}))\n"
        )
        load_plugin(str(tmp_path / d / "plugin.py"))
    assert "stem-a" in METHODS and "stem-b" in METHODS


def test_incomplete_method_says_what_is_missing(tmp_path, capsys):
    class Bare(Method):
        protocol = "semi"
        uses = {"target_unlabeled": True}

    with pytest.raises(TypeError) as err:
        validate_method_class(Bare)
    msg = str(err.value)
    for piece in (
        "implement loss(batch, progress)",
        "protocol must be one of",
        "uses must be a dabench.Uses",
        "add a docstring",
    ):
        assert piece in msg
    with pytest.raises(TypeError, match="bad init"):
        validate_method_class(
            type("X", (Method,), {"__doc__": "d", "loss": lambda *a: None, "uses": Uses(init="bad init")})
        )
    plugin = tmp_path / "incomplete.py"
    plugin.write_text(
        "from dabench import Method, register_method\n\n@register_method('half')\n"
        "class Half(Method):\n    '''No loss yet.'''\n"
    )
    assert main(["list", "methods", "--plugin", str(plugin)]) == 2
    err_text = capsys.readouterr().err
    assert "incomplete.py" in err_text and "Half is incomplete: implement loss(batch, progress)" in err_text


def test_bad_hyperparameter_lists_the_methods_hyperparameters(capsys):
    rc = main(
        [
            "run",
            "--plugin",
            str(EXAMPLES / "dabench-mcc" / "dabench_mcc.py"),
            "--methods",
            "mcc",
            "--seeds",
            "0",
            "--set",
            "mcc.bogus=1",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "method 'mcc' has no hyperparameter(s) ['bogus']" in err
    for hp in ("bottleneck_dim=256", "trade_off=1.0", "temperature=2.5", "forward='concat'"):
        assert hp in err
    assert "did you mean" not in err  # nothing near 'bogus'

    # a near miss on either side (the --set, or the plugin's defaults) names the declared name and the class
    assert (
        main(
            ["run", "--plugin", str(EXAMPLES / "entmin.py"), "--methods", "entmin", "--seeds", "0"]
            + ["--set", "entmin.tradeoff=0.5", "--dry-run"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "method 'entmin' has no hyperparameter(s) ['tradeoff']" in err
    assert f"did you mean 'trade_off' for 'tradeoff'? (defaults are in {EXAMPLES / 'entmin.py'}:" in err


def _dist_info(root: pathlib.Path, dist: str, group: str, entries: str) -> None:
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entries}\n")


def test_entry_point_naming_an_undecorated_class_is_named_and_validated(tmp_path, monkeypatch):
    from dabench.core.registry import _prepare_method

    (tmp_path / "ep_methods_mod.py").write_text(
        textwrap.dedent('''
        from dabench import Method

        class Plain(Method):
            """Registered by its entry point only."""

            def loss(self, batch, progress):
                return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))

        class NoDoc(Method):
            def loss(self, batch, progress):
                return None
    ''')
    )
    _dist_info(tmp_path, "ep-ok", "dabench.test_ok", "plain-ep = ep_methods_mod:Plain")
    _dist_info(tmp_path / "bad", "ep-bad", "dabench.test_bad", "nodoc = ep_methods_mod:NoDoc")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "bad"))
    ok = Registry("method", "dabench.test_ok", prepare=_prepare_method)
    assert ok.names() == ["plain-ep"] and ok.get("plain-ep").name == "plain-ep"
    assert ok.source("plain-ep") == "entry point ep_methods_mod:Plain"
    bad = Registry("method", "dabench.test_bad", prepare=_prepare_method)
    with pytest.warns(PluginWarning, match=r"'nodoc'.*package ep-bad.*NoDoc is incomplete: add a docstring"):
        assert bad.names() == []
    with pytest.raises(PluginError, match=r"'nodoc' is unavailable.*NoDoc is incomplete: add a docstring"):
        bad.get("nodoc")
    sys.modules.pop("ep_methods_mod", None)


def test_entry_point_under_another_name_than_its_decorator_is_refused_naming_both(tmp_path, monkeypatch):
    """``dannent = mod:DannEnt`` beside ``@register_method("dann-ent")`` in mod: one method under two
    names would rename the class and run twice in ``--methods all``; warned, and the decorator's name
    alone is kept."""

    (tmp_path / "ep_alias_mod.py").write_text(
        textwrap.dedent('''
        from dabench import Method, register_method

        @register_method("aliased")
        class Aliased(Method):
            """Source-only under the decorator's name (alias test)."""

            def loss(self, batch, progress):
                return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))
    ''')
    )
    _dist_info(tmp_path, "ep-alias", "dabench.methods", "other-name = ep_alias_mod:Aliased")
    monkeypatch.syspath_prepend(str(tmp_path))
    # scanned anew here, whatever read METHODS before this test (isolated_registries restores the flag)
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    with pytest.warns(PluginWarning, match=r"'other-name'.*package ep-alias.*already registers as 'aliased'; "):
        names = METHODS.names()
    assert "aliased" in names and "other-name" not in names
    assert METHODS.get("aliased").name == "aliased"  # not renamed by the entry point
    with pytest.raises(PluginError, match=r"'other-name' is unavailable.*give the entry point that name \(aliased = "):
        METHODS.get("other-name")
    sys.modules.pop("ep_alias_mod", None)


def test_builtin_methods_use_only_the_public_api():
    """methods/*.py import dabench names from `dabench` itself, as a plugin would."""
    import ast

    for path in sorted((ROOT / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dabench"):
                assert node.module == "dabench", (
                    f"{path.name}: from {node.module} import ... (use: from dabench import)"
                )
                missing = [a.name for a in node.names if a.name not in dabench.__all__]
                assert not missing, f"{path.name} imports non-public {missing}"


def test_plugin_import_errors_say_where_and_a_missing_module_says_what_to_give(tmp_path, capsys):
    """The failing line of the plugin (not only the exception), and a module name that does not
    exist a hint (a file path needs .py; a module must be importable)."""
    helper = tmp_path / "plugin_helper_mod7.py"
    helper.write_text("x = 1\ny = undefined_name + x\n")
    bad = tmp_path / "uses_helper.py"
    bad.write_text(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport plugin_helper_mod7\n")
    with pytest.raises(PluginError, match=rf"NameError: .*undefined_name.* \(at {helper}:2\)$"):
        load_plugin(str(bad))
    syntax = tmp_path / "syntax_bad.py"
    syntax.write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(PluginError, match=rf"SyntaxError: .* \(at {syntax}:2\)$"):
        load_plugin(str(syntax))
    for ref in ("no_such_plugin_module", "dabench.no_such_plugin_module"):
        assert main(["list", "methods", "--plugin", ref]) == 2
        err = capsys.readouterr().err
        assert f"plugin {ref!r} failed to import: ModuleNotFoundError" in err
        assert "give a plugin file as a path ending in .py" in err and "importlib" not in err


# --- a plugin edited after its results exist ---------------------------------------------------
_VERSIONED = '''
"""A plugin whose source-only variant is edited between two runs of one folder (test)."""
from dabench import register_method
from dabench.methods.source_only import SourceOnly


@register_method("edited")
class Edited(SourceOnly):
    """Source-only under another name, version {v} (plugin_code test)."""
'''


def test_records_name_the_plugin_code_and_a_resume_after_an_edit_says_the_folder_mixes_versions(tmp_path):
    """A run id is the spec, not the code: a resume after an edit of the plugin keeps the old
    version's records. The records name the plugin's file and its hash, and the resume says so."""
    from tests.tiny_runs import TINY as TINY_PLUGIN
    from tests.tiny_runs import tiny_run

    plugin, res = tmp_path / "edited.py", tmp_path / "res"
    plugin.write_text(_VERSIONED.format(v=1))
    first = subprocess.run(
        [str(DABENCH), *tiny_run(res, "edited,source-only", "0", "--plugin", str(plugin), "--set", "steps=2")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    recs = {r["spec"]["method"]: r for r in _records(res / "runs")}
    code = recs["edited"]["plugin_code"]
    assert code["method"]["file"] == str(plugin) and len(code["method"]["sha256"]) == 16
    assert code["pair"]["file"] == TINY_PLUGIN  # the tiny pair is a plugin too
    assert set(recs["source-only"]["plugin_code"]) == {"pair"}  # a built-in method: its code is dabench's
    assert "another version of a plugin" not in first.stdout + first.stderr

    plugin.write_text(_VERSIONED.format(v=2))
    second = subprocess.run(
        [str(DABENCH), *tiny_run(res, "edited,source-only", "0,1", "--plugin", str(plugin), "--set", "steps=2")],
        capture_output=True,
        text=True,
        check=False,
    )
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    note = next(line for line in out.splitlines() if "another version of a plugin" in line)
    old_run = recs["edited"]["run_id"]
    # the one kept run of the edited method, named with its file and how to remake it; the
    # unchanged tiny pair and the built-in source-only are not
    assert "1 kept run(s)" in note and f"method 'edited' ({plugin})" in note and f"--rerun {old_run}" in note
    assert "pair 'tiny'" not in note
    new = [r for r in _records(res / "runs") if r["spec"]["method"] == "edited" and r["spec"]["seed"] == 1]
    assert new[0]["plugin_code"]["method"]["sha256"] != code["method"]["sha256"]


def test_a_pair_registered_anew_in_one_process_loads_its_new_data(tmp_path):
    """A notebook re-runs the cell that registers its pair after fixing the loader: the next run
    must see the new loader's data, not the first one's kept in the per-process cache."""
    from dabench import Domain, DomainPair, PairData, register_pair
    from dabench.running.unit import load_pair_data

    def own_tensors(level: int) -> PairData:
        images = torch.full((8, 1, 28, 28), level, dtype=torch.uint8)
        labels = torch.arange(8) % 2
        dom = Domain("mine", images, labels, ("a", "b"))
        idx = torch.arange(8)
        return PairData(dom, dom, idx[:6], idx[6:], idx[:4], idx[4:])

    def register(level: int) -> None:  # one source line: a re-registration, as a re-run cell is
        register_pair(
            DomainPair("own-tensors", "test", lambda root: own_tensors(level), 2, "lenet", 1, 28, (0.5,), (0.5,))
        )

    register(1)
    assert int(load_pair_data("own-tensors", tmp_path).source.images.max()) == 1
    register(2)
    assert int(load_pair_data("own-tensors", tmp_path).source.images.max()) == 2


def _own_pair(name: str, data: PairData, **fields) -> DomainPair:
    kw = {"num_classes": 2, "backbone": "lenet", "channels": 1, "image_size": 28, "mean": (0.5,), "std": (0.5,)}
    kw.update(fields)
    return DomainPair(name, "test pair from own tensors", lambda root: data, **kw)


def _own_data(**splits) -> PairData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 28, 28, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 120).to(torch.uint8)
    dom = Domain("mine", images, labels, ("a", "b"))
    parts = {"source_train": torch.arange(0, 32), "source_val": torch.arange(32, 40)}
    parts.update(target_adapt=torch.arange(0, 20), target_eval=torch.arange(20, 40))
    parts.update(splits)
    return PairData(dom, dom, **parts)


@pytest.mark.parametrize(
    ("data", "fields", "message"),
    [
        (
            {"target_eval": torch.arange(30, 45)},
            {},
            "target_eval holds indices in [30, 44], but the target domain 'mine' has 40 images (valid: 0..39)",
        ),
        ({}, {"num_classes": 3}, "source domain 'mine' has 2 classes but the pair declares num_classes=3"),
        ({}, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}, "mean/std have 3/3 value(s) but channels=1"),
        ({}, {"channels": 3, "mean": (0.5,) * 3, "std": (0.5,) * 3}, "source images have 1 channel(s)"),
        ({"source_val": torch.arange(24, 40)}, {}, "source_val shares 8 of its 16 images with source_train"),
        (
            {"target_eval": torch.arange(20, 40).float()},
            {},
            "target_eval must be a 1-D integer tensor of image indices, got torch.float32",
        ),
        ({"target_eval": torch.arange(0)}, {}, "target_eval is empty"),
        # before, these passed the check: an empty source_val failed every run at its first
        # evaluation with a bare torch error, an empty target_adapt every adapting run
        ({"source_val": torch.arange(0)}, {}, "source_val is empty; every evaluation scores source-validation"),
        ({"target_adapt": torch.arange(0)}, {}, "target_adapt is empty; adapting methods train on it"),
    ],
)
def test_a_pair_plugins_inconsistent_data_is_refused_naming_the_pair_and_field(data, fields, message):
    from dabench.core.domain import PairDataError, check_pair_data

    pair = _own_pair("own", _own_data(**data), **fields)
    with pytest.raises(PairDataError, match="^pair 'own': " + re.escape(message)):
        check_pair_data(pair, pair.load(pathlib.Path(".")))


def test_a_pair_plugin_whose_source_val_overlaps_training_fails_its_runs_with_that_reason(tmp_path):
    """Before, the run completed and the source-val rule scored on training images."""
    dabench.register_pair(_own_pair("own-overlap", _own_data(source_val=torch.arange(24, 40))))
    dabench.register_pair(_own_pair("own-ok", _own_data()))
    dabench.run(
        methods=["source-only"],
        pairs=["own-overlap", "own-ok"],
        seeds=[0],
        results_dir=tmp_path,
        progress=False,
        overrides={"steps": 2, "eval_every": 2, "batch_size": 8},
        device="cpu",
    )
    recs = {r["spec"]["pair"]: r for r in _records(tmp_path / "runs")}
    assert recs["own-ok"]["status"] == "complete"  # the matrix goes on
    assert recs["own-overlap"]["status"] == "failed"
    assert recs["own-overlap"]["error"]["type"] == "PairDataError"
    assert "source_val shares 8 of its 16 images with source_train" in recs["own-overlap"]["error"]["message"]


def test_entry_point_module_that_raises_after_registering_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """docs/adding-a-method.md: an installed package whose entry point raises on import does not
    stop dabench, and asking for its method is an error. A module that registered its class and
    then raised (a later line of the file) used to keep that half-imported class registered: the
    warning said "Going on without it" while ``--methods`` ran it."""
    (tmp_path / "ep_half_mod.py").write_text(
        textwrap.dedent('''
        from dabench import Method, register_method

        @register_method("half-made")
        class HalfMade(Method):
            """Registered before the module's error."""

            def loss(self, batch, progress):
                return self.combine(self.supervised_loss(batch, self.predict(batch.x_source)))

        raise RuntimeError("a later line of the plugin fails")
    ''')
    )
    _dist_info(tmp_path, "ep-half", "dabench.test_half", "half-made = ep_half_mod:HalfMade")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "group", "dabench.test_half")
    monkeypatch.setattr(METHODS, "_entry_points_loaded", False)
    with pytest.warns(
        PluginWarning, match=r"'half-made'.*package ep-half.*RuntimeError: a later line.*Going on without it"
    ):
        names = METHODS.names()
    assert "half-made" not in names
    with pytest.raises(PluginError, match=r"'half-made' is unavailable.*RuntimeError: a later line"):
        METHODS.get("half-made")
    assert main(["run", "--methods", "half-made", "--seeds", "0", "--dry-run"]) == 2
    assert "method 'half-made' is unavailable" in capsys.readouterr().err
    sys.modules.pop("ep_half_mod", None)
