"""Hyperparameter sweeps: a grid and/or a seeded random search → the list of trials.

A *trial* is one assignment ``{key: value}`` of the swept keys (the same keys ``--set`` takes:
schedule fields, ``<method>.<hparam>``, bare ``<hparam>``). :func:`trials` returns the grid's
Cartesian product crossed with ``n`` random draws; ``running/matrix.expand()`` expands the matrix
once per trial, so every trial is a distinct configuration with its own run id, and runs a trial
does not change (another method, the source-only run a linear probe starts from) are shared.

Distributions (``[sweep.random]`` in a matrix file, or ``--sweep key="log_uniform(1e-3, 1)"``):

* ``uniform(a, b)``     – U(a, b), a < b;
* ``log_uniform(a, b)`` – exp(U(log a, log b)), 0 < a < b (Bergstra & Bengio 2012, JMLR, for
  scale parameters such as learning rates and loss weights);
* ``choice(x, y, ...)`` – one of the listed values, equally likely.

Draws use ``random.Random(sweep_seed)`` in the order trial → key (sorted), so the same
``sweep_seed`` and ``trials`` give the same trials on any machine; floats are rounded to 4
significant digits so run ids and tables stay readable. An integer hyperparameter (or
schedule field) gets its draws rounded to integers.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DISTRIBUTIONS = ("uniform", "log_uniform", "choice")
#: default bound on the number of trials of one matrix (grid size x random trials)
DEFAULT_MAX_TRIALS = 64
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


class SweepError(ValueError):
    """A malformed sweep; the message names where it was given, the key and what was expected."""


@dataclass(frozen=True)
class Distribution:
    """One random-search distribution: ``kind`` (uniform, log_uniform, choice) and its arguments."""

    kind: str
    args: tuple[Any, ...]

    @property
    def numeric(self) -> bool:
        """Whether draws are numbers on an interval (so the key must be numeric)."""
        return self.kind in ("uniform", "log_uniform")

    def draw(self, rng: random.Random, integer: bool) -> Any:
        if self.kind == "choice":
            return self.args[rng.randrange(len(self.args))]
        a, b = (float(x) for x in self.args)
        v = rng.uniform(a, b) if self.kind == "uniform" else math.exp(rng.uniform(math.log(a), math.log(b)))
        if integer:
            return round(v)
        return float(f"{v:.4g}")

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.args))})"


def is_distribution(value: Any) -> bool:
    """Whether ``value`` is written as a distribution call (``"log_uniform(1e-3, 1)"``)."""
    return isinstance(value, str) and _CALL.match(value) is not None


def parse_distribution(text: str, where: str, key: str, parse_value: Callable[[str], Any]) -> Distribution:
    """``"log_uniform(1e-3, 1)"`` → :class:`Distribution`; :class:`SweepError` naming ``key`` otherwise.

    ``parse_value`` reads one argument as ``--set`` reads a value (matrix.parse_value; passed in
    because matrix.py imports this module).
    """
    expected = "uniform(a, b) with a < b, log_uniform(a, b) with 0 < a < b, or choice(x, y, ...)"
    m = _CALL.match(text) if isinstance(text, str) else None
    if not m:
        raise SweepError(f"{where}: sweep key {key!r}: expected a distribution {expected}, got {text!r}")
    kind, inner = m.group(1), m.group(2)
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"{where}: sweep key {key!r}: unknown distribution {kind!r}; expected {expected}")
    args = tuple(parse_value(a) for a in inner.split(",") if a.strip())
    if kind == "choice":
        if not args:
            raise SweepError(f"{where}: sweep key {key!r}: choice() needs at least one value, got {text!r}")
        return Distribution(kind, args)
    nums = all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if len(args) != 2 or not nums:
        raise SweepError(f"{where}: sweep key {key!r}: {kind} takes two finite numbers (low, high), got {text!r}")
    lo, hi = args
    if not lo < hi:
        raise SweepError(
            f"{where}: sweep key {key!r}: {text!r} has its bounds in the wrong order; "
            f"expected {kind}(low, high) with low < high"
        )
    if kind == "log_uniform" and lo <= 0:
        raise SweepError(f"{where}: sweep key {key!r}: {text!r}: log_uniform needs 0 < low < high")
    return Distribution(kind, args)


def trials(
    grid: dict[str, list[Any]],
    dists: dict[str, Distribution],
    n_random: int,
    sweep_seed: int,
    integer_keys: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Every trial: the grid's product (keys in the order given) × ``n_random`` seeded draws.

    With no sweep this is ``[{}]`` (one trial: the matrix as it is).
    """
    rng = random.Random(sweep_seed)
    draws: list[dict[str, Any]] = [{}]
    if dists:
        draws = [{k: dists[k].draw(rng, k in integer_keys) for k in sorted(dists)} for _ in range(n_random)]
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        for d in draws:
            out.append({**dict(zip(keys, values)), **d})
    return out
