"""``dabench bench`` runs on the CPU and writes its table; backbone fallback is explicit."""

from __future__ import annotations

import json

import pytest
import torch

from dabench.cli import main
from dabench.core.registry import RegistryError
from dabench.speed.bench import backbone_factory


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # the test machines are shared


def test_bench_writes_table(tmp_path, capsys):
    out = tmp_path / "cpu.md"
    assert (
        main(["bench", "--steps", "3", "--warmup", "1", "--batch-size", "16", "--device", "cpu", "--out", str(out)])
        == 0
    )
    text = out.read_text()
    assert "| method | images/step | steps/s | images/s | ratio method/bare |" in text
    assert "- device: cpu" in text and f"- torch: {torch.__version__}" in text
    assert "batch size: 16" in text and "date:" in text
    assert "| bare lenet + linear head | 32 |" in text  # the DA methods' images/step
    for name in ("bare lenet", "source-only", "dann", "dan", "coral", "fine-tune", "linear-probe"):
        assert f"| {name}" in text, name
    raw = json.loads(out.with_suffix(".json").read_text())
    by_name = {m["method"]: m for m in raw["methods"]}
    assert by_name["dann"]["images_per_step"] == 32  # source + target count
    assert by_name["source-only"]["images_per_step"] == 16
    assert by_name["linear-probe"]["images_per_s"] is None  # its own fit, reported as a note
    assert raw["bare_images_per_s"] > 0
    assert "wrote" in capsys.readouterr().out


def test_bench_synthetic_mode(tmp_path):
    """No dataset: random uint8 photos through the same DeviceData/augmentation path."""
    out = tmp_path / "syn.md"
    assert (
        main(
            [
                "bench",
                "--synthetic",
                "64",
                "--backbone",
                "lenet",
                "--image-size",
                "32",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--batch-size",
                "8",
                "--methods",
                "source-only,dann",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "synthetic-3x32" in text and "| dann | 16 |" in text


def test_unregistered_backbone_falls_back_to_timm_with_a_note():
    make, note = backbone_factory("resnet18", in_channels=3, image_size=64)
    assert "not registered" in note and "lenet" in note
    assert make()(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_unknown_backbone_names_the_registered_ones():
    with pytest.raises(RegistryError, match="lenet"):
        backbone_factory("no-such-net", in_channels=3, image_size=64)


def test_bench_seed_batch_column(tmp_path):
    """--seed-batch S: each step method gets steps/s per seed with S seeds batched; MCD (several
    optimisers) falls back, shown as — with the reason; the linear probe (own fit) has no step rate."""
    out = tmp_path / "cpu.md"
    argv = ["bench", "--methods", "source-only,dann,mcd,linear-probe", "--steps", "2", "--warmup", "1"]
    assert main([*argv, "--batch-size", "8", "--device", "cpu", "--seed-batch", "2", "--out", str(out)]) == 0
    assert "seed-batch steps/s/seed" in out.read_text()
    assert "seed-batch graphs steps/s/seed" in out.read_text()  # the column; CUDA only, so "—" here
    by_name = {m["method"]: m for m in json.loads(out.with_suffix(".json").read_text())["methods"]}
    assert by_name["source-only"]["seed_batch_steps_per_s"] > 0
    assert by_name["source-only"]["seed_batch_graph_steps_per_s"] is None  # no CUDA graphs on the CPU
    assert by_name["dann"]["seed_batch_steps_per_s"] > 0
    assert by_name["mcd"]["seed_batch_steps_per_s"] is None
    assert "seed batch: runs separately (mcd declares several optimisers" in by_name["mcd"]["note"]
    assert by_name["linear-probe"]["seed_batch_steps_per_s"] is None
    assert by_name["linear-probe"]["note"].startswith("own fit()")  # not a step loop: no seed-batch rate asked


def test_a_failing_seed_batched_step_is_reported_not_shown_as_not_measured(tmp_path, monkeypatch):
    """A seed-batched step that raises (DAN's did once, on a GPU) is a failure the engine's runs
    would record: the bench says so in the note instead of a bare —."""
    import dabench.speed.bench as bench

    def broken(*args, **kwargs):
        raise RuntimeError("expected scalar type BFloat16 but found Float\n(more lines)")

    monkeypatch.setattr(bench, "train_batched", broken)
    out = tmp_path / "cpu.md"
    argv = ["bench", "--methods", "source-only", "--steps", "2", "--warmup", "1", "--batch-size", "8"]
    assert main([*argv, "--device", "cpu", "--seed-batch", "2", "--out", str(out)]) == 0
    only = json.loads(out.with_suffix(".json").read_text())["methods"][0]
    assert only["seed_batch_steps_per_s"] is None
    assert only["note"] == "seed batch failed: RuntimeError: expected scalar type BFloat16 but found Float"
    assert "seed batch failed: RuntimeError" in out.read_text()


class _FakeClock:
    """A clock the fake run advances: ``fixed`` seconds per call plus ``per_step`` per step, and
    ``noise[i]`` extra seconds on the i-th call (interference only ever adds time)."""

    def __init__(self, fixed: float, per_step: float, noise: list[float]) -> None:
        self.now, self.fixed, self.per_step, self.noise, self.calls = 0.0, fixed, per_step, list(noise), 0

    def __call__(self) -> float:
        return self.now

    def run(self, n: int) -> int:
        self.now += self.fixed + n * self.per_step + (self.noise[self.calls] if self.calls < len(self.noise) else 0.0)
        self.calls += 1
        return n


def test_steady_rate_cancels_the_fixed_cost_of_a_run_and_reports_it():
    """A captured run pays its warm-up steps and capture once: timed over one length, 300 steps at
    2,000 steps/s behind a 0.1-s capture read 1,200 steps/s. Two lengths give the steady rate and
    the fixed cost apart; the fastest of the repeats keeps interference out."""
    from dabench.speed.bench import steady_rate

    clock = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[0.0, 0.3, 0.5, 0.0])  # 2nd and 3rd calls disturbed
    got = steady_rate(clock.run, 300, repeats=2, clock=clock)
    assert got.per_s == pytest.approx(2000.0, rel=1e-9)
    assert got.setup_s == pytest.approx(0.1, rel=1e-9)
    assert clock.calls == 4
    naive = 300 / (0.1 + 300 / 2000)
    assert naive == pytest.approx(1200.0)  # what one timed call would have said


def test_steady_rate_reports_the_spread_of_its_repeats():
    """A reader must tell a 0.90 from a 0.95: beside the rate, the range of the rates single
    repeats give (each repeat's short and long run differenced alone). Quiet repeats: no spread."""
    from dabench.speed.bench import steady_rate

    quiet = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[])
    got = steady_rate(quiet.run, 300, repeats=3, clock=quiet)
    assert (got.low, got.per_s, got.high, got.repeats) == pytest.approx((2000.0, 2000.0, 2000.0, 3))
    assert quiet.calls == 6  # repeats x two lengths
    # repeat 1 clean; repeat 2's long run +0.03 s (a slower single rate); repeat 3's short run
    # +0.01 s (a faster one). The fastest time per length still gives the true rate.
    noisy = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[0.0, 0.0, 0.0, 0.03, 0.01, 0.0])
    got = steady_rate(noisy.run, 300, repeats=3, clock=noisy)
    assert got.per_s == pytest.approx(2000.0)
    assert got.low == pytest.approx(300 / (0.15 + 0.03))
    assert got.high == pytest.approx(300 / (0.15 - 0.01))
    assert got.scaled(64).per_s == pytest.approx(128_000.0) and got.scaled(64).low == pytest.approx(64 * got.low)


def test_the_bare_network_is_timed_like_a_method(monkeypatch):
    """The ratio method/bare compares like with like: the bare network's rate comes from the same
    steady-state estimator, with the same repeats, as every method's (it was one timed run against
    the fastest of two for a method: a bias towards the method by the noise alone)."""
    import dabench.speed.bench as bench
    from dabench.core.registry import PAIRS

    seen: list[tuple[int, int, list[int]]] = []
    real = bench.steady_rate

    def spy(run, steps, repeats=3, clock=None):
        calls: list[int] = []

        def counted(n: int) -> int:
            calls.append(n)
            return run(n)

        seen.append((steps, repeats, calls))
        return real(counted, steps, repeats)

    monkeypatch.setattr(bench, "steady_rate", spy)
    pair = PAIRS.get("digits-offline")
    make, _ = backbone_factory("lenet", 1, 28)
    got = bench.bare_images_per_s(make, pair, 8, 2, 1, torch.device("cpu"), repeats=2)
    assert [(s, r) for s, r, _ in seen] == [(2, 2)]
    assert seen[0][2] == [2, 4, 2, 4]  # both lengths, alternating, each repeat
    assert got.low <= got.per_s <= got.high and got.per_s > 0


def test_the_table_shows_each_ratio_with_its_spread_and_why_a_column_is_empty():
    """Ratios carry the range of single repeats (method low / bare high .. method high / bare low);
    the seed-batch cells carry S x per-seed / one run (eager vs eager, captured vs captured); a
    column empty in every row is named in the legend with the reason, not left as a bare dash."""
    from dabench.speed.bench import BenchResult, MethodTiming, _unmeasured, markdown

    result = BenchResult(
        device="cpu",
        torch_version="x",
        pair="p",
        backbone="lenet",
        image_size=28,
        batch_size=64,
        steps=10,
        warmup=1,
        compile=False,
        date="d",
        bare_images_per_s=6400.0,
        bare_by_batch={64: 6400.0, 128: 12800.0},
        bare_range_by_batch={64: (6000.0, 6600.0), 128: (12000.0, 13200.0)},
        bare_graph_by_batch={64: 64000.0, 128: 128000.0},
        bare_graph_range_by_batch={64: (64000.0, 64000.0), 128: (128000.0, 128000.0)},
        seed_batch=3,
        repeats=3,
        unmeasured=_unmeasured(torch.device("cpu"), True, 0, False),
    )
    result.methods.append(
        MethodTiming(
            "dann",
            images_per_step=128,
            steps_per_s=90.0,
            images_per_s=90.0 * 128,
            steps_per_s_range=(85.0, 95.0),
            graph_steps_per_s=900.0,
            graph_steps_per_s_range=(900.0, 900.0),
            seed_batch_steps_per_s=40.0,
            seed_batch_graph_steps_per_s=600.0,
        )
    )
    text = markdown(result)
    row = next(line for line in text.splitlines() if line.startswith("| dann |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "90.0 (−6/+6 %)"  # steps/s and its spread
    # 11,520 / 12,800 = 0.90; range 85*128/13,200 = 0.82 .. 95*128/12,000 = 1.01
    assert cells[4] == "0.90 (0.82–1.01)"
    assert cells[6] == "0.90 (0.90–0.90)"  # captured vs captured bare
    assert cells[11] == "40.0 (1.33×)"  # 3 seeds x 40 / 90 steps/s of one run
    assert cells[12] == "600.0 (2.00×)"  # 3 x 600 / 900 captured steps/s of one run
    assert "each 3 times" in text
    assert "- not measured in this bench, graphs steps/s, ratio graphs, seed-batch graphs: CUDA graphs need" in text
    assert "- not measured in this bench, host syncs:" in text


def test_bench_refuses_no_repeats(capsys):
    assert main(["bench", "--repeats", "0", "--device", "cpu"]) != 0
    assert "--repeats must be >= 1 (got 0)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "dabench: error: --steps must be >= 1 (got 0)\n"),
        # one seed is run separately by the engine: no batched step to time, not a silent empty column
        (["--seed-batch", "1"], "dabench: error: --seed-batch must be 0 (off) or >= 2 seeds (got 1)\n"),
        (["--seed-batch", "-2"], "dabench: error: --seed-batch must be 0 (off) or >= 2 seeds (got -2)\n"),
        # 0 read as "the pair's batch" before, a negative one failed deep in torch
        (["--batch-size", "0"], "dabench: error: --batch-size must be >= 1 (got 0)\n"),
        (["--image-size", "0"], "dabench: error: --image-size must be >= 1 (got 0)\n"),
        (["--synthetic", "-1"], "dabench: error: --synthetic must be 0 (off) or a number of images (got -1)\n"),
    ],
)
def test_bench_refuses_bad_values_each_named_with_what_is_valid(tmp_path, capsys, argv, message):
    out = tmp_path / "never-written.md"
    quick = ["--methods", "linear-probe", "--steps", "1", "--warmup", "0", "--repeats", "1"]  # if not refused
    assert main(["bench", "--device", "cpu", "--out", str(out), *quick, *argv]) != 0
    captured = capsys.readouterr()
    assert captured.err == message  # one line: the flag, its value, what is valid; nothing else named
    assert not out.exists()


class _Machine:
    """A fake machine for :func:`run_bench`'s rounds: runs advance a shared clock by their steps times
    their cost per step times a slow-down that grows round by round (GPU heat, a shared CPU's load),
    and log which run was called with how many steps."""

    def __init__(self, calls_per_round: int, slowdown: tuple[float, ...] = (1.0,)) -> None:
        self.now, self.calls, self.per_round, self.slowdown = 0.0, [], calls_per_round, slowdown

    def __call__(self) -> float:
        return self.now

    def run(self, key, seconds_per_step: float):
        def go(n: int) -> int:
            r = min(len(self.calls) // self.per_round, len(self.slowdown) - 1)
            self.now += n * seconds_per_step * self.slowdown[r]
            self.calls.append((key, n))
            return n

        return go


def _fake_bench(monkeypatch, machine: _Machine, method_cost: dict[str, tuple[int, float]], seed_batch=None):
    """Patch run_bench's set-up (bare runners, MethodRuns, seed batching) with ``machine``'s runs;
    ``method_cost``: images/step and seconds/step per method; the bare network costs 1 ms per 16
    images. The real MethodRuns.finish, interleaved_rates and paired ratios are used."""
    import dabench.speed.bench as bench
    from dabench.speed.bench import MethodRuns, MethodTiming

    class FakeRuns(MethodRuns):
        def __init__(self, name, case, cuda_graphs=False):
            ips, cost = method_cost[name]
            self.timing, self.graph_notes, self.graph_note = MethodTiming(name, images_per_step=ips), [], ""
            self.runs = {"eager": machine.run(name, cost)}

    monkeypatch.setattr(bench, "MethodRuns", FakeRuns)
    monkeypatch.setattr(bench, "bare_runner", lambda make, pair, b, *a, **k: machine.run(f"bare {b}", b / 16 * 1e-3))
    monkeypatch.setattr(bench, "bare_ops_per_step", lambda *a, **k: 38)
    monkeypatch.setattr(bench, "_CLOCK", machine)
    if seed_batch is not None:
        monkeypatch.setattr(bench, "seed_batch_runner", seed_batch)
    return bench


def test_seed_batch_is_not_timed_under_compile_where_the_engine_runs_seeds_separately(monkeypatch):
    """With --compile the engine never seed-batches (engine/seed_batch.py runs the seeds
    separately): an uncompiled vmapped step divided by the compiled single run's steps/s gave a
    (k×) for a path no run takes. The column says why it is empty instead."""
    timed: list[str] = []
    machine = _Machine(calls_per_round=8)

    def seed_batch_runner(name, case, seeds, cuda_graphs=False):
        timed.append(name)
        return machine.run(f"{name} x{seeds}", 0.2), "", []  # 5 steps/s per seed

    bench = _fake_bench(monkeypatch, machine, {"source-only": (16, 0.1)}, seed_batch_runner)  # 10 steps/s
    kw = {"methods": ["source-only"], "steps": 2, "warmup": 1, "batch_size": 16, "device": "cpu", "repeats": 1}
    result = bench.run_bench(**kw, seed_batch=2, compile=True, log=lambda _: None)
    assert timed == [] and result.methods[0].seed_batch_steps_per_s is None
    why = result.unmeasured["seed-batch steps/s/seed, seed-batch graphs"]
    assert why.startswith("--compile (the engine runs the seeds of a compiled run separately")
    row = next(line for line in bench.markdown(result).splitlines() if line.startswith("| source-only |"))
    assert "×)" not in row  # no seed-batch ratio against the compiled single run
    eager = bench.run_bench(**kw, seed_batch=2, compile=False, log=lambda _: None)
    assert timed == ["source-only"] and eager.methods[0].seed_batch_steps_per_s == pytest.approx(5.0)
    row = next(line for line in bench.markdown(eager).splitlines() if line.startswith("| source-only |"))
    assert "| 5.0 (1.00×) |" in row  # 2 seeds x 5.0 per seed / 10.0 steps/s of one run


def test_the_bare_network_and_the_methods_are_timed_in_shared_rotated_rounds(monkeypatch):
    """All repeats of one method, then all of the next, let a drifting clock land on the methods
    timed late (the bare network was timed at both ends only). The bench times in rounds: each round
    times every run once at both lengths, the order rotated by one per round."""
    machine = _Machine(calls_per_round=8)
    bench = _fake_bench(monkeypatch, machine, {"source-only": (16, 2e-3), "dann": (32, 8e-3)})
    kw = {"methods": ["source-only", "dann"], "steps": 2, "warmup": 1, "batch_size": 16, "device": "cpu"}
    result = bench.run_bench(**kw, repeats=3, log=lambda _: None)
    keys = ["bare 16", "bare 32", "source-only", "dann"]
    assert [n for _, n in machine.calls] == [2, 4] * 12  # each run: short then long, every time
    timed = [k for k, _ in machine.calls[::2]]
    assert timed == keys + keys[1:] + keys[:1] + keys[2:] + keys[:2]  # 3 rounds, rotated by one each
    assert result.interleaved and result.repeats == 3
    assert len({m.method for m in result.methods}) == 2


def test_each_ratio_is_the_median_of_ratios_paired_within_a_round(monkeypatch):
    """A clock that slows down round by round (1x, 2x, 4x) moves the bare network and the methods
    alike within a round: the paired ratios are exact (source-only: 16 images in 2 ms against the
    bare 16 in 1 ms = 0.50; dann: 32 in 8 ms against the bare 32 in 2 ms = 0.25), and the drift is
    named from the bare network's first and last rounds."""
    machine = _Machine(calls_per_round=8, slowdown=(1.0, 2.0, 4.0))
    bench = _fake_bench(monkeypatch, machine, {"source-only": (16, 2e-3), "dann": (32, 8e-3)})
    kw = {"methods": ["source-only", "dann"], "steps": 2, "warmup": 1, "batch_size": 16, "device": "cpu"}
    result = bench.run_bench(**kw, repeats=3, log=lambda _: None)
    by = {m.method: m for m in result.methods}
    assert by["source-only"].ratio == pytest.approx((0.5, 0.5, 0.5))
    assert by["dann"].ratio == pytest.approx((0.25, 0.25, 0.25))
    # the rates themselves carry the drift: the fastest round's rate, the slowest round's in the range
    assert by["dann"].steps_per_s == pytest.approx(125.0) and by["dann"].steps_per_s_range[0] == pytest.approx(31.25)
    assert result.bare_drift[16] == pytest.approx((16_000.0, 4_000.0))
    text = bench.markdown(result)
    assert "images/s in the first → the last round: batch 16: 16,000 → 4,000 (-75 %)" in text
    row = next(line for line in text.splitlines() if line.startswith("| dann |"))
    assert "| 0.25 (0.25–0.25) |" in row  # not 1,000 × 32 / 32,000 ... ranges crossing rounds (0.06–1.00)
    assert "the median of the rounds' own ratios" in text


def test_a_negative_fixed_cost_is_shown_as_noise_not_as_a_measured_zero():
    """``dabench bench --steps 3`` showed ``setup ms 0`` for a method: the estimate t₁ − done₁/rate
    came out negative (the long run slower per step than the short one, by noise) and was clipped
    to 0, which reads as measured. It is kept signed and shown as ≈0 with the noise."""
    from dabench.speed.bench import BenchResult, MethodTiming, markdown, steady_rate

    # no fixed cost; both long runs disturbed by +0.01 s: rate 300 / 0.16, setup 0.15 − 0.16 = −10 ms
    clock = _FakeClock(fixed=0.0, per_step=1 / 2000, noise=[0.0, 0.01, 0.0, 0.01])
    got = steady_rate(clock.run, 300, repeats=2, clock=clock)
    assert got.plain == 0 and got.setup_s == pytest.approx(-0.01)
    result = BenchResult("cpu", "t", "p", "lenet", 28, 16, 2, 1, False, "d", 1000.0, bare_by_batch={16: 1000.0})
    result.methods = [
        MethodTiming("a", 16, 50.0, 800.0, setup_ms=1e3 * got.setup_s),
        MethodTiming("b", 16, 50.0, 800.0, setup_ms=0.4, graph_steps_per_s=60.0, graph_setup_ms=-2.0),
    ]
    text = markdown(result)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["| a"][7] == "≈0 (−10 ms, noise)"
    assert rows["| b"][7] == "0 / ≈0 (−2 ms, noise)"  # a real, small fixed cost still reads as a number
    assert "≈0 (−x ms, noise): the estimate came out negative" in text


def test_ops_per_step_counts_the_captured_steps_against_the_bare_network():
    """ops/step (device-independent, what a launch-free GPU replays): the bare network's captured
    step, and each method's captured body (emulated off CUDA), with the engine's data path,
    counters and optimiser inside; a DA method pushes a second batch and its own loss."""
    from dabench.core.registry import PAIRS
    from dabench.running.unit import load_pair_data
    from dabench.speed.bench import BenchCase, bare_ops_per_step, time_method

    pair = PAIRS.get("digits-offline")
    data = load_pair_data("digits-offline", None)
    make, _ = backbone_factory("lenet", pair.channels, pair.image_size, {})
    cpu = torch.device("cpu")
    bare = bare_ops_per_step(make, pair, 16, cpu)
    assert 20 < bare < 80, bare  # LeNet fwd + bwd + CE + one fused SGD kernel
    case = BenchCase(pair, data, cpu, batch_size=16, steps=2, warmup=1, make_backbone=make)
    only, dann = time_method("source-only", case), time_method("dann", case)
    # off CUDA the graph-mode loop only runs its body eagerly to count it: no "captured" in the JSON
    assert only.graph_note == dann.graph_note == ""
    assert only.graph_steps_per_s is None  # no rate without a real graph
    assert bare < only.graph_ops < dann.graph_ops, (bare, only.graph_ops, dann.graph_ops)
    assert only.setup_ms is not None and only.steps_per_s > 0


def test_the_op_counter_counts_computations_not_views():
    from dabench.engine.opcount import count_ops

    x = torch.randn(4, 3, requires_grad=True)
    assert count_ops(lambda: x.view(-1)).total == 0  # a view: no kernel
    ops = count_ops(lambda: (x * 2).sum().backward())
    # forward mul + sum; backward: the seed (ones_like), expand (a view), mul by 2, the accumulation
    assert ops.by_name["mul"] == 2 and ops.by_name["sum"] == 1, dict(ops.by_name)
    assert ops.total >= 4


def test_the_bench_never_counts_operations_of_a_compiled_step():
    """Under a Python dispatch mode ``torch.compile``d modules run their eager code, which a CUDA
    capture would then record: with ``--compile`` the bench must not ask the engine to count."""
    from dabench.core.registry import PAIRS
    from dabench.running.unit import load_pair_data
    from dabench.speed.bench import EngineBench

    pair = PAIRS.get("digits-offline")
    make, _ = backbone_factory("lenet", pair.channels, pair.image_size, {})
    seen = []
    for compiled in (False, True):
        bench = EngineBench("source-only", pair, load_pair_data("digits-offline", None), torch.device("cpu"), 8, make,
                            compile=compiled)  # fmt: skip
        bench.method.fit = lambda ctx: seen.append(ctx.count_ops)  # type: ignore[method-assign]  # no training
        bench.run(1)
    assert seen == [True, False]


def test_a_profile_is_per_step_and_leaves_out_what_a_run_pays_once():
    """``--profile``: the difference of profiled runs of n and 2n steps, divided by n, so a
    run's setup (here one large matmul per call) is not spread over its steps."""
    from dabench.speed.profile import profile_steps

    a, w = torch.randn(64, 64), torch.randn(64, 64)
    big = torch.randn(256, 256)

    def run(n: int) -> int:
        torch.mm(big, big)  # once per run: setup
        for _ in range(n):
            torch.addmm(a, a, w).relu_()  # twice per step: two calls each
            torch.addmm(a, a, w).relu_()
        return n

    prof = profile_steps("toy", run, 5, torch.device("cpu"))
    by_name = {o.name: o for o in prof.ops}
    assert by_name["addmm"].calls_per_step == 2 and by_name["relu_"].calls_per_step == 2, prof.ops
    assert "mm" not in by_name  # the setup cancels
    assert prof.clock == "cpu" and prof.us_per_step > 0
    assert prof.ops == sorted(prof.ops, key=lambda o: -o.us_per_step)
    assert "addmm ×2" in prof.summary()


def test_bench_profile_section(tmp_path):
    """``dabench bench --profile`` adds where each step's time goes, bare network and methods."""
    out = tmp_path / "p.md"
    argv = ["bench", "--methods", "source-only,dann", "--steps", "2", "--warmup", "1", "--batch-size", "8"]
    assert main([*argv, "--device", "cpu", "--profile", "--out", str(out)]) == 0
    text = out.read_text()
    section = text.split("## Where a step's time goes (--profile)")[1]
    for row in ("| bare, batch 8 |", "| bare, batch 16 |", "| source-only |", "| dann |"):
        assert row in section, row
    assert "convolution" in section  # LeNet's own operations, by name
    raw = json.loads(out.with_suffix(".json").read_text())
    dann = next(m for m in raw["methods"] if m["method"] == "dann")
    names = {o["name"] for o in dann["profile"]["ops"]}
    assert "binary_cross_entropy_with_logits" in names  # the domain discriminator's loss: the method's own op
    assert "8" in raw["bare_profiles"] or 8 in raw["bare_profiles"]


def test_a_failing_profiler_costs_the_section_not_the_rates(tmp_path, monkeypatch):
    """CUPTI missing or busy on some GPU machines: the rates are still written, the failure named."""
    import dabench.speed.bench as bench

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(bench, "profile_steps", broken)
    out = tmp_path / "p.md"
    argv = ["bench", "--methods", "source-only", "--steps", "2", "--warmup", "1", "--batch-size", "8"]
    assert main([*argv, "--device", "cpu", "--profile", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| source-only | 8 |" in text  # its rate row
    assert "profile failed: RuntimeError: CUPTI_ERROR_NOT_INITIALIZED" in text
    assert "note: bare, batch 8: profile failed" in text
    assert "## Where a step's time goes" not in text


def test_every_profile_is_taken_before_the_first_graph_capture(tmp_path, monkeypatch):
    """CUPTI attaching after a CUDA graph capture has broken graphs in some torch/CUDA versions:
    the bench profiles everything first, then times (and captures)."""
    import dabench.speed.bench as bench
    from dabench.engine import graphs

    order: list[str] = []
    real_profile, real_capture = bench.profile_steps, graphs.CapturedStep.capture

    def profile_steps(label, *args, **kwargs):
        order.append("profile")
        return real_profile(label, *args, **kwargs)

    def capture(self):
        order.append("capture")
        return real_capture(self)

    monkeypatch.setattr(bench, "profile_steps", profile_steps)
    monkeypatch.setattr(graphs.CapturedStep, "capture", capture)
    argv = ["bench", "--methods", "source-only,dann", "--steps", "2", "--warmup", "1", "--batch-size", "8"]
    assert main([*argv, "--device", "cpu", "--profile", "--out", str(tmp_path / "p.md")]) == 0
    assert order.count("profile") == 4 and "capture" in order, order  # 2 bare batches + 2 methods
    assert order.index("capture") > max(i for i, o in enumerate(order) if o == "profile"), order


def test_a_difference_below_the_timing_noise_is_counted_and_noted_not_silent():
    """When the long run is not slower than the short one (noise larger than the extra steps),
    the long run's plain rate stands in for the steady one; that rate includes the fixed cost,
    so the table must say it happened (it was silent)."""
    from dabench.speed.bench import steady_rate

    # repeat 1 clean; repeat 2's short run +0.5 s, longer than its long run: a negative difference
    clock = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[0.0, 0.0, 0.5, 0.0])
    got = steady_rate(clock.run, 300, repeats=2, clock=clock)
    assert got.plain == 1 and got.per_s == pytest.approx(2000.0)
    assert got.low == pytest.approx(600 / (0.1 + 600 / 2000))  # the plain rate of the long run
    assert "1 of 3 steady-state differences were below the timing noise" in got.plain_note("steps/s")
    assert got.scaled(64).plain == 1
    quiet = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[])
    assert steady_rate(quiet.run, 300, repeats=2, clock=quiet).plain_note("steps/s") == ""


def test_a_fixed_cost_inside_a_plain_rate_is_not_shown_as_zero_setup():
    """When even the fastest times' difference fell back to the plain rate, the fixed cost is
    inside that rate, not measured apart: setup ms read 0 (a number never measured), now a dash."""
    from dabench.speed.bench import BenchResult, MethodTiming, markdown, steady_rate

    # both short runs disturbed by +0.5 s: each longer than its long run, the fastest times' too
    clock = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[0.5, 0.0, 0.5, 0.0])
    got = steady_rate(clock.run, 300, repeats=2, clock=clock)
    assert got.plain == 3 and got.setup_s is None
    clean = _FakeClock(fixed=0.1, per_step=1 / 2000, noise=[])
    assert steady_rate(clean.run, 300, repeats=2, clock=clean).setup_s == pytest.approx(0.1)
    result = BenchResult("cpu", "t", "p", "lenet", 28, 16, 2, 1, False, "d", 1000.0, bare_by_batch={16: 1000.0})
    result.methods = [
        MethodTiming("a", 16, 50.0, 800.0, setup_ms=None),
        MethodTiming("b", 16, 50.0, 800.0, setup_ms=12.0, graph_steps_per_s=60.0, graph_setup_ms=None),
    ]
    rows = {line.split(" | ")[0]: line.split(" | ") for line in markdown(result).splitlines() if line.startswith("| ")}
    assert rows["| a"][7] == "—"  # the setup ms column
    assert rows["| b"][7] == "12 / —"  # captured rate measured, its fixed cost not apart from it


def test_a_profile_names_the_operations_it_clipped_at_zero(monkeypatch):
    """An operation whose per-step difference is negative (noise larger than its time) is shown
    as 0 µs; the summary now says so instead of clipping silently."""
    import dabench.speed.profile as profile

    took = iter([{"add": (10, 50.0), "mul": (10, 30.0)}, {"add": (20, 40.0), "mul": (20, 60.0)}])
    monkeypatch.setattr(profile, "_op_times", lambda run, device: (run(), next(took))[1])
    prof = profile.profile_steps("toy", lambda n: n, 10, torch.device("cpu"))
    assert prof.clipped == ["add"]
    assert {o.name: o.us_per_step for o in prof.ops} == {"add": 0.0, "mul": 3.0}
    assert "1 ops below zero (noise) shown as 0: add" in prof.summary()


BAD_BENCH_VALUES = [
    ({"steps": 0}, ["--steps", "0"], "--steps must be >= 1 (got 0)"),
    ({"warmup": -1}, ["--warmup", "-1"], "--warmup must be >= 0 (got -1)"),
    ({"repeats": 0}, ["--repeats", "0"], "--repeats must be >= 1 (got 0)"),
    ({"seed_batch": 1}, ["--seed-batch", "1"], "--seed-batch must be 0 (off) or >= 2 seeds (got 1)"),
    ({"batch_size": 0}, ["--batch-size", "0"], "--batch-size must be >= 1 (got 0)"),
    ({"image_size": 0}, ["--image-size", "0"], "--image-size must be >= 1 (got 0)"),
    ({"synthetic": -1}, ["--synthetic", "-1"], "--synthetic must be 0 (off) or a number of images (got -1)"),
    ({"device": "gpu"}, ["--device", "gpu"], "device 'gpu' is not a device; expected auto (CUDA when present)"),
]


@pytest.mark.parametrize(("kwargs", "argv", "message"), BAD_BENCH_VALUES)
def test_run_bench_refuses_what_the_cli_refuses_with_the_same_message(tmp_path, capsys, kwargs, argv, message):
    """dabench bench's checks lived in the CLI only: run_bench(steps=0) (the bench command's Python
    form, tests/test_api_parity.py) timed nothing and divided by it, run_bench(warmup=-1) or
    (synthetic=-1) failed deep inside, device="gpu" with torch's message. One check serves both."""
    from dabench.speed.bench import BenchArgumentError, run_bench

    quick = {"methods": ["linear-probe"], "steps": 1, "warmup": 0, "repeats": 1, "device": "cpu"}
    logged: list[str] = []
    with pytest.raises(BenchArgumentError) as err:
        run_bench(**{**quick, **kwargs}, log=logged.append)
    assert str(err.value).startswith(message) and logged == []  # refused before anything is measured
    argv_quick = ["--methods", "linear-probe", "--steps", "1", "--warmup", "0", "--repeats", "1", "--device", "cpu"]
    assert main(["bench", "--out", str(tmp_path / "x.md"), *argv_quick, *argv]) != 0
    assert capsys.readouterr().err == f"dabench: error: {err.value}\n"


def test_run_bench_names_every_bad_value_and_refuses_non_integers():
    from dabench.speed.bench import BenchArgumentError, run_bench

    with pytest.raises(BenchArgumentError) as err:
        run_bench(steps=0, warmup=-1, batch_size=2.5, repeats=True, device="cpu", log=lambda _: None)
    assert str(err.value) == (
        "--steps must be >= 1 (got 0); --warmup must be >= 0 (got -1); --repeats must be an integer >= 1 (got True); "
        "--batch-size must be an integer >= 1 (got 2.5)"
    )
