"""Per-seed random draws inside a seed-batched step (:mod:`dabench.engine.seed_batch`).

Under ``vmap(..., randomness="different")`` every random op of the S seeds draws from ONE
global generator, so a seed's dropout masks would be another valid draw, not the masks its
separate run (:func:`dabench.engine.train.execute`) draws. On the CPU those masks are fully
determined by the global generator's state and the call order: ATen's CPU dropout is
``noise = empty_like(x).bernoulli_(1 - p); noise.div_(1 - p); x * noise`` (feature dropout,
``Dropout1d/2d/3d``, draws ``noise`` of shape ``(N, C, 1, ...)`` and broadcasts it; alpha dropout
(Klambauer et al. 2017, Self-Normalizing Neural Networks, NeurIPS) maps the same Bernoulli
draw to ``x · a·m + b`` with ``a = ((α²p + 1)(1 − p))^(−1/2)``, ``b = α·a·(m − 1) + α·a·p``,
``α = 1.7580993408473766``). The separate run's global generator, from its
``torch.manual_seed(seed)``, is consumed by the initialisation and then, in training, by the
step's random ops alone (the data path draws from the seed's own data generator, evaluation
draws nothing).

:class:`SeedDraws` therefore gives each seed a CPU :class:`torch.Generator` holding the state
the global generator had at the start of that seed's separate run, and, as a
:class:`~torch.overrides.TorchFunctionMode` around the vmapped step, replaces every call of the
dropout family (``F.dropout``, ``F.dropout1d/2d/3d``, ``F.alpha_dropout``,
``F.feature_alpha_dropout`` and their ``torch.*`` forms, which ``nn.Dropout*`` and methods
calling ``F.dropout`` reach) by the same arithmetic on a noise tensor drawn, in the same shape
and call order, from each seed's generator (:class:`_SeedNoise`, whose vmap rule sees the
batch dimension and draws seed by seed). On the CPU seed ``k``'s masks are then bit for bit its
separate run's (``tests/test_seed_batch.py`` checks the records and the masks).

Any other random op in the step (``torch.randn_like`` of a Gaussian-noise layer, a method's
own sampling) still draws from the global generator (another valid draw). It also leaves the
seed's generator behind the separate run's stream, whose later dropout masks therefore differ
too: :meth:`SeedDraws.note` then says ``another draw: <ops>`` (the record's
``timings.seed_batch_draws``), never the separate run's. Such ops are caught by name where the
mode sees them and, on the CPU, by the global generator's state changing over the step.

On CUDA the eager dropout kernel (fused, Philox offsets) cannot be matched from the host, so
nothing is replaced: the mode only watches the first step to name the random ops for the note
(``another draw: ... (cuda)``), and the captured step (:class:`~dabench.engine.seed_batch.SeedStepGraph`)
runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: the record's ``timings.seed_batch_draws`` when the steps drew nothing random
NONE = "none"
#: prefix of the note when every draw was the separate run's
SEPARATE = "the separate run's"
#: prefix of the note when some draw was not
ANOTHER = "another draw"

_ALPHA = 1.7580993408473766  # ATen's alpha dropout constant (SELU's α·λ / λ, Klambauer et al. 2017)


class _SeedNoise(torch.autograd.Function):
    """The dropout noise of every seed, drawn under ``vmap`` from each seed's own generator.

    ``apply(like, p, kind, generators)`` with ``like`` the (detached, batched) input: the vmap
    rule sees the seed dimension and draws seed ``k``'s noise from ``generators[k]`` as ATen's
    CPU kernel draws it from the global generator; returns the noise ``[S, ...]`` (``kind``
    ``"plain"`` or ``"feature"``) or, for alpha kinds, ``(a·m, b)``. Outside vmap it refuses:
    an unbatched run uses the real kernel."""

    @staticmethod
    def forward(like: torch.Tensor, p: float, kind: str, generators: Sequence[torch.Generator]) -> Any:
        raise RuntimeError("_SeedNoise draws per seed and runs only under vmap (seed-batched steps)")

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:  # the noise is a constant: nothing saved
        pass

    @staticmethod
    def vmap(info: Any, in_dims: tuple, like: torch.Tensor, p: float, kind: str, generators: Sequence[torch.Generator]):
        if len(generators) != info.batch_size:
            raise RuntimeError(f"seed-batched dropout: {len(generators)} generators for {info.batch_size} seeds")
        dim = in_dims[0]
        shape = list(like.shape if dim is None else like.movedim(dim, 0).shape[1:])
        if kind.startswith("feature"):  # ATen's make_feature_noise: (N, C, 1, ..., 1)
            shape = shape[:2] + [1] * (len(shape) - 2)
        noise = torch.empty([info.batch_size, *shape], dtype=like.dtype, device=like.device)
        for k, g in enumerate(generators):  # seed k's draw, from seed k's stream, in the call order
            noise[k].bernoulli_(1 - p, generator=g)
        if not kind.endswith("alpha"):
            return noise.div_(1 - p), 0  # the kernel's in-place division by the same double
        a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1) * (1 - p))
        b = noise.add(-1).mul_(_ALPHA * a).add_(_ALPHA * a * p)  # the kernel's ops, in its order
        return (noise.mul_(a), b), (0, 0)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


# the dropout family: function -> (kind, F-level signature, how an unbatched input is treated:
# "1d" unsqueezes a 2-d (C, L) input and refuses ranks other than 2 and 3, "3d" unsqueezes any
# input that is not 5-d, None takes the input as it is, as F.dropout1d/3d/others do)
_FAMILY: dict[Callable, tuple[str, bool, str | None]] = {
    F.dropout: ("plain", True, None),
    F.alpha_dropout: ("plain-alpha", True, None),
    F.dropout1d: ("feature", True, "1d"),
    F.dropout2d: ("feature", True, None),  # a 3-d input is (N, C, L), as F.dropout2d does
    F.dropout3d: ("feature", True, "3d"),
    F.feature_alpha_dropout: ("feature-alpha", True, None),
    torch.dropout: ("plain", False, None),
    torch.alpha_dropout: ("plain-alpha", False, None),
    torch.feature_dropout: ("feature", False, None),
    torch.feature_alpha_dropout: ("feature-alpha", False, None),
}
_INPLACE: dict[Callable, tuple[str, bool, str | None]] = {
    torch.dropout_: ("plain", False, None),
    torch.alpha_dropout_: ("plain-alpha", False, None),
    torch.feature_dropout_: ("feature", False, None),
    torch.feature_alpha_dropout_: ("feature-alpha", False, None),
}


def _random_ops() -> dict[Callable, str]:
    """Other random torch functions a step may call (named in the note when seen)."""
    names = ("rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli",
             "normal", "poisson", "multinomial", "rrelu", "rrelu_", "native_dropout")  # fmt: skip
    methods = ("bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_",
               "log_normal_", "cauchy_", "multinomial")  # fmt: skip
    ops: dict[Callable, str] = {getattr(torch, n): n for n in names if hasattr(torch, n)}
    ops.update({getattr(torch.Tensor, n): f"Tensor.{n}" for n in methods if hasattr(torch.Tensor, n)})
    ops[F.rrelu] = "rrelu"
    return ops


_RANDOM = _random_ops()


class SeedDraws(TorchFunctionMode):
    """Around a vmapped seed-batched step: the dropout family drawn per seed from ``generators``
    (``replace=True``, the CPU) and the step's random ops named (:meth:`note`).

    ``generators[k]`` is seed ``k``'s: it must hold the state of the global CPU generator at the
    start of seed ``k``'s separate run (:func:`start_generators`)."""

    def __init__(
        self, generators: Sequence[torch.Generator], replace: bool, device: torch.device, exact: bool = True
    ) -> None:
        super().__init__()
        self.generators = list(generators)
        self.replace = replace
        self.device = device
        self.reproduced: dict[str, None] = {}  # dropout kinds drawn per seed (ordered set)
        self.other: dict[str, None] = {}  # random ops left to the global generator
        self.exact_generators = exact  # False: the generators are not the separate runs' (dabench bench)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        family = _FAMILY.get(func) or _INPLACE.get(func)
        if family is not None:
            return self._dropout(func, family, args, kwargs)
        name = _RANDOM.get(func)
        if name is not None:
            self.other[name] = None
        return func(*args, **kwargs)

    def _dropout(self, func: Callable, family: tuple[str, bool, str | None], args: tuple, kwargs: dict) -> Any:
        kind, functional, unbatched = family
        x = args[0] if args else kwargs["input"]
        if functional:
            p = _arg(args, kwargs, 1, "p", 0.5)
            training = _arg(args, kwargs, 2, "training", True)
            inplace = _arg(args, kwargs, 3, "inplace", False)
        else:
            p, training, inplace = (
                _arg(args, kwargs, 1, "p", None),
                _arg(args, kwargs, 2, "train", None),
                func in _INPLACE,
            )
        name = func.__name__.rstrip("_")
        # the kernel draws nothing for these (and the function raises for a bad p or rank): the
        # real function, exactly
        if (
            not isinstance(p, float | int)
            or not training
            or not 0 < p < 1
            or x.numel() == 0
            or (unbatched == "1d" and x.dim() not in (2, 3))
        ):
            return func(*args, **kwargs)
        if not self.replace:
            self.other[name] = None
            return func(*args, **kwargs)
        self.reproduced[name] = None
        squeeze = (unbatched == "1d" and x.dim() == 2) or (unbatched == "3d" and x.dim() != 5)
        y = x.unsqueeze(0) if squeeze else x  # a view: in place, x itself changes, as in F
        if kind.endswith("alpha"):
            a, b = _SeedNoise.apply(y.detach(), float(p), kind, self.generators)
            out = y.mul_(a).add_(b) if inplace else y * a + b
        else:
            noise = _SeedNoise.apply(y.detach(), float(p), kind, self.generators)
            out = y.mul_(noise) if inplace else y * noise
        if inplace:
            return x
        return out.squeeze(0) if squeeze else out

    def note(self, global_drawn: bool = False) -> str:
        """The record's ``timings.seed_batch_draws``: ``none``, ``the separate run's (<kinds>)``
        or ``another draw: <ops>`` (``global_drawn``: the global generator moved during a step)."""
        other = list(self.other)
        if global_drawn and not other:
            other = ["an op drawing from the global generator"]
        if other:
            suffix = f" ({self.device.type})" if not self.replace else ""
            return f"{ANOTHER}: {', '.join(other)}{suffix}"
        if not self.reproduced:
            return NONE
        kinds = ", ".join(self.reproduced)
        if not self.exact_generators:
            return f"per-seed generators, not the separate runs' streams ({kinds})"
        return f"{SEPARATE} ({kinds})"


def start_generators(states: Sequence[torch.Tensor]) -> list[torch.Generator]:
    """One CPU generator per seed, each in ``states[k]`` (``torch.get_rng_state()`` where seed
    ``k``'s separate run would be when its steps start)."""
    out = []
    for state in states:
        g = torch.Generator()
        g.set_state(state)
        out.append(g)
    return out


__all__ = ["SeedDraws", "start_generators", "NONE", "SEPARATE", "ANOTHER"]
