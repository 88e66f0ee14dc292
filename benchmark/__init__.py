"""dabench: a benchmarking suite for domain adaptation in image classification.

Everything a plugin needs is importable from here: :class:`Method`, :class:`Uses`,
:class:`Batch`, :class:`Loss`, :class:`Backbone`, :class:`DomainPair`, :class:`Domain`,
:class:`PairData`, :class:`Schedule`, the ``register_*`` decorators and ``list_*`` functions.

The names are bound on first use (PEP 562 module ``__getattr__``): ``import dabench`` imports
neither torch nor pandas, so ``dabench report`` / ``status`` and a script that only reads results
start fast. The built-in methods, pairs and backbones register themselves the first time a
registry is read or written (:class:`dabench.core.registry.Registry`), not on ``import dabench``.
The layers and losses methods share (gradient reversal, domain discriminator, kernels, entropy,
covariance) are :mod:`dabench.layers`, their names also importable from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.version import __version__

#: public name -> the module that defines it: what plugins (README, docs/adding-a-method.md,
#: examples/) and users of the Python API import. Everything else stays importable from its
#: module (``dabench.core.spec.RunSpec``, ``dabench.core.splits.stratified_split`` ...).
_PUBLIC: dict[str, str] = {
    # the contract a plugin implements
    "Method": "core.method",
    "Uses": "core.method",
    "Batch": "core.method",
    "Loss": "core.method",
    "Classifier": "core.method",
    "Update": "core.method",
    "TargetView": "core.method",
    "TargetLabelsError": "core.method",
    "Backbone": "backbones.base",
    "DomainPair": "core.domain",
    "Domain": "core.domain",
    "PairData": "core.domain",
    "Schedule": "core.domain",
    "MissingDataError": "core.domain",
    "DataFileError": "core.domain",
    # registries
    "METHODS": "core.registry",
    "PAIRS": "core.registry",
    "BACKBONES": "core.registry",
    "register_method": "core.registry",
    "register_pair": "core.registry",
    "register_backbone": "core.registry",
    "list_methods": "core.registry",
    "list_pairs": "core.registry",
    "list_backbones": "core.registry",
    "load_plugin": "core.registry",
    "PluginError": "core.registry",
    "RegistryError": "core.registry",
    # running and reading results
    "Matrix": "running.matrix",
    "MatrixError": "running.matrix",
    "expand": "running.matrix",
    "load_matrix_file": "running.matrix",
    "EngineOptions": "engine.options",
    "run": "api",
    "load_results": "api",
    "leaderboard": "api",
    "compare": "api",
    "report": "api",
    "status": "api",
    # layers and losses methods share (dabench.layers)
    "DomainDiscriminator": "layers",
    "KERNEL_MULTIPLIERS": "layers",
    "covariance": "layers",
    "entropy": "layers",
    "gaussian_kernel_matrix": "layers",
    "grad_reverse": "layers",
    "grl_coefficient": "layers",
    "mmd_from_kernel": "layers",
    "multi_kernel_mmd": "layers",
}

__all__ = ["__version__", *_PUBLIC]

#: subpackages reachable as attributes (``dabench.methods.dann``), imported on first use
_SUBMODULES = frozenset(
    {
        "analysis",
        "api",
        "backbones",
        "cli",
        "core",
        "datasets",
        "engine",
        "layers",
        "methods",
        "running",
        "speed",
        "testing",
    }
)


def __getattr__(name: str) -> Any:
    """Import the module defining a public name on first use and cache the name here."""
    module = _PUBLIC.get(name)
    if module is None:
        if name in _SUBMODULES:  # ``dabench.methods`` without an import of its own, as before
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'dabench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


# the names are re-exported through __all__, which ruff cannot read (it is built from _PUBLIC)
if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from .api import compare, leaderboard, load_results, report, run, status
    from .backbones.base import Backbone
    from .core.domain import DataFileError, Domain, DomainPair, MissingDataError, PairData, Schedule
    from .core.method import Batch, Classifier, Loss, Method, TargetLabelsError, TargetView, Update, Uses
    from .core.registry import (
        BACKBONES,
        METHODS,
        PAIRS,
        PluginError,
        RegistryError,
        list_backbones,
        list_methods,
        list_pairs,
        load_plugin,
        register_backbone,
        register_method,
        register_pair,
    )
    from .engine.options import EngineOptions
    from .running.matrix import Matrix, MatrixError, expand, load_matrix_file
    from .layers import (
        KERNEL_MULTIPLIERS,
        DomainDiscriminator,
        covariance,
        entropy,
        gaussian_kernel_matrix,
        grad_reverse,
        grl_coefficient,
        mmd_from_kernel,
        multi_kernel_mmd,
    )
