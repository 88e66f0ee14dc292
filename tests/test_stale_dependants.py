"""Dependants (linear probe, fine-tune) trained from source-only weights that exist no more.

A dependant loads its source-only run's checkpoint; when that checkpoint is lost and recreated (or
the source-only run is rerun) without reproducing its weights (a GPU, a seed batch), a complete
dependant was trained from the old weights while the folder pairs it with the new source-only
record. Its record names the weights it loaded (``source_weights``) and a resume reruns it then.
Real runs on the embedded digits pair, a few steps each; the non-reproducing device is the
engine's checkpoint write nudging the saved weights (what a recreate on a GPU amounts to).
"""

from __future__ import annotations

import pytest
import torch

import dabench.engine.train as train_mod
from dabench.analysis.results import load_results
from dabench.analysis.tables import leaderboard
from dabench.core.record import Status
from dabench.core.store import RunStore, weights_fingerprint
from dabench.engine.options import EngineOptions
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from dabench.running.unit import run_spec

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = ExecutorOptions(device="cpu", progress=False)
CPU = torch.device("cpu")
EVERY_2 = EngineOptions(checkpoint_every=2)


def _specs():
    """source-only, linear-probe and fine-tune on digits-offline, seed 0, 3 steps each."""
    so, lp, ft = expand(
        Matrix(
            methods=("source-only", "linear-probe", "fine-tune"),
            pairs=("digits-offline",),
            seeds=(0,),
            overrides={"steps": 3, "eval_every": 3},
        )
    )
    assert lp.depends_on == so.run_id and ft.depends_on == so.run_id
    return so, lp, ft


def _nudged_saves(monkeypatch) -> None:
    """From now on the source-only run leaves other weights than it did (a non-reproducing device)."""
    real = train_mod.atomic_torch_save

    def save(obj, path):
        if path.name.endswith(".partial.pt"):
            return real(obj, path)
        return real({k: v + 1e-3 if v.is_floating_point() else v for k, v in obj.items()}, path)

    monkeypatch.setattr(train_mod, "atomic_torch_save", save)


def test_dependant_names_the_weights_it_was_trained_from(tmp_path):
    so, lp, _ = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    src, dep = store.read(so.run_id), store.read(lp.run_id)
    assert src.weights_sha256 == weights_fingerprint(store.checkpoint_path(so.run_id))
    assert dep.source_weights == {
        "run_id": so.run_id,
        "weights_sha256": src.weights_sha256,
        "finished_at": src.finished_at,
    }
    # the fingerprint is of the weights, not of the file (torch.save names the archive after the file)
    copy = tmp_path / "copy.pt"
    torch.save(torch.load(store.checkpoint_path(so.run_id), weights_only=True), copy)
    assert weights_fingerprint(copy) == src.weights_sha256
    # a record field, never part of the spec (the run id is the spec's hash)
    assert "source_weights" not in lp.to_dict() and "source_weights" not in dep.spec


def test_recreated_source_with_other_weights_reruns_its_complete_dependants(tmp_path, monkeypatch, capsys):
    """The defect: the checkpoint is lost, a new dependant (fine-tune) needs it, the source-only run
    is recreated with other weights; the complete linear probe was trained from the old ones."""
    so, lp, ft = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    old = store.read(lp.run_id)
    store.checkpoint_path(so.run_id).unlink()
    _nudged_saves(monkeypatch)
    capsys.readouterr()
    again = run_matrix([so, lp, ft], tmp_path, OPTS)
    err = capsys.readouterr().err
    assert again.rerun_for_checkpoint == [so.run_id]
    assert again.rerun_stale == [lp.run_id]
    assert sorted(r.run_id for r in again.ran) == sorted([so.run_id, lp.run_id, ft.run_id])
    assert f"complete but trained from other weights than its source-only run {so.run_id}" in err
    # the old record is kept aside, as --rerun keeps it
    (aside,) = (tmp_path / "previous").glob(f"{lp.run_id}.*.json")
    assert aside.read_text().count(old.source_weights["weights_sha256"]) == 1
    now = store.read(so.run_id).weights_sha256
    assert now != old.source_weights["weights_sha256"]
    for dep in (lp, ft):
        assert store.read(dep.run_id).source_weights["weights_sha256"] == now
    # a further resume finds nothing stale
    third = run_matrix([so, lp, ft], tmp_path, OPTS)
    assert third.ran == [] and third.rerun_stale == []


def test_recreated_source_with_the_same_weights_keeps_its_dependants(tmp_path, capsys):
    """On the CPU the recreated weights are the same (deterministic): nothing is rerun for nothing."""
    so, lp, ft = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    store.checkpoint_path(so.run_id).unlink()
    again = run_matrix([so, lp, ft], tmp_path, OPTS)
    assert again.rerun_stale == [] and lp.run_id in again.skipped_complete
    assert sorted(r.run_id for r in again.ran) == sorted([so.run_id, ft.run_id])


def test_source_rerun_elsewhere_makes_dependants_stale_on_resume(tmp_path, monkeypatch, capsys):
    """The source-only run was repeated on its own (its record and checkpoint replaced, e.g. a
    record copied back from another folder): the next resume reruns the dependants it finds stale."""
    so, lp, _ = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    _nudged_saves(monkeypatch)
    store.record_path(so.run_id).unlink()
    run_matrix([so], tmp_path, OPTS)  # the source-only run alone, with other weights
    capsys.readouterr()
    again = run_matrix([so, lp], tmp_path, OPTS)
    assert again.rerun_stale == [lp.run_id] and [r.run_id for r in again.ran] == [lp.run_id]
    assert "complete but trained from other weights" in capsys.readouterr().err
    assert store.read(lp.run_id).source_weights["weights_sha256"] == store.read(so.run_id).weights_sha256


def test_records_of_older_code_are_kept_with_a_note(tmp_path, monkeypatch, capsys):
    """A dependant recorded without source_weights (an older dabench) is not rerun (no mass rerun
    of old folders); a resume that recreates its source says so once."""
    so, lp, ft = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    rec = store.read(lp.run_id)
    rec.source_weights = None
    store.write(rec)
    store.checkpoint_path(so.run_id).unlink()
    _nudged_saves(monkeypatch)
    capsys.readouterr()
    again = run_matrix([so, lp, ft], tmp_path, OPTS)
    err = capsys.readouterr().err
    assert again.rerun_stale == [] and lp.run_id in again.skipped_complete
    assert "recorded by an older dabench, without the source weights" in err
    assert f"--rerun {so.run_id}" in err


def test_leaderboard_names_dependants_of_other_weights(tmp_path, monkeypatch):
    """The report never pairs a dependant with a source-only record it was not trained from
    without saying so (a folder not resumed since the source-only run was replaced)."""
    so, lp, _ = _specs()
    store = RunStore(tmp_path)
    run_matrix([so, lp], tmp_path, OPTS)
    assert not any("other source-only weights" in n for n in leaderboard(load_results(tmp_path)).notes)
    _nudged_saves(monkeypatch)
    store.record_path(so.run_id).unlink()
    run_matrix([so], tmp_path, OPTS)
    notes = [n for n in leaderboard(load_results(tmp_path)).notes if "other source-only weights" in n]
    assert len(notes) == 1 and lp.run_id in notes[0] and f"dabench run --results {tmp_path}" in notes[0]


# --- an interrupted dependant's mid-run checkpoint and a redone source-only run ---------------


def _interrupted_fine_tune(tmp_path):
    """source-only complete, then fine-tune killed after its mid-run checkpoint at step 2 of 6."""
    so, ft = expand(
        Matrix(
            methods=("source-only", "fine-tune"),
            pairs=("digits-offline",),
            seeds=(0,),
            overrides={"steps": 6, "eval_every": 6, "log_every": 1},
        )
    )
    store = RunStore(tmp_path)
    assert run_spec(so, store, CPU, None).status is Status.COMPLETE
    partial = store.checkpoint_path(ft.run_id, partial=True)

    def killed_after_checkpoint(step: int, total: int) -> None:
        if partial.exists():
            raise KeyboardInterrupt("killed after the mid-run checkpoint")

    with pytest.raises(KeyboardInterrupt):
        run_spec(ft, store, CPU, None, killed_after_checkpoint, EVERY_2)
    assert torch.load(partial, weights_only=True)["step"] == 2
    return so, ft, store, partial


def test_a_dependant_resumes_its_checkpoint_when_its_source_is_unchanged(tmp_path):
    so, ft, store, partial = _interrupted_fine_tune(tmp_path)
    # the checkpoint names the weights the run started from: the source-only run's
    assert torch.load(partial, weights_only=True)["source_sha256"] == store.read(so.run_id).weights_sha256
    rec = run_spec(ft, store, CPU, None, engine=EVERY_2)
    assert rec.status is Status.COMPLETE and rec.resumed_from_step == 2 and rec.resume_note is None
    assert rec.source_weights["weights_sha256"] == store.read(so.run_id).weights_sha256


def test_a_dependant_never_resumes_steps_trained_from_replaced_source_weights(tmp_path, monkeypatch, recwarn):
    """The defect: the dependant was killed mid-run, its source-only run redone with other weights;
    the resume went on from the old weights' checkpoint and the record named the new weights."""
    so, ft, store, partial = _interrupted_fine_tune(tmp_path)
    old = store.read(so.run_id).weights_sha256  # the weights its first 2 steps were trained from
    _nudged_saves(monkeypatch)
    store.record_path(so.run_id).unlink()
    assert run_spec(so, store, CPU, None).status is Status.COMPLETE  # redone: other weights
    new = store.read(so.run_id).weights_sha256
    assert new != old
    rec = run_spec(ft, store, CPU, None, engine=EVERY_2)
    assert rec.status is Status.COMPLETE and rec.resumed_from_step is None
    assert rec.source_weights["weights_sha256"] == new
    assert rec.resume_note is not None and old[:12] in rec.resume_note and new[:12] in rec.resume_note
    assert "started again from step 0" in rec.resume_note
    assert any("not resumed" in str(w.message) for w in recwarn)
    assert store.read(ft.run_id).resume_note == rec.resume_note  # in the record on disk
    assert not partial.exists()
    # trained wholly from the new weights: what a fresh run from them records, bit for bit
    store.record_path(ft.run_id).unlink()
    fresh = run_spec(ft, store, CPU, None, engine=EVERY_2)
    assert fresh.resumed_from_step is None and fresh.curve == rec.curve


def test_a_dependant_checkpoint_without_a_source_fingerprint_is_not_resumed(tmp_path):
    """An older dabench's checkpoint does not name its source weights: they cannot be vouched for."""
    _, ft, store, partial = _interrupted_fine_tune(tmp_path)
    state = torch.load(partial, weights_only=True)
    del state["source_sha256"]
    torch.save(state, partial)
    rec = run_spec(ft, store, CPU, None, engine=EVERY_2)
    assert rec.status is Status.COMPLETE and rec.resumed_from_step is None
    assert "source weights it does not name" in rec.resume_note


# --- one fingerprint: of the weights the dependant loaded, for its record and its checkpoints ----


def _replace_source_before_the_load(monkeypatch, store: RunStore, source_id: str, target: str) -> dict:
    """Wrap ``running.unit.<target>`` (``execute`` or ``execute_seeds``) so that the source-only
    checkpoint is replaced by other weights after the unit's look at it and before the engine
    loads it (a source-only run recreated by another process meanwhile). Returns the new weights."""
    import dabench.running.unit as unit_mod

    ckpt = store.checkpoint_path(source_id)
    new = {k: v + 1e-3 if v.is_floating_point() else v for k, v in torch.load(ckpt, weights_only=True).items()}
    real = getattr(unit_mod, target)

    def swapped(*args, **kwargs):
        torch.save(new, ckpt)
        return real(*args, **kwargs)

    monkeypatch.setattr(unit_mod, target, swapped)
    return new


def test_a_dependant_names_the_weights_it_loaded_not_a_first_read_of_the_file(tmp_path, monkeypatch):
    """The defect: the record's fingerprint came from the unit reading the checkpoint, the
    training from the engine loading it again; a source-only run recreated in between left a
    record naming weights the run never saw, and the stale source went undetected."""
    from dabench.core.store import state_fingerprint
    from dabench.running.scheduler import stale_source

    so, lp, _ = _specs()
    store = RunStore(tmp_path)
    assert run_spec(so, store, CPU, None).status is Status.COMPLETE
    old = store.read(so.run_id).weights_sha256
    new = _replace_source_before_the_load(monkeypatch, store, so.run_id, "execute")
    rec = run_spec(lp, store, CPU, None, engine=EVERY_2)
    assert rec.status is Status.COMPLETE
    assert rec.source_weights["weights_sha256"] == state_fingerprint(new) != old
    assert store.read(lp.run_id).source_weights == rec.source_weights  # on disk too
    # the source record still names the weights it left: the dependant is found stale
    why = stale_source(store, store.read(lp.run_id))
    assert why is not None and old[:12] in why and state_fingerprint(new)[:12] in why
    # ... and the analysis says so beside the table
    assert any("other source-only weights" in n for n in leaderboard(load_results(tmp_path)).notes)


def test_a_seed_batched_dependant_names_the_weights_it_loaded(tmp_path, monkeypatch):
    """The same through the seed-batched path (``run_group`` -> ``engine.seed_batch``)."""
    from dabench.core.store import state_fingerprint
    from dabench.running.unit import run_group

    specs = expand(
        Matrix(
            methods=("source-only", "fine-tune"),
            pairs=("digits-offline",),
            seeds=(0, 1),
            overrides={"steps": 3, "eval_every": 3},
        )
    )
    sos = [s for s in specs if s.method == "source-only"]
    fts = [s for s in specs if s.method == "fine-tune"]  # batched (linear-probe has its own fit)
    store = RunStore(tmp_path)
    for so in sos:
        assert run_spec(so, store, CPU, None).status is Status.COMPLETE
    # plain: each seed names exactly what its source-only run recorded (the same function, tensors)
    recs = run_group(fts, store, CPU, None)
    assert all(r.timings["seed_batch"] == "2 seeds" for r in recs)
    for so, rec in zip(sos, recs):
        assert rec.source_weights["run_id"] == so.run_id
        assert rec.source_weights["weights_sha256"] == store.read(so.run_id).weights_sha256
    # seed 0's source replaced between the unit's look and the load: its record names the new weights
    for rec in recs:
        store.record_path(rec.run_id).unlink()
    new = _replace_source_before_the_load(monkeypatch, store, sos[0].run_id, "execute_seeds")
    recs = run_group(fts, store, CPU, None)
    assert recs[0].source_weights["weights_sha256"] == state_fingerprint(new)
    assert recs[0].source_weights["weights_sha256"] != store.read(sos[0].run_id).weights_sha256
    assert recs[1].source_weights["weights_sha256"] == store.read(sos[1].run_id).weights_sha256


def test_a_dependant_fingerprints_its_source_weights_once(tmp_path, monkeypatch):
    """One fingerprint per dependant run, shared by its record and its mid-run checkpoints (before:
    the unit fingerprinted the file and the engine the loaded network, two loads and two hashes)."""
    import dabench.core.store as store_mod

    # fine-tune: the engine's step loop, which writes the mid-run checkpoints (3 of its 6 steps)
    so, ft = expand(
        Matrix(
            methods=("source-only", "fine-tune"),
            pairs=("digits-offline",),
            seeds=(0,),
            overrides={"steps": 6, "eval_every": 6},
        )
    )
    store = RunStore(tmp_path)
    assert run_spec(so, store, CPU, None).status is Status.COMPLETE
    calls = []
    real = store_mod.state_fingerprint

    def counted(state):
        calls.append(1)
        return real(state)

    monkeypatch.setattr(store_mod, "state_fingerprint", counted)
    monkeypatch.setattr(train_mod, "state_fingerprint", counted)
    saved = []
    real_save = train_mod.atomic_torch_save
    monkeypatch.setattr(train_mod, "atomic_torch_save", lambda obj, path: (saved.append(obj), real_save(obj, path)))
    rec = run_spec(ft, store, CPU, None, engine=EVERY_2)
    assert rec.status is Status.COMPLETE and len(calls) == 1
    (partial,) = [s for s in saved if isinstance(s, dict) and "source_sha256" in s]
    assert partial["source_sha256"] == rec.source_weights["weights_sha256"] == store.read(so.run_id).weights_sha256


def test_a_diverged_dependant_names_the_weights_it_loaded(tmp_path):
    """A ``diverged`` record is kept as a complete one is: it names its source weights too."""
    so, _, ft = _specs()
    store = RunStore(tmp_path)
    assert run_spec(so, store, CPU, None).status is Status.COMPLETE
    import dataclasses

    # an absurd learning rate: the loss is not finite within its few steps (same source-only run)
    bad = dataclasses.replace(ft, schedule=dataclasses.replace(ft.schedule, lr=1e30))
    assert bad.depends_on == so.run_id
    rec = run_spec(bad, store, CPU, None)
    assert rec.status is Status.DIVERGED
    assert rec.source_weights["weights_sha256"] == store.read(so.run_id).weights_sha256
