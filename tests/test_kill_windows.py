"""A kill between a run's last step and its record costs no finished work.

Two windows where a kill (SIGKILL, a SLURM preemption, Ctrl-C) lost what a run had done:

- the mid-run checkpoint was removed when training ended, before the ``complete`` record was
  written: a kill in between (final evaluation, features, the weights' fingerprint) restarted the
  run from step 0 instead of from its last checkpoint;
- seed-batched groups that train their seeds one after another (a method that cannot be vmapped,
  ``--compile``, resuming mid-run checkpoints) wrote every seed's record only once the *last* seed
  had finished: a kill during seed 2 left seed 1, trained to the end, recorded ``running``, so the
  next ``dabench run`` trained it again from scratch.

The kill is a ``KeyboardInterrupt`` (a ``BaseException``: nothing in the runner catches it, as
nothing survives a SIGKILL), raised at the moment in question, in this process, on the ``tiny`` pair.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from dabench.core.record import RunRecord, Status
from dabench.core.store import RunStore
from dabench.engine.options import EngineOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import run_group, run_spec

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))
CPU = torch.device("cpu")


class KilledAtComplete(RunStore):
    """A results folder whose process dies as it writes a ``complete`` record (before it lands)."""

    def write(self, record: RunRecord) -> None:
        if record.status is Status.COMPLETE:
            raise KeyboardInterrupt(f"killed while writing the complete record of {record.run_id}")
        super().write(record)


@pytest.mark.usefixtures("one_thread")
def test_a_kill_before_the_complete_record_keeps_the_mid_run_checkpoint(tmp_path):
    """Killed after its last step but before its record: the resume starts from the last mid-run
    checkpoint (step 8 of 12), not from step 0, and drops it once the record is written."""
    (spec,) = expand(
        Matrix(
            methods=("dann",), pairs=("tiny",), seeds=(0,), overrides={"steps": 12, "eval_every": 6}, plugins=(TINY,)
        )
    )
    every_4 = EngineOptions(checkpoint_every=4)
    partial = RunStore(tmp_path).checkpoint_path(spec.run_id, partial=True)
    with pytest.raises(KeyboardInterrupt):
        run_spec(spec, KilledAtComplete(tmp_path), CPU, None, engine=every_4)
    store = RunStore(tmp_path)
    assert store.status(spec.run_id) is Status.RUNNING  # the kill came before the record
    assert partial.exists(), "the mid-run checkpoint was removed before the run was recorded complete"
    assert torch.load(partial, weights_only=True)["step"] == 8

    rec = run_spec(spec, store, CPU, None, engine=every_4)
    assert rec.status is Status.COMPLETE and rec.resumed_from_step == 8
    assert store.status(spec.run_id) is Status.COMPLETE
    assert not partial.exists()  # recorded complete: the mid-run checkpoint has served


@pytest.mark.usefixtures("one_thread")
def test_a_seed_batched_group_run_seed_by_seed_records_each_seed_as_it_finishes(tmp_path):
    """MCD (two optimisers) cannot be vmapped, so its seeds train one after another; a kill while
    the second seed trains leaves the first recorded ``complete`` (it is not trained again)."""
    specs = expand(
        Matrix(
            methods=("mcd",), pairs=("tiny",), seeds=(0, 1), overrides={"steps": 6, "eval_every": 3}, plugins=(TINY,)
        )
    )
    store = RunStore(tmp_path)
    first, second = specs

    def on_step(step: int, total: int) -> None:
        # steps of the second seed: the first has answered (its record exists and is not running)
        if store.status(first.run_id) is not Status.RUNNING or step < prev[0]:
            raise KeyboardInterrupt("killed while the second seed trains")
        prev[0] = step

    prev = [0]
    with pytest.raises(KeyboardInterrupt):
        run_group(specs, store, CPU, None, on_step=on_step)
    rec = store.read(first.run_id)
    assert rec is not None and rec.status is Status.COMPLETE, "the first seed's finished run was not recorded"
    assert rec.timings is not None and rec.timings["seed_batch"].startswith("fallback: ")
    assert store.status(second.run_id) is Status.RUNNING  # killed mid-run: the next dabench run reruns it
