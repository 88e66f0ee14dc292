"""Every schedule value and label budget is checked when the matrix is built, before anything runs.

Each bad value must fail ``dabench run --dry-run`` with exit code 2 and one message naming the
key, the value and what is allowed (and, for ``[set]`` in a matrix file, the file). The label
budget (``target_shots``) is checked against the pair's ``max_target_shots`` without loading
data, and again, with the same message, when the data is loaded (pairs whose maximum is unknown).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import warnings

import pytest
import torch

from dabench.cli import main
from dabench.core.domain import Schedule, ScheduleError, lr_factor, target_shot_capacity
from dabench.core.registry import PAIRS, RegistryError
from dabench.running.matrix import Matrix, MatrixError, expand
from dabench.running.unit import load_pair_data

torch.set_num_threads(1)

DRY = ["run", "--dry-run", "--methods", "source-only,linear-probe", "--seeds", "0"]


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect the usage-error exit code, return what it printed on stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, allowed",
    [
        ("steps=0", "an integer >= 1"),
        ("steps=-5", "an integer >= 1"),
        ("steps=1.5", "an integer >= 1"),  # used to become 1
        ("steps=abc", "an integer >= 1"),  # used to say "invalid literal for int() with base 10"
        ("steps=true", "an integer >= 1"),
        ("batch_size=0", "an integer >= 1"),
        ("eval_every=0", "an integer >= 1"),
        ("log_every=0", "an integer >= 1"),
        ("lr=nan", "a finite number > 0"),
        ("lr=-1", "a finite number > 0"),
        ("lr=0", "a finite number > 0"),
        ("lr=inf", "a finite number > 0"),
        ("momentum=1.5", "a number in (0, 1)"),
        ("weight_decay=-0.1", "a finite number >= 0"),
        ("lr_schedule=cosinus", "one of inv, cosine, constant"),
    ],
)
def test_bad_schedule_value_is_refused_naming_key_value_and_range(capsys, setting: str, allowed: str) -> None:
    key, value = setting.split("=")
    err = _error(capsys, DRY + ["--set", setting])
    assert f"--set {key}=" in err and value.lower() in err.lower() and allowed in err
    assert "Traceback" not in err and "invalid literal" not in err


def test_schedule_checks_live_in_schedule_itself() -> None:
    """The table is Schedule's: any construction (plugins' pair registrations, records) is checked."""
    with pytest.raises(ScheduleError, match=r"'steps': expected an integer >= 1, got 0"):
        Schedule(steps=0)
    with pytest.raises(ScheduleError, match="one of inv, cosine, constant"):
        Schedule().replace(lr_schedule="cosine-ish")
    with pytest.raises(ScheduleError, match="unknown schedule key"):
        Schedule().replace(stpes=3)
    s = Schedule().replace(steps=1e3, lr=1)  # integral float and int are normalised, not truncated
    assert s.steps == 1000 and isinstance(s.steps, int) and s.lr == 1.0 and isinstance(s.lr, float)


def test_matrix_file_set_error_names_the_file(tmp_path: pathlib.Path, capsys) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('[matrix]\nmethods = ["source-only"]\nseeds = [0]\n[set]\nlr = -1\n')
    err = _error(capsys, ["run", "--dry-run", "--matrix", str(path)])
    assert f"{path} [set] lr=-1" in err and "a finite number > 0" in err
    # a --set of the same key wins over the file, and is then what an error names
    err = _error(capsys, ["run", "--dry-run", "--matrix", str(path), "--set", "lr=nan"])
    assert "--set lr=" in err and str(path) not in err
    path.write_text('[matrix]\nmethods = ["dann"]\nseeds = [0]\n[set]\n"dann.trade_off" = "lots"\n')
    err = _error(capsys, ["run", "--dry-run", "--matrix", str(path)])
    assert str(path) in err and "dann.trade_off" in err and "'lots'" in err


def test_empty_matrix_file_is_refused(tmp_path: pathlib.Path, capsys) -> None:
    for text in ("", "# nothing yet\n", "[matrix]\n[set]\n"):
        path = tmp_path / "empty.toml"
        path.write_text(text)
        err = _error(capsys, ["run", "--dry-run", "--matrix", str(path)])
        assert f"{path}: empty matrix file" in err and "leave out --matrix" in err


def test_negative_seeds_refused_on_the_cli_like_in_files(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--dry-run", "--seeds", "-1"])
    assert info.value.code == 2
    assert "non-negative integers" in capsys.readouterr().err
    with pytest.raises(MatrixError, match="non-negative integers up to 4294967295, got -1"):
        expand(Matrix(methods=("source-only",), seeds=(-1,)))


def test_workers_with_the_inline_executor_is_refused(capsys) -> None:
    err = _error(capsys, DRY + ["--workers", "4"])
    assert "--workers 4" in err and "--executor local" in err


def test_method_hyperparameter_types_are_checked_with_their_origin(capsys) -> None:
    err = _error(capsys, ["run", "--dry-run", "--methods", "dann", "--seeds", "0", "--set", "dann.trade_off=nan"])
    assert "--set" in err and "dann.trade_off" in err and "finite float" in err


# --- label budgets ---------------------------------------------------------------------------
@pytest.mark.parametrize("shots", [-1, 10000, 1.5, "many"])
def test_impossible_target_shots_refused_naming_the_pair_maximum(capsys, shots) -> None:
    err = _error(capsys, DRY + ["--set", f"target_shots={shots}"])
    assert "target_shots" in err and str(shots) in err
    if shots == 10000:  # digits-offline's adaptation half of optdigits: 87 images of digit 8
        assert "'digits-offline'" in err and "from 0 to 87" in err


def test_few_shot_method_with_zero_shots_is_refused(capsys) -> None:
    """It used to become a 'uda' linear probe that then failed with IndexError."""
    err = _error(capsys, DRY + ["--set", "target_shots=0"])
    assert "linear-probe is a few-shot method" in err and "at least 1" in err
    # UDA methods alone run fine with 0 shots (nothing removed from evaluation)
    specs = expand(Matrix(methods=("source-only",), seeds=(0,), overrides={"target_shots": 0}))
    assert [s.eval_shots for s in specs] == [0]


def test_uda_method_semi_supervised_shots_are_bounded_too() -> None:
    with pytest.raises(MatrixError, match=r"dann\.target_shots=88 on pair 'digits-offline'.*from 0 to 87"):
        expand(Matrix(methods=("dann",), seeds=(0,), overrides={"dann.target_shots": 88}))
    specs = expand(Matrix(methods=("dann",), seeds=(0,), overrides={"dann.target_shots": 87}))
    assert specs[-1].target_shots == 87


def test_registered_maximum_matches_the_real_data_and_load_time_check_backs_it_up() -> None:
    pair = PAIRS.get("digits-offline")
    data = load_pair_data("digits-offline", None)
    assert pair.max_target_shots == target_shot_capacity(data) == 87
    # a pair that does not declare its maximum (Office-31, plugins) passes the matrix and fails
    # in the run, once its data is loaded, with the same message (it used to train on what existed)
    from dabench.engine.train import execute

    unknown = dataclasses.replace(pair, max_target_shots=None)
    (spec,) = [
        s
        for s in expand(Matrix(methods=("linear-probe",), seeds=(0,), overrides={"target_shots": 87}))
        if s.method == "linear-probe"
    ]
    spec = dataclasses.replace(spec, target_shots=88, eval_shots=88, depends_on=None)
    with pytest.raises(ValueError, match=r"target_shots=88 on pair 'digits-offline'.*87 images in its smallest class"):
        execute(spec, unknown, data, torch.device("cpu"))


def test_folder_pair_maximum_from_file_counts(tmp_path: pathlib.Path) -> None:
    """Folder pairs know their maximum from the file counts (no decoding); it equals what loading gives."""
    from torchvision.io import write_png

    for domain, counts in (("src", {"a": 3, "b": 3}), ("tgt", {"a": 4, "b": 5})):
        for c, n in counts.items():
            (tmp_path / domain / c).mkdir(parents=True)
            for i in range(n):
                img = torch.full((1, 8, 8), 40 * i, dtype=torch.uint8)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    write_png(img, str(tmp_path / domain / c / f"{i}.png"))
    base = f"folder:source={tmp_path / 'src'},target={tmp_path / 'tgt'},size=8,channels=1"
    pair = PAIRS.get(base)  # eval=half keeps 4-2=2 of a and 5-2=3 of b for adaptation
    assert pair.max_target_shots == 2 and pair.target_shots == 2  # the default 5 shrinks to what exists
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = pair.load(tmp_path / "root")
    assert target_shot_capacity(data) == 2
    with pytest.raises(RegistryError, match=r"shots=3 .* from 0 to 2"):
        PAIRS.get(base + ",shots=3")
    assert PAIRS.get(base + ",eval=all").max_target_shots == 4


# --- the cosine schedule the choices offer ----------------------------------------------------
def test_cosine_schedule_is_what_the_engine_runs(monkeypatch) -> None:
    """The engine's learning rates over 4 steps follow 0.5(1+cos(pi p)); they used to stay constant."""
    from dabench.engine.train import execute

    lrs: list[float] = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[-1]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    (spec,) = expand(
        Matrix(
            methods=("source-only",),
            seeds=(0,),
            overrides={
                "steps": 4,
                "batch_size": 8,
                "eval_every": 4,
                "log_every": 4,
                "lr_schedule": "cosine",
                "lr": 0.02,
            },
        )
    )
    pair = PAIRS.get(spec.pair)
    execute(spec, pair, load_pair_data(spec.pair, None), torch.device("cpu"))
    expected = [0.02 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert lrs == pytest.approx(expected)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0) and lr_factor("inv", 0.0) == 1.0


def test_unknown_rule_is_refused_before_anything_runs(tmp_path: pathlib.Path, capsys) -> None:
    """``dabench run --rule`` names the printed leaderboard's rule; a typo used to surface only in
    the report after the whole matrix had trained."""
    results = tmp_path / "r"
    argv = ["run", "--methods", "source-only", "--seeds", "0", "--set", "steps=2", "--no-progress"]
    err = _error(capsys, [*argv, "--results", str(results), "--rule", "source_val"])
    assert "--rule source_val" in err and "valid rules: last, source-val" in err
    assert not (results / "runs").exists()  # nothing trained, nothing recorded
    assert _error(capsys, ["run", "--dry-run", "--rule", "best"]).count("valid rules") == 1


def test_rule_dev_without_saved_features_is_refused_before_anything_runs(tmp_path: pathlib.Path, capsys) -> None:
    """DEV reads each run's saved features: ``run --rule dev`` without them used to train the whole
    matrix and only then have its report refuse."""
    results = tmp_path / "r"
    argv = ["run", "--methods", "source-only,shot", "--seeds", "0", "--set", "steps=2", "--no-progress"]
    err = _error(capsys, [*argv, "--results", str(results), "--rule", "dev"])
    assert "--rule dev" in err and "1 of the 2 runs" in err  # shot is source-free: DEV is n/a there, not missing
    assert "--set save_features=true" in err
    assert not (results / "runs").exists()
    out = main([*argv, "--results", str(results), "--rule", "dev", "--set", "save_features=true", "--dry-run"])
    assert out == 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--set", "backbone=lenett"],
            ["--set backbone='lenett'", "unknown backbone", "did you mean 'lenet'", "cnn32"],
        ),
        (["--sweep", "backbone=lenet,nope"], ["--sweep backbone='nope'", "unknown backbone"]),
        # a misspelt option used to be swallowed by the factory: the run trained without it
        (["--set", "backbone.weigths=/x.pth"], ["--set backbone.weigths", "'lenet'", "no option 'weigths'"]),
        (
            ["--set", "backbone=cnn32", "--set", "backbone.sise=large"],
            ["backbone.sise", "'cnn32'", "size, instance_norm, dropout, noise"],
        ),
    ],
)
def test_unknown_backbone_or_backbone_option_is_refused_before_anything_runs(
    capsys, argv: list[str], expected: list[str]
) -> None:
    err = _error(capsys, [*DRY, *argv])
    for text in expected:
        assert text in err, (text, err)


def test_a_valid_backbone_option_passes_the_check(capsys) -> None:
    argv = [*DRY, "--set", "backbone=cnn32", "--set", "backbone.size=large", "--pairs", "digits-offline"]
    assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_device_that_is_no_device_is_one_line_before_anything_runs(tmp_path, capsys, device, command) -> None:
    """``--device gpu`` ended in torch's RuntimeError traceback (bench), or in every run recorded failed."""
    out = tmp_path / "res"
    argv = ["run", "--methods", "source-only", "--seeds", "0", "--set", "steps=2", "--results", str(out)]
    if command == "bench":
        argv = ["bench", "--methods", "source-only", "--steps", "1"]
    assert main([*argv, "--device", device]) == 2
    assert f"device {device!r} is not a device; expected auto" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_for_local_runs_not_for_a_cluster() -> None:
    from dabench.running.plan import check_device

    with pytest.raises(MatrixError, match="sees no CUDA device on this machine; use cpu, or auto"):
        check_device("cuda")
    check_device("cuda", local=False)  # a SLURM/Ray submission from a machine without a GPU
    import dabench

    with pytest.raises(MatrixError, match="device 'cuda:1'"):
        dabench.run(methods="source-only", seeds=[0], device="cuda:1", results_dir="/nonexistent/never-written")
