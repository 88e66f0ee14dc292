"""The scheduler: takes run specs, skips what is complete, hands the rest to an executor and
records every outcome. One run is the unit of work's (:mod:`dabench.running.unit`).

It knows nothing of any method's losses. A failure (exception) or divergence (non-finite
loss) of one run is recorded and the matrix goes on; a run whose dependency did not
complete is recorded ``skipped`` with the reason. A run is only ever recorded ``complete``
after it has finished, so a killed run is rerun by the next ``dabench run``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pathlib
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..core.domain import default_data_root
from ..core.jsonio import dump_json, load_json
from ..core.record import RecordError, RunRecord, Status, commit_label, first_line, utc_now
from ..core.registry import METHODS, PAIRS, load_plugin
from ..core.spec import RunSpec
from ..core.store import (
    RunStore,
    WriteFault,
    atomic_write_text,
    checkpoint_problem,
    load_record_file,
    weights_fingerprint,
)
from .executors import Executor, ExecutorOptions, make_executor
from .matrix import MatrixError
from .unit import KEPT, record_failure, versions


@dataclass
class MatrixSummary:
    """What one ``dabench run`` did: the records it wrote and the runs it left alone."""

    ran: list[RunRecord] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    kept_diverged: list[str] = field(default_factory=list)  # diverged before: kept, not rerun (unit.KEPT)
    busy: list[str] = field(default_factory=list)  # claimed by another live process
    gave_up: list[str] = field(default_factory=list)  # dependants left after waiting WAIT_LIMIT_S for their dependency
    rerun_for_checkpoint: list[str] = field(default_factory=list)  # complete runs rerun: checkpoint lost
    # complete dependants rerun: trained from other weights than their source-only run's now (stale_source)
    rerun_stale: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # record files that did not parse (rerun)
    unreadable: list[str] = field(
        default_factory=list
    )  # records of a record format this dabench does not read (left alone)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"already complete": len(self.skipped_complete)}
        if self.kept_diverged:
            out["already diverged (kept)"] = len(self.kept_diverged)
        for rec in self.ran:
            out[rec.status.value] = out.get(rec.status.value, 0) + 1
        if self.busy:
            out["running elsewhere"] = len(self.busy)
        if self.corrupt:
            out["corrupt records rerun"] = len(self.corrupt)
        if self.unreadable:
            out["left alone (newer record format)"] = len(self.unreadable)
        if self.gave_up:
            out["not run (gave up waiting)"] = len(self.gave_up)
        return out


MATRIX_FILE = "matrix.json"

#: default seconds a runner waits for a run held by another live runner (fresh heartbeat) that
#: one of its runs depends on, before it gives up on the dependants (``dabench run --wait-limit``)
WAIT_LIMIT_S = 3600.0
#: failures that are the pair's data, not the run's (core.domain's MissingDataError, DataFileError)
UNUSABLE_DATA_ERRORS = frozenset({"MissingDataError", "DataFileError"})


def write_matrix_file(
    results_dir: str | os.PathLike,
    specs: list[RunSpec],
    plugins: Iterable[str] = (),
    executor: str = "inline",
    workers: int = 1,
    sweep: dict | None = None,
) -> pathlib.Path:
    """Store the expanded matrix in ``DIR/matrix.json``: ``dabench status`` counts pending runs
    from it and ``--rerun`` loads its plugins.

    ``sweep`` (the matrix's ``--sweep``/``[sweep]``: key -> values or distribution) is recorded,
    and ``swept_runs`` lists the run ids of every sweep matrix run into the folder (kept from the
    file this one replaces): the report's configuration-selection tables are for configurations
    that one sweep made, never for several plain runs merged (analysis/sweeps.py ``has_sweeps``).
    A file of an older dabench without ``swept_runs`` keeps it unknown (left out), as its runs are.
    """
    path = pathlib.Path(results_dir) / MATRIX_FILE
    swept: list[str] | None = []
    try:
        before = load_json(path.read_text(encoding="utf-8")) if path.exists() else {}
        old = before.get("swept_runs") if isinstance(before, dict) else None
        if isinstance(old, list):
            swept = [str(r) for r in old]
        elif isinstance(before, dict) and before.get("specs"):
            swept = None  # an older matrix file: which of its runs were swept is not known
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass  # a corrupt matrix file is replaced; its sweep is not known, this one's is
    payload = {
        "format": 1,
        "written_at": utc_now(),
        "executor": executor,
        "workers": int(workers),
        "plugins": list(plugins),
        "sweep": {k: v if isinstance(v, (list, tuple)) else str(v) for k, v in (sweep or {}).items()},
        "specs": [s.to_dict() for s in specs],
    }
    if swept is not None:
        payload["swept_runs"] = sorted(set(swept) | ({s.run_id for s in specs} if sweep else set()))
    atomic_write_text(path, dump_json(payload, indent=1, default=str))
    return path


def _unreadable(store: RunStore, run_id: str) -> RecordError | None:
    """Why the run's record file exists but cannot be read (None when absent or readable)."""
    path = store.record_path(run_id)
    return load_record_file(path)[1] if path.exists() else None


def _terminal(status: Status | None) -> bool:
    return status is not None and status.terminal


def code_label(versions: dict | None) -> str:
    """A record's code as a note names it: ``dabench 0.1.0 at a1b2c3d`` (``+dirty``: uncommitted
    changes), ``dabench 0.1.0`` outside a checkout, ``unknown code`` without versions."""
    v = versions if isinstance(versions, dict) else {}
    if not v.get("dabench") and not v.get("git_commit"):
        return "unknown code"
    commit = commit_label(v)
    return f"dabench {v.get('dabench') or '?'}" + (f" at {commit}" if commit else "")


def _other_code(record: dict | None, here: dict) -> bool:
    """Whether a record was made by other dabench code than ``here`` (this process's versions):
    another version, another commit (compared where both know theirs), or uncommitted changes on
    one side only. Both dirty at one commit reads as the same code: the records cannot tell two
    edits apart, and a resume while editing would otherwise flag every run it kept."""
    v = record if isinstance(record, dict) else {}
    if not v:
        return True  # no versions at all: not known to be this code
    if v.get("dabench") != here.get("dabench"):
        return True
    if v.get("git_commit") and here.get("git_commit"):
        return v["git_commit"] != here["git_commit"] or bool(v.get("git_dirty")) != bool(here.get("git_dirty"))
    return False


def other_code_note(store: RunStore, run_ids: Iterable[str], here: dict | None = None) -> str:
    """The resume note for kept records (complete, diverged) made by other dabench code than this
    process's, "" when there are none.

    Kept records are never recomputed silently (their run id is their spec, not their code), so a
    folder resumed after a code change mixes the numbers of two codes; the note says how many and
    how to remake them. ``here``: this process's versions (:func:`dabench.running.unit.versions`)."""
    here = versions() if here is None else here
    by_code: dict[str, int] = {}
    for rid in run_ids:
        rec = store.read(rid)
        if rec is None or not _other_code(rec.versions, here):
            continue
        label = code_label(rec.versions)
        by_code[label] = by_code.get(label, 0) + 1
    if not by_code:
        return ""
    n = sum(by_code.values())
    made = ", ".join(f"{k} ({c} run{'s' if c != 1 else ''})" for k, c in sorted(by_code.items(), key=lambda kv: -kv[1]))
    return (
        f"{n} kept run(s) were made by other code than this {code_label(here)}: {made}; they are kept as recorded "
        f"(a run is never recomputed silently) and the report names the mix; to remake one: dabench run --rerun "
        f"RUN_ID --results {store.root}, or run the matrix into a new --results folder"
    )


def plugin_code_note(store: RunStore, run_ids: Iterable[str]) -> str:
    """The resume note for kept records (complete, diverged) of a plugin method or pair whose code
    differs from the plugin loaded now (its record's ``plugin_code`` sha256, or package version,
    against :meth:`Registry.code`), "" when there are none.

    A run id is the spec, not the plugin's code: after an edit of the plugin a resume keeps the
    old version's records and runs only the missing ones, so the folder would mix two versions of
    one method unannounced. Records without ``plugin_code`` (older dabench) cannot tell: not named.
    """
    changed: dict[str, list[str]] = {}  # "method 'x' (file)" -> run ids
    current: dict[tuple[str, str], dict | None] = {}
    for rid in run_ids:
        rec = store.read(rid)
        if rec is None or not isinstance(rec.plugin_code, dict):
            continue
        recorded = rec.plugin_code
        for kind, registry, name in (
            ("method", METHODS, rec.spec.get("method")),
            ("pair", PAIRS, rec.spec.get("pair")),
        ):
            was = recorded.get(kind)
            if not isinstance(was, dict) or not isinstance(name, str):
                continue
            if (kind, name) not in current:
                current[(kind, name)] = registry.code(name) if name in registry else None
            now = current[(kind, name)]
            if now is None or (was.get("sha256"), was.get("package")) != (now.get("sha256"), now.get("package")):
                label = f"{kind} {name!r} ({now['file'] if now else 'not loaded now'})"
                changed.setdefault(label, []).append(rid)
    if not changed:
        return ""
    n = len({r for rids in changed.values() for r in rids})
    which = ", ".join(f"{k}: {len(v)} run(s)" for k, v in changed.items())
    first = next(iter(changed.values()))
    return (
        f"{n} kept run(s) were made by another version of a plugin than the one loaded now ({which}); "
        f"they are kept as recorded (a run is never recomputed silently), so this folder mixes two versions of "
        f"it; to remake them: dabench run --results {store.root} "
        + " ".join(f"--rerun {r}" for r in first[:3])
        + (" ..." if len(first) > 3 else "")
        + " (with the same --plugin), or run the matrix into a new --results folder"
    )


def stale_source(store: RunStore, rec: RunRecord, fingerprints: dict[str, str | None] | None = None) -> str | None:
    """Why the complete dependant ``rec`` (a linear probe, a fine-tune: ``spec.depends_on``) was
    trained from other weights than its source-only run's record names now, or None.

    The record names the weights it loaded (``source_weights.weights_sha256``, the fingerprint of
    the checkpoint); the source-only record names the weights it left (``weights_sha256``). They
    differ once the source-only run was recreated (its checkpoint was lost) or rerun and did not
    reproduce its weights (a GPU is not bitwise deterministic, nor is a seed batch with dropout),
    and then the folder would pair the source-only row with dependants of weights that exist no
    more. None where it cannot be told: a record of an older dabench (no ``source_weights``: kept as
    it is, never a mass rerun), a source-only run that is not complete (nothing to pair with, or
    not decided yet). A source-only record of an older dabench (no ``weights_sha256``) is
    fingerprinted from its checkpoint, once per run in ``fingerprints`` (run id -> fingerprint).
    """
    named = rec.source_weights if isinstance(rec.source_weights, dict) else None
    dep = (rec.spec or {}).get("depends_on")
    if not named or not named.get("weights_sha256") or not dep:
        return None
    src = store.read(dep)
    if src is None or src.status is not Status.COMPLETE:
        return None
    now = src.weights_sha256
    if now is None:
        cache = fingerprints if fingerprints is not None else {}
        if dep not in cache:
            ckpt = store.checkpoint_path(dep)
            try:
                cache[dep] = weights_fingerprint(ckpt) if checkpoint_problem(ckpt) is None else None
            except Exception:  # noqa: BLE001 - a damaged checkpoint: its weights are not known
                cache[dep] = None
        now = cache[dep]
    if now is None or now == named["weights_sha256"]:
        return None
    return (
        f"trained from weights {str(named['weights_sha256'])[:12]} of source-only run {dep} (finished "
        f"{named.get('finished_at') or '?'}), which now holds weights {now[:12]} (finished {src.finished_at or '?'})"
    )


def run_matrix(
    specs: Iterable[RunSpec],
    results_dir: str | os.PathLike,
    options: ExecutorOptions | None = None,
    executor: str | Executor = "inline",
    poll_s: float = 1.0,
    wait_limit_s: float = WAIT_LIMIT_S,
) -> MatrixSummary:
    """Run specs through an executor: skip complete ones, order dependants after their
    dependency, record every outcome. The same records whatever the executor.

    A dependant is submitted only once its dependency's record is terminal (``run_spec`` then
    records it ``skipped`` if the dependency did not complete). Runs claimed by a live process
    elsewhere are left to it (``busy``); a dependant of such a run waits for it, saying what it
    waits for, at most ``wait_limit_s`` seconds (then the dependants are left, ``gave_up``). A
    stale claim (see :mod:`dabench.core.store`) is taken over. A complete source-only run whose
    checkpoint is lost is rerun (it is deterministic) when a dependant still needs it.

    Raises :class:`~dabench.core.store.WriteFault` when the results folder refuses a write: the
    run in hand is marked ``failed`` if possible and no temporary file is left.

    ``executor``: a registered name (built here with ``options``) or an executor already built
    (the CLI builds it first, to report a bad option before writing ``matrix.json``).
    """
    options = options or ExecutorOptions()
    progress = options.progress
    specs = list(specs)
    store = RunStore(results_dir)
    if isinstance(executor, str):
        # resolved here, once: every worker (or Ray task) then reads the same data folder
        resolved = dataclasses.replace(options, data_root=options.data_root or default_data_root())
        ex = make_executor(executor, store.root, resolved)
    else:
        ex = executor
    summary = MatrixSummary()
    # a kill during an atomic write leaves its temporary file; nothing else ever removes it
    swept = store.sweep_temp_files()
    if swept:
        tqdm.write(f"removed {len(swept)} temporary file(s) left by killed writers in {store.root}", file=sys.stderr)
    #: pair -> (error type, message) of data that cannot be used (absent or malformed files): every
    #: run of the pair would fail the same way, so the rest are recorded failed without loading it again
    missing_pairs: dict[str, tuple[str, str]] = {}
    bar = tqdm(total=len(specs), desc="matrix", unit="run", disable=not progress, file=sys.stderr, position=0)

    def note(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    def rerun_stale(spec: RunSpec) -> bool:
        """Move aside the record of a complete dependant trained from other source weights than its
        source-only run holds now (:func:`stale_source`), saying so, so that it is run again; False
        where that is not so any more (or another runner holds the run)."""
        archived = _archive_stale(store, spec.run_id, fingerprints)
        if archived is None:
            return False
        rec = store.read(spec.depends_on) if spec.depends_on else None
        note(
            f"{spec.label}: complete but trained from other weights than its source-only run {spec.depends_on} "
            f"holds now{' (recreated ' + rec.finished_at + ')' if rec and rec.finished_at else ''}: rerunning it "
            f"(old record kept in {archived})"
        )
        summary.rerun_stale.append(spec.run_id)
        return True

    queue: list[RunSpec] = []
    fingerprints: dict[str, str | None] = {}  # source-only runs of older records: their checkpoint's
    stale: set[str] = set()  # complete dependants trained from other weights than their source's now
    for s in specs:
        rec = store.read(s.run_id) if s.depends_on else None
        if rec is not None and rec.status is Status.COMPLETE and stale_source(store, rec, fingerprints):
            stale.add(s.run_id)
    # a stale dependant is rerun, so it needs its source's checkpoint as a pending one does
    needed = {s.depends_on for s in specs if s.depends_on and (store.status(s.run_id) not in KEPT or s.run_id in stale)}
    verify: set[str] = set()  # complete dependants to check once their source-only run has run again
    complete_dependants: list[RunSpec] = []
    for spec in specs:
        status = store.status(spec.run_id)
        if status is Status.DIVERGED:
            summary.kept_diverged.append(spec.run_id)
            bar.update(1)
            continue
        if status is Status.COMPLETE:
            problem = checkpoint_problem(store.checkpoint_path(spec.run_id)) if spec.run_id in needed else None
            if problem is not None:
                # its dependants cannot start without the weights (missing, or cut short):
                # rerun it (same spec, same seed); another runner may be doing the same right now
                archived = _archive_for_checkpoint(store, spec.run_id)
                if archived is not None:
                    note(
                        f"{spec.label}: complete but its checkpoint {store.checkpoint_path(spec.run_id)} is {problem}: "
                        f"rerunning it for its dependants (old record kept in {archived})"
                    )
                    summary.rerun_for_checkpoint.append(spec.run_id)
                # archived or not, it goes to the queue: there the claim decides who reruns it (the
                # other runner's claim puts it among the runs held elsewhere, which dependants wait
                # for) and a record made complete by the other runner meanwhile is counted, not rerun
                queue.append(spec)
                continue
            if spec.run_id in stale:
                if rerun_stale(spec):
                    queue.append(spec)
                    continue
            elif spec.depends_on:
                complete_dependants.append(spec)  # decided below, once it is known if its source runs
                continue
            summary.skipped_complete.append(spec.run_id)
            bar.update(1)
            continue
        bad = _unreadable(store, spec.run_id)
        if bad is not None and bad.kind == "format":
            # a newer dabench's record: never overwrite it (its results would be lost)
            summary.unreadable.append(spec.run_id)
            note(f"{bad}: run {spec.label} left alone")
            bar.update(1)
            continue
        if bad is not None:
            summary.corrupt.append(spec.run_id)
            note(f"corrupt record {bad}: run {spec.label} will be rerun")
        queue.append(spec)
    to_run = {s.run_id for s in queue}
    unnamed: dict[str, int] = {}  # source-only run to be run -> its complete dependants of older records
    for spec in complete_dependants:
        if spec.depends_on in to_run:
            # its source-only run is recreated (or run again) first: whether this record was
            # trained from the weights it will leave is known only then (still_kept)
            rec = store.read(spec.run_id)
            if rec is not None and rec.source_weights:
                verify.add(spec.run_id)
                queue.append(spec)
                continue
            unnamed[str(spec.depends_on)] = unnamed.get(str(spec.depends_on), 0) + 1
        summary.skipped_complete.append(spec.run_id)
        bar.update(1)
    if unnamed:
        note(
            f"{sum(unnamed.values())} complete dependant run(s) of source-only run(s) run again now were recorded by "
            f"an older dabench, without the source weights they were trained from: kept as recorded; where the new "
            f"weights may differ (a GPU, a seed batch), repeat them with the source: dabench run --results "
            f"{store.root} " + " ".join(f"--rerun {r}" for r in sorted(unnamed))
        )
    featureless = [
        s.run_id
        for s in specs
        if s.save_features and s.run_id in summary.skipped_complete and not store.features_path(s.run_id).exists()
    ]
    if featureless:
        # save_features is not part of the run id, so asking for it does not rerun a complete run
        note(
            f"{len(featureless)} complete run(s) saved no features, and --set save_features=true does not rerun them "
            f"(it is not part of the run id); to add them: dabench run --results {store.root} --set save_features=true "
            + " ".join(f"--rerun {r}" for r in featureless[:3])
            + (" ..." if len(featureless) > 3 else "")
        )
    if summary.kept_diverged:
        note(
            f"{len(summary.kept_diverged)} run(s) diverged before: kept as recorded, not rerun (a divergence is a "
            f"result); to repeat one: dabench run --rerun RUN_ID --results {store.root}"
        )
    other_code = other_code_note(store, [*summary.skipped_complete, *summary.kept_diverged])
    if other_code:
        note(other_code)
    plugin_changed = plugin_code_note(store, [*summary.skipped_complete, *summary.kept_diverged])
    if plugin_changed:
        note(plugin_changed)
    in_matrix = {s.run_id for s in queue}

    def settled(run_id: str) -> Status | None:
        """The run's status as this matrix counts it: a complete run whose dependants need its
        checkpoint, and that checkpoint is missing or damaged, is not done (None): some runner, this
        one or another, is about to redo it. Read anew each time: other runners change the folder."""
        status = store.status(run_id)
        if status is Status.COMPLETE and run_id in needed and checkpoint_problem(store.checkpoint_path(run_id)):
            return None
        return status

    inflight: dict[str, RunSpec] = {}
    elsewhere: dict[str, RunSpec] = {}  # claimed by another live process
    announced: set[str] = set()  # runs whose holder we said we wait for
    wait_started: float | None = None

    def dependency_ready(spec: RunSpec) -> bool:
        dep = spec.depends_on
        if not dep:
            return True
        if dep in inflight or any(s.run_id == dep for s in queue):
            return False
        if dep in elsewhere:
            return _terminal(settled(dep))
        return True

    def seed_mates(spec: RunSpec) -> list[RunSpec]:
        """--seed-batch: the other seeds of ``spec``'s configuration that may start now (taken
        from the queue; one finished meanwhile is counted complete, one held elsewhere stays)."""
        mates = []
        for m in [m for m in queue if m.seed_group == spec.seed_group]:
            if m.run_id in verify and not dependency_ready(m):
                continue  # checked against its source's new weights once they exist
            if still_kept(m):
                queue.remove(m)
                kept(m.run_id)
            elif dependency_ready(m) and not store.claimed_by_live_process(m.run_id):
                queue.remove(m)
                mates.append(m)
        return mates

    if options.seed_batch and not ex.groups:
        note(f"--seed-batch: the {type(ex).__name__} runs seeds separately (only inline and local batch them)")

    def still_kept(spec: RunSpec) -> bool:
        """Whether the run is kept as it is: complete or diverged by now (another runner's work
        included), and, for a dependant whose source-only run ran again here, trained from the
        weights that run left (else it is moved aside: False)."""
        status = settled(spec.run_id)
        if status not in KEPT:
            return False
        if spec.run_id in verify and status is Status.COMPLETE:
            verify.discard(spec.run_id)
            rec = store.read(spec.run_id)
            if rec is not None and stale_source(store, rec, fingerprints):
                if rerun_stale(spec):
                    return False
                # not moved: another runner holds it (it waits among the runs held elsewhere) or
                # has rerun it from these weights meanwhile (kept)
                return not store.claimed_by_live_process(spec.run_id)
        return True

    def kept(run_id: str, tick: bool = True) -> None:
        """A run another runner finished meanwhile (complete or diverged): counted, not run."""
        done = summary.kept_diverged if settled(run_id) is Status.DIVERGED else summary.skipped_complete
        done.append(run_id)
        if tick:
            bar.update(1)

    def finish(spec: RunSpec, rec: RunRecord) -> None:
        summary.ran.append(rec)
        if rec.status is Status.FAILED and rec.error is not None and rec.error.type in UNUSABLE_DATA_ERRORS:
            if spec.pair not in missing_pairs:
                note(f"pair {spec.pair}: {rec.error.message}")
            missing_pairs[spec.pair] = (rec.error.type, rec.error.message)
        elif rec.status is not Status.COMPLETE:
            note(f"{spec.label}: {rec.status}: {first_line(rec.error.message if rec.error else '')}")
        bar.update(1)

    try:
        while queue or inflight:
            submitted = False
            for spec in list(queue):
                if ex.free_slots() <= 0:
                    break
                if spec not in queue:  # taken meanwhile as a seed mate of a spec before it (--seed-batch)
                    continue
                if not dependency_ready(spec):
                    continue
                queue.remove(spec)
                if still_kept(spec):  # finished by another runner meanwhile, or trained from these weights
                    kept(spec.run_id)
                    continue
                if store.claimed_by_live_process(spec.run_id):
                    elsewhere[spec.run_id] = spec
                    continue
                if store.status(spec.run_id) is Status.COMPLETE and not spec.depends_on:
                    # complete without its checkpoint, and nobody is redoing it (the runner that was
                    # died, or held it only to move the record aside): move it aside now, or, where
                    # another runner has just claimed it, wait for that one
                    _archive_for_checkpoint(store, spec.run_id)
                    if store.status(spec.run_id) is Status.COMPLETE:
                        elsewhere[spec.run_id] = spec
                        continue
                if spec.pair in missing_pairs:  # do not retry a pair whose data is known missing or malformed
                    if store.claim(spec.run_id):
                        try:
                            finish(spec, record_failure(spec, store, *missing_pairs[spec.pair]))
                        finally:
                            store.release(spec.run_id)
                    else:
                        elsewhere[spec.run_id] = spec
                    continue
                batched = options.seed_batch and ex.groups
                group = [spec, *seed_mates(spec)] if batched else [spec]
                if batched:
                    # a lone seed too: its record then says why it ran unbatched ("fallback: one seed")
                    ex.submit_group(group)
                else:
                    ex.submit(spec)
                for s in group:
                    inflight[s.run_id] = s
                submitted = True
                bar.set_postfix_str(f"{len(inflight)} running")
            if inflight:
                for out in ex.wait(timeout=poll_s):
                    spec = inflight.pop(out.run_id)
                    if out.kind == "write-fault":
                        raise WriteFault(store.record_path(out.run_id), OSError(out.error), message=out.error)
                    if out.kind == "busy":
                        elsewhere[spec.run_id] = spec
                    elif out.kind in ("already-complete", "already-diverged"):
                        kept(spec.run_id)
                    else:
                        assert out.record is not None
                        finish(spec, out.record)
                bar.set_postfix_str(f"{len(inflight)} running")
            elif queue and not submitted:
                # everything left waits on runs held by other processes: wait for them (saying
                # so, and for at most wait_limit_s), and take over any whose claim went stale
                if wait_started is None:
                    wait_started = time.monotonic()
                for run_id, spec in list(elsewhere.items()):
                    info = store.claim_info(run_id)
                    if _terminal(settled(run_id)):
                        del elsewhere[run_id]
                        bar.update(1)
                    elif (info is None or not info.live) and run_id in in_matrix:
                        del elsewhere[run_id]
                        queue.insert(0, spec)
                        wait_started = None
                    elif run_id not in announced and info is not None:
                        announced.add(run_id)
                        note(
                            f"waiting for run {spec.label} ({run_id}) held by {info.describe()}; giving up after "
                            f"{wait_limit_s:.0f} s (--wait-limit)"
                        )
                if wait_started is not None and time.monotonic() - wait_started > wait_limit_s:
                    held = ", ".join(sorted({s.depends_on for s in queue if s.depends_on in elsewhere}))
                    note(
                        f"gave up after waiting {wait_limit_s:.0f} s for run(s) held by another runner ({held}); "
                        f"{len(queue)} dependant run(s) not run: run the same command again once they finish"
                    )
                    summary.gave_up.extend(s.run_id for s in queue)
                    queue.clear()
                    break
                time.sleep(poll_s)
            else:
                wait_started = None
    finally:
        ex.close()
        bar.close()
    for run_id in elsewhere:
        if settled(run_id) in KEPT:
            kept(run_id, tick=False)  # the bar is closed
        else:
            summary.busy.append(run_id)
    return summary


def _archive_for_checkpoint(store: RunStore, run_id: str) -> pathlib.Path | None:
    """Move aside the record of a complete run whose checkpoint is missing or damaged, so the run
    is redone; None where another runner got there first.

    Two runners started on one folder both find the run complete without its checkpoint. Only one
    may move its record: the second would fail to move a record already gone ("cannot write
    previous/..."), or move aside the *new* record the first has written meanwhile, and redo the run
    a second time. So the move happens under the run's claim, after reading the record and the
    checkpoint again: whoever holds the claim (the other runner archiving or rerunning it) has it,
    and a run found no longer complete, or whose checkpoint is back, is left as it is.
    """
    if not store.claim(run_id):
        return None  # another runner holds it: archiving it or already rerunning it
    try:
        rec = store.read(run_id)
        if rec is None or rec.status is not Status.COMPLETE:
            return None  # moved aside by another runner (which may also have rerun it)
        if checkpoint_problem(store.checkpoint_path(run_id)) is None:
            return None  # recreated by another runner meanwhile
        return _archive_record(store, run_id)
    finally:
        store.release(run_id)


def _archive_stale(store: RunStore, run_id: str, fingerprints: dict[str, str | None]) -> pathlib.Path | None:
    """Move aside the record of a complete dependant found stale (:func:`stale_source`), under its
    claim and after reading it again, as :func:`_archive_for_checkpoint` does; None where another
    runner holds it or it is no longer complete and stale."""
    if not store.claim(run_id):
        return None
    try:
        rec = store.read(run_id)
        if rec is None or rec.status is not Status.COMPLETE or not stale_source(store, rec, fingerprints):
            return None
        return _archive_record(store, run_id)
    finally:
        store.release(run_id)


def _archive_record(store: RunStore, run_id: str) -> pathlib.Path:
    """Move a record to ``DIR/previous/<run_id>.<time>.json`` (kept for comparison, outside ``runs/``
    so reports never count it twice) and drop any mid-run checkpoint of the run, so the repeat
    starts afresh (one left beside a complete record, by a kill between the record and its removal,
    may hold weights trained from a source checkpoint that is being replaced)."""
    archive = store.root / "previous" / f"{run_id}.{_dt.datetime.now().strftime('%Y%m%dT%H%M%S%f')}.json"
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(store.record_path(run_id), archive)
    except OSError as exc:
        raise WriteFault(archive, exc) from exc
    partial = store.checkpoint_path(run_id, partial=True)
    try:
        partial.unlink(missing_ok=True)
    except OSError as exc:
        raise WriteFault(partial, exc) from exc
    return archive


def _archive_for_rerun(store: RunStore, run_id: str) -> None:
    """Move the record to ``previous/`` and drop its mid-run checkpoint, so the repeat starts afresh."""
    path = store.record_path(run_id)
    # under the run's claim: a runner (or a second --rerun) moving the same record at once would
    # otherwise stop with "cannot write previous/..." or move aside the record just rewritten
    if not store.claim(run_id):
        raise MatrixError(f"--rerun {run_id}: the run is running now (claim {store.claim_path(run_id)})")
    try:
        if not path.exists():
            raise MatrixError(f"--rerun {run_id}: another dabench run has just moved {path} aside to rerun it")
        _archive_record(store, run_id)  # the mid-run checkpoint goes too: the repeat starts afresh
    finally:
        store.release(run_id)


def prepare_rerun(
    results_dir: str | os.PathLike, run_ids: Iterable[str], extra_plugins: Iterable[str] = (), archive: bool = True
) -> tuple[list[RunSpec], tuple[str, ...]]:
    """Specs to repeat runs of a results folder, read from their records (``dabench run --rerun``).

    Loads the plugins the folder's ``matrix.json`` names (plus ``extra_plugins``), moves each
    old record to ``DIR/previous/<run_id>.<time>.json`` (kept for comparison, outside ``runs/``
    so reports never count it twice) and drops any mid-run checkpoint, so the run starts afresh.
    The runs of the folder that start from a repeated run's checkpoint (its linear probe and
    fine-tune: ``depends_on``) are repeated with it, after it: their records were trained from
    the weights the repeat replaces, which a repeat on another device, in a seed batch or after a
    code change need not reproduce, so keeping them would pair a source-only row with dependants
    of other weights. Returns (specs, plugins), the dependants after the runs asked for.

    ``archive=False`` (``--dry-run``) only reads: every record stays in ``runs/``. A spec whose
    method is not registered (a plugin that neither ``matrix.json``, a later matrix may have
    replaced it, nor ``extra_plugins`` names) is refused before any record moves: the repeat
    would fail and leave the folder without the run's result.
    """
    store = RunStore(results_dir)
    plugins = _matrix_plugins(store.root / MATRIX_FILE)
    plugins += [p for p in extra_plugins if p not in plugins]
    for plugin in plugins:
        load_plugin(plugin)
    specs: list[RunSpec] = []
    asked = list(dict.fromkeys(run_ids))
    queue = list(asked)
    children: dict[str, list[str]] | None = None
    archived_children: dict[str, list[str]] | None = None
    recovered: set[str] = set()  # runs repeated from their last record in previous/ (none in runs/)
    while queue:
        run_id = queue.pop(0)
        path = store.record_path(run_id)
        if not path.exists():
            # an interrupted --rerun (or rerun for a lost checkpoint) moved the record aside and died
            # before the repeat wrote one: the same command must finish it, not refuse it
            last = _last_archived(store, run_id)
            if last is None:
                known = sorted(p.stem for p in store.runs.glob("*.json"))
                raise FileNotFoundError(
                    f"--rerun {run_id}: no record {path} (nor in {store.root / 'previous'}); runs there: "
                    f"{', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}"
                )
            warnings.warn(
                f"--rerun {run_id}: no record {path} (an interrupted rerun moved it aside): repeating it from its "
                f"last record, {last}",
                stacklevel=2,
            )
            path = last
            recovered.add(run_id)
        rec, bad = load_record_file(path)
        if rec is None:
            raise MatrixError(f"--rerun {run_id}: no spec to repeat: {bad}")
        spec = RunSpec.from_dict(rec.spec)
        if spec.run_id != run_id:
            raise MatrixError(
                f"--rerun {run_id}: the spec in {path} now hashes to {spec.run_id} "
                "(written by another dabench version); run the matrix again instead"
            )
        if spec.method not in METHODS:
            raise MatrixError(
                f"--rerun {run_id}: method {spec.method!r} is not registered (plugins loaded: "
                f"{', '.join(plugins) or 'none'}); add --plugin FILE.py|MODULE naming the plugin that defines it"
            )
        specs.append(spec)
        if children is None:  # the folder's records read once, not once per repeated run
            children = _dependants(store)
        kids = list(children.get(run_id, []))
        if run_id in recovered:
            # its dependants were moved aside with it by the interrupted rerun: repeated with it too
            if archived_children is None:
                archived_children = _dependants(store, archived=True)
            kids += [d for d in archived_children.get(run_id, []) if d not in kids]
        queued = {*asked, *queue, *(s.run_id for s in specs)}
        queue += [d for d in kids if d not in queued]
    if archive:  # only once every spec passed the checks above: a refusal moves no record
        for spec in specs:
            if spec.run_id not in recovered:  # nothing in runs/ to move: its last record is in previous/
                _archive_for_rerun(store, spec.run_id)
    return specs, tuple(plugins)


def _last_archived(store: RunStore, run_id: str) -> pathlib.Path | None:
    """The run's latest record in ``DIR/previous/`` (``<run_id>.<time>.json``; the time sorts), or None."""
    found = sorted((store.root / "previous").glob(f"{run_id}.*.json"))
    return found[-1] if found else None


def _matrix_plugins(mfile: pathlib.Path) -> list[str]:
    """The plugins ``DIR/matrix.json`` names ([] without the file); a file that cannot be read, is
    not a JSON object (edited by hand), or whose ``plugins`` is not a list of names is named in a
    warning saying what it holds, and loads nothing: the method check of :func:`prepare_rerun`
    then asks for ``--plugin`` by name, rather than a traceback or a plugin named by one letter of
    a string read as a list."""
    if not mfile.exists():
        return []
    try:
        payload = load_json(mfile.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        warnings.warn(f"corrupt {mfile} ({first_line(str(exc))}): its plugins are not loaded", stacklevel=3)
        return []
    if not isinstance(payload, dict):
        warnings.warn(
            f"{mfile} is not a JSON object (a {type(payload).__name__}): its plugins are not loaded; "
            "give them with --plugin (the next dabench run of a matrix rewrites the file)",
            stacklevel=3,
        )
        return []
    plugins = payload.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        warnings.warn(
            f"{mfile}: 'plugins' is {plugins!r}, not a list of plugin files or modules: its plugins are not "
            'loaded; give them with --plugin, or write it as ["my_plugin.py"]',
            stacklevel=3,
        )
        return []
    return list(plugins)


def _dependants(store: RunStore, archived: bool = False) -> dict[str, list[str]]:
    """Run id -> the folder's runs whose spec starts from its checkpoint (``depends_on``), sorted.
    ``archived``: instead, the runs with a record in ``previous/`` and none in ``runs/``."""
    out: dict[str, list[str]] = {}
    paths = sorted((store.root / "previous").glob("*.json")) if archived else sorted(store.runs.glob("*.json"))
    for path in paths:
        run_id = path.name.split(".")[0]
        if archived and store.record_path(run_id).exists():
            continue
        rec, _ = load_record_file(path)
        if rec is not None and (parent := (rec.spec or {}).get("depends_on")):
            if run_id not in out.get(parent, []):
                out.setdefault(parent, []).append(run_id)
    return out


__all__ = ["run_matrix", "prepare_rerun", "write_matrix_file", "MatrixSummary", "MATRIX_FILE"]
