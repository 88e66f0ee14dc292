"""Temporary files that killed writers leave in a results folder are swept; live writers' are not.

Every file of the folder is written to ``.<name>.<pid>-<machine>.tmp`` and renamed into place
(``store.temp_path``); a kill in between (SIGKILL, a SLURM preemption, a lost node) leaves the
temporary file, and nothing removed it: a folder collected such files, a full checkpoint's size
each. The kill here is a real one: a process dies (``os._exit``) in the middle of ``torch.save``
of its atomic checkpoint write.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from dabench.core.store import LEGACY_TEMP_AGE_S, RunStore, machine_tag, temp_path
from dabench.running.executors import ExecutorOptions
from dabench.running.scheduler import run_matrix

#: a pid above the largest pid_max Linux allows (2**22): never a live process
DEAD = 2**22 + 7

KILLED_WRITER = textwrap.dedent(
    """
    import os, pathlib, sys
    from dabench.core.store import atomic_torch_save

    class DiesWhilePickled:
        def __reduce__(self):
            os._exit(9)  # killed in the middle of the write: the temporary file is open, half written

    atomic_torch_save({"w": DiesWhilePickled()}, pathlib.Path(sys.argv[1]))
    """
)


def _killed_write(path) -> list:
    """Run an atomic checkpoint write in a process that dies during it; the files it left."""
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    return sorted(path.parent.glob(".*.tmp"))


def test_a_runner_sweeps_the_temporary_file_of_a_writer_killed_mid_write(tmp_path, capsys):
    store = RunStore(tmp_path)
    left = _killed_write(store.checkpoint_path("abc123", partial=True))
    assert len(left) == 1 and left[0].name.startswith(".abc123.partial.pt.")  # the leftover
    assert not store.checkpoint_path("abc123", partial=True).exists()  # never renamed into place
    run_matrix([], tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert not left[0].exists()
    assert "removed 1 temporary file(s) left by killed writers" in capsys.readouterr().err


def test_live_writers_and_other_machines_temp_files_are_kept(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "runs").mkdir()
    live = temp_path(store.record_path("live"))  # this process: a writer that is alive
    live.write_text("{")
    elsewhere = "0" * 8 if machine_tag() != "0" * 8 else "1" * 8
    other_machine = tmp_path / "runs" / f".x.json.{DEAD}-{elsewhere}.tmp"
    other_machine.write_text("{")  # its pid cannot be checked from here: it may be writing now
    legacy_recent = tmp_path / "runs" / f".y.json.{DEAD}.tmp"  # an older dabench's, just written
    legacy_recent.write_text("{")
    legacy_old = tmp_path / f".matrix.json.{DEAD}.tmp"
    legacy_old.write_text("{")
    old = legacy_old.stat().st_mtime - LEGACY_TEMP_AGE_S - 60
    os.utime(legacy_old, (old, old))
    dead_here = tmp_path / "features" / f".z.npz.{DEAD}-{machine_tag()}.tmp.npz"  # features' temp name
    dead_here.parent.mkdir()
    dead_here.write_bytes(b"PK")
    assert set(store.sweep_temp_files()) == {legacy_old, dead_here}
    assert live.exists() and other_machine.exists() and legacy_recent.exists()
    assert not legacy_old.exists() and not dead_here.exists()


@pytest.mark.parametrize("suffix", [".tmp", ".tmp.npz"])
def test_temp_names_carry_the_writer_and_its_machine(tmp_path, suffix):
    name = temp_path(tmp_path / "a.json", suffix).name
    assert name == f".a.json.{os.getpid()}-{machine_tag()}{suffix}"


KILLED_CLAIMER = textwrap.dedent(
    """
    import os, sys
    from dabench.core.store import RunStore

    def dies(*args, **kwargs):
        os._exit(9)  # killed after the claim's temporary file is written, before it is linked into place

    os.link = dies
    RunStore(sys.argv[1]).claim("abc123")
    """
)


def test_a_runner_sweeps_the_claim_temp_file_of_a_claimer_killed_mid_claim(tmp_path, capsys):
    """The defect: claims were written to ``.<run_id>.claim.<token>.tmp``, a name without its
    writer, which no sweep matched: a claimer killed mid-claim left it for ever."""
    proc = subprocess.run([sys.executable, "-c", KILLED_CLAIMER, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    store = RunStore(tmp_path)
    (left,) = sorted(store.claims.glob(".*.tmp"))
    assert left.name.startswith(".abc123.claim.")
    assert not store.claim_path("abc123").exists()  # never linked into place
    run_matrix([], tmp_path, ExecutorOptions(device="cpu", progress=False))
    assert not left.exists()
    assert "removed 1 temporary file(s) left by killed writers" in capsys.readouterr().err
    assert store.claim("abc123")  # the run is claimable, and its own claim is not taken for a leftover
    assert store.sweep_temp_files() == [] and store.claim_path("abc123").exists()
    store.release("abc123")


def test_live_claimers_temp_files_are_kept_and_older_dabenchs_swept_when_old(tmp_path):
    store = RunStore(tmp_path)
    store.claims.mkdir(parents=True)
    live = temp_path(store.claim_path("live").with_name("live.claim.0123abcd"))  # this process's
    live.write_text("{")
    legacy_recent = store.claims / f".y.claim.{'ab' * 16}.tmp"  # an older dabench's: no writer named
    legacy_recent.write_text("{")
    legacy_old = store.claims / f".z.claim.{'cd' * 16}.tmp"
    legacy_old.write_text("{")
    old = legacy_old.stat().st_mtime - LEGACY_TEMP_AGE_S - 60
    os.utime(legacy_old, (old, old))
    assert store.sweep_temp_files() == [legacy_old]
    assert live.exists() and legacy_recent.exists()
