"""Speed benchmarks (pytest-benchmark), each paired with its conventional baseline.

Not run by default (``--benchmark-skip`` in pyproject's addopts: pytest-benchmark skips
these items at collection, so no fixture or body runs). Run them with::

    pytest tests/benchmarks --benchmark-only

Every benchmark records its rate through the ``ratios`` fixture under a group and an
implementation (``dabench`` or ``baseline``); at the end of the session the pairs become
ratios, printed in the terminal summary and written to ``results/bench/ratios.md``.
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import platform
from dataclasses import dataclass, field

import pytest
import torch

RATIOS_FILE = pathlib.Path(__file__).resolve().parents[2] / "results" / "bench" / "ratios.md"


@dataclass
class Ratios:
    """Rates per (group, implementation); a group's ratio is dabench / baseline."""

    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    #: one line per derived figure a benchmark reports beside its ratio (e.g. the step overhead)
    notes: list[str] = field(default_factory=list)
    #: dabench/baseline as the median of paired rounds' ratios, for a group whose rounds alternate
    #: (the step overhead): shown beside the ratio of the medians, which a load change between the
    #: sides moves (0.54x of medians against a paired 0.95x on a shared CPU): never one without the other
    paired: dict[str, float] = field(default_factory=dict)

    def record(self, benchmark, group: str, impl: str, units_per_round: float, unit: str) -> float:
        """Store ``units_per_round / median round time`` for ``impl`` of ``group``; returns the rate."""
        rate = units_per_round / benchmark.stats.stats.median
        benchmark.extra_info.update({"rate": rate, "unit": unit, "impl": impl})
        self.rates.setdefault(group, {})[impl] = rate
        self.units[group] = unit
        return rate

    def lines(self) -> list[str]:
        rows = ["| benchmark | dabench | baseline | ratio dabench/baseline |", "| --- | ---: | ---: | ---: |"]
        for group in sorted(self.rates):
            r, unit = self.rates[group], self.units[group]
            d, b = r.get("dabench"), r.get("baseline")
            ratio = f"{d / b:.2f}x" if d and b else "—"
            if group in self.paired:
                ratio = f"{ratio} of the medians; {self.paired[group]:.2f}x paired"
            show = lambda v, unit=unit: "—" if v is None else f"{v:,.1f} {unit}"  # noqa: E731
            rows.append(f"| {group} | {show(d)} | {show(b)} | {ratio} |")
        return rows


_RATIOS = Ratios()


@pytest.fixture(scope="session")
def ratios() -> Ratios:
    torch.set_num_threads(1)  # shared machines; also keeps both sides of a ratio on equal terms
    return _RATIOS


#: ``DABENCH_BENCH_DEVICE=cuda`` runs the suite on a GPU; ``DABENCH_BENCH_WORKERS=N`` gives the
#: DataLoader baselines N worker processes (the conventional GPU setting; 0 on shared CPUs)
BENCH_DEVICE = os.environ.get("DABENCH_BENCH_DEVICE", "cpu")
BENCH_WORKERS = int(os.environ.get("DABENCH_BENCH_WORKERS", "0"))


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device(BENCH_DEVICE)


@pytest.fixture(scope="session")
def workers() -> int:
    return BENCH_WORKERS


def _device_line() -> str:
    if BENCH_DEVICE.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(BENCH_DEVICE))
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s))"


def pytest_terminal_summary(terminalreporter) -> None:
    if _RATIOS.rates:
        terminalreporter.write_sep("-", "dabench / baseline ratios")
        for line in _RATIOS.lines() + _RATIOS.notes:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session) -> None:
    if not _RATIOS.rates:
        return
    RATIOS_FILE.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# dabench speed benchmarks: ratios to conventional baselines",
        "",
        f"- device: {_device_line()}; torch {torch.__version__}",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        "- rate: units / median round time (pytest-benchmark); each pair measured in the same session",
        # each group's own baseline: the DataLoader one is (a)'s and (c)'s only
        "- ratio dabench/baseline: above 1, dabench is faster",
        "- baseline of (a), (c): torch.utils.data.DataLoader over a Dataset with per-image torchvision transforms "
        f"(PIL → ToTensor → Normalize), num_workers={BENCH_WORKERS}; (c) forwards the images dabench's evaluation "
        "forwards (evaluation split, source validation, the validators' sample) and computes the same label-free "
        "scores, so both rates count the same work; (b): the same L-BFGS probe with a forward "
        "pass per evaluation, from the same starting weights; (e): a hand-written PyTorch loop on the same uint8 "
        "device data and augmentation, rounds alternating with the engine's; cache read: decoding the same files "
        "(JPEG; MNIST idx); cache verify: the same file read without verification; report start-up, report DIR: "
        "the same command after the old import chain (torch and every built-in); list methods: the listing read "
        "from the registries' classes",
        "",
    ]
    notes = ["", *(f"- {n}" for n in _RATIOS.notes)] if _RATIOS.notes else []
    RATIOS_FILE.write_text("\n".join(header + _RATIOS.lines() + notes) + "\n")


@pytest.fixture(scope="session")
def digits():
    """The embedded pair (MNIST 5k → optdigits) and its data, loaded once."""
    from dabench.core.registry import PAIRS
    from dabench.running.unit import load_pair_data

    return PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)
