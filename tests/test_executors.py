"""Executors: the local pool gives the same records as inline, orders dependants, loads plugins
in its workers, survives a worker crash; slot planning for GPUs; ``--rerun`` is deterministic.

Uses the tiny synthetic pair of ``tests/tiny_plugin.py`` (loads instantly; 20 steps per run).
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from dabench.cli import main
from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions, make_executor
from dabench.running.executors.local_pool import plan_slots
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix
from dabench.testing import isolated_registries
from tiny_runs import TINY, crash_plugin, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(root: pathlib.Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in RunStore(root).records()}


def test_local_pool_matches_inline_and_orders_dependants(tmp_path):
    specs = expand(
        Matrix(methods=("source-only", "linear-probe", "fine-tune"), pairs=("tiny",), seeds=(0,), plugins=(TINY,))
    )
    inline = run_matrix(specs, tmp_path / "inline", ExecutorOptions(device="cpu", progress=False), executor="inline")
    # two reused workers: both dependants wait for source-only, then run side by side
    local = run_matrix(
        specs,
        tmp_path / "local",
        ExecutorOptions(workers=2, runs_per_process=0, device="cpu", progress=False, plugins=(TINY,)),
        executor="local",
    )
    assert [r["status"] for r in inline.ran] == ["complete"] * 3
    assert sorted(r["status"] for r in local.ran) == ["complete"] * 3
    a, b = _records(tmp_path / "inline"), _records(tmp_path / "local")
    assert a.keys() == b.keys() == {s.run_id for s in specs}
    for run_id in a:
        assert b[run_id]["final"]["target_acc"] == pytest.approx(a[run_id]["final"]["target_acc"], abs=1e-9)
        assert [p["step"] for p in b[run_id]["curve"]] == [p["step"] for p in a[run_id]["curve"]]
    src = next(s.run_id for s in specs if s.method == "source-only")
    assert all(r["pid"] != os.getpid() for r in b.values())
    for s in specs:
        if s.depends_on:
            assert b[s.run_id]["started_at"] >= b[src]["finished_at"]
    # a second pass recomputes nothing
    again = run_matrix(
        specs, tmp_path / "local", ExecutorOptions(workers=2, device="cpu", progress=False), executor="local"
    )
    assert again.ran == [] and len(again.skipped_complete) == 3


def test_worker_crash_and_divergence_in_the_pool(tmp_path, restore_registries):
    """A worker that dies fails only its run; lr=1e6 diverges source-only, and its dependant
    (linear-probe), held back until then, is recorded skipped with the reason."""
    plugins = crash_plugin(tmp_path, "crash")
    specs = expand(
        Matrix(
            methods=("crash", "source-only", "linear-probe"),
            pairs=("tiny",),
            seeds=(0,),
            plugins=plugins,
            overrides={"lr": 1e6},
        )
    )
    # default: each run in a fresh worker process
    summary = run_matrix(
        specs,
        tmp_path / "out",
        ExecutorOptions(workers=2, device="cpu", progress=False, plugins=plugins),
        executor="local",
    )
    recs = {r["spec"]["method"]: r for r in summary.ran}
    assert recs["source-only"]["pid"] not in (os.getpid(), recs["crash"]["pid"])
    assert recs["source-only"]["status"] == "diverged" and recs["source-only"]["diverged_at_step"] >= 0
    probe = recs["linear-probe"]
    assert probe["status"] == "skipped"
    assert f"source-only run {recs['source-only']['run_id']} is diverged" in probe["error"]["message"]
    crash = recs["crash"]
    assert crash["status"] == "failed" and crash["error"]["type"] == "WorkerDied"
    assert "exited with code 3" in crash["error"]["message"] and "worker-" in crash["error"]["message"]
    assert RunStore(tmp_path / "out").read(crash["run_id"])["status"] == "failed"
    assert not list((tmp_path / "out" / "claims").glob("*.claim"))


def test_plan_slots_packs_runs_per_gpu(monkeypatch):
    import dabench.running.executors.local_pool as ex

    monkeypatch.setattr(ex, "visible_gpus", lambda: ["0", "1"])
    plan = plan_slots("auto", None, runs_per_gpu=4)
    assert plan.workers == 8 and plan.device == "cuda"
    assert plan.gpu_of_slot == ["0", "1"] * 4  # each GPU gets 4 workers, each worker sees one GPU
    assert plan_slots("auto", 3).gpu_of_slot == ["0", "1", "0"]
    assert plan_slots("cuda:1", None, 2).gpu_of_slot == [None, None]  # pinned: CUDA_VISIBLE_DEVICES untouched
    monkeypatch.setattr(ex, "visible_gpus", list)
    assert plan_slots("auto", None).workers == 1 and plan_slots("cpu", 2).device == "cpu"
    with pytest.raises(ValueError, match="--runs-per-gpu must be at least 1"):
        plan_slots("auto", None, runs_per_gpu=0)
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        plan_slots("auto", 0)


def test_bad_executor_choices_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="valid executors: inline, local, ray, slurm"):
        make_executor("pbs", tmp_path)
    with pytest.raises(SystemExit):
        main(["run", "--executor", "pbs"])
    assert "invalid choice: 'pbs' (choose from" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--executor",
                "local",
                "--workers",
                "0",
                "--results",
                str(tmp_path),
                "--methods",
                "source-only",
                "--seeds",
                "0",
            ]
        )
        == 2
    )
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_rerun_repeats_a_run_deterministically(tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_run(out, "source-only", "1")
    assert main(args) == 0
    (rec,) = _records(out).values()
    assert rec["spec"]["seed"] == 1 and rec["spec"]["hparams"] and rec["device"].startswith("cpu")
    assert {"torch", "dabench", "git_commit"} <= set(rec["versions"])
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["plugins"] == [TINY] and len(matrix["specs"]) == 1
    # the rerun needs no --plugin: matrix.json names it
    assert main(["run", "--rerun", rec["run_id"], "--results", str(out), "--no-progress", "--device", "cpu"]) == 0
    (new,) = _records(out).values()
    (old_path,) = (out / "previous").glob(f"{rec['run_id']}.*.json")
    assert json.loads(old_path.read_text()) == rec.to_dict()
    assert new["started_at"] >= rec["finished_at"]
    assert new["final"]["target_acc"] == rec["final"]["target_acc"]
    assert [p["target_acc"] for p in new["curve"]] == [p["target_acc"] for p in rec["curve"]]
    assert main(["run", "--rerun", "000000000000", "--results", str(out)]) == 2
    assert "no record" in capsys.readouterr().err


def test_rerun_of_a_source_only_run_repeats_the_runs_that_start_from_its_weights(tmp_path, capsys):
    """A linear probe or fine-tune record trained from the weights a ``--rerun`` replaces would no
    longer match its folder's source-only run: they are repeated with it, after it."""
    out = tmp_path / "out"
    assert main(tiny_run(out, "source-only,linear-probe,fine-tune", "0,1")) == 0
    before = _records(out)
    base = next(r for r in before.values() if r["spec"]["method"] == "source-only" and r["spec"]["seed"] == 0)
    mine = {rid for rid, r in before.items() if r["spec"].get("depends_on") == base["run_id"]}
    assert len(mine) == 2  # this seed's linear probe and fine-tune
    capsys.readouterr()
    assert main(["run", "--rerun", base["run_id"], "--results", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert "also repeated, as they start from its weights" in capsys.readouterr().err
    after = _records(out)
    assert set(after) == set(before)
    moved = {p.name.split(".")[0] for p in (out / "previous").glob("*.json")}
    assert moved == {base["run_id"], *mine}  # the other seed's runs stay as they were
    for rid in mine:  # each repeated dependant started after the repeated source-only run ended
        assert after[rid]["started_at"] >= after[base["run_id"]]["finished_at"]
    untouched = set(before) - moved
    assert all(after[r].to_dict() == before[r].to_dict() for r in untouched)


def test_an_interrupted_rerun_is_finished_by_the_same_command(tmp_path, capsys):
    """``--rerun`` moves the records aside, then runs: killed in between, runs/ held no record of
    the run (nor of its dependants, moved with it) and the same command refused ("no record"),
    leaving the folder without them. It now repeats them from their last records in previous/."""
    from dabench.running.scheduler import prepare_rerun

    out = tmp_path / "out"
    assert main(tiny_run(out, "source-only,linear-probe", "0")) == 0
    before = _records(out)
    so = next(r for r in before.values() if r["spec"]["method"] == "source-only")
    prepare_rerun(out, [so["run_id"]])  # the rerun's first half; the process dies before the repeat
    assert _records(out) == {}
    capsys.readouterr()
    with pytest.warns(UserWarning, match=f"--rerun {so['run_id']}: no record .* repeating it from its last record"):
        rc = main(["run", "--rerun", so["run_id"], "--results", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    after = _records(out)
    assert set(after) == set(before) and all(r["status"] == "complete" for r in after.values())
    assert after[so["run_id"]]["final"] == before[so["run_id"]]["final"]  # the CPU repeats it exactly
    moved = sorted(p.name.split(".")[0] for p in (out / "previous").glob("*.json"))
    assert moved == sorted(before)  # each old record once in previous/: nothing moved twice, none lost


def test_rerun_dry_run_moves_no_record_and_an_unknown_method_is_refused_before_any_moves(tmp_path, capsys):
    """``--rerun ID --dry-run`` used to move the record to previous/ and exit: the folder lost a
    complete run (its leaderboard cell turned missing) for a command that says it only prints.
    A rerun whose method no loaded plugin defines (matrix.json is rewritten by each matrix run
    into the folder) used to move the record aside, then record the repeat ``failed``."""
    out = tmp_path / "out"
    plugin = tmp_path / "rerun_plugin_method.py"
    plugin.write_text(
        "from dabench import register_method\n"
        "from dabench.methods.source_only import SourceOnly\n\n\n"
        "@register_method('rerun-plugin-method')\n"
        "class RerunPluginMethod(SourceOnly):\n"
        '    """Source-only under another name, from a plugin file."""\n'
    )
    with isolated_registries():  # afterwards the plugin is unknown, as in a fresh process
        assert main(tiny_run(out, "source-only", "0")) == 0
        assert main(tiny_run(out, "rerun-plugin-method", "0", "--plugin", str(plugin))) == 0
    before = _records(out)
    mine = next(r for r in before.values() if r["spec"]["method"] == "rerun-plugin-method")
    capsys.readouterr()

    with isolated_registries():  # the dry run loads matrix.json's plugins: forget them after it
        assert main(["run", "--rerun", mine["run_id"], "--results", str(out), "--dry-run"]) == 0
    assert mine["run_id"] in capsys.readouterr().out
    assert set(_records(out)) == set(before) and not (out / "previous").exists()

    # a later matrix run into the folder names other plugins in matrix.json
    matrix = json.loads((out / "matrix.json").read_text())
    (out / "matrix.json").write_text(json.dumps({**matrix, "plugins": [TINY]}))
    assert main(["run", "--rerun", mine["run_id"], "--results", str(out), "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "method 'rerun-plugin-method' is not registered" in err and "--plugin" in err
    assert {r: v.to_dict() for r, v in _records(out).items()} == {r: v.to_dict() for r, v in before.items()}
    assert not (out / "previous").exists()


def test_a_refused_rerun_override_moves_no_record(tmp_path, capsys):
    """``--rerun ID --set lr=..`` is refused (a rerun repeats the run as recorded): the refusal came
    after the record had been moved to previous/, leaving the folder without its result."""
    out = tmp_path / "out"
    assert main(tiny_run(out, "source-only")) == 0
    (rid,) = _records(out)
    capsys.readouterr()
    assert main(["run", "--rerun", rid, "--set", "lr=0.5", "--results", str(out), "--device", "cpu"]) == 2
    assert "the only --set it takes is save_features (given: lr)" in capsys.readouterr().err
    assert set(_records(out)) == {rid} and not (out / "previous").exists()


def test_a_registered_executor_is_one_class_away(tmp_path):
    """A new executor is one registered class: the scheduler builds it by name with the one
    options object, and ``dabench run --executor`` offers it."""
    import dataclasses

    from dabench.cli import build_parser
    from dabench.running.executors import EXECUTORS, register_executor
    from dabench.running.executors.inline import InlineExecutor

    seen: list = []

    @register_executor("test-counting")
    class Counting(InlineExecutor):
        def __init__(self, results_dir, opts):
            seen.append(opts)
            super().__init__(results_dir, opts)

    try:
        specs = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
        opts = ExecutorOptions(device="cpu", progress=False, plugins=[TINY], workers=3)
        summary = run_matrix(specs, tmp_path, opts, executor="test-counting")
        assert [r["status"] for r in summary.ran] == ["complete"]
        # the same options arrive, with the data folder resolved once by the scheduler
        assert seen[0].workers == 3 and seen[0].plugins == (TINY,) and seen[0].data_root is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            opts.workers = 1  # type: ignore[misc]
        run = build_parser()._subparsers._group_actions[0].choices["run"]
        choices = next(a.choices for a in run._actions if a.dest == "executor")
        assert "test-counting" in choices and {"inline", "local", "ray"} <= set(choices)
    finally:
        EXECUTORS._items.pop("test-counting", None)
        EXECUTORS._sources.pop("test-counting", None)


def test_a_spec_whose_run_id_changed_in_transit_is_refused(tmp_path):
    """The worker's two entry points check the run id the parent sent (``_run_id``) against the
    spec they rebuilt, before running anything."""
    from dabench.running.executors.worker import run_group_one, run_one

    (spec,) = expand(Matrix(methods=("source-only",), pairs=("tiny",), seeds=(0,), plugins=(TINY,)))
    sent = {**spec.to_dict(), "_run_id": "0123456789ab"}
    for call in (lambda: run_one(sent, tmp_path), lambda: run_group_one([sent], tmp_path)):
        with pytest.raises(RuntimeError, match=f"spec changed in transit: run id 0123456789ab became {spec.run_id}"):
            call()
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_sigterm_of_dabench_run_is_an_interrupt_exit_143(tmp_path, executor):
    """SIGTERM of ``dabench run`` (a job scheduler's or ``kill``'s stop): one line and exit code 143
    (128 + SIGTERM, what the process reported when SIGTERM killed it outright), the run in hand
    left ``running`` with no process of it left, and the next runner finishes it."""
    import subprocess

    from tiny_runs import DABENCH, pid_alive, sigterm_once_started, wait_for

    out = tmp_path / "out"
    args = [*DABENCH, *tiny_run(out, "slow", "0", "--set", "slow.sleep=0.05", "--set", "steps=80")]
    proc, err = sigterm_once_started([*args, "--executor", executor], out)
    assert proc.returncode == 143, err[-3000:]  # before: -15, killed with no word
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dabench: terminated (SIGTERM):"), err[-3000:]
    (rec,) = RunStore(out).records()
    assert rec["status"] == "running"
    wait_for(lambda: not pid_alive(rec["pid"]), 60, f"the run's process {rec['pid']} to end")
    again = subprocess.run([*args, "--wait-limit", "0"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert RunStore(out).status(rec["run_id"]) == "complete"
