"""The results store: one JSON record per run, written atomically, plus claims and checkpoints.

Layout of a results folder::

    runs/<run_id>.json          the record (status complete/failed/diverged/skipped/running)
    claims/<run_id>.claim       held while a process runs it (pid, host), so two runners never
                                run one spec at once; a claim of a dead process is taken over
    checkpoints/<run_id>.pt     final weights of runs others depend on (state dicts only)
    checkpoints/<run_id>.partial.pt   periodic mid-run state, for resuming a killed run
    features/<run_id>.npz       source/target features, when the run was asked to save them
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import warnings
from typing import Any, Iterator

import torch

TERMINAL = ("complete", "failed", "diverged", "skipped")


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: pathlib.Path) -> None:
    """``torch.save`` through a temp file + rename, so a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def write(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.record_path(record["run_id"]), json.dumps(record, indent=1, default=str))

    def read(self, run_id: str) -> dict[str, Any] | None:
        """The record, or None when absent; a corrupt record is reported by name and treated as absent."""
        path = self.record_path(run_id)
        if not path.exists():
            return None
        return read_record_file(path)

    def status(self, run_id: str) -> str | None:
        rec = self.read(run_id)
        return rec.get("status") if rec else None

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.runs.glob("*.json")):
            rec = read_record_file(path)
            if rec is not None:
                yield rec

    # --- claims ----------------------------------------------------------------------
    def claim(self, run_id: str) -> bool:
        """Take the run for this process; False if a live process holds it."""
        self.claims.mkdir(parents=True, exist_ok=True)
        path = self.claims / f"{run_id}.claim"
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    holder = {}
                same_host = holder.get("host") == me["host"]
                if holder and (not same_host or _pid_alive(int(holder.get("pid", -1)))):
                    return False
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return True
        return False

    def release(self, run_id: str) -> None:
        (self.claims / f"{run_id}.claim").unlink(missing_ok=True)

    def claimed_by_live_process(self, run_id: str) -> bool:
        path = self.claims / f"{run_id}.claim"
        try:
            holder = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return holder.get("host") != socket.gethostname() or _pid_alive(int(holder.get("pid", -1)))

    # --- checkpoints -----------------------------------------------------------------
    def features_path(self, run_id: str) -> pathlib.Path:
        """Saved features of a run (``--set save_features=true``), for t-SNE figures."""
        return self.root / "features" / f"{run_id}.npz"

    def checkpoint_path(self, run_id: str, partial: bool = False) -> pathlib.Path:
        return self.checkpoints / f"{run_id}{'.partial' if partial else ''}.pt"


def read_record_file(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or "run_id" not in rec or "status" not in rec:
            raise ValueError("not a run record (no run_id/status)")
        return rec
    except (OSError, ValueError) as exc:
        warnings.warn(f"corrupt run record {path}: {exc}; it will be ignored (and rerun)", stacklevel=2)
        return None
