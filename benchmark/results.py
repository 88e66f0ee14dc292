"""Read run records (``DIR/runs/<run_id>.json``) into one tidy pandas table.

Records are the only source of truth (see DESIGN.md, "Results store"): this module never
writes them. One row per run; the evaluation ``curve`` stays a list of dicts in its cell so
that a selection rule (:mod:`dabench.selection`) can be applied after the fact.

Bad input is reported, never fatal: a corrupt or truncated JSON file is named in a
``warnings.warn`` and skipped, and a run id found in two files keeps the first one read
(directories in the order given, files sorted by name) and warns naming both files.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

#: Columns of :func:`load_results`, in order (an empty folder still gives these columns).
COLUMNS: tuple[str, ...] = (
    "run_id", "method", "pair", "seed", "protocol", "target_shots", "target_labels",
    "status", "error", "diverged_at_step", "wall_s", "steps_per_s", "images_per_s",
    "device", "versions", "backbone", "source_dir", "record_path", "hparams", "curve", "final",
)

#: Statuses a record may carry; anything else is kept but reported.
STATUSES = ("complete", "failed", "diverged", "running", "skipped")


class RecordWarning(UserWarning):
    """A run record could not be used as it is (corrupt, duplicated, incomplete)."""


def _runs_folder(d: Path) -> Path:
    """``d/runs`` when it exists, else ``d`` itself when it holds ``*.json`` records.

    Accepting a bare folder of records lets users point at ``DIR/runs`` directly.
    """
    if not d.exists():
        raise FileNotFoundError(
            f"results folder {str(d)!r} does not exist; expected a folder holding runs/<run_id>.json "
            "(the --out folder of 'dabench run')"
        )
    if not d.is_dir():
        raise NotADirectoryError(f"results folder {str(d)!r} is a file, not a folder")
    runs = d / "runs"
    if runs.is_dir():
        return runs
    if any(d.glob("*.json")):
        return d
    raise FileNotFoundError(
        f"results folder {str(d)!r} has no runs/ subfolder (and no *.json records); "
        "expected DIR/runs/<run_id>.json"
    )


def _first_line(error: Any) -> str | None:
    """The first non-empty line of an error message (the report shows just that)."""
    if not error:
        return None
    if isinstance(error, dict):
        kind = error.get("type") or "Error"
        msg = str(error.get("message") or "").strip()
        line = msg.splitlines()[0] if msg else ""
        return f"{kind}: {line}" if line else str(kind)
    text = str(error).strip()
    return text.splitlines()[0] if text else None


def _row(rec: dict[str, Any], path: Path, source_dir: Path) -> dict[str, Any]:
    spec = rec.get("spec") or {}
    timings = rec.get("timings") or {}
    curve = rec.get("curve") or []
    final = rec.get("final")
    # A record with a final evaluation but no logged curve still has one point to select from.
    if not curve and isinstance(final, dict):
        curve = [final]
    shots = spec.get("target_shots") or 0
    return {
        "run_id": str(rec.get("run_id") or path.stem),
        "method": spec.get("method"),
        "pair": spec.get("pair"),
        "seed": spec.get("seed"),
        "protocol": spec.get("protocol") or ("few-shot" if shots else "uda"),
        "target_shots": int(shots),
        "target_labels": int(rec.get("target_labels") or 0),
        "status": rec.get("status") or "unknown",
        "error": _first_line(rec.get("error")),
        "diverged_at_step": rec.get("diverged_at_step"),
        "wall_s": timings.get("wall_s"),
        "steps_per_s": timings.get("steps_per_s"),
        "images_per_s": timings.get("images_per_s"),
        "device": rec.get("device"),
        "versions": rec.get("versions") or {},
        "backbone": spec.get("backbone"),
        "source_dir": str(source_dir),
        "record_path": str(path),
        "hparams": spec.get("hparams") or {},
        "curve": list(curve),
        "final": final,
    }


def load_results(*dirs: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Load every ``DIR/runs/*.json`` of the given folders into one DataFrame.

    Args:
        dirs: one or more results folders (a list of folders is accepted too).

    Returns:
        One row per run with the columns in :data:`COLUMNS`; ``error`` is the first line of
        the recorded error, ``curve`` the list of logged evaluations.

    Raises:
        FileNotFoundError: a folder does not exist or holds no records folder.
    """
    flat: list[Path] = []
    for d in dirs:
        if isinstance(d, (str, Path)):
            flat.append(Path(d))
        else:
            flat.extend(Path(x) for x in d)
    if not flat:
        raise ValueError("load_results needs at least one results folder")

    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for d in flat:
        folder = _runs_folder(d)
        for path in sorted(folder.glob("*.json")):
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
                warnings.warn(f"skipping corrupt run record {path}: {exc}", RecordWarning, stacklevel=2)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("spec"), dict):
                warnings.warn(f"skipping run record {path}: not a run record (no 'spec' object)",
                              RecordWarning, stacklevel=2)
                continue
            row = _row(rec, path, d)
            rid = row["run_id"]
            if rid in seen:
                warnings.warn(
                    f"run {rid} is recorded twice: keeping {seen[rid]}, ignoring {path}",
                    RecordWarning, stacklevel=2,
                )
                continue
            seen[rid] = path
            if row["status"] not in STATUSES:
                warnings.warn(f"run record {path} has unknown status {row['status']!r}; "
                              f"expected one of {', '.join(STATUSES)}", RecordWarning, stacklevel=2)
            rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(df):
        df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df


def label_budget(protocol: str | None, target_shots: int | None) -> str:
    """Human label of a run's target-label budget: ``"0"`` (UDA) or ``"5/class"`` (k shots).

    Tables show it on every row so that budgets are never mixed silently.
    """
    k = int(target_shots or 0)
    return f"{k}/class" if k > 0 else "0"
