"""The runner against claims and write faults: stale claims are taken over, waiting for another
runner is announced and bounded, a refused write stops the matrix with one line naming the file
(no temporary file left, a rerun finishes), Ctrl-C prints one line, a lost source-only
checkpoint is recreated.

Write faults are simulated (the tests run as root, where ``chmod`` does not stop writes): a
patched ``os.replace`` refuses the paths a test names, as a read-only file or a full disk would.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from dabench.cli import main
from dabench.core import store as store_mod
from dabench.core.store import RunStore, checkpoint_problem, process_start_time
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from tiny_runs import TINY, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _specs():
    """source-only and its dependant linear-probe on the tiny pair (20 steps each)."""
    so, lp = expand(Matrix(methods=("source-only", "linear-probe"), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    assert lp.depends_on == so.run_id
    return so, lp


def _claim_as(store: RunStore, run_id: str, holder: dict) -> None:
    store.claims.mkdir(parents=True, exist_ok=True)
    store.claim_path(run_id).write_text(json.dumps(holder))


def test_claim_of_a_reused_pid_is_taken_over(tmp_path):
    """The source-only run's claim names a live but unrelated process (our parent) whose start time
    differs: it is stale, so the runner runs it (and its dependant) instead of waiting for ever."""
    so, lp = _specs()
    store = RunStore(tmp_path)
    parent = os.getppid()
    _claim_as(
        store, so.run_id, {**store_mod._machine(), "pid": parent, "start_time": (process_start_time(parent) or 0) + 999}
    )
    summary = run_matrix([so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False), wait_limit_s=5, poll_s=0.05)
    assert [r["status"] for r in summary.ran] == ["complete", "complete"]
    assert not store.claim_path(so.run_id).exists()


def test_waiting_for_another_runner_is_announced_and_bounded(tmp_path, capsys):
    so, lp = _specs()
    store = RunStore(tmp_path)
    # a live claim from another machine: fresh heartbeat, so it is honoured
    _claim_as(store, so.run_id, {"host": "node7.example", "pid": 4242, "claimed_at": "2025-01-01T00:00:00+00:00"})
    summary = run_matrix(
        [so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False), wait_limit_s=0.3, poll_s=0.05
    )
    err = capsys.readouterr().err
    assert f"waiting for run {so.label} ({so.run_id}) held by node7.example/pid 4242 since 2025-01-01" in err
    assert "giving up after 0 s" in err and "gave up after waiting" in err
    assert summary.gave_up == [lp.run_id] and summary.ran == []
    assert store.read(lp.run_id) is None  # not run, not recorded: the next dabench run does it


def _refuse(monkeypatch, refused, code: int) -> None:
    """``os.replace`` into a path for which ``refused(path)`` is true fails with errno ``code``."""
    real = os.replace

    def fake(src, dst, *a, **k):
        if refused(pathlib.Path(dst)):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", fake)


def _tmp_files(root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _cli_run(out: pathlib.Path, methods: str = "source-only,linear-probe") -> list[str]:
    return tiny_run(out, methods)


def test_full_disk_stops_with_one_line_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    so, lp = _specs()
    out = tmp_path / "out"
    _refuse(monkeypatch, lambda p: p.parent.name == "checkpoints", errno.ENOSPC)  # the checkpoint does not fit
    assert main(_cli_run(out)) == 2
    err = capsys.readouterr().err.strip()
    ckpt = RunStore(out).checkpoint_path(so.run_id)
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"cannot write {ckpt}: No space left on device" in err
    assert _tmp_files(out) == []  # a temp file left behind would keep the disk full
    rec = RunStore(out).read(so.run_id)
    assert rec["status"] == "failed" and rec["error"]["type"] == "WriteFault"  # marked: it could be
    assert RunStore(out).read(lp.run_id) is None  # the matrix stopped
    assert not list((out / "claims").glob("*.claim"))
    monkeypatch.undo()  # space freed
    assert main(_cli_run(out)) == 0
    assert {RunStore(out).status(s.run_id) for s in (so, lp)} == {"complete"}


def test_read_only_folder_and_record_stop_with_one_line_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    so, lp = _specs()
    out = tmp_path / "out"
    _refuse(monkeypatch, lambda p: True, errno.EACCES)  # read-only folder: the first write fails
    assert main(_cli_run(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot write {out / 'matrix.json'}: Permission denied" in err, err
    monkeypatch.undo()
    record = RunStore(out).record_path(so.run_id)
    _refuse(monkeypatch, lambda p: p == record, errno.EACCES)  # only the run's record is read-only
    assert main(_cli_run(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and f"cannot write {record}: Permission denied" in err
    assert _tmp_files(out) == [] and not list((out / "claims").glob("*.claim"))
    monkeypatch.undo()
    assert main(_cli_run(out)) == 0
    assert {RunStore(out).status(s.run_id) for s in (so, lp)} == {"complete"}


@pytest.mark.parametrize("folder", ["runs", "checkpoints"])
def test_a_file_where_a_folder_of_results_belongs_is_named(tmp_path, capsys, folder):
    """``runs`` (or ``checkpoints``) is a file (a copy gone wrong): one line names that file and
    says it is not a folder, not the OS's bare "File exists" about the record; the rerun finishes
    once it is moved away."""
    so, lp = _specs()
    out = tmp_path / "out"
    out.mkdir()
    (out / folder).write_text("not a folder")
    assert main(_cli_run(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"{out / folder} is a file, not a folder" in err, err
    (out / folder).unlink()
    assert main(_cli_run(out)) == 0
    assert {RunStore(out).status(s.run_id) for s in (so, lp)} == {"complete"}


def test_lost_source_only_checkpoint_is_recreated(tmp_path, capsys):
    so, lp = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False))
    store.checkpoint_path(so.run_id).unlink()
    # the dependant alone (its dependency is not in the matrix): it names the command that helps
    store.record_path(lp.run_id).unlink()
    alone = run_matrix([lp], tmp_path, ExecutorOptions(device="cpu", progress=False))
    msg = alone.ran[0]["error"]["message"]
    assert alone.ran[0]["status"] == "failed"
    assert f"dabench run --rerun {so.run_id} --results {tmp_path}" in msg
    # the whole matrix: source-only is rerun (deterministic) and the dependant then completes
    capsys.readouterr()
    again = run_matrix([so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert "checkpoint" in capsys.readouterr().err
    assert again.rerun_for_checkpoint == [so.run_id]
    assert [(r["run_id"], r["status"]) for r in again.ran] == [(so.run_id, "complete"), (lp.run_id, "complete")]
    assert store.checkpoint_path(so.run_id).exists()
    assert len(list((tmp_path / "previous").glob(f"{so.run_id}.*.json"))) == 1


def test_damaged_source_only_checkpoint_is_named_and_recreated(tmp_path, capsys):
    """A source-only checkpoint cut short (full disk, interrupted copy) or damaged inside fails its
    dependant with the file's name and the command that recreates it, and the whole matrix reruns
    the source-only run, as for a lost one (before: torch's error, on every rerun, for ever)."""
    so, lp = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False))
    ckpt = store.checkpoint_path(so.run_id)
    good = ckpt.read_bytes()
    fix = f"dabench run --rerun {so.run_id} --results {tmp_path}"
    ckpt.write_bytes(good[: len(good) // 2])  # cut short: no zip directory at the end
    store.record_path(lp.run_id).unlink()
    alone = run_matrix([lp], tmp_path, ExecutorOptions(device="cpu", progress=False)).ran[0]
    assert alone["status"] == "failed" and alone["error"]["type"] == "CorruptCheckpoint"
    assert str(ckpt) in alone["error"]["message"] and fix in alone["error"]["message"]
    # damaged inside, its zip directory whole: torch.load fails; the error names the file and the fix
    with zipfile.ZipFile(ckpt, "w") as archive:
        archive.writestr("ckpt/data.pkl", b"not a pickle")
    store.record_path(lp.run_id).unlink()
    alone = run_matrix([lp], tmp_path, ExecutorOptions(device="cpu", progress=False)).ran[0]
    assert alone["status"] == "failed" and str(ckpt) in alone["error"]["message"] and fix in alone["error"]["message"]
    # the whole matrix (cut short again): source-only is rerun and the dependant completes
    ckpt.write_bytes(good[:1000])
    capsys.readouterr()
    again = run_matrix([so, lp], tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert f"checkpoint {ckpt} is unreadable" in capsys.readouterr().err
    assert again.rerun_for_checkpoint == [so.run_id]
    assert [(r["run_id"], r["status"]) for r in again.ran] == [(so.run_id, "complete"), (lp.run_id, "complete")]
    assert checkpoint_problem(ckpt) is None


def test_damaged_mid_run_checkpoint_restarts_the_run_from_step_0(tmp_path):
    """A mid-run checkpoint only saves time: one that cannot be loaded is named in a warning,
    removed, and the run starts from step 0 and completes (before: failed on every rerun with
    torch's error, naming no file)."""
    so, _ = _specs()
    store = RunStore(tmp_path)
    partial = store.checkpoint_path(so.run_id, partial=True)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PK\x03\x04 cut short")
    with pytest.warns(UserWarning, match=f"mid-run checkpoint {partial} cannot be loaded"):
        summary = run_matrix([so], tmp_path, ExecutorOptions(device="cpu", progress=False, checkpoint_every=5))
    rec = summary.ran[0]
    assert rec["status"] == "complete", rec["error"]
    assert rec["resumed_from_step"] is None and not partial.exists()


def test_asking_for_features_of_complete_runs_names_the_rerun(tmp_path, capsys):
    """``--set save_features=true`` is not part of the run id, so it does not rerun complete runs:
    the runner says so and names the ``--rerun`` that adds the features (before: silence, and the
    report's ``dev`` rule then found no features)."""
    so, _ = _specs()
    run_matrix([so], tmp_path, ExecutorOptions(device="cpu", progress=False))
    capsys.readouterr()
    wanted = dataclasses.replace(so, save_features=True)
    assert wanted.run_id == so.run_id
    summary = run_matrix([wanted], tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert summary.skipped_complete == [so.run_id] and not summary.ran
    err = capsys.readouterr().err
    assert "1 complete run(s) saved no features" in err
    assert f"dabench run --results {tmp_path} --set save_features=true --rerun {so.run_id}" in err


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "dabench.cli",
        *_cli_run(out, "slow"),
        "--set",
        "slow.sleep=0.05",
        "--set",
        "steps=400",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    runs = out / "runs"
    deadline = time.monotonic() + 90
    while not (runs.is_dir() and list(runs.glob("*.json"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0], err
    (rec,) = RunStore(out).records()
    assert rec["status"] == "running"  # never complete; the next run redoes it
