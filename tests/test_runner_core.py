"""Run ids, resuming, the source-only dependency of the few-shot methods, and bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import dabench
from dabench.core.registry import RegistryError
from dabench.core.store import RunStore
from dabench.engine.data import DeviceData
from dabench.engine.train import RunContext, build_method
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, MatrixError, expand, load_matrix_file
from dabench.running.scheduler import run_matrix
from dabench.running.unit import load_pair_data


def test_run_ids_are_stable_across_processes_and_sensitive_to_the_spec():
    spec = expand(Matrix(methods=("dann",), seeds=(0,)))[0]
    code = "from dabench.running.matrix import Matrix, expand; print(expand(Matrix(methods=('dann',), seeds=(0,)))[0].run_id)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == spec.run_id
    changed = expand(Matrix(methods=("dann",), seeds=(0,), overrides={"dann.trade_off": 0.5}))[0]
    assert changed.run_id != spec.run_id
    assert expand(Matrix(methods=("dann",), seeds=(1,)))[0].run_id != spec.run_id


def test_rerun_recomputes_nothing(quick_matrix):
    out, _, specs = quick_matrix
    store = RunStore(out)
    before = {s.run_id: store.record_path(s.run_id).stat().st_mtime_ns for s in specs}
    again = run_matrix(specs, out, ExecutorOptions(device="cpu", progress=False))
    assert again.ran == [] and len(again.skipped_complete) == len(specs)
    after = {s.run_id: store.record_path(s.run_id).stat().st_mtime_ns for s in specs}
    assert before == after


def test_few_shot_methods_reuse_the_source_only_run(quick_matrix):
    out, summary, specs = quick_matrix
    by_method = {s.method: s for s in specs}
    source = by_method["source-only"]
    assert [r["spec"]["method"] for r in summary.ran].count("source-only") == 1
    for name in ("linear-probe", "fine-tune"):
        assert by_method[name].depends_on == source.run_id
    assert RunStore(out).checkpoint_path(source.run_id).exists()


def test_few_shot_methods_really_load_the_checkpoint(quick_matrix, tmp_path):
    """Sabotage the source-only checkpoint: the probe's accuracy must collapse with it."""
    out, _, specs = quick_matrix
    by_method = {s.method: s for s in specs}
    store = RunStore(out)
    good = store.read(by_method["linear-probe"].run_id)["final"]["target_acc"]
    bad_store = RunStore(tmp_path)
    state = torch.load(store.checkpoint_path(by_method["source-only"].run_id), weights_only=True)
    sabotaged = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state.items()}
    bad_store.checkpoints.mkdir(parents=True)
    torch.save(sabotaged, bad_store.checkpoint_path(by_method["source-only"].run_id))
    bad_store.write(store.read(by_method["source-only"].run_id))
    run_matrix([by_method["linear-probe"]], tmp_path, ExecutorOptions(device="cpu", progress=False))
    sab = bad_store.read(by_method["linear-probe"].run_id)
    assert sab["status"] == "complete"
    assert sab["final"]["target_acc"] < 25 < good


def test_linear_probe_leaves_every_backbone_weight_unchanged(quick_matrix):
    out, _, specs = quick_matrix
    spec = next(s for s in specs if s.method == "linear-probe")
    store = RunStore(out)
    pair = dabench.PAIRS.get(spec.pair)
    method = build_method(spec, pair)
    method.net.load_state_dict(torch.load(store.checkpoint_path(spec.depends_on), weights_only=True))
    frozen = {k: v.clone() for k, v in method.net.state_dict().items() if not k.startswith("head.")}
    data = DeviceData(
        pair, load_pair_data(spec.pair, None), torch.device("cpu"), spec.seed, spec.target_shots, spec.eval_shots
    )
    ctx = RunContext(spec, pair, data, torch.device("cpu"))
    method.fit(ctx)
    after = method.net.state_dict()
    for k, v in frozen.items():
        assert torch.equal(v, after[k]), f"linear probe changed {k}"
    assert ctx.curve and ctx.curve[-1]["target_acc"] > 40


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(RegistryError, match=r"valid methods: .*dann.*source-only"):
        expand(Matrix(methods=("danm",)))
    with pytest.raises(RegistryError, match=r"valid pairs: .*digits-offline"):
        expand(Matrix(pairs=("digits",)))
    with pytest.raises(RegistryError, match=r"valid backbones: .*lenet"):
        dabench.BACKBONES.get("lenett")


def test_cli_reports_bad_names_with_exit_code_2(capsys):
    from dabench.cli import main

    assert main(["run", "--methods", "nope", "--results", "/tmp/never"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "source-only" in err
    assert main(["run", "--set", "dann.tradeoff=1", "--methods", "dann", "--dry-run"]) == 2
    assert "trade_off" in capsys.readouterr().err


@pytest.mark.parametrize(
    "body, key, expected",
    [
        ('[matrix]\nmethods = "dann"\n', "matrix.methods", "a non-empty list of strings"),
        ("[matrix]\nseeds = [0, -1]\n", "matrix.seeds", "non-negative integers"),
        ("[matrix]\nmetods = ['dann']\n", "metods", "expected methods, pairs, seeds, plugins"),
        ("[runs]\nx = 1\n", "runs", "expected [matrix]"),
        ("[matrix\nmethods = []\n", "", "not valid TOML"),
    ],
)
def test_malformed_matrix_file_names_file_key_and_expectation(tmp_path, body, key, expected):
    path = tmp_path / "exp.toml"
    path.write_text(body)
    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and expected in msg


def test_matrix_file_round_trip(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(
        textwrap.dedent("""
        [matrix]
        methods = ["source-only", "linear-probe"]
        seeds = 2
        [set]
        steps = 20
        "linear-probe.max_iter" = 10
    """)
    )
    specs = expand(load_matrix_file(path))
    assert [(s.method, s.seed) for s in specs] == [
        ("source-only", 0),
        ("source-only", 1),
        ("linear-probe", 0),
        ("linear-probe", 1),
    ]
    assert all(s.schedule.steps == 20 for s in specs)
    assert specs[-1].hparams["max_iter"] == 10 and specs[-1].protocol == "few-shot"
