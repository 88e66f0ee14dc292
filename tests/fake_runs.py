"""Write small fake run-record folders with known numbers (for report/statistics tests).

Only the record format is faked (the engine writes real ones); the numbers are chosen so
that the expected statistics can be computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def curve_from(accs: list[float], steps: list[int] | None = None, **scores: list[float]) -> list[dict]:
    """A curve with the given target accuracies; other scores default to fixed values."""
    steps = steps or [100 * (i + 1) for i in range(len(accs))]
    out = []
    for i, (s, a) in enumerate(zip(steps, accs)):
        e: dict[str, Any] = {
            "step": s,
            "target_acc": a,
            "target_per_class": [a] * 10,
            "source_val_acc": 90.0,
            "entropy": 0.5,
            "im": 1.0,
            "snd": 2.0,
            "loss": {"ce": 0.1},
        }
        for k, vals in scores.items():
            e[k] = vals[i]
        out.append(e)
    return out


def write_run(
    folder: Path,
    run_id: str,
    method: str,
    pair: str,
    seed: int,
    curve: list[dict] | None = None,
    status: str = "complete",
    shots: int = 0,
    error: dict | None = None,
    diverged_at_step: int | None = None,
    device: str = "cpu",
    acc: float | None = None,
    schedule: dict | None = None,
    hparams: dict | None = None,
    extra: dict | None = None,
    protocol: str | None = None,
) -> Path:
    """Write one record to ``folder/runs/<run_id>.json``; ``acc`` makes a one-point curve.

    ``schedule``/``hparams`` update the spec's (default ``steps=600``, ``lr=0.01``); ``extra``
    updates the record's top-level fields (e.g. ``validators``, or a malformed field);
    ``protocol`` defaults to the one the shots imply (``few-shot`` or ``uda``).
    """
    if curve is None:
        curve = curve_from([acc if acc is not None else 50.0])
    rec = {
        "format": 1,
        "run_id": run_id,
        "status": status,
        "spec": {
            "method": method,
            "pair": pair,
            "seed": seed,
            "protocol": protocol or ("few-shot" if shots else "uda"),
            "target_shots": shots,
            "eval_shots": 5,
            "hparams": {"lr": 0.01, **(hparams or {})},
            "schedule": {"steps": 600, **(schedule or {})},
            "backbone": "lenet",
            "backbone_options": {},
            "depends_on": None,
        },
        "target_labels": shots * 10,
        "curve": curve if status == "complete" else curve[:1],
        "final": curve[-1] if status == "complete" else None,
        "error": error,
        "diverged_at_step": diverged_at_step,
        "timings": {"wall_s": 1.5, "steps_per_s": 50.0, "images_per_s": 6400.0},
        "device": device,
        "versions": {"dabench": "0.1.0", "torch": "2.14.1", "python": "3.11.7"},
        "started_at": "2025-01-01T00:00:00",
        "finished_at": "2025-01-01T00:00:02",
        **(extra or {}),
    }
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{run_id}.json"
    path.write_text(json.dumps(rec), encoding="utf-8")
    return path


def write_failed(folder: Path, run_id: str, method: str, pair: str, seed: int, message: str) -> Path:
    """A ``failed`` record whose error is a ``RuntimeError`` with ``message`` (reports show its
    first line) and a traceback."""
    error = {"type": "RuntimeError", "message": message, "traceback": "tb"}
    return write_run(folder, run_id, method, pair, seed, status="failed", error=error)


def write_matrix(
    folder: Path, table: dict[tuple[str, str], list[float]], shots: int = 0, prefix: str = "", **kwargs: Any
) -> None:
    """``table[(method, pair)] = [acc for seed 0, seed 1, ...]`` → one record per seed.

    ``kwargs`` go to :func:`write_run` (e.g. ``schedule={"steps": 2000}``).
    """
    for (method, pair), accs in table.items():
        for seed, a in enumerate(accs):
            rid = f"{prefix}{method}-{pair}-{shots}-{seed}".replace("/", "_")
            write_run(folder, rid, method, pair, seed, acc=a, shots=shots, **kwargs)
