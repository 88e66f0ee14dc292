"""(c) evaluation: both sides forward the same images, and the rate counts exactly those (no timing).

The baseline forwarded the evaluation and source-validation images only, while dabench's
evaluation also forwards the label-free validators' sample: the same count of images over a longer
time understated dabench's rate.
"""

from __future__ import annotations

import torch
from test_eval_speed import eval_bench, eval_work

from dabench.engine.evaluate import evaluate


def _counting(method) -> list[int]:
    """Count the images through ``method.predict`` (both sides call it for every batch)."""
    seen: list[int] = []
    real = method.predict

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(int(x.shape[0]))
        return real(x)

    method.predict = predict
    return seen


def test_both_sides_forward_the_images_the_rate_counts(digits) -> None:
    pair, data = digits
    bench = eval_bench(pair, data, torch.device("cpu"))
    seen = _counting(bench.method)
    counts = {}
    for impl in ("dabench", "baseline"):
        fn, n_images = eval_work(bench, data, impl)
        seen.clear()
        out = fn()
        counts[impl] = (sum(seen), n_images)
        if impl == "baseline":  # the same scores as dabench's on the same images
            accs, scores = out
            ref = evaluate(bench.method, bench.data)
            assert abs(accs[0] - ref["target_acc"]) < 1e-3 and abs(accs[1] - ref["source_val_acc"]) < 1e-3
            assert abs(scores["snd"] - ref["snd"]) < 1e-3 and abs(scores["entropy"] - ref["entropy"]) < 1e-3
    assert counts["dabench"][0] == counts["baseline"][0] == counts["dabench"][1] == counts["baseline"][1], counts
    assert len(bench.data.validator_forward) > 0  # the pair has validator images outside the evaluation split
