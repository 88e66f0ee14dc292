"""The results store: one JSON record per run, written atomically, plus claims and checkpoints.

Layout of a results folder::

    runs/<run_id>.json          the record (core/record.py: RunRecord; status complete/failed/...)
    claims/<run_id>.claim       held while a process runs it, so two runners never run one spec
                                at once (see *Claims* below)
    claims/.lock                serialises claim changes (``flock``)
    checkpoints/<run_id>.pt     final weights of runs others depend on (state dicts only)
    checkpoints/<run_id>.partial.pt   periodic mid-run state, for resuming a killed run
    features/<run_id>.npz       source/target features, when the run was asked to save them
    .<name>.<pid>-<machine>.tmp  a file being written (:func:`temp_path`; a claim's too, in claims/); one
                                a killed writer left is removed by the next runner on the folder
                                (:meth:`RunStore.sweep_temp_files`)

Claims
------
A claim file holds its owner's identity: host name, kernel boot id and pid namespace (together:
*this machine*), pid, the process's start time (``/proc/<pid>/stat``, so a reused pid is told
apart) and a random token. Its owner refreshes the file's modification time every
:data:`CLAIM_HEARTBEAT_S` seconds from a daemon thread (the heartbeat). A claim is *stale*, and
is taken over, when

- its heartbeat is older than :data:`CLAIM_STALE_S` seconds (any host: this is what covers
  claims of Ray/SLURM workers on other machines, whose pids cannot be checked; their clocks must
  agree within a fraction of that bound), or
- it was made on this machine and its pid is gone, or now belongs to a process that started at
  another time (the pid was reused), or
- it cannot be read (not UTF-8, not JSON): named in a warning and treated as stale, since a
  claim is only ever put in place whole (written to a temporary file, then ``link``-ed).

Every claim change (create, take over, release) happens under an exclusive ``flock`` of
``claims/.lock``, so two processes cannot both take over one stale claim, and a process releases
only a claim whose token is its own. A process paused (``SIGSTOP``, a frozen VM) longer than
:data:`CLAIM_STALE_S` loses its claims; it warns when it notices.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import pathlib
import re
import socket
import threading
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .jsonio import dump_json, load_json
from .record import RecordError, RunRecord, Status, read_record, utc_now

try:  # POSIX; without it (Windows) claim changes are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


#: seconds between two refreshes of a held claim's modification time
CLAIM_HEARTBEAT_S = float(os.environ.get("DABENCH_CLAIM_HEARTBEAT_S", 10))
#: a claim whose heartbeat is older than this is stale, whoever and wherever its owner is
CLAIM_STALE_S = float(os.environ.get("DABENCH_CLAIM_STALE_S", 120))


class WriteFault(OSError):
    """A file of the results folder could not be written (read-only folder or file, full disk...).

    Its message names the path and the cause, in one line; the temporary file is already removed.
    """

    def __init__(self, path: os.PathLike | str, cause: BaseException, message: str | None = None) -> None:
        why = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        code = getattr(cause, "errno", None)
        if code in (errno.EEXIST, errno.ENOTDIR) and (blocker := _file_in_the_way(pathlib.Path(path))):
            # a file where the folder should be ("runs" copied as a file): the OS's "File exists" or
            # "Not a directory" alone names neither that file nor what is wrong with it
            why = f"{blocker} is a file, not a folder"
        super().__init__(code, message or f"cannot write {path}: {why}")
        self.path = pathlib.Path(path)
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[1])


def _file_in_the_way(path: pathlib.Path) -> pathlib.Path | None:
    """The nearest existing ancestor folder of ``path`` that is not a folder, or None."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
        if not parent.exists():
            return None
    return None


def _write_fault(path: pathlib.Path, exc: BaseException) -> WriteFault:
    return exc if isinstance(exc, WriteFault) else WriteFault(path, exc)


def _remove_quietly(path: pathlib.Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only folder: nothing more can be done about it


def temp_path(path: pathlib.Path, suffix: str = ".tmp") -> pathlib.Path:
    """The temporary file ``path`` is written to before its rename into place:
    ``.<name>.<pid>-<machine>.tmp`` (``suffix``), beside it.

    The writer's pid and this machine's tag (:func:`machine_tag`) in the name let a later runner
    tell a killed writer's leftover (its pid gone on this machine) from a file being written now,
    here or on another machine sharing the folder (:meth:`RunStore.sweep_temp_files`).
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{machine_tag()}{suffix}")


#: a temporary file of :func:`temp_path` (``tag``: its machine) or of an older dabench (``.<name>.<pid>.tmp``)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-(?P<tag>[0-9a-f]{8}))?\.tmp(?:\.npz)?$")
#: an older dabench's temporary file (no machine in its name) is removed only when its pid is gone
#: here and it is this old: no atomic write lasts an hour, wherever its writer runs
LEGACY_TEMP_AGE_S = 3600.0
#: an older dabench's claim temp file, ``claims/.<run_id>.claim.<token>.tmp``: it names no writer at
#: all, so it is removed only once older than :data:`LEGACY_TEMP_AGE_S` (a claim is written and
#: linked within milliseconds, under the claim lock)
_LEGACY_CLAIM_TEMP = re.compile(r"^\.(?P<name>.+\.claim)\.[0-9a-f]{32}\.tmp$")


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers never see half a file.

    Any failure (read-only folder, full disk) removes the temp file and raises :class:`WriteFault`
    naming ``path`` (a temp file left on a full disk would keep it full).
    """
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _write_fault(path, exc) from exc


def atomic_torch_save(obj: Any, path: pathlib.Path) -> None:
    """``torch.save`` through a temp file + rename, so a kill never leaves a torn checkpoint;
    a failure removes the temp file and raises :class:`WriteFault`."""
    import torch

    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        _remove_quietly(tmp)
        raise _write_fault(path, exc) from exc


@contextmanager
def file_lock(lock: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``lock`` (created, with its folder, if absent) while the block
    runs; :class:`WriteFault` when it cannot be created. Without ``fcntl`` (Windows) no lock is taken."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise WriteFault(lock, exc) from exc
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


# --- who is this process ------------------------------------------------------------------
def _read_small(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22);
    None where there is no /proc or no such process."""
    stat = _read_small(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _machine_of(pid: int) -> dict[str, str | None]:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot_id": _read_small("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def _machine() -> dict[str, str | None]:
    """This machine: host name, boot id and pid namespace (cached per process; a fork re-reads)."""
    return _machine_of(os.getpid())


def process_gone(pid: int, tag: str) -> bool:
    """Whether process ``pid`` of the machine ``tag`` (:func:`machine_tag`) is known to be gone:
    only on this machine can it be told; another machine's process is never taken for gone."""
    return tag == machine_tag() and not _pid_alive(pid)


def machine_tag() -> str:
    """This machine (:func:`_machine`: host, boot id, pid namespace) as 8 hex digits: where a pid
    in a temporary file's name can be checked (the same tag) and where it cannot (another)."""
    return hashlib.sha256(json.dumps(_machine(), sort_keys=True).encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is gone for our purposes
    stat = _read_small(f"/proc/{pid}/stat")
    if stat and ")" in stat:
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


@dataclass
class ClaimInfo:
    """What a claim file says and whether it still holds."""

    path: pathlib.Path
    holder: dict[str, Any]
    live: bool
    why: str  # why it is stale, or "" when live
    heartbeat_age_s: float

    @property
    def on_this_machine(self) -> bool:
        """Made by a process of this machine (so its pid and start time can be checked)."""
        return _same_machine(self.holder, _machine())

    def describe(self) -> str:
        """``host/pid since <time> (heartbeat N s ago)``."""
        h = self.holder
        return (
            f"{h.get('host', '?')}/pid {h.get('pid', '?')} since {h.get('claimed_at', '?')} "
            f"(heartbeat {self.heartbeat_age_s:.0f} s ago)"
        )


def _same_machine(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    if holder.get("host") != me["host"]:
        return False
    # a field either side lacks (an older claim, no /proc) cannot tell machines apart
    return all(holder.get(k) is None or me[k] is None or holder.get(k) == me[k] for k in ("boot_id", "pidns"))


def inspect_claim(path: pathlib.Path, now: float | None = None) -> ClaimInfo | None:
    """The claim at ``path`` and whether it is live (see the module's *Claims*); None if absent."""
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        holder = load_json(path.read_bytes().decode("utf-8"))
        if not isinstance(holder, dict):
            raise ValueError("not a JSON object")
        pid = int(holder.get("pid", -1))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        warnings.warn(f"unreadable claim {path} ({exc}): treated as stale", stacklevel=2)
        return ClaimInfo(path, {}, False, f"unreadable ({exc})", 0.0)
    if age > CLAIM_STALE_S:
        return ClaimInfo(path, holder, False, f"no heartbeat for {age:.0f} s (limit {CLAIM_STALE_S:.0f} s)", age)
    if _same_machine(holder, _machine()):
        if not _pid_alive(pid):
            return ClaimInfo(path, holder, False, f"process {pid} is gone", age)
        started = holder.get("start_time")
        if started is not None and process_start_time(pid) not in (None, started):
            return ClaimInfo(path, holder, False, f"pid {pid} now belongs to another process", age)
    return ClaimInfo(path, holder, True, "", age)


class _Heartbeat:
    """The daemon thread that refreshes the modification time of every claim this process holds."""

    def __init__(self) -> None:
        self.held: dict[pathlib.Path, str] = {}  # claim path -> our token
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()  # a new claim wakes the thread (it re-reads the interval)
        self.pid = os.getpid()

    def add(self, path: pathlib.Path, token: str) -> None:
        with self.lock:
            if self.pid != os.getpid():  # forked: the parent's claims and thread are not ours
                self.held, self.thread, self.pid = {}, None, os.getpid()
            self.held[path] = token
            self.wake.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="dabench-claim-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, path: pathlib.Path) -> str | None:
        with self.lock:
            return self.held.pop(path, None)

    def token(self, path: pathlib.Path) -> str | None:
        with self.lock:
            return self.held.get(path)

    def _beat(self) -> None:
        while True:
            self.wake.wait(CLAIM_HEARTBEAT_S)
            self.wake.clear()
            with self.lock:
                held = list(self.held.items())
            for path, token in held:
                try:
                    if load_json(path.read_bytes()).get("token") != token:
                        raise FileNotFoundError
                    os.utime(path)
                except (OSError, ValueError, AttributeError):
                    if self.remove(path) is not None:
                        warnings.warn(
                            f"lost claim {path}: another process took it over (was this process "
                            f"paused for more than {CLAIM_STALE_S:.0f} s?)",
                            stacklevel=1,
                        )


_HEARTBEAT = _Heartbeat()


class RunStore:
    """Access to one results folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = pathlib.Path(root)
        self.runs = self.root / "runs"
        self.claims = self.root / "claims"
        self.checkpoints = self.root / "checkpoints"

    # --- records ---------------------------------------------------------------------
    def record_path(self, run_id: str) -> pathlib.Path:
        return self.runs / f"{run_id}.json"

    # --- leftovers -------------------------------------------------------------------
    def sweep_temp_files(self) -> list[pathlib.Path]:
        """Remove the temporary files (:func:`temp_path`) that killed writers left in the folder
        and its subfolders (a kill between a temp file's creation and its rename); returns them.

        Only a writer that is gone is swept: one of this machine (the name's tag) whose pid is not
        alive (a zombie counts as gone). A live writer's file, here or on another machine sharing
        the folder (whose pids cannot be checked from here), is never touched: removing it would
        fail that writer's rename. Claims' temp files (``claims/``, :meth:`claim`) are named alike
        and swept alike. An older dabench's temp file (no tag) goes when its pid is not alive here
        and it is older than :data:`LEGACY_TEMP_AGE_S`; an older dabench's claim temp file (no pid:
        ``.<run_id>.claim.<token>.tmp``) when it is that old. Called when a runner starts on
        the folder (``running/scheduler.run_matrix``); a file that cannot be removed is left.
        """
        if not self.root.is_dir():
            return []
        now = time.time()
        removed = []
        for path in [*self.root.glob(".*.tmp*"), *self.root.glob("*/.*.tmp*")]:
            m = _TEMP_NAME.match(path.name)
            if m is None and _LEGACY_CLAIM_TEMP.match(path.name) and path.parent == self.claims:
                try:
                    if path.is_file() and now - path.stat().st_mtime >= LEGACY_TEMP_AGE_S:
                        path.unlink()
                        removed.append(path)
                except OSError:
                    pass  # gone already (another runner swept it) or a read-only folder
                continue
            if m is None or not path.is_file():
                continue
            pid, tag = int(m["pid"]), m["tag"]
            if tag is not None and not process_gone(pid, tag):
                continue  # alive, or another machine's writer (alive or not: it cannot be told from here)
            if tag is None:
                if _pid_alive(pid):
                    continue
                try:
                    if now - path.stat().st_mtime < LEGACY_TEMP_AGE_S:
                        continue
                except OSError:
                    continue
            try:
                path.unlink()
            except OSError:
                continue  # gone already (another runner swept it) or a read-only folder
            removed.append(path)
        return removed

    def write(self, record: RunRecord) -> None:
        """Write a record atomically; :class:`WriteFault` (naming the file) when that fails."""
        if not isinstance(record, RunRecord):
            raise TypeError(
                f"RunStore.write takes a RunRecord, not {type(record).__name__} (build one with RunRecord.from_dict)"
            )
        atomic_write_text(self.record_path(record.run_id), record.to_json())

    def read(self, run_id: str) -> RunRecord | None:
        """The record, or None when absent; one that cannot be read (corrupt, foreign, another
        format) is named in a warning and treated as absent."""
        path = self.record_path(run_id)
        if not path.exists():
            return None
        return read_record_file(path)

    def status(self, run_id: str) -> Status | None:
        rec = self.read(run_id)
        return rec.status if rec else None

    def records(self) -> Iterator[RunRecord]:
        """Every readable record of ``runs/``, by file name; the others are named in warnings."""
        for path in sorted(self.runs.glob("*.json")):
            rec = read_record_file(path)
            if rec is not None:
                yield rec

    # --- claims ----------------------------------------------------------------------
    def claim_path(self, run_id: str) -> pathlib.Path:
        return self.claims / f"{run_id}.claim"

    @contextmanager
    def _claims_lock(self) -> Iterator[None]:
        """Hold the folder's exclusive claim lock (``flock`` on ``claims/.lock``)."""
        with file_lock(self.claims / ".lock"):
            yield

    def claim(self, run_id: str) -> bool:
        """Take the run for this process; False if a live claim (see *Claims*) holds it.

        The claim is written whole to a temporary file and linked (new) or renamed (over a stale
        one) into place, under the folder's claim lock: no reader ever sees an empty claim, and
        of two processes racing for one run exactly one gets it.
        """
        path = self.claim_path(run_id)
        token = uuid.uuid4().hex
        me = {
            **_machine(),
            "pid": os.getpid(),
            "start_time": process_start_time(os.getpid()),
            "token": token,
            "claimed_at": utc_now(),
            "heartbeat_s": CLAIM_HEARTBEAT_S,
            "stale_after_s": CLAIM_STALE_S,
        }
        # named as every temp file (its writer's pid and machine, :func:`temp_path`): a writer killed
        # between this write and the link leaves a file the next runner's sweep removes. The token
        # keeps two claimers of one process (threads) apart where no flock serialises them (Windows)
        tmp = temp_path(path.with_name(f"{path.name}.{token[:8]}"))
        with self._claims_lock():
            info = inspect_claim(path)
            if info is not None and info.live:
                return False
            try:
                tmp.write_text(dump_json(me), encoding="utf-8")
                if info is None:
                    os.link(tmp, path)  # fails if the file exists: atomic even without the lock
                else:
                    os.replace(tmp, path)  # take over the stale claim
            except FileExistsError:
                return False
            except OSError as exc:
                raise WriteFault(path, exc) from exc
            finally:
                _remove_quietly(tmp)
        _HEARTBEAT.add(path, token)
        return True

    def release(self, run_id: str) -> None:
        """Remove this process's claim of ``run_id``; a claim another process holds (it took ours
        over as stale) is left alone. A claim that cannot be removed (read-only folder) is left:
        it is stale as soon as this process ends."""
        path = self.claim_path(run_id)
        token = _HEARTBEAT.remove(path)
        if token is None:
            return
        try:
            with self._claims_lock():
                try:
                    holder = load_json(path.read_bytes())
                except (OSError, ValueError):
                    return
                if isinstance(holder, dict) and holder.get("token") == token:
                    path.unlink()
        except OSError:
            pass

    def remove_stale_claim(self, run_id: str) -> bool:
        """Remove the claim of ``run_id`` if it is stale (its process died); True if none is left."""
        path = self.claim_path(run_id)
        try:
            with self._claims_lock():
                info = inspect_claim(path)
                if info is not None and not info.live:
                    path.unlink(missing_ok=True)
                return info is None or not info.live
        except OSError:
            return False

    def claim_info(self, run_id: str) -> ClaimInfo | None:
        """The claim of ``run_id`` (holder, live or stale and why), or None when there is none."""
        return inspect_claim(self.claim_path(run_id))

    def claimed_by_live_process(self, run_id: str) -> bool:
        info = self.claim_info(run_id)
        return info is not None and info.live

    # --- checkpoints -----------------------------------------------------------------
    def features_path(self, run_id: str) -> pathlib.Path:
        """Saved features of a run (``--set save_features=true``), for t-SNE figures."""
        return self.root / "features" / f"{run_id}.npz"

    def checkpoint_path(self, run_id: str, partial: bool = False) -> pathlib.Path:
        return self.checkpoints / f"{run_id}{'.partial' if partial else ''}.pt"


def checkpoint_problem(path: pathlib.Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded (``"missing"``, or what is wrong with it), or None.

    torch-free and cheap: ``torch.save`` writes a zip archive whose central directory, at the end of
    the file, lists a ``data.pkl``; a file cut short (full disk, an interrupted copy) has no such
    directory. Reading the directory alone, not every tensor's CRC, keeps this fast for the
    100-MB checkpoints of large backbones; damage inside the archive is found by ``torch.load``.
    """
    if not path.exists():
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"unreadable, not a whole torch checkpoint (truncated?): {exc}"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "unreadable: a zip archive without data.pkl, not a torch checkpoint"
    return None


def weights_fingerprint(path: pathlib.Path) -> str:
    """The SHA-256 of the weights in the checkpoint at ``path`` (:func:`state_fingerprint` of what
    it holds); raises what ``torch.load`` raises for a file it cannot load.

    Of the weights, not of the file: ``torch.save`` names the archive's folder after the file it
    writes (here a temporary file named with the writer's pid, see :func:`atomic_torch_save`), so
    two saves of the same weights differ byte for byte, while a fingerprint must tell a recreated
    source-only run that reproduced its weights (a CPU run: deterministic) from one that did not
    (a GPU, a seed batch). One load of the checkpoint, as a dependant does anyway: no more than a
    fraction of a second for the 100-MB state dicts of large backbones.
    """
    import torch

    return state_fingerprint(torch.load(path, map_location="cpu", weights_only=True))


def state_fingerprint(state: Mapping[str, Any]) -> str:
    """The SHA-256 of a state dict: of each entry's name, dtype, shape and bytes, in name order.

    Equal for a checkpoint file (:func:`weights_fingerprint`) and for the network that loaded it
    strictly (``load_state_dict`` copies the values into tensors of the same dtype and shape; the
    memory layout, e.g. CUDA's channels_last, and the device do not enter), so a dependant names the
    weights it started from without reading the file again (``engine/train.execute``).
    """
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):  # a state dict holds tensors; anything else by its repr
            digest.update(f"{key}={t!r};".encode())
            continue
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        # as raw bytes: every dtype (bfloat16, bool ...) views as uint8 once flat and contiguous
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_record_file(path: pathlib.Path) -> tuple[RunRecord | None, RecordError | None]:
    """(record, None), or (None, why) for a file that is not a record this dabench reads
    (``why.kind``: corrupt / foreign / format / malformed; see :class:`~dabench.core.record.RecordError`)."""
    try:
        return read_record(path), None
    except RecordError as exc:
        return None, exc
    except OSError as exc:
        return None, RecordError(path, "corrupt", f"corrupt ({exc})")


def read_record_file(path: pathlib.Path) -> RunRecord | None:
    """The record in ``path``, or None with a warning naming the file and why."""
    rec, err = load_record_file(path)
    if err is not None:
        if err.kind == "corrupt":
            warnings.warn(f"corrupt run record {err}; it is ignored (and rerun if the matrix has it)", stacklevel=2)
        else:
            warnings.warn(f"{err}; it is ignored", stacklevel=2)
    return rec
