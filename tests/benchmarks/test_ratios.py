"""The benchmarks' summary table (conftest ``Ratios``): what each ratio divides, stated with it."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import Ratios


def _benchmark(median_s: float) -> SimpleNamespace:
    """What ``Ratios.record`` reads of pytest-benchmark's fixture."""
    return SimpleNamespace(stats=SimpleNamespace(stats=SimpleNamespace(median=median_s)), extra_info={})


def test_a_ratio_is_dabench_over_baseline_rates_and_a_missing_side_is_no_number() -> None:
    r = Ratios()
    assert r.record(_benchmark(0.5), "g", "dabench", 10, "steps/s") == 20.0  # units / median round time
    r.record(_benchmark(2.0), "g", "baseline", 10, "steps/s")
    r.record(_benchmark(1.0), "only one side", "dabench", 1, "fits/s")  # e.g. deselected by -k
    rows = r.lines()
    assert "| g | 20.0 steps/s | 5.0 steps/s | 4.00x |" in rows
    assert "| only one side | 1.0 fits/s | — | — |" in rows


def test_a_paired_ratio_is_shown_beside_the_ratio_of_the_medians() -> None:
    """The step overhead's rounds alternate, and its note gave the paired figure (+4.8 %) while the
    table gave the ratio of the medians alone (0.54x), on the same run: the table shows both."""
    r = Ratios()
    r.record(_benchmark(1.035), "(e)", "dabench", 20, "steps/s")
    r.record(_benchmark(0.557), "(e)", "baseline", 20, "steps/s")
    r.paired["(e)"] = 1 / 1.048
    assert "| (e) | 19.3 steps/s | 35.9 steps/s | 0.54x of the medians; 0.95x paired |" in r.lines()
