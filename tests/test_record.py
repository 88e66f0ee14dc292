"""The run record schema (core/record.py): one definition, read and written through the store.

A record round-trips unchanged; records written so far (format 1) load; a foreign JSON, a record of
a newer format or with an unknown status is one clear message naming the file, and ``dabench
report`` / ``dabench status`` skip it by name. Also the one boolean rule (core/parsing.py).
"""

from __future__ import annotations

import ast
import json
import pathlib
import sys
import warnings

import pytest

from dabench.core.record import (
    FORMAT,
    TERMINAL,
    RecordError,
    RunError,
    RunRecord,
    RunResult,
    Status,
    first_line,
    read_record,
)
from dabench.core.spec import RunSpec
from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix, write_matrix_file
from dabench.running.status import folder_status, status_text
from dabench.running.unit import Outcome, base_record
from fake_runs import write_run

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
CORE = pathlib.Path(__file__).resolve().parents[1] / "benchmark" / "core"


def _spec(seed: int = 0) -> RunSpec:
    return RunSpec(method="source-only", pair="digits-offline", seed=seed, protocol="uda", target_shots=0, eval_shots=5)


def _full_record() -> RunRecord:
    """A complete record with every field set (as the engine writes one), plus a field this version does not know."""
    rec = base_record(
        _spec(),
        Status.RUNNING,
        {"device": "cpu (2 cores)", "versions": {"torch": "2.x"}, "host": "h", "torch_threads": 1},
    )
    point = {
        "step": 10,
        "target_acc": 61.5,
        "target_per_class": [60.0, 63.0],
        "source_val_acc": 90.0,
        "entropy": 0.4,
        "im": 1.1,
        "snd": 2.2,
        "loss": {"ce": 0.3},
    }
    rec.apply(
        RunResult(
            curve=[point],
            final=point,
            target_labels=0,
            eval_size=200,
            validators={"split": "target_adapt", "samples": 100, "overlaps_evaluation": False},
            resumed_from_step=None,
            timings={"wall_s": 1.0, "steps": 10, "compiled": False},
        )
    )
    rec.status, rec.finished_at = Status.COMPLETE, "2025-01-01T00:00:02+00:00"
    rec.extra["note"] = {"kept": True}
    return rec


def test_a_record_round_trips_through_the_store_unchanged(tmp_path):
    store = RunStore(tmp_path)
    rec = _full_record()
    store.write(rec)
    back = store.read(rec.run_id)
    assert back == rec and back is not rec
    on_disk = json.loads(store.record_path(rec.run_id).read_text())
    assert on_disk == rec.to_dict() and on_disk["format"] == FORMAT == 1
    assert on_disk["status"] == "complete" and on_disk["note"] == {"kept": True}  # unknown fields survive
    store.write(back)
    assert json.loads(store.record_path(rec.run_id).read_text()) == on_disk
    assert [r.run_id for r in store.records()] == [rec.run_id]


def test_a_failed_record_keeps_its_error_and_reads_as_the_format_1_dicts(tmp_path):
    store = RunStore(tmp_path)
    rec = base_record(_spec(1), "running", {"device": "cpu"})
    rec.fail(Status.FAILED, "RuntimeError", "\nCUDA out of memory\nmore", "tb")
    store.write(rec)
    back = store.read(rec.run_id)
    assert back.error == RunError("RuntimeError", "\nCUDA out of memory\nmore", "tb")
    assert back.error.headline() == "RuntimeError: CUDA out of memory"
    # the read-only mapping view is the JSON on disk: code written against the plain dicts still works
    assert back["status"] == "failed" and back["error"]["type"] == "RuntimeError" and back.get("final") is None
    assert back.status == "failed" and f"{back.status}" == "failed" and back.status in TERMINAL
    with pytest.raises(TypeError, match="RunRecord"):
        store.write(dict(back))  # a loose dict is not a record


def test_records_written_so_far_load(tmp_path):
    """Format 1 as written by the code so far (tests/fake_runs.py's shape: no pid/host/eval_size ...)."""
    path = write_run(
        tmp_path,
        "r1",
        "dann",
        "mnist-usps",
        3,
        acc=71.0,
        status="diverged",
        error={"type": "Diverged", "message": "non-finite loss at step 300"},
        diverged_at_step=300,
    )
    original = json.loads(path.read_text())
    rec = RunStore(tmp_path).read("r1")
    assert rec.status is Status.DIVERGED and rec.diverged_at_step == 300 and rec.spec["method"] == "dann"
    assert rec.error.type == "Diverged" and rec.curve[0]["target_acc"] == 71.0
    written = rec.to_dict()
    assert {k: written[k] for k in original} == {**original, "error": {**original["error"], "traceback": ""}}


@pytest.mark.parametrize(
    "body,kind,expected",
    [
        ({"comment": "my own file"}, "foreign", "not a run record of dabench (missing run_id, status, spec"),
        ([1, 2], "foreign", "not a run record of dabench (a JSON list"),
        (
            {"format": 7, "run_id": "x", "status": "complete", "spec": {}},
            "format",
            "written by record format 7; this dabench reads format 1 (a newer dabench wrote it)",
        ),
        (
            {"format": 1, "run_id": "x", "status": "pending", "spec": {}},
            "malformed",
            "field 'status' is 'pending'; expected one of running, complete, failed, diverged, skipped",
        ),
        (
            {"format": 1, "run_id": "x", "status": "complete", "spec": {}, "pid": "12"},
            "malformed",
            "field 'pid' is '12' (a string); expected an integer or null",
        ),
        (
            {"format": 1, "run_id": "x", "status": "failed", "spec": {}, "error": {"message": "m"}},
            "malformed",
            "field 'error'",
        ),
    ],
)
def test_a_file_that_is_not_a_readable_record_is_one_message_naming_it(tmp_path, body, kind, expected):
    path = tmp_path / "runs" / "x.json"
    path.parent.mkdir()
    path.write_text(json.dumps(body))
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert info.value.kind == kind
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    with pytest.warns(UserWarning, match="x.json") as caught:
        assert RunStore(tmp_path).read("x") is None
    assert expected in str(caught[0].message)


def test_report_and_status_skip_foreign_and_newer_records_by_name(tmp_path):
    from dabench.analysis.report import report_text
    from dabench.analysis.results import load_results

    write_run(tmp_path, "ok", "dan", "p", 0, acc=50.0)
    write_run(tmp_path, "newer", "dan", "p", 1, acc=60.0, extra={"format": 2})
    (tmp_path / "runs" / "notes.json").write_text('{"comment": "my own file"}')
    with pytest.warns(UserWarning) as caught:
        df = load_results(tmp_path)
    assert list(df["run_id"]) == ["ok"]
    said = "\n".join(str(w.message) for w in caught)
    assert "newer.json: written by record format 2; this dabench reads format 1" in said
    assert "notes.json: not a run record of dabench" in said
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "| dan" in report_text(tmp_path)
    st = folder_status(tmp_path)
    assert [r.run_id for r in st.runs] == ["ok"] and st.corrupt == []
    text = status_text(tmp_path)
    assert "newer.json (written by record format 2; this dabench reads format 1" in text
    assert "notes.json (not a run record of dabench" in text


def test_a_newer_record_of_a_matrix_run_is_left_alone_not_rerun(tmp_path):
    (spec,) = expand(
        Matrix(
            methods=("source-only",),
            pairs=("tiny",),
            seeds=(0,),
            plugins=(TINY,),
            overrides={"steps": 2, "eval_every": 2},
        )
    )
    store = RunStore(tmp_path)
    newer = {"format": 9, "run_id": spec.run_id, "status": "complete", "spec": spec.to_dict(), "new_field": 1}
    store.record_path(spec.run_id).parent.mkdir(parents=True)
    store.record_path(spec.run_id).write_text(json.dumps(newer))
    write_matrix_file(tmp_path, [spec])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_matrix([spec], tmp_path, ExecutorOptions(device="cpu", progress=False))
        st = folder_status(tmp_path)
    assert summary.unreadable == [spec.run_id] and summary.ran == [] and summary.corrupt == []
    assert json.loads(store.record_path(spec.run_id).read_text()) == newer  # never overwritten
    assert st.corrupt == [] and any("record format 9" in p for p in st.ignored)  # status: not "rerun next time"


def test_an_outcome_crosses_the_worker_pipe_as_the_record_on_disk():
    rec = _full_record()
    msg = json.loads(json.dumps(Outcome(rec.run_id, "ran", rec).to_message()))
    assert Outcome.from_message(msg) == Outcome(rec.run_id, "ran", rec)
    msg["record"]["status"] = "finished"
    with pytest.raises(RecordError, match="sent by a worker: field 'status' is 'finished'"):
        Outcome.from_message(msg)


def test_status_names_and_first_line_are_defined_once():
    assert [s.value for s in Status] == ["running", "complete", "failed", "diverged", "skipped"]
    assert TERMINAL == {Status.COMPLETE, Status.FAILED, Status.DIVERGED, Status.SKIPPED}
    assert first_line("\n  \n second \nthird") == "second" and first_line(None) == ""
    for module in ("scheduler", "status"):
        src = (CORE.parent / "running" / f"{module}.py").read_text()
        assert "def _first_line" not in src and '"complete", "failed"' not in src


@pytest.mark.parametrize("name", ["record.py", "parsing.py", "jsonio.py"])
def test_the_schema_modules_import_only_the_standard_library(name):
    """Records are read without torch: these modules import the standard library and each other only."""
    tree = ast.parse((CORE / name).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
    }
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    # a relative import only of another module checked here (record.py writes through jsonio.py)
    assert roots <= set(sys.stdlib_module_names) | {"__future__"} and set(relative) <= {"jsonio"}


# --- one boolean rule ---------------------------------------------------------------------
def test_a_misspelt_boolean_option_is_an_error_not_a_silent_false(monkeypatch):
    from dabench.core.parsing import parse_bool
    from dabench.core.registry import BACKBONES
    from dabench.datasets.cache import download_requested

    assert [parse_bool(v, "x") for v in (True, 1, " Yes", "on", "0", "off", False)] == [True] * 4 + [False] * 3
    with pytest.raises(ValueError, match=r"backbone\.instance_norm: expected a boolean .* got 'ture'"):
        BACKBONES.get("cnn32")(in_channels=3, image_size=32, instance_norm="ture")
    assert BACKBONES.get("cnn32")(in_channels=3, image_size=32, instance_norm="off") is not None
    monkeypatch.setenv("DABENCH_DOWNLOAD", "maybe")
    with pytest.raises(ValueError, match=r"DABENCH_DOWNLOAD: expected a boolean .* got 'maybe'"):
        download_requested()
    monkeypatch.setenv("DABENCH_DOWNLOAD", "")
    assert download_requested() is False
