"""The runner: takes run specs, skips what is complete, runs the rest, records every outcome.

It knows nothing of any method's losses. A failure (exception) or divergence (non-finite
loss) of one run is recorded and the matrix goes on; a run whose dependency did not
complete is recorded ``skipped`` with the reason. A run is only ever recorded ``complete``
after it has finished, so a killed run is rerun by the next ``dabench run``.
"""
from __future__ import annotations

import datetime as _dt
import os
import pathlib
import platform
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .domain import MissingDataError, PairData, default_data_root
from .registry import PAIRS
from .spec import RunSpec
from .store import RunStore
from .train import Diverged, execute, resolve_device

_PAIR_CACHE: dict[tuple[str, str], PairData] = {}


def load_pair_data(pair_name: str, data_root: pathlib.Path) -> PairData:
    """Load a pair's data once per process (runs of one pair share it)."""
    key = (pair_name, str(data_root))
    if key not in _PAIR_CACHE:
        _PAIR_CACHE[key] = PAIRS.get(pair_name).load(data_root)
    return _PAIR_CACHE[key]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    """Device and versions recorded with every run (reproducibility)."""
    from . import __version__

    versions = {"dabench": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "timm", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover - optional
            pass
    versions["git_commit"] = _git_commit()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"device": name, "versions": versions, "host": platform.node()}


def _git_commit() -> str | None:
    here = pathlib.Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def base_record(spec: RunSpec, status: str, env: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": 1,
        "run_id": spec.run_id,
        "status": status,
        "spec": spec.to_dict(),
        "target_labels": None,
        "curve": [],
        "final": None,
        "error": None,
        "diverged_at_step": None,
        "timings": None,
        **env,
        "started_at": _now(),
        "finished_at": None,
    }


def run_spec(
    spec: RunSpec,
    store: RunStore,
    device: torch.device,
    data_root: pathlib.Path,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Run one spec and write its record (running → complete/failed/diverged/skipped). Never raises
    for a failure of the run itself; returns the final record."""
    env = environment(device)
    record = base_record(spec, "running", env)
    if spec.depends_on:
        dep = store.read(spec.depends_on)
        if not dep or dep.get("status") != "complete":
            why = dep.get("status") if dep else "not run"
            record.update(status="skipped", finished_at=_now(),
                          error={"type": "DependencyNotComplete",
                                 "message": f"source-only run {spec.depends_on} is {why}", "traceback": ""})
            store.write(record)
            return record
    store.write(record)
    try:
        pair = PAIRS.get(spec.pair)
        pair_data = load_pair_data(spec.pair, data_root)
        result = execute(spec, pair, pair_data, device, store, on_step, checkpoint_every)
        record.update(result, status="complete")
    except Diverged as exc:
        record.update(status="diverged", diverged_at_step=exc.step,
                      error={"type": "Diverged", "message": str(exc), "traceback": ""})
    except Exception as exc:  # noqa: BLE001 - the run failed; the matrix goes on
        record.update(status="failed", error={"type": type(exc).__name__, "message": str(exc),
                                               "traceback": traceback.format_exc()})
    record["finished_at"] = _now()
    store.write(record)
    return record


@dataclass
class MatrixSummary:
    ran: list[dict[str, Any]] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # claimed by another live process

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"already complete": len(self.skipped_complete)}
        for rec in self.ran:
            out[rec["status"]] = out.get(rec["status"], 0) + 1
        if self.busy:
            out["running elsewhere"] = len(self.busy)
        return out


def run_inline(
    specs: Iterable[RunSpec],
    results_dir: str | os.PathLike,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
) -> MatrixSummary:
    """Run specs one after another in this process (dependencies are already ordered first)."""
    from tqdm.auto import tqdm

    specs = list(specs)
    store = RunStore(results_dir)
    dev = resolve_device(device)
    root = pathlib.Path(data_root) if data_root else default_data_root()
    summary = MatrixSummary()
    missing_pairs: dict[str, str] = {}
    bar = tqdm(total=len(specs), desc="matrix", unit="run", disable=not progress, file=sys.stderr)
    for spec in specs:
        bar.set_postfix_str(spec.label)
        if store.status(spec.run_id) == "complete":
            summary.skipped_complete.append(spec.run_id)
            bar.update(1)
            continue
        if not store.claim(spec.run_id):
            summary.busy.append(spec.run_id)
            bar.update(1)
            continue
        try:
            if spec.pair in missing_pairs:
                rec = base_record(spec, "failed", environment(dev))
                rec.update(error={"type": "MissingDataError", "message": missing_pairs[spec.pair], "traceback": ""},
                           finished_at=_now())
                store.write(rec)
            else:
                run_bar = tqdm(total=spec.schedule.steps, desc=spec.label, unit="step", leave=False,
                               disable=not progress, file=sys.stderr)

                def on_step(done: int, total: int, _bar=run_bar) -> None:
                    _bar.total = total
                    _bar.n = done
                    _bar.refresh()

                rec = run_spec(spec, store, dev, root, on_step, checkpoint_every)
                run_bar.close()
                if rec["status"] == "failed" and rec["error"]["type"] == "MissingDataError":
                    missing_pairs[spec.pair] = rec["error"]["message"]
                    tqdm.write(f"pair {spec.pair}: {rec['error']['message']}", file=sys.stderr)
                elif rec["status"] != "complete":
                    tqdm.write(f"{spec.label}: {rec['status']}: {rec['error']['message']}", file=sys.stderr)
            summary.ran.append(rec)
        finally:
            store.release(spec.run_id)
        bar.update(1)
    bar.close()
    return summary


__all__ = ["run_inline", "run_spec", "MatrixSummary", "MissingDataError"]
