"""Claims: two processes never both hold a run; stale claims (dead or reused pid, old heartbeat,
unreadable file) are recognised; a process releases only its own claim.

The stress tests race two real processes over 2,000 run ids: the claim must be atomic (no empty
file in between, no take-over deleting a claim just re-created by the other process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from dabench.core import store as store_mod
from dabench.core.store import RunStore, inspect_claim, process_start_time

N_IDS = 2000

# store.py imports only the standard library and core/record.py (a standard-library leaf) at module
# level: loaded by path as a module of a bare stand-in package (core/__init__.py, whose torch import
# takes seconds, never runs), both racers start in a blink
RACER = textwrap.dedent("""
    import importlib.util, pathlib, sys, time, types
    core = sys.modules["core"] = types.ModuleType("core")
    core.__path__ = [str(pathlib.Path(sys.argv[5]).parent)]  # ".record" is found beside store.py
    spec = importlib.util.spec_from_file_location("core.store", sys.argv[5])
    store_mod = sys.modules["core.store"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(store_mod)
    assert "torch" not in sys.modules
    root, n, go, out = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
    store = store_mod.RunStore(root)
    ids = [f"{i:012x}" for i in range(n)]
    out.with_suffix(".ready").write_text("")
    while not go.exists():
        time.sleep(0.001)
    got = [i for i in ids if store.claim(i)]
    out.write_text("\\n".join(got))
""")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this fast)


def _race(tmp_path) -> tuple[set[str], set[str]]:
    """Two processes claim the same N_IDS ids at the same moment; returns the ids each got."""
    go = tmp_path / "go"
    outs = [tmp_path / f"got{k}.txt" for k in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "res"), str(N_IDS), str(go), str(o), store_mod.__file__]
        )
        for o in outs
    ]
    deadline = time.monotonic() + 60
    while not all(o.with_suffix(".ready").exists() for o in outs):  # both imported: start together
        assert time.monotonic() < deadline, "racers did not start"
        assert all(p.poll() is None for p in procs), "a racer died"
        time.sleep(0.01)
    go.write_text("")
    for p in procs:
        assert p.wait(timeout=120) == 0
    a, b = (set(o.read_text().split()) for o in outs)
    return a, b


def test_two_processes_never_claim_the_same_fresh_run(tmp_path):
    a, b = _race(tmp_path)
    assert len(a & b) == 0, f"{len(a & b)} runs claimed by both processes"
    assert len(a | b) == N_IDS


def test_two_processes_never_take_over_the_same_stale_claim(tmp_path):
    claims = tmp_path / "res" / "claims"
    claims.mkdir(parents=True)
    dead = {"pid": _dead_pid(), "host": socket.gethostname()}  # the format of older dabench versions
    for i in range(N_IDS):
        (claims / f"{i:012x}.claim").write_text(json.dumps(dead))
    a, b = _race(tmp_path)
    assert len(a & b) == 0, f"{len(a & b)} stale claims taken over by both processes"
    assert len(a | b) == N_IDS


def _write_claim(store: RunStore, run_id: str, holder: dict, age_s: float = 0.0) -> None:
    store.claims.mkdir(parents=True, exist_ok=True)
    path = store.claim_path(run_id)
    path.write_text(json.dumps(holder))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))


def _me(pid: int) -> dict:
    return {**store_mod._machine(), "pid": pid, "start_time": process_start_time(pid)}


def test_reused_pid_and_old_heartbeat_are_stale(tmp_path):
    store = RunStore(tmp_path)
    parent = os.getppid()  # a live process that is not the claim's owner
    _write_claim(store, "reused", {**_me(parent), "start_time": process_start_time(parent) + 12345})
    _write_claim(store, "silent", _me(parent), age_s=store_mod.CLAIM_STALE_S + 5)
    _write_claim(store, "live", _me(parent))
    _write_claim(store, "remote-old", {"host": "elsewhere.example", "pid": parent}, age_s=store_mod.CLAIM_STALE_S + 5)
    _write_claim(store, "remote-fresh", {"host": "elsewhere.example", "pid": 1})
    assert "another process" in inspect_claim(store.claim_path("reused")).why
    assert "no heartbeat" in inspect_claim(store.claim_path("silent")).why
    live = {r: store.claimed_by_live_process(r) for r in ("reused", "silent", "live", "remote-old", "remote-fresh")}
    assert live == {"reused": False, "silent": False, "live": True, "remote-old": False, "remote-fresh": True}
    assert store.claim("reused") and store.claim("silent") and store.claim("remote-old")
    assert not store.claim("live") and not store.claim("remote-fresh")
    for r in ("reused", "silent", "remote-old"):
        store.release(r)
    assert not any(store.claim_path(r).exists() for r in ("reused", "silent", "remote-old"))


def test_release_removes_only_its_own_claim(tmp_path):
    store = RunStore(tmp_path)
    assert store.claim("r1")
    # another process took the claim over (as if ours had gone stale) and holds it now
    _write_claim(store, "r1", {**_me(os.getppid()), "token": "theirs"})
    store.release("r1")
    assert json.loads(store.claim_path("r1").read_text())["token"] == "theirs"
    store.release("never-claimed")  # nothing to do, no error


def test_heartbeat_keeps_a_long_run_claimed(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "CLAIM_HEARTBEAT_S", 0.05)
    store = RunStore(tmp_path)
    assert store.claim("long")
    path = store.claim_path("long")
    old = time.time() - 1000
    os.utime(path, (old, old))
    deadline = time.monotonic() + 10
    while path.stat().st_mtime < old + 1:  # the heartbeat thread refreshes it
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.02)
    store.release("long")


def test_unreadable_claim_is_named_and_taken_over(tmp_path):
    store = RunStore(tmp_path)
    store.claims.mkdir(parents=True)
    store.claim_path("bad").write_bytes(b"\xff\xfe garbage")
    with pytest.warns(UserWarning, match=r"unreadable claim .*bad\.claim"):
        assert not store.claimed_by_live_process("bad")
    with pytest.warns(UserWarning, match="bad.claim"):
        assert store.claim("bad")
    store.release("bad")
