"""``import dabench`` and ``dabench report|status|list`` never import torch (docs/architecture.md,
"Import layers"): each check runs in a fresh interpreter, so nothing another test imported counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fake_runs import write_matrix

# a parametric folder pair too: its short label must come without importing the datasets
TABLE = {
    ("dann", "mnist-usps"): [80.0, 81.0, 82.0],
    ("source-only", "mnist-usps"): [70.0, 71.0, 72.0],
    ("dann", "folder:source=/d/photos,target=/d/sketches"): [60.0, 61.0, 62.0],
    ("source-only", "folder:source=/d/photos,target=/d/sketches"): [50.0, 52.0, 51.0],
}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _no_torch_after(statement: str) -> None:
    out = _run(
        f"import sys\n{statement}\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules)\n"
        "assert not heavy, heavy\nprint('LIGHT')"
    )
    assert out.returncode == 0 and "LIGHT" in out.stdout, out.stdout + out.stderr


def test_import_dabench_imports_neither_torch_nor_pandas() -> None:
    _no_torch_after("import dabench\nassert 'pandas' not in sys.modules\nassert dabench.__version__")


def test_engine_options_import_no_torch() -> None:
    """ExecutorOptions and a SLURM job's body (torch-free) hold one; the public name binds lazily."""
    _no_torch_after(
        "from dabench import EngineOptions\nimport dabench.running.slurm_task\n"
        "assert EngineOptions(checkpoint_every=5).to_flags() == ['--checkpoint-every', '5']"
    )


def test_report_cli_imports_no_torch(tmp_path: Path) -> None:
    write_matrix(tmp_path / "res", TABLE)
    _no_torch_after(
        f"from dabench.cli import main\n"
        f"assert main(['report', {str(tmp_path / 'res')!r}, '--out', {str(tmp_path / 'out')!r}]) == 0"
    )
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "photos-sketches" in board and "folder:" not in board  # the label, torch-free


def test_status_cli_imports_no_torch(tmp_path: Path) -> None:
    write_matrix(tmp_path / "res", TABLE)
    _no_torch_after(f"from dabench.cli import main\nassert main(['status', {str(tmp_path / 'res')!r}]) == 0")


def test_list_cli_imports_no_torch() -> None:
    """The built-ins listed from their descriptors (core/listing.py); tests/test_listing.py checks the text."""
    _no_torch_after(
        "from dabench.cli import main\n"
        "for what in ('methods', 'pairs', 'backbones'):\n"
        "    assert main(['list', what]) == 0"
    )


def test_python_api_reads_results_without_torch(tmp_path: Path) -> None:
    write_matrix(tmp_path / "res", TABLE)
    _no_torch_after(
        f"import dabench\ndf = dabench.load_results({str(tmp_path / 'res')!r})\n"
        "assert len(df) == 12\nassert 'dann' in dabench.leaderboard(df).to_markdown()"
    )


def test_registries_register_builtins_on_first_read() -> None:
    """Lazy names, same behaviour: the built-ins are there on the first read of a registry."""
    out = _run(
        "import dabench\nassert 'dann' in dabench.METHODS and 'mnist-usps' in dabench.PAIRS\n"
        "assert 'lenet' in dabench.BACKBONES\nprint('OK')"
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr
