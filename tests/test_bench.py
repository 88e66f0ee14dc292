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
    optimisers) and the linear probe (own fit) fall back, shown as —."""
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
    assert by_name["linear-probe"]["seed_batch_steps_per_s"] is None
