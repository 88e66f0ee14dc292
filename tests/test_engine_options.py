"""EngineOptions: the engine's options (mid-run checkpoints, compile, CUDA graphs) as one checked
value, passed whole from the CLI/API through the executors and the worker processes to the engine.

Uses the tiny synthetic pair of ``tests/tiny_plugin.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import pickle

import pytest
import torch

import dabench
from dabench.cli import main
from dabench.core.store import RunStore
from dabench.engine.options import EngineOptions
from dabench.engine.train import execute
from dabench.running.executors import ExecutorOptions
from dabench.running.executors.worker import _parser, engine_options
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from dabench.running.slurm_task import SlurmTask
from dabench.running.unit import load_pair_data

TINY = str(pathlib.Path(__file__).with_name("tiny_plugin.py"))


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"checkpoint_every": -1}, ["checkpoint_every", "-1", ">= 0"]),
        ({"checkpoint_every": True}, ["checkpoint_every", "True", "whole number"]),
        ({"checkpoint_every": 2.5}, ["checkpoint_every", "2.5", "whole number"]),
        ({"compile": "yes"}, ["compile", "'yes'", "True or False"]),
        ({"cuda_graphs": "auto"}, ["cuda_graphs", "'auto'", "True, False or None"]),
    ],
)
def test_a_bad_option_is_one_error_naming_the_field_the_value_and_what_is_valid(kwargs, names):
    with pytest.raises(ValueError) as err:
        EngineOptions(**kwargs)
    assert all(n in str(err.value) for n in names), str(err.value)


def test_executor_options_build_their_engine_options_once_and_check_them_when_made():
    # the flat fields stay the user surface (dabench run flags, dabench.run keywords) ...
    opts = ExecutorOptions(checkpoint_every=5, compile=True, cuda_graphs=False, seed_batch=True)
    assert opts.engine == EngineOptions(checkpoint_every=5, compile=True, cuda_graphs=False)
    assert ExecutorOptions().engine == EngineOptions()
    # ... and a copy with another value carries that value, not the original's
    assert dataclasses.replace(opts, checkpoint_every=7).engine.checkpoint_every == 7
    # a bad value fails where the options are made, not later in a worker process
    with pytest.raises(ValueError, match="checkpoint_every=-3"):
        ExecutorOptions(checkpoint_every=-3)


def test_dabench_run_refuses_a_negative_checkpoint_every_before_running_anything(tmp_path, capsys):
    code = main(
        ["run", "--plugin", TINY, "--methods", "source-only", "--pairs", "tiny", "--seeds", "0"]
        + ["--results", str(tmp_path), "--checkpoint-every", "-2", "--no-progress"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--checkpoint-every -2" in err and ">= 0" in err  # named as the user wrote it (cli._run)
    assert not list(RunStore(tmp_path).records())


@pytest.mark.parametrize(
    "engine",
    [EngineOptions(e, c, g) for e, c, g in itertools.product((0, 3), (False, True), (None, False, True))],
    ids=str,
)
def test_the_worker_reads_back_the_flags_the_pool_and_slurm_jobs_write(engine):
    args = _parser().parse_args(["--results", "somewhere", *engine.to_flags()])
    assert engine_options(args) == engine


def test_a_slurm_task_pickled_before_engine_options_keeps_its_options():
    """A requeued job unpickles the task it was submitted with: one pickled by the version with
    three flat fields must still pass them on to its workers."""
    task = SlurmTask([], "results", "cpu", 0, None, ())
    old = {k: v for k, v in task.__getstate__().items() if k != "engine"}
    old.update(checkpoint_every=50, compile=True, cuda_graphs=False)
    revived = SlurmTask.__new__(SlurmTask)
    revived.__setstate__(old)
    assert revived.engine == EngineOptions(checkpoint_every=50, compile=True, cuda_graphs=False)
    cmd = revived._command(threads=1)
    assert cmd[cmd.index("--checkpoint-every") + 1] == "50" and "--compile" in cmd and "--no-cuda-graphs" in cmd
    # and a task of this version round-trips with its options
    now = pickle.loads(pickle.dumps(SlurmTask([], "results", "cpu", 0, None, (), EngineOptions(9))))
    assert now.engine == EngineOptions(9)


@pytest.mark.usefixtures("one_thread")
def test_a_pool_worker_gets_checkpoint_every_and_resumes_a_mid_run_checkpoint(tmp_path):
    """A run stopped in this process after its step-4 checkpoint is finished by a local-pool worker
    process: the worker resumes from step 4 only if ``checkpoint_every`` reached it (without it
    the engine never looks for a checkpoint and starts from step 0)."""
    overrides = {"steps": 12, "eval_every": 6, "log_every": 2}
    matrix = Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), overrides=overrides, plugins=(TINY,))
    (spec,) = expand(matrix)
    store = RunStore(tmp_path)
    partial = store.checkpoint_path(spec.run_id, partial=True)

    class Stop(Exception):
        pass

    def stop_after_checkpoint(step: int, total: int) -> None:
        if partial.exists():  # the step-4 checkpoint; reported at step 6
            raise Stop(step)

    every_4 = EngineOptions(checkpoint_every=4)
    pair = dabench.PAIRS.get("tiny")
    with pytest.raises(Stop):
        execute(spec, pair, load_pair_data("tiny", None), torch.device("cpu"), store, stop_after_checkpoint, every_4)
    assert partial.exists()

    opts = ExecutorOptions(device="cpu", progress=False, plugins=(TINY,), workers=1, checkpoint_every=4)
    summary = run_matrix([spec], tmp_path, opts, executor="local")
    (rec,) = summary.ran
    assert rec["status"] == "complete", rec["error"]
    assert rec["resumed_from_step"] == 4
    assert rec["timings"]["compiled"] is False and rec["timings"]["steps"] == 12
    assert not partial.exists()  # a complete run drops its mid-run checkpoint
