"""Deterministic stratified index splits shared by the pair definitions."""

from __future__ import annotations

import torch


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into (rest, held-out) with ``fraction`` of each class held out."""
    g = torch.Generator().manual_seed(seed)
    held, rest = [], []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n_held = round(len(members) * fraction)
        held.append(members[:n_held])
        rest.append(members[n_held:])
    return torch.cat(rest).sort().values, torch.cat(held).sort().values
