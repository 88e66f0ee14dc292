"""``dabench status DIR``: counts, live vs interrupted runs, failures with their first line, ETA.

The folder is built by hand (records, claims, matrix.json): no training, fast.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from dabench.cli import main
from dabench.core.record import RunError
from dabench.core.spec import RunSpec
from dabench.core.store import RunStore
from dabench.running.scheduler import write_matrix_file
from dabench.running.status import folder_status, status_text
from dabench.running.unit import base_record


def _spec(method: str, seed: int) -> RunSpec:
    return RunSpec(method=method, pair="digits-offline", seed=seed, protocol="uda", target_shots=0, eval_shots=5)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this fast)


@pytest.fixture()
def folder(tmp_path):
    """8 specs in matrix.json: 2 complete (40 s and 20 s), 1 failed, 1 diverged, 1 running
    (claim held by this live process), 1 interrupted (running record, claim of a dead pid),
    2 pending (no record); plus one corrupt record."""
    store = RunStore(tmp_path)
    specs = [_spec(m, s) for m in ("source-only", "dann") for s in range(4)]
    write_matrix_file(tmp_path, specs, workers=2)
    env = {"device": "cpu", "versions": {}, "host": socket.gethostname()}
    for spec, wall in zip(specs[:2], (40.0, 20.0)):
        rec = base_record(spec, "complete", env)
        rec.timings = {"wall_s": wall - 5, "total_s": wall}
        store.write(rec)
    failed = base_record(specs[2], "failed", env)
    failed.error = RunError("RuntimeError", "\nCUDA out of memory\nsecond line", "tb")
    store.write(failed)
    div = base_record(specs[3], "diverged", env)
    div.diverged_at_step, div.error = 17, RunError("Diverged", "non-finite loss at step 17")
    store.write(div)
    store.write(base_record(specs[4], "running", env))
    store.claims.mkdir(parents=True, exist_ok=True)
    (store.claims / f"{specs[4].run_id}.claim").write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    )
    store.write(base_record(specs[5], "running", env))
    (store.claims / f"{specs[5].run_id}.claim").write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname()})
    )
    (store.runs / "deadbeef0000.json").write_text('{"run_id": "deadbeef0000", "sta')  # torn, not in the matrix
    (store.runs / "notes.json").write_text('{"comment": "my own file"}')  # unrelated JSON
    store.claims.mkdir(parents=True, exist_ok=True)
    (store.claims / f"{specs[6].run_id}.claim").write_bytes(b"\xff\xfe\x00")  # not UTF-8
    return tmp_path, specs


def test_counts_live_and_interrupted_runs(folder):
    root, specs = folder
    st = folder_status(root)
    c = st.counts()
    assert (c["complete"], c["failed"], c["diverged"], c["running"], c["interrupted"], c["pending"]) == (
        2,
        1,
        1,
        1,
        1,
        2,
    )
    assert st.in_matrix == 8 and st.workers == 2
    assert st.corrupt == []  # nothing of the matrix is corrupt: nothing will be rerun for it
    assert any("deadbeef0000.json" in p and "corrupt" in p for p in st.ignored)
    assert any("notes.json" in p and "not a run record" in p for p in st.ignored)
    assert any(f"{specs[6].run_id}.claim" in p for p in st.ignored)


def test_corrupt_record_of_a_matrix_run_is_rerun_and_a_stray_one_is_not(folder):
    root, specs = folder
    (root / "runs" / f"{specs[7].run_id}.json").write_bytes(b"\xff not utf-8")
    text = status_text(root)
    rerun = text.split("corrupt records (the next 'dabench run' reruns them):")[1].split("ignored")[0]
    assert f"{specs[7].run_id}.json" in rerun and "deadbeef0000" not in rerun and "notes.json" not in rerun
    assert "notes.json (not a run record" in text


def test_text_names_failures_by_first_line_and_gives_eta(folder):
    root, specs = folder
    text = status_text(root)
    assert "matrix: 8 runs = 2 complete, 1 running, 1 failed, 1 diverged, 0 skipped, 2 pending, 1 interrupted" in text
    assert f"dann | digits-offline | seed 0 ({specs[4].run_id})" not in text  # running is not a failure
    assert f"source-only | digits-offline | seed 2 ({specs[2].run_id}): RuntimeError: CUDA out of memory" in text
    assert "second line" not in text
    assert "non-finite loss at step 17" in text
    assert "deadbeef0000.json" in text
    # mean of total_s (30 s) x 5 left (2 pending + 1 interrupted + 1 running + 1 failed, retried) / 2 workers
    assert "ETA: ~1m 15s (mean run 30.0 s x 5 left / 2 workers)" in text


def test_cli_status_and_missing_folder(folder, tmp_path, capsys):
    root, _ = folder
    assert main(["status", str(root)]) == 0
    assert "2 complete" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_without_matrix_file_only_records_count(tmp_path):
    store = RunStore(tmp_path)
    rec = base_record(_spec("dan", 0), "complete", {"device": "cpu"})
    rec.timings = {"wall_s": 3.0}
    store.write(rec)
    text = status_text(tmp_path)
    assert "no matrix.json" in text and "1 complete" in text and "ETA" not in text


def _tallies(text: str) -> dict[str, tuple[int, dict[str, int]]]:
    """``<head>: N runs|records = a complete, b running, ...`` lines of the status text, parsed."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s+(matrix|records|outside this matrix): (\d+) (?:runs?|records?) = (.*)$", line)
        if m:
            parts = {k: int(n) for n, k in (p.split(" ", 1) for p in m.group(3).split(", "))}
            out[m.group(1)] = (int(m.group(2)), parts)
    return out


def test_counts_add_up_with_records_outside_the_matrix(tmp_path):
    """The bug: "4 runs in its matrix" then "9 complete ... 2 pending, 1 interrupted" and "(8 more
    record(s) ...)": the matrix's counts mixed in the other records. Each line must add up."""
    store = RunStore(tmp_path)
    env = {"device": "cpu", "versions": {}, "host": socket.gethostname()}
    old = [_spec("dan", s) for s in range(8)]  # an earlier matrix of the same folder
    for i, spec in enumerate(old):
        rec = base_record(spec, "complete" if i < 7 else "running", env)  # one killed: interrupted
        rec.timings = {"total_s": 10.0}
        store.write(rec)
    specs = [_spec("source-only", s) for s in range(4)]
    path = write_matrix_file(tmp_path, specs, executor="local", workers=1)
    done = base_record(specs[0], "complete", env)
    done.timings = {"total_s": 10.0}
    store.write(done)
    store.write(base_record(specs[1], "running", env))  # no live claim: interrupted
    text = status_text(tmp_path)
    written_at = json.loads(path.read_text())["written_at"]
    assert f"matrix.json written {written_at} (4 runs, local executor, 1 worker)" in text
    tallies = _tallies(text)
    total, parts = tallies["matrix"]
    assert total == 4 == sum(parts.values())
    assert parts == {
        "complete": 1,
        "running": 0,
        "failed": 0,
        "diverged": 0,
        "skipped": 0,
        "pending": 2,
        "interrupted": 1,
    }
    total, parts = tallies["outside this matrix"]
    assert total == 8 == sum(parts.values())
    assert parts["complete"] == 7 and parts["interrupted"] == 1 and "pending" not in parts
    # 3 left of *this* matrix (2 pending + 1 interrupted); the old interrupted run is not counted
    assert "x 3 left" in text


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short
        lambda text: '"seedx":'.join(text.rsplit('"seed":', 1)),  # the last spec malformed, the rest whole
    ],
)
def test_unreadable_matrix_file_is_named_and_nothing_is_half_counted(tmp_path, damage):
    """A damaged matrix.json is named with what to do, and every record is counted alike (before: the
    header said 'no matrix.json', and a spec that failed half way left the specs read before it as
    'the matrix', counting the other records outside it)."""
    store = RunStore(tmp_path)
    specs = [_spec(m, s) for m in ("source-only", "dann") for s in range(2)]
    path = write_matrix_file(tmp_path, specs)
    for spec in specs:
        store.write(base_record(spec, "complete", {"device": "cpu"}))
    path.write_text(damage(path.read_text()))
    st = folder_status(tmp_path)
    assert st.in_matrix is None and st.counts(True)["complete"] == 4 and not st.counts(False)
    text = status_text(tmp_path)
    assert f"unreadable {path}" in text and "the next 'dabench run' of the matrix rewrites it" in text
    assert "records: 4 runs = 4 complete" in text and "outside this matrix" not in text


def test_eta_counts_the_failed_and_skipped_runs_the_next_run_retries(tmp_path):
    """The next ``dabench run`` retries failed and skipped runs (only complete and diverged ones are
    kept): they are runs left. Before, a matrix of only failed runs said nothing was left, and
    printed no ETA at all."""
    store = RunStore(tmp_path)
    specs = [_spec("dann", s) for s in range(4)]
    write_matrix_file(tmp_path, specs, workers=1)
    env = {"device": "cpu", "versions": {}, "host": socket.gethostname()}
    for spec, status in zip(specs, ("complete", "failed", "skipped", "diverged")):
        rec = base_record(spec, status, env)
        rec.timings = {"total_s": 10.0} if status == "complete" else None
        rec.error = None if status == "complete" else RunError("X", status)
        store.write(rec)
    st = folder_status(tmp_path)
    assert st.remaining == 2 and st.eta_s == 20.0  # the failed and the skipped run; the diverged one is kept
    assert "ETA: ~20s (mean run 10.0 s x 2 left / 1 worker)" in status_text(tmp_path)


def test_claims_of_runs_neither_the_matrix_nor_a_record_names(tmp_path):
    """An unreadable claim of a run the folder knows nothing else of is named (before: silently
    skipped, though one of a matrix run was named); a live claim of such a run (another runner's
    run before its first record) counts as running outside this matrix."""
    store = RunStore(tmp_path)
    write_matrix_file(tmp_path, [_spec("dann", 0)])
    store.claims.mkdir(parents=True)
    (store.claims / "0123456789ab.claim").write_bytes(b"\xff\xfe\x00")
    other = _spec("dan", 7).run_id
    assert store.claim(other)
    try:
        st = folder_status(tmp_path)
        text = status_text(tmp_path)
    finally:
        store.release(other)
    assert any("0123456789ab.claim" in p and "unreadable" in p for p in st.ignored)
    assert "0123456789ab.claim" in text
    assert [(r.run_id, r.state, r.in_matrix) for r in st.runs if r.run_id == other] == [(other, "running", False)]
    assert "outside this matrix: 1 record = 0 complete, 1 running" in text


def test_counts_of_one_read_in_the_singular(tmp_path):
    """ "1 records", "(1 runs, ...)", "1 worker(s)": every count the text prints agrees with its number."""
    write_matrix_file(tmp_path, [_spec("dann", 0)])
    store = RunStore(tmp_path)
    outside = _spec("dan", 1)
    rec = base_record(outside, "complete", {"device": "cpu", "versions": {}, "host": socket.gethostname()})
    rec.timings = {"total_s": 10.0}
    store.write(rec)
    text = status_text(tmp_path)
    assert "(1 run, inline executor, 1 worker)" in text
    assert "  matrix: 1 run = 0 complete" in text
    assert "  outside this matrix: 1 record = 1 complete" in text
    assert "ETA: ~10s (mean run 10.0 s x 1 left / 1 worker)" in text
    assert "(s)" not in text and "1 runs" not in text and "1 records" not in text
