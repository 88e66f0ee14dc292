"""Conventional baselines the speed benchmarks compare dabench against.

What a typical DA codebase does: a ``torch.utils.data.DataLoader`` over a ``Dataset`` that
turns each uint8 image into a PIL image and applies torchvision's ``ToTensor`` and
``Normalize`` one image at a time, then moves the collated batch to the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from dabench.core.domain import Domain, DomainPair
from dabench.core.method import Batch, Method
from dabench.engine.evaluate import autocast


class PerImageDataset(Dataset):
    """``domain`` images at ``indices`` through per-image torchvision transforms (torchvision MNIST style)."""

    def __init__(self, domain: Domain, indices: torch.Tensor, pair: DomainPair) -> None:
        self.images, self.labels = domain.images, domain.labels
        self.indices = indices.tolist()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(pair.mean, pair.std)])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        img = self.images[j]
        pil = (
            Image.fromarray(img[0].numpy(), mode="L")
            if img.shape[0] == 1
            else Image.fromarray(img.permute(1, 2, 0).numpy())
        )
        return self.transform(pil), int(self.labels[j])


def loader(
    domain: Domain, indices: torch.Tensor, pair: DomainPair, batch_size: int, train: bool, workers: int = 0
) -> DataLoader:
    """The conventional loader; with workers, the usual GPU settings (pinned memory, persistent workers)."""
    return DataLoader(
        PerImageDataset(domain, indices, pair),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        pin_memory=workers > 0,
        persistent_workers=workers > 0,
    )


def forever(dl: DataLoader) -> Iterator:
    while True:
        yield from dl


class ConventionalTrainer:
    """The same method, optimiser and batch as the engine, fed by DataLoaders."""

    def __init__(self, method: Method, loaders: dict[str, DataLoader], device: torch.device, lr: float = 0.01) -> None:
        self.method, self.device = method.to(device), device
        self.iters = {k: forever(v) for k, v in loaders.items()}
        self.opt = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def run(self, steps: int) -> None:
        dev = self.device
        self.method.train()
        for step in range(steps):
            batch = Batch()
            if "source" in self.iters:
                x, y = next(self.iters["source"])
                batch.x_source, batch.y_source = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if "target" in self.iters:
                batch.x_target = next(self.iters["target"])[0].to(dev)
            if "shots" in self.iters:
                x, y = next(self.iters["shots"])
                batch.x_shots, batch.y_shots = x.to(dev), y.to(dev)
            with autocast(dev):  # the same bf16 autocast as the engine on CUDA
                out = self.method.loss(batch, step / steps)
            self.opt.zero_grad(set_to_none=True)
            out.total.backward()
            self.opt.step()
        if dev.type == "cuda":  # the engine side synchronises too: time finished work only
            torch.cuda.synchronize(dev)


@torch.no_grad()
def conventional_evaluate(
    method: Method,
    loaders: list[DataLoader],
    device: torch.device,
    validator: tuple[DataLoader, torch.Tensor] | None = None,
) -> tuple[list[float], dict[str, float]]:
    """Accuracy per loader, the usual way: a ``.item()`` per batch; and, with ``validator`` (a loader
    over the validator sample's images not in the first loader, and the positions in the first
    loader's images of those that are), the label-free scores on that sample, so that the baseline
    forwards every image :func:`dabench.engine.evaluate.evaluate` forwards (the scores are dabench's
    own formulas: the comparison is the data path, not the arithmetic)."""
    from dabench.engine.evaluate import label_free_scores

    method.eval()
    accs: list[float] = []
    first: list[torch.Tensor] = []  # the first loader's logits, for the validator images among them
    for i, dl in enumerate(loaders):
        correct = total = 0
        for x, y in dl:
            with autocast(device):
                logits = method.predict(x.to(device)).float()
            if i == 0 and validator is not None:
                first.append(logits)
            correct += (logits.argmax(1) == y.to(device)).sum().item()
            total += len(y)
        accs.append(100.0 * correct / total)
    scores: dict[str, float] = {}
    if validator is not None:
        extra, from_first = validator
        parts = [torch.cat(first)[from_first.to(device)]] if first else []
        for x, _ in extra:
            with autocast(device):
                parts.append(method.predict(x.to(device)).float())
        scores = {k: float(v) for k, v in label_free_scores(torch.cat(parts)).items()}
    method.train()
    return accs, scores


def probe_with_forward_passes(method: Method, x: torch.Tensor, y: torch.Tensor, max_iter: int, wd: float) -> nn.Linear:
    """The linear probe without a feature cache: every L-BFGS evaluation runs the frozen network."""
    method.eval()
    feats_dim = method.net.head.in_features
    head = nn.Linear(feats_dim, method.num_classes).to(x.device)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.no_grad():
            f = method.net.features(x).float()
        loss = F.cross_entropy(head(f), y) + wd * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head
