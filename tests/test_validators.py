"""The label-free validators (entropy, IM, SND) look at the unlabelled target *adaptation*
split, through a fixed seeded sample, never at the images a run is scored on."""

from __future__ import annotations

import math

import pytest
import torch

from dabench import PAIRS
from dabench.core.domain import Domain, PairData
from dabench.engine.data import VALIDATOR_SAMPLES, DeviceData, validator_sample
from dabench.engine.evaluate import evaluate, predict_split
from dabench.engine.train import build_method, execute
from dabench.running.matrix import Matrix, expand
from dabench.running.unit import load_pair_data

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SCORES = ("entropy", "im", "snd")


@pytest.fixture(scope="module")
def digits():
    return PAIRS.get("digits-offline"), load_pair_data("digits-offline", None)


def _method(pair, seed=0, data: DeviceData | None = None, steps: int = 40):
    """A source-only network, trained ``steps`` SGD steps on ``data``'s source split when given
    (an untrained one predicts near-uniform probabilities, to which SND is blind)."""
    torch.manual_seed(seed)
    spec = expand(Matrix(methods=("source-only",), pairs=(pair.name,), seeds=(seed,)))[0]
    method = build_method(spec, pair)
    if data is not None:
        opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
        stream = data.stream(data.source, 64)
        for _ in range(steps):
            x, y = data.batch_from(data.source, stream.next())
            loss = torch.nn.functional.cross_entropy(method.predict(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return method.eval()


def test_validators_are_blind_to_the_evaluation_images(digits):
    pair, pair_data = digits
    data = DeviceData(pair, pair_data, CPU, seed=0, train_shots=0, eval_shots=0)
    # digits-offline: adaptation and evaluation splits are disjoint
    assert not torch.isin(pair_data.target_adapt, pair_data.target_eval).any()
    assert not data.validator_overlaps_eval
    method = _method(pair, data=data)
    before = evaluate(method, data)
    eval_logits = predict_split(method, data, data.target_eval)

    g = torch.Generator().manual_seed(1)
    data.target_eval.images = torch.randint(0, 256, data.target_eval.images.shape, dtype=torch.uint8, generator=g)
    corrupted_eval = evaluate(method, data)
    assert not torch.allclose(predict_split(method, data, data.target_eval), eval_logits)  # the corruption is real
    for k in SCORES:
        assert corrupted_eval[k] == before[k], k

    data.target.images = data.target.images.flip(-1)  # the adaptation images change
    changed_adapt = evaluate(method, data)
    assert changed_adapt["target_per_class"] == corrupted_eval["target_per_class"]
    for k in SCORES:
        assert changed_adapt[k] != corrupted_eval[k], k


def _class_sorted_pair_data(classes=10, per_class=300) -> PairData:
    """A target domain stored class by class (as Office-31 is), larger than the validator sample."""
    n = classes * per_class
    labels = torch.arange(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    dom = Domain("sorted", images, labels, tuple(str(c) for c in range(classes)))
    idx = torch.arange(n)
    return PairData(dom, dom, idx[:100], idx[100:200], idx, idx)  # transductive: eval == adapt


def test_snd_sample_covers_the_classes_of_a_class_sorted_split():
    pair = PAIRS.get("digits-offline")
    pair_data = _class_sorted_pair_data()
    labels = pair_data.target.labels
    assert len(torch.unique(labels[:VALIDATOR_SAMPLES])) < 10  # first-N in stored order skips classes
    data = DeviceData(pair, pair_data, CPU, seed=0, train_shots=0, eval_shots=0)
    assert data.validator_samples == VALIDATOR_SAMPLES
    assert data.validator_overlaps_eval  # transductive: the record says so
    # every sampled image is an evaluation image here: all are read from the evaluation logits
    assert len(data.validator_forward) == 0 and len(data.validator_from_eval) == VALIDATOR_SAMPLES
    sampled = data.target_eval.labels[data.validator_from_eval]
    counts = torch.bincount(sampled, minlength=10)
    assert (counts > 150).all(), counts.tolist()  # ~205 per class, every class present


def test_sample_is_fixed_by_the_seed_and_moves_no_training_rng():
    a, b, c = (validator_sample(5000, s) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == VALIDATOR_SAMPLES and len(torch.unique(a)) == VALIDATOR_SAMPLES
    assert torch.equal(validator_sample(100, 3), torch.arange(100))  # a small split is used whole
    pair = PAIRS.get("digits-offline")
    torch.manual_seed(0)
    global_before = torch.get_rng_state()
    data = DeviceData(pair, _class_sorted_pair_data(), CPU, seed=5, train_shots=0, eval_shots=0)
    assert torch.equal(torch.get_rng_state(), global_before)
    assert torch.equal(data.generator.get_state(), torch.Generator().manual_seed(5).get_state())


def test_transductive_validators_reuse_the_evaluation_predictions():
    """On a transductive pair the sample is read from the evaluation logits: the same scores
    as predicting those images again, at no extra forward pass."""
    pair = PAIRS.get("digits-offline")
    data = DeviceData(pair, _class_sorted_pair_data(per_class=30), CPU, seed=0, train_shots=0, eval_shots=0)
    method = _method(pair)
    reused = evaluate(method, data)
    # force the forward path: the same sample, predicted from the adaptation split
    data.validator_forward = torch.cat([data.validator_forward, torch.arange(300)])
    data.validator_from_eval = data.validator_from_eval[:0]
    predicted = evaluate(method, data)
    for k in SCORES:
        assert reused[k] == pytest.approx(predicted[k], rel=1e-5, abs=1e-6), k


def test_the_record_says_what_the_validators_saw(digits):
    pair, pair_data = digits
    spec = expand(
        Matrix(methods=("source-only",), pairs=("digits-offline",), seeds=(0,), overrides={"steps": 2, "eval_every": 2})
    )[0]
    result = execute(spec, pair, pair_data, CPU)
    n_adapt = len(pair_data.target_adapt)
    assert result.validators == {
        "split": "target_adapt",
        "samples": min(n_adapt, VALIDATOR_SAMPLES),
        "overlaps_evaluation": False,
    }


def _scores_by_hand(logits: list[list[float]]) -> dict[str, float]:
    """The three label-free scores transcribed from their papers with Python loops and ``math``:
    entropy (Grandvalet & Bengio 2004), IM = H(mean p) − mean H(p) (Shi & Sha 2012) and SND
    (Saito et al. 2021, Eq. 1–3: cosine similarity of the L2-normalised softmax outputs, the
    diagonal left out, softmax over each row at temperature 0.05, entropy of each row, averaged)."""
    import math

    def softmax(row: list[float]) -> list[float]:
        m = max(row)
        e = [math.exp(v - m) for v in row]
        return [v / sum(e) for v in e]

    def h(p: list[float]) -> float:
        return -sum(v * math.log(v) for v in p if v > 0)

    probs = [softmax(r) for r in logits]
    n, k = len(probs), len(probs[0])
    ent = sum(h(p) for p in probs) / n
    mean_p = [sum(p[c] for p in probs) / n for c in range(k)]
    z = [[v / math.sqrt(sum(u * u for u in p)) for v in p] for p in probs]
    snd = 0.0
    for i in range(n):
        sims = [sum(a * b for a, b in zip(z[i], z[j])) / 0.05 for j in range(n) if j != i]
        snd += h(softmax(sims)) / n
    return {"entropy": ent, "im": h(mean_p) - ent, "snd": snd}


def test_label_free_scores_are_the_papers_formulas_by_hand():
    from dabench.engine.evaluate import label_free_scores

    g = torch.Generator().manual_seed(0)
    for n, k, scale in ((2, 3, 1.0), (7, 4, 3.0), (40, 10, 5.0)):
        logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
        got = {key: float(v) for key, v in label_free_scores(logits).items()}
        want = _scores_by_hand(logits.tolist())
        for key in SCORES:
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), (n, k, key)
    # SND's range: log(n − 1) when every prediction is the same (all neighbours equally close)
    same = label_free_scores(torch.zeros(5, 3, dtype=torch.float64))
    assert float(same["snd"]) == pytest.approx(math.log(4)) and float(same["im"]) == pytest.approx(0.0, abs=1e-12)
