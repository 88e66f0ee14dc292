"""A ``matrix.json`` edited by hand: ``--rerun`` (which loads the plugins the file names) names the
file and what it holds in one warning, and goes on, instead of a traceback or loading a plugin
named by one letter of a string read as a list."""

from __future__ import annotations

import json

import pytest

from dabench.core.record import Status
from dabench.core.store import RunStore
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import MATRIX_FILE, prepare_rerun
from dabench.running.unit import base_record


@pytest.fixture
def folder(tmp_path):
    """A results folder holding one (failed) record of a built-in method, to repeat."""
    (spec,) = expand(Matrix(methods=("source-only",), pairs=("digits-offline",), seeds=(0,)))
    RunStore(tmp_path).write(base_record(spec, Status.FAILED, {}))
    return tmp_path, spec


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("[]", r"matrix.json is not a JSON object \(a list\): its plugins are not loaded; give them with --plugin"),
        (
            json.dumps({"plugins": "my_plugin.py"}),
            r"matrix.json: 'plugins' is 'my_plugin.py', not a list of plugin files or modules",
        ),
        (json.dumps({"plugins": [3]}), r"'plugins' is \[3\], not a list of plugin files or modules"),
        ('{"plugins": [', r"corrupt .*matrix.json \(.*\): its plugins are not loaded"),
    ],
)
def test_a_hand_edited_matrix_file_is_named_and_the_rerun_goes_on(folder, content, said):
    root, spec = folder
    (root / MATRIX_FILE).write_text(content)
    with pytest.warns(UserWarning, match=said):
        specs, plugins = prepare_rerun(root, [spec.run_id], archive=False)
    assert [s.run_id for s in specs] == [spec.run_id] and plugins == ()


def test_the_matrix_files_plugins_are_still_loaded(folder, tmp_path_factory):
    root, spec = folder
    plugin = tmp_path_factory.mktemp("plugin") / "edited_ok_plugin.py"
    plugin.write_text("LOADED = True\n")
    (root / MATRIX_FILE).write_text(json.dumps({"plugins": [str(plugin)]}))
    _, plugins = prepare_rerun(root, [spec.run_id], archive=False)
    assert plugins == (str(plugin),)
