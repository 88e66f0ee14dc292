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


def test_dev_features_come_from_the_adaptation_split_never_the_evaluation_split(tmp_path, one_thread):
    """DEV reads ``validator_features``: a uniform subset of the validator sample of the target
    *adaptation* split; the evaluation split's features stay under ``target_*`` for the t-SNE."""
    import numpy as np
    import torch

    from dabench.core.domain import default_data_root
    from dabench.core.registry import PAIRS
    from dabench.engine.data import DeviceData
    from dabench.engine.evaluate import predict_split
    from dabench.engine.train import FEATURES_PER_DOMAIN, build_method, save_features
    from dabench.running.unit import load_pair_data

    spec = expand(Matrix(methods=("dann",), seeds=(0,), overrides=TINY))[0]
    pair = PAIRS.get(spec.pair)
    data = DeviceData(pair, load_pair_data(spec.pair, default_data_root()), torch.device("cpu"), 0, 0, spec.eval_shots)
    torch.manual_seed(0)
    method = build_method(spec, pair)
    save_features(method, data, tmp_path / "f.npz", step=20)
    with np.load(tmp_path / "f.npz") as z:
        saved = {k: z[k] for k in z.files}
    assert int(saved["step"]) == 20 and "validator_labels" not in saved  # no target labels for a validator
    assert len(saved["validator_features"]) == min(FEATURES_PER_DOMAIN, data.validator_samples)
    assert len(saved["source_logits"]) == len(saved["source_labels"]) == len(saved["source_features"])
    assert len(saved["source_train_features"]) == min(FEATURES_PER_DOMAIN, len(data.source))
    # the saved target features for DEV are features of adaptation images at validator-sample positions
    adapt = predict_split(method, data, data.target, output="features", indices=data.validator_positions)
    evaluation = predict_split(method, data, data.target_eval, output="features")
    v = saved["validator_features"].astype(np.float32)

    def nearest(bank: torch.Tensor) -> float:  # worst distance of a saved row to its nearest bank row
        return float(torch.cdist(torch.from_numpy(v), bank).min(1).values.max())

    assert nearest(adapt) < 0.05  # float16 rounding only
    assert nearest(evaluation) > 0.05  # digits-offline's adaptation and evaluation images are disjoint


def test_tsne_target_features_are_a_uniform_sample_not_the_first_images(tmp_path, one_thread):
    """On a class-sorted evaluation split larger than FEATURES_PER_DOMAIN (Office-31 is stored
    class by class), the first images in stored order would leave whole classes out of the t-SNE."""
    import numpy as np
    import torch

    from dabench.core.domain import default_data_root
    from dabench.core.registry import PAIRS
    from dabench.engine.data import DeviceData, Split
    from dabench.engine.train import FEATURES_PER_DOMAIN, build_method, save_features
    from dabench.running.unit import load_pair_data

    spec = expand(Matrix(methods=("source-only",), seeds=(0,), overrides=TINY))[0]
    pair = PAIRS.get(spec.pair)
    data = DeviceData(pair, load_pair_data(spec.pair, default_data_root()), torch.device("cpu"), 0, 0, spec.eval_shots)
    order = data.target_eval.labels.argsort(stable=True).repeat_interleave(2)  # class-sorted, > 1000 images
    data.target_eval = Split(data.target_eval.images[order], data.target_eval.labels[order])
    assert len(data.target_eval) > FEATURES_PER_DOMAIN
    torch.manual_seed(0)
    save_features(build_method(spec, pair), data, tmp_path / "f.npz", step=20)
    with np.load(tmp_path / "f.npz") as z:
        labels = z["target_labels"]
        assert len(labels) == len(z["target_features"]) == FEATURES_PER_DOMAIN
    assert set(labels.tolist()) == set(range(pair.num_classes))  # every class, not only the first ones
