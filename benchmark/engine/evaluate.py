"""Evaluation: target accuracy (overall and per class), source-validation accuracy and
label-free scores of predictions on a fixed sample of the unlabelled target adaptation split,
used by the unsupervised selection rules."""

from __future__ import annotations

import math

import torch

from .data import DeviceData, Split


@torch.no_grad()
def predict_split(
    method,
    data: DeviceData,
    split: Split,
    batch_size: int = 512,
    limit: int | None = None,
    output: str = "predict",
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """``method.predict`` (logits) or ``method.features`` of a split's first ``limit`` images
    (all by default) or of the positions ``indices`` (a device tensor), float32 on the device,
    in chunks of ``batch_size``."""
    forward = getattr(method, output)
    if indices is None:
        n = len(split) if limit is None else min(limit, len(split))
    else:
        n = int(indices.shape[0])  # a shape, not a value: no host sync
    out = []
    for start in range(0, n, batch_size):
        if indices is None:
            idx = torch.arange(start, min(start + batch_size, n), device=data.device)
        else:
            idx = indices[start : start + batch_size]
        x, _ = data.batch_from(split, idx, train=False)
        with autocast(data.device):
            out.append(forward(x).float())
    return torch.cat(out)


def autocast(device: torch.device, cache_enabled: bool = True):
    """bf16 autocast on CUDA (the tensor cores' fast path); a no-op context on the CPU.

    ``cache_enabled=False`` inside a CUDA-graph capture (``engine/graphs.py``): the cache of
    weights cast to bf16 must not be reused outside the graph."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=cache_enabled)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)


def label_free_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scores of target predictions that need no target labels, over all rows of ``logits``
    (the caller passes a fixed sample: SND's cost is quadratic in it).

    - ``entropy``: mean H(p(x)); lower is better (Grandvalet & Bengio 2004; as a validator
      in Morerio et al. 2018).
    - ``im``: information maximisation H(mean_x p(x)) − mean_x H(p(x)); higher is better
      (Shi & Sha 2012; as a validator in Musgrave et al. 2022).
    - ``snd``: soft neighbourhood density, the mean entropy of the softmax (temperature 0.05)
      over cosine similarities between L2-normalised predictions of different samples;
      higher is better (Saito et al. 2021, Tune it the Right Way, ICCV).
    """
    probs = logits.softmax(-1)
    ent = entropy(probs)
    im = entropy(probs.mean(0)) - ent.mean()
    z = torch.nn.functional.normalize(probs, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    snd = entropy((sim / 0.05).softmax(-1)).mean()
    return {"entropy": ent.mean(), "im": im, "snd": snd}


@torch.no_grad()
def evaluate(method, data: DeviceData) -> dict:
    """One evaluation of ``method``: accuracy on the seed's target evaluation split (per image,
    ``target_acc``; and per class, ``target_per_class``, ``None`` for a class without evaluation
    images) and the source-val split; entropy, IM and SND on the fixed validator sample of the target
    *adaptation* split (:class:`DeviceData`), so selecting by them never looks at the images
    a run is scored on (unless the pair is transductive: then the two are the same images)."""
    was_training = method.training
    method.eval()
    logits = predict_split(method, data, data.target_eval)
    labels = data.target_eval.labels
    correct = (logits.argmax(1) == labels).float()
    num_classes = logits.shape[1]
    per_class_hits = torch.zeros(num_classes, device=logits.device).index_add_(0, labels, correct)
    per_class_n = torch.bincount(labels, minlength=num_classes).float()
    # a class with no evaluation image (all its images were shots on a transductive pair, or a
    # one-image class of a folder pair went to the adaptation half) has no accuracy: NaN, recorded
    # as null; 0/1 = 0 % read as a class the model got entirely wrong
    per_class = torch.where(per_class_n > 0, per_class_hits / per_class_n.clamp_min(1), float("nan"))
    src_logits = predict_split(method, data, data.source_val)
    src_acc = (src_logits.argmax(1) == data.source_val.labels).float().mean()
    # the validator sample: images also in the evaluation split reuse their logits (no second
    # forward on a transductive pair); only the rest are predicted
    parts = [logits[data.validator_from_eval]]
    if data.validator_forward.shape[0]:
        parts.append(predict_split(method, data, data.target, indices=data.validator_forward))
    scores = label_free_scores(torch.cat(parts))
    stacked = torch.stack([correct.mean() * 100, src_acc * 100, scores["entropy"], scores["im"], scores["snd"]])
    values = stacked.tolist()  # the one host sync of an evaluation
    method.train(was_training)
    return {
        "target_acc": values[0],
        "target_per_class": [None if math.isnan(v) else round(v * 100, 3) for v in per_class.tolist()],
        "source_val_acc": values[1],
        "entropy": values[2],
        "im": values[3],
        "snd": values[4],
    }
