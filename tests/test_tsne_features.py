"""Runs save their features on request, and the report draws a t-SNE from them."""

from __future__ import annotations

import pytest

from dabench.analysis.report import write_report
from dabench.core.store import RunStore
from dabench.running.executors import ExecutorOptions
from dabench.running.matrix import Matrix, expand
from dabench.running.scheduler import run_matrix

TINY = {"steps": 20, "eval_every": 20, "batch_size": 32}


def test_save_features_is_not_part_of_the_run_id():
    plain = expand(Matrix(methods=("dann",), seeds=(0,), overrides=TINY))
    saving = expand(Matrix(methods=("dann",), seeds=(0,), overrides={**TINY, "save_features": True}))
    assert saving[0].save_features and not plain[0].save_features
    assert saving[0].run_id == plain[0].run_id


def test_report_draws_tsne_before_and_after_adaptation(tmp_path):
    specs = expand(Matrix(methods=("source-only", "dann"), seeds=(0,), overrides={**TINY, "save_features": True}))
    run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False))
    store = RunStore(tmp_path)
    dann = next(s for s in specs if s.method == "dann")
    import numpy as np

    with np.load(store.features_path(dann.run_id)) as z:
        assert z["source_features"].shape == (500, 256) and z["target_features"].shape[1] == 256
        assert len(z["target_labels"]) == len(z["target_features"])
    written = write_report([tmp_path], formats=("md",), tsne=dann.run_id[:8])
    assert (written["figures"] / f"tsne_{dann.run_id[:8]}.png").stat().st_size > 1000
    assert "tsne" in written["report"].read_text()


def test_tsne_without_saved_features_says_how_to_get_them(tmp_path):
    specs = expand(Matrix(methods=("source-only", "dann"), seeds=(0,), overrides=TINY))
    run_matrix(specs, tmp_path, ExecutorOptions(device="cpu", progress=False))
    dann = next(s for s in specs if s.method == "dann")
    with pytest.raises(FileNotFoundError, match="save_features=true"):
        write_report([tmp_path], formats=("md",), tsne=dann.run_id)
