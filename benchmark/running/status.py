"""``dabench status DIR``: where a results folder stands.

Counts of complete / running / failed / diverged / skipped / pending runs, the failures with
their first error line, and an ETA over the runs the next ``dabench run`` would run (pending,
interrupted, running, and the failed and skipped ones it retries). *running* means a live process holds the run's claim; a
``running`` record whose process is gone is *interrupted* (the next ``dabench run`` resumes
it). *pending* needs the matrix, which ``dabench run`` stores in ``DIR/matrix.json``. The matrix's
runs and the records of runs outside it (an earlier matrix of the same folder) are counted on
separate lines, each adding up to its total; a live claim of a run neither names (another runner's,
before its first record) counts as running outside the matrix, and an unreadable claim is named. Under the slurm executor it also lists the queued and
running jobs of ``DIR/slurm/jobs.json``.

Each running run is shown with how long it has run (since its record's ``started_at`` or its
claim's ``claimed_at``, whichever is later: a resumed run's claim is newer than the interrupted
attempt's record until the new record is written) against the mean run time (``total_s``) of the
complete runs of its method and pair (else of its method, else of all complete runs). A run past
:data:`HUNG_FACTOR` x that mean and :data:`HUNG_MIN_S` is flagged *possibly hung*: its process
still holds the claim (the claim's heartbeat is a thread of its own, so a stuck step does not
stop it), and only a person, or the local executor's ``--run-timeout``, can stop it. Interrupted
runs are listed with why their claim no longer holds.
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..core.jsonio import load_json
from ..core.record import RunRecord, Status
from ..core.spec import RunSpec
from ..core.store import ClaimInfo, RunStore, load_record_file
from .jobs import FINISHED_STATES, JOBS_FILE

#: the states of a folder's runs, in the order reported: the terminal record statuses, plus
#: ``running`` (a live process holds the claim), ``pending`` (in the matrix, no record yet) and
#: ``interrupted`` (a ``running`` record whose process is gone); only the first are record statuses
ORDER = (
    Status.COMPLETE.value,
    Status.RUNNING.value,
    Status.FAILED.value,
    Status.DIVERGED.value,
    Status.SKIPPED.value,
    "pending",
    "interrupted",
)


#: a running run is *possibly hung* past this many times the mean run time of its peers ...
HUNG_FACTOR = 3.0
#: ... and past this many seconds (a first run loads or downloads data the others found cached)
HUNG_MIN_S = 600.0
#: at most this many running (and interrupted) runs are listed one per line; beyond, a summary
LISTED = 6

#: the terminal statuses that are not a success, listed under "failures:"
_FAILURES = tuple(s.value for s in Status if s.terminal and s is not Status.COMPLETE)


@dataclass
class RunState:
    run_id: str
    state: str  # one of ORDER
    label: str
    error: str = ""
    in_matrix: bool = True  # False: a record of a run the current matrix.json does not list
    method: str | None = None
    pair: str | None = None
    #: running: seconds since it started (None: neither record nor claim says when)
    elapsed_s: float | None = None
    #: running: the mean run time of its peers, and which peers (``3 complete dann | mnist-usps runs``)
    expected_s: float | None = None
    expected_from: str = ""
    #: the run's scheduled steps (its spec), to scale peers of another length
    steps: int | None = None
    #: running: the claim's holder (``host/pid 123``); interrupted: why the claim no longer holds
    holder: str = ""

    @property
    def possibly_hung(self) -> bool:
        """Running past :data:`HUNG_FACTOR` x its peers' mean and past :data:`HUNG_MIN_S`."""
        if self.state != Status.RUNNING.value or self.elapsed_s is None or self.expected_s is None:
            return False
        return self.elapsed_s > HUNG_FACTOR * self.expected_s and self.elapsed_s > HUNG_MIN_S


@dataclass
class FolderStatus:
    """The state of every run of a results folder (the matrix's and any other records)."""

    root: pathlib.Path
    runs: list[RunState] = field(default_factory=list)
    in_matrix: int | None = None  # None: no matrix.json
    matrix_written_at: str | None = None  # matrix.json's written_at: which matrix the counts refer to
    executor: str | None = None  # matrix.json's executor
    workers: int = 1
    corrupt: list[str] = field(default_factory=list)  # matrix runs whose record is unreadable (rerun)
    ignored: list[str] = field(default_factory=list)  # other unreadable files: stray JSON, bad claims
    mean_run_s: float | None = None
    matrix_error: str | None = None  # why matrix.json exists but cannot be read

    def counts(self, in_matrix: bool | None = None) -> Counter:
        """States counted over every run (``None``), the matrix's runs (``True``) or the records
        outside it (``False``); without a matrix.json every record counts as the matrix's."""
        return Counter(r.state for r in self.runs if in_matrix is None or r.in_matrix == in_matrix)

    @property
    def remaining(self) -> int:
        """Runs the next ``dabench run`` of this matrix would still run: pending, interrupted and
        running ones, and the failed and skipped ones it retries (``unit.KEPT``: only complete and
        diverged runs are kept). Records of runs outside the matrix are not rerun by it."""
        c = self.counts(True)
        return sum(c[k] for k in ("pending", "interrupted", "running", Status.FAILED.value, Status.SKIPPED.value))

    @property
    def eta_s(self) -> float | None:
        """Mean measured run time × runs left / workers (None before any run completed)."""
        if self.mean_run_s is None:
            return None
        return self.mean_run_s * self.remaining / max(1, self.workers)


def _label(spec: dict[str, Any] | None, run_id: str) -> str:
    if not isinstance(spec, dict):
        return run_id
    return f"{spec.get('method')} | {spec.get('pair')} | seed {spec.get('seed')}"


def _parse_time(text: Any) -> float | None:
    """A record's or claim's ISO 8601 time as epoch seconds (no zone: UTC, as records write it)."""
    if not isinstance(text, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _claim(store: RunStore, run_id: str, out: FolderStatus) -> ClaimInfo | None:
    """The claim of ``run_id``; an unreadable one is named in ``out.ignored`` (and is stale)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = store.claim_info(run_id)
    out.ignored += [str(w.message) for w in caught]
    return info


def _holder(info: ClaimInfo) -> str:
    h = info.holder
    return f"{h.get('host', '?')}/pid {h.get('pid', '?')}"


def _expected(runs: list[RunState], durations: dict[tuple[str | None, str | None], list[_Took]], now: float) -> None:
    """Set ``expected_s``/``expected_from`` of the running runs: the mean run time of the complete
    runs of the same method and pair, else of the same method, else of every complete run (a
    method's time depends on its pair's data and network far more than on anything else); a peer
    of another length counts its time per step times the running run's steps (a 5,000-step run is
    not hung for taking longer than its 600-step peers)."""
    for r in runs:
        if r.state != Status.RUNNING.value:
            continue
        peers: list[tuple[str, list[_Took]]] = [
            (f"{r.method} | {r.pair}", durations.get((r.method, r.pair), [])),
            (str(r.method), [t for (m, _), ts in durations.items() if m == r.method for t in ts]),
            ("", [t for ts in durations.values() for t in ts]),
        ]
        for name, took in peers:
            if took:
                scaled = [t.scaled_to(r.steps) for t in took]
                r.expected_s = sum(scaled) / len(scaled)
                r.expected_from = f"{_count(len(took), 'complete ' + (name + ' run' if name else 'run'))}"
                if any(t.steps and r.steps and t.steps != r.steps for t in took):
                    r.expected_from += f", per step x {r.steps} steps"
                break


@dataclass(frozen=True)
class _Took:
    """A complete run's time (s) and its scheduled steps (None: not recorded)."""

    seconds: float
    steps: int | None

    def scaled_to(self, steps: int | None) -> float:
        """This run's time for a run of ``steps`` steps (unscaled where either length is unknown)."""
        return self.seconds * steps / self.steps if steps and self.steps else self.seconds


def _steps(spec: Any) -> int | None:
    """A spec's scheduled steps (``schedule.steps``), None where it does not say (a hand-edited file)."""
    steps = (spec.get("schedule") or {}).get("steps") if isinstance(spec, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None


def _batched_seeds(timings: dict[str, Any]) -> int:
    """How many seeds shared the run's recorded time: S for ``timings.seed_batch == "S seeds"``, else 1."""
    m = re.fullmatch(r"(\d+) seeds", str(timings.get("seed_batch", "")))
    return max(1, int(m.group(1))) if m else 1


def folder_status(root: str | os.PathLike, now: float | None = None) -> FolderStatus:
    """Read a results folder (records, claims, matrix.json) without changing it. ``now`` (epoch
    seconds, default the clock) is when running runs' elapsed times are measured to."""
    now = _dt.datetime.now(_dt.timezone.utc).timestamp() if now is None else now
    store = RunStore(root)
    if not store.root.is_dir():
        raise FileNotFoundError(f"no results folder {store.root}; expected the --results folder of 'dabench run'")
    out = FolderStatus(store.root)
    specs: dict[str, dict[str, Any]] = {}
    mfile = store.root / "matrix.json"
    if mfile.exists():
        try:
            matrix = load_json(mfile.read_text(encoding="utf-8"))
            listed = {RunSpec.from_dict(s).run_id: s for s in matrix.get("specs") or []}
            workers = int(matrix.get("workers") or 1)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # all or nothing: half a matrix would count some records as the matrix's, others not
            out.matrix_error = f"{type(exc).__name__}: {exc}"
        else:
            specs, out.workers, out.in_matrix = listed, workers, len(listed)
            out.matrix_written_at, out.executor = matrix.get("written_at"), matrix.get("executor")
    records: dict[str, RunRecord] = {}
    for path in sorted(store.runs.glob("*.json")) if store.runs.is_dir() else []:
        rec, bad = load_record_file(path)
        if rec is None:
            assert bad is not None
            # only a file named like a run of the matrix is that run's (corrupt) record, rerun next
            # time; anything else (a stray JSON, a torn file of an unknown run) is just ignored, and
            # so is a newer dabench's record (never rerun: 'dabench run' leaves it alone)
            why = bad.why
            if path.stem in specs and bad.kind != "format":
                out.corrupt.append(f"{path} ({why})")
            else:
                out.ignored.append(f"{path} ({why})")
            continue
        records[rec.run_id] = rec
    times = []
    durations: dict[tuple[str | None, str | None], list[_Took]] = {}  # (method, pair) -> complete runs
    for run_id in list(specs) + [r for r in records if r not in specs]:
        rec = records.get(run_id)
        spec = rec.spec if rec else specs.get(run_id)
        label = _label(spec, run_id)
        status = rec.status if rec else None
        info = _claim(store, run_id, out)
        error = holder = ""
        elapsed = None
        if rec is not None and rec.status.terminal:
            state = rec.status.value
            if rec.error is not None and rec.status is not Status.COMPLETE:
                error = rec.error.headline()
            timings = rec.timings or {}
            t = timings.get("total_s", timings.get("wall_s"))
            if rec.status is Status.COMPLETE and isinstance(t, (int, float)):
                # a seed-batched seed records its group's time, which S seeds shared: the ETA counts
                # its share; the running runs' expectation keeps the group's (a batched running run
                # takes as long as its group)
                times.append(float(t) / _batched_seeds(timings))
                took = _Took(float(t), _steps(rec.spec))
                durations.setdefault((rec.spec.get("method"), rec.spec.get("pair")), []).append(took)
        elif info is not None and info.live:
            state, holder = "running", _holder(info)
            # the later of the two: a resumed run's new claim is newer than the interrupted
            # attempt's record until its own record is written
            starts = [t for t in (_parse_time(info.holder.get("claimed_at")),) if t is not None]
            if rec is not None and (t := _parse_time(rec.started_at)) is not None:
                starts.append(t)
            elapsed = max(0.0, now - max(starts)) if starts else None
        elif status is Status.RUNNING:
            state = "interrupted"
            holder = info.why if info is not None else "no claim"
        else:
            state = "pending"
        sd = spec if isinstance(spec, dict) else {}
        out.runs.append(
            RunState(
                run_id,
                state,
                label,
                error,
                in_matrix=not specs or run_id in specs,
                method=sd.get("method"),
                pair=sd.get("pair"),
                elapsed_s=elapsed,
                steps=_steps(sd),
                holder=holder,
            )
        )
    # claims of runs neither the matrix nor a record names: another runner's run before its first
    # record (a live claim: running, outside this matrix), or a file that is no claim (named)
    seen = {r.run_id for r in out.runs}
    for path in sorted(store.claims.glob("*.claim")) if store.claims.is_dir() else []:
        if path.stem in seen:
            continue
        info = _claim(store, path.stem, out)
        if info is not None and info.live:
            since = _parse_time(info.holder.get("claimed_at"))
            elapsed = None if since is None else max(0.0, now - since)
            out.runs.append(
                RunState(path.stem, "running", path.stem, in_matrix=not specs, elapsed_s=elapsed, holder=_holder(info))
            )
    if times:
        out.mean_run_s = sum(times) / len(times)
    _expected(out.runs, durations, now)
    return out


def _slurm_lines(root: pathlib.Path) -> list[str]:
    """The queued and running jobs of ``DIR/slurm/jobs.json`` (written by the slurm executor), by state."""
    path = root / JOBS_FILE
    if not path.exists():
        return []
    try:
        payload = load_json(path.read_text(encoding="utf-8"))
        jobs = [j for j in payload["jobs"] if isinstance(j, dict)]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return [f"slurm jobs: unreadable {path} ({exc})"]
    active = [j for j in jobs if str(j.get("state", "")).upper() not in FINISHED_STATES]
    by_state = Counter(str(j.get("state")).lower() for j in active)
    # the states are as the last 'dabench run' saw them (it rewrites the file as they change)
    head = f"slurm jobs ({len(jobs)} submitted, as of {payload.get('updated_at')}): " + (
        ", ".join(f"{n} {k}" for k, n in sorted(by_state.items())) or "none queued or running"
    )
    lines = [head]
    for j in active:
        runs = j.get("run_ids") or []
        lines.append(
            f"  job {j.get('job_id')} {str(j.get('state')).lower()}: {_count(len(runs), 'run')} {', '.join(runs)}"
        )
    return lines


def _count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``: the counts this text prints read as English at any number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _running_line(r: RunState) -> str:
    """``label (id): 12m 03s vs mean 1m 10s (3 complete dann | mnist-usps runs), host/pid 7 [possibly hung]``."""
    text = f"  {r.label} ({r.run_id}){'' if r.in_matrix else ' [outside this matrix]'}: "
    text += "started at an unknown time" if r.elapsed_s is None else _duration(r.elapsed_s)
    if r.expected_s is not None:
        text += f" vs mean {_duration(r.expected_s)} ({r.expected_from})"
    text += f", {r.holder}" if r.holder else ""
    return text + (" POSSIBLY HUNG" if r.possibly_hung else "")


def _running_lines(st: FolderStatus) -> list[str]:
    """The running runs (elapsed vs their peers' mean; the possibly hung ones flagged, with what to
    do) and the interrupted ones (why), one per line up to :data:`LISTED`, beyond it a summary."""
    lines: list[str] = []
    running = sorted((r for r in st.runs if r.state == Status.RUNNING.value), key=lambda r: -(r.elapsed_s or 0.0))
    hung = [r for r in running if r.possibly_hung]
    if running:
        lines.append("running (time so far vs the mean of complete runs like it):")
        shown = running if len(running) <= LISTED else (hung[:LISTED] or running[:1])
        lines += [_running_line(r) for r in shown]
        rest = [r for r in running if r not in shown]
        if rest:
            known = [r.elapsed_s for r in rest if r.elapsed_s is not None]
            span = f", {_duration(min(known))} to {_duration(max(known))} so far" if known else ""
            unflagged = "" if any(r.possibly_hung for r in rest) else f", none past {HUNG_FACTOR:g}x its mean"
            lines.append(f"  ... {_count(len(rest), 'more run')}{span}{unflagged}")
    if hung:
        r = hung[0]
        lines.append(
            f"possibly hung: {_count(len(hung), 'run')} past {HUNG_FACTOR:g}x the mean of complete runs like it and "
            f"past {HUNG_MIN_S / 60:g} min, still holding the claim (its heartbeat thread outlives a stuck step). "
            f"Stop the process named (host/pid), then: dabench run --results {st.root} --rerun RUN_ID "
            f"(e.g. --rerun {r.run_id}); with the local executor, --run-timeout SECONDS stops a hung run by itself"
        )
    gone = [r for r in st.runs if r.state == "interrupted"]
    if gone:
        lines.append("interrupted (process gone; the next 'dabench run' resumes them):")
        lines += [
            f"  {r.label} ({r.run_id}){'' if r.in_matrix else ' [outside this matrix]'}: {r.holder}"
            for r in gone[:LISTED]
        ]
        if len(gone) > LISTED:
            lines.append(f"  ... {_count(len(gone) - LISTED, 'more run')}")
    return lines


def status_text(root: str | os.PathLike, now: float | None = None) -> str:
    """The human summary printed by ``dabench status DIR`` (``now``: see :func:`folder_status`)."""
    st = folder_status(root, now)
    lines = []
    if st.in_matrix is not None:
        lines.append(
            f"{st.root}: matrix.json written {st.matrix_written_at or 'at an unknown time'} "
            f"({_count(st.in_matrix, 'run')}, {st.executor or 'unknown'} executor, {_count(st.workers, 'worker')})"
        )
    elif st.matrix_error is not None:
        lines.append(
            f"{st.root}: unreadable {st.root / 'matrix.json'} ({st.matrix_error}): pending runs unknown, only "
            "records are counted; the next 'dabench run' of the matrix rewrites it"
        )
    else:
        lines.append(f"{st.root}: no matrix.json (pending runs unknown: only records are counted)")

    def tally(c: Counter) -> str:
        # every state of ORDER that occurs (the usual ones always): the parts add up to the total
        return ", ".join(f"{c[k]} {k}" for k in ORDER if c[k] or k not in ("interrupted", "pending"))

    mine = st.counts(True)
    head = "matrix" if st.in_matrix is not None else "records"
    lines.append(f"  {head}: {_count(sum(mine.values()), 'run')} = {tally(mine)}")
    others = st.counts(False)
    if others:
        # runs of an earlier matrix in the same folder: counted apart, so each line adds up
        lines.append(f"  outside this matrix: {_count(sum(others.values()), 'record')} = {tally(others)}")
    lines += _slurm_lines(st.root)
    lines += _running_lines(st)
    bad = [r for r in st.runs if r.state in _FAILURES]
    if bad:
        lines.append("failures:")
        for r in bad:
            outside = "" if r.in_matrix else " [outside this matrix]"
            lines.append(f"  {r.state:<8} {r.label} ({r.run_id}){outside}: {r.error}")
    if st.corrupt:
        lines.append("corrupt records (the next 'dabench run' reruns them):")
        lines += [f"  {p}" for p in st.corrupt]
    if st.ignored:
        lines.append("ignored (not run records of this folder, or unreadable claims):")
        lines += [f"  {p}" for p in st.ignored]
    if st.remaining:
        if st.eta_s is None:
            lines.append(f"ETA: unknown until a run completes ({st.remaining} left)")
        else:
            lines.append(
                f"ETA: ~{_duration(st.eta_s)} (mean run {st.mean_run_s:.1f} s x {st.remaining} left "
                f"/ {_count(st.workers, 'worker')})"
            )
    elif st.in_matrix is not None and mine["complete"] == st.in_matrix:
        lines.append("done: every run of the matrix is complete")
    return "\n".join(lines)


__all__ = ["status_text", "folder_status", "FolderStatus", "RunState", "HUNG_FACTOR", "HUNG_MIN_S"]
