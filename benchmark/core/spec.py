"""Run specifications: one (method, pair, seed, resolved hyperparameters, schedule) each, with a stable id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .domain import Schedule

#: bump when the meaning of a spec changes, so old records are not mistaken for new runs
SPEC_FORMAT = 1


#: the label budgets a method can be run under: ``uda`` (labelled source, unlabelled target),
#: ``few-shot`` (plus k labelled target images per class), ``source-free`` (the source-only network
#: of the same pair and seed and unlabelled target data only: no source data during adaptation)
PROTOCOLS = ("uda", "few-shot", "source-free")


def run_protocol(method_protocol: str, target_shots: int) -> str:
    """The protocol a run is recorded under: a source-free method's runs are ``source-free``;
    any other run is ``few-shot`` when it trains on target shots, else ``uda``."""
    if method_protocol == "source-free":
        return "source-free"
    return "few-shot" if target_shots > 0 else "uda"


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result. ``run_id`` hashes all of it."""

    method: str
    pair: str
    seed: int
    protocol: str
    target_shots: int  # labelled target images per class this run trains on (0 for UDA)
    eval_shots: int  # shots per class removed from this seed's evaluation set, for every method
    hparams: dict[str, Any] = field(default_factory=dict)
    schedule: Schedule = field(default_factory=Schedule)
    backbone: str = ""
    backbone_options: dict[str, Any] = field(default_factory=dict)
    depends_on: str | None = None  # run id of the source-only run this one starts from
    #: what to keep beside the record; changes no result, so it is not part of the run id
    save_features: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedule"] = asdict(self.schedule)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["schedule"] = Schedule(**d["schedule"])
        return cls(**d)

    @property
    def run_id(self) -> str:
        payload = {"format": SPEC_FORMAT, **self.to_dict()}
        payload.pop("save_features")
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def seed_group(self) -> str:
        """What the seeds of one configuration share (``--seed-batch`` trains them together): the
        spec without its seed and its dependency's run id (which differs per seed only through it)."""
        d = self.to_dict()
        d.pop("seed")
        d.pop("depends_on")
        return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)

    @property
    def label(self) -> str:
        return f"{self.method} | {self.pair} | seed {self.seed}"

    def target_labels(self, num_classes: int) -> int:
        return self.target_shots * num_classes
