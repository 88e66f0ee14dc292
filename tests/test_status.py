"""``dabench status DIR``: counts, live vs interrupted runs, failures with their first line, ETA.

The folder is built by hand (records, claims, matrix.json): no training, fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from dabench.cli import main
from dabench.core.domain import Schedule
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
    failures = text.split("failures:")[1]
    assert f"dann | digits-offline | seed 0 ({specs[4].run_id})" not in failures  # running is not a failure
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


def test_eta_counts_a_seed_batched_runs_share_of_its_groups_time(tmp_path):
    """Each seed of a batched group records the group's time (``total_s``), which its S seeds
    shared: the ETA counts total_s / S per run (before: S times too long under --seed-batch)."""
    store = RunStore(tmp_path)
    specs = [_spec("dann", s) for s in range(6)]
    write_matrix_file(tmp_path, specs, workers=1)
    env = {"device": "cpu", "versions": {}, "host": socket.gethostname()}
    for spec in specs[:3]:
        rec = base_record(spec, "complete", env)
        rec.timings = {"total_s": 30.0, "seed_batch": "3 seeds"}
        store.write(rec)
    st = folder_status(tmp_path)
    assert st.remaining == 3 and st.mean_run_s == 10.0 and st.eta_s == 30.0
    assert "ETA: ~30s (mean run 10.0 s x 3 left / 1 worker)" in status_text(tmp_path)


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


# --- running runs: time so far vs their peers' mean, possibly hung, interrupted ------------------

T0 = 1_750_000_000.0  # a fixed clock: elapsed times are measured to ``now`` given by the test


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _live_claim(store: RunStore, run_id: str, claimed_at: float) -> None:
    """A claim held by this (live) process, made at ``claimed_at``; its heartbeat is fresh."""
    store.claims.mkdir(parents=True, exist_ok=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "claimed_at": _iso(claimed_at)}
    (store.claims / f"{run_id}.claim").write_text(json.dumps(holder))


def _running(store: RunStore, spec: RunSpec, started_at: float | None, claimed_at: float | None) -> None:
    env = {"device": "cpu", "versions": {}, "host": socket.gethostname()}
    rec = base_record(spec, "running", env)
    rec.started_at = None if started_at is None else _iso(started_at)
    store.write(rec)
    if claimed_at is not None:
        _live_claim(store, spec.run_id, claimed_at)


def _complete(store: RunStore, spec: RunSpec, total_s: float) -> None:
    rec = base_record(spec, "complete", {"device": "cpu", "versions": {}})
    rec.timings = {"wall_s": total_s - 1, "total_s": total_s}
    store.write(rec)


def _line(text: str, run_id: str) -> str:
    return next(line for line in text.splitlines() if f"({run_id})" in line)


def test_a_run_far_past_its_methods_mean_is_flagged_possibly_hung_with_what_to_do(tmp_path):
    """dann's complete runs took 60 s and 120 s (mean 90 s); one dann run has held its claim for
    2 h: possibly hung (past 3x and past 10 min), with the rerun command and --run-timeout named.
    A source-only run 20 s in (its method's mean 10 s: 2x, and far under 10 min) is not flagged,
    and is compared with source-only's runs, not dann's."""
    store = RunStore(tmp_path)
    dann = [_spec("dann", s) for s in range(4)]
    so = [_spec("source-only", s) for s in range(3)]
    write_matrix_file(tmp_path, dann + so, workers=2)
    _complete(store, dann[0], 60.0)
    _complete(store, dann[1], 120.0)
    _complete(store, so[0], 10.0)
    _complete(store, so[1], 10.0)
    now = T0 + 7200
    _running(store, dann[2], started_at=T0 + 2, claimed_at=T0)  # the record is written after the claim
    _running(store, so[2], started_at=now - 20, claimed_at=now - 21)
    st = folder_status(tmp_path, now=now)
    by_id = {r.run_id: r for r in st.runs}
    hung, fine = by_id[dann[2].run_id], by_id[so[2].run_id]
    assert (hung.elapsed_s, hung.expected_s, hung.possibly_hung) == (7198.0, 90.0, True)
    assert (fine.elapsed_s, fine.expected_s, fine.possibly_hung) == (20.0, 10.0, False)
    text = status_text(tmp_path, now=now)
    me = f"{socket.gethostname()}/pid {os.getpid()}"
    assert _line(text, dann[2].run_id) == (
        f"  dann | digits-offline | seed 2 ({dann[2].run_id}): 1h 59m vs mean 1m 30s "
        f"(2 complete dann | digits-offline runs), {me} POSSIBLY HUNG"
    )
    assert _line(text, so[2].run_id).endswith(f": 20s vs mean 10s (2 complete source-only | digits-offline runs), {me}")
    hint = next(line for line in text.splitlines() if line.startswith("possibly hung:"))
    assert "Stop the process named (host/pid)" in hint
    assert f"dabench run --results {tmp_path} --rerun RUN_ID (e.g. --rerun {dann[2].run_id})" in hint
    assert "--run-timeout SECONDS" in hint
    # running is not failing: the hung run is counted as running, and the ETA still counts it
    assert "2 running" in text and "x 3 left" in text


def test_a_longer_run_is_expected_to_take_its_peers_time_per_step_times_its_steps(tmp_path):
    """Peers of 600 steps took 100 s; a 6,000-step run of the same method 25 minutes in is on
    course (expected 1,000 s, 1.5x), not POSSIBLY HUNG (before: 15x a 100 s mean)."""
    store = RunStore(tmp_path)
    short = [dataclasses.replace(_spec("dann", s), schedule=Schedule(steps=600)) for s in range(2)]
    long = dataclasses.replace(_spec("dann", 5), schedule=Schedule(steps=6000))
    write_matrix_file(tmp_path, [*short, long], workers=1)
    for spec in short:
        _complete(store, spec, 100.0)
    _running(store, long, started_at=T0, claimed_at=T0)
    st = folder_status(tmp_path, now=T0 + 1500)
    run = next(r for r in st.runs if r.run_id == long.run_id)
    assert (run.expected_s, run.possibly_hung) == (1000.0, False)
    assert "per step x 6000 steps" in _line(status_text(tmp_path, now=T0 + 1500), long.run_id)
    later = folder_status(tmp_path, now=T0 + 3100)  # past 3x the 1,000 s it should take
    assert [r.run_id for r in later.runs if r.possibly_hung] == [long.run_id]


def test_not_flagged_under_three_times_the_mean_or_under_ten_minutes(tmp_path):
    store = RunStore(tmp_path)
    specs = [_spec("dann", s) for s in range(3)]
    write_matrix_file(tmp_path, specs)
    _complete(store, specs[0], 1000.0)
    _running(store, specs[1], started_at=T0, claimed_at=T0)
    st = folder_status(tmp_path, now=T0 + 2900)  # 2.9x the mean
    assert not [r for r in st.runs if r.possibly_hung]
    assert "possibly hung" not in status_text(tmp_path, now=T0 + 2900)
    assert [r.run_id for r in folder_status(tmp_path, now=T0 + 3100).runs if r.possibly_hung] == [specs[1].run_id]
    # a 2 s mean: 9 minutes is 270x, but under the 10 minutes a first run may spend loading data
    _complete(store, specs[0], 2.0)
    assert not [r for r in folder_status(tmp_path, now=T0 + 540).runs if r.possibly_hung]
    assert [r.run_id for r in folder_status(tmp_path, now=T0 + 660).runs if r.possibly_hung] == [specs[1].run_id]


def test_a_resumed_run_is_timed_from_its_new_claim_and_a_method_without_peers_from_all_runs(tmp_path):
    """A run resumed after an interruption still has the old attempt's record (started 3 h ago)
    until it writes its own: its time is counted from the new claim. With no complete run of its
    method, its peers are every complete run; with none at all, no mean and no flag."""
    store = RunStore(tmp_path)
    specs = [_spec("dann", 0), _spec("coral", 0)]
    write_matrix_file(tmp_path, specs)
    _running(store, specs[0], started_at=T0 - 3 * 3600, claimed_at=T0)
    st = folder_status(tmp_path, now=T0 + 3600)
    (r,) = [r for r in st.runs if r.state == "running"]
    assert (r.elapsed_s, r.expected_s, r.possibly_hung) == (3600.0, None, False)
    text = status_text(tmp_path, now=T0 + 3600)
    assert _line(text, specs[0].run_id).endswith(
        f"({specs[0].run_id}): 1h 00m, {socket.gethostname()}/pid {os.getpid()}"
    )
    _complete(store, specs[1], 100.0)
    text = status_text(tmp_path, now=T0 + 3600)
    assert "1h 00m vs mean 1m 40s (1 complete run)" in _line(text, specs[0].run_id)
    assert "POSSIBLY HUNG" in _line(text, specs[0].run_id)


def test_interrupted_runs_are_listed_with_why_and_many_running_runs_are_summed_up(tmp_path):
    """A ``running`` record whose claim holder is gone is *interrupted*, listed with why (not shown
    as running); beyond 6 running runs only the possibly hung ones are listed, the rest summed up."""
    store = RunStore(tmp_path)
    specs = [_spec("dann", s) for s in range(12)]
    write_matrix_file(tmp_path, specs)
    _complete(store, specs[0], 100.0)
    dead = _dead_pid()
    _running(store, specs[1], started_at=T0, claimed_at=None)
    store.claims.mkdir(parents=True, exist_ok=True)
    (store.claims / f"{specs[1].run_id}.claim").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    _running(store, specs[2], started_at=T0, claimed_at=None)  # no claim at all
    for i, spec in enumerate(specs[3:11]):  # 8 running: 3 of them for hours
        _running(store, spec, started_at=None, claimed_at=T0 - (7200 if i < 3 else 60 * i))
    text = status_text(tmp_path, now=T0)
    gone = text.split("interrupted (process gone; the next 'dabench run' resumes them):\n")[1].splitlines()
    assert gone[:2] == [
        f"  dann | digits-offline | seed 1 ({specs[1].run_id}): process {dead} is gone",
        f"  dann | digits-offline | seed 2 ({specs[2].run_id}): no claim",
    ]
    running = text.split("running (time so far vs the mean of complete runs like it):\n")[1].splitlines()
    assert [line.endswith("POSSIBLY HUNG") for line in running[:3]] == [True] * 3
    assert running[3] == "  ... 5 more runs, 3m 00s to 7m 00s so far, none past 3x its mean"
    assert running[4].startswith("possibly hung: 3 runs past 3x")
    assert "8 running" in text and "2 interrupted" in text
