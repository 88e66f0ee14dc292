"""dabench: a benchmarking suite for domain adaptation in image classification.

Everything a plugin needs is importable from here: :class:`Method`, :class:`Uses`,
:class:`Batch`, :class:`Loss`, :class:`Backbone`, :class:`DomainPair`, :class:`Domain`,
:class:`PairData`, :class:`Schedule`, the ``register_*`` decorators and ``list_*`` functions.
"""
from __future__ import annotations

from .core.version import __version__

from .backbones.base import Backbone
from .core.domain import Domain, DomainPair, MissingDataError, PairData, Schedule, default_data_root
from .core.method import Batch, Classifier, Loss, Method, Uses, validate_method_class
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
from .core.spec import RunSpec
from .running.matrix import Matrix, MatrixError, expand, load_matrix_file
from .core.splits import stratified_split

from . import backbones as _backbones  # noqa: F401  (registers built-in backbones)
from . import methods as _methods  # noqa: F401  (registers built-in methods)
from . import datasets as _datasets  # noqa: F401  (registers built-in pairs)

from .api import compare, leaderboard, load_results, run

__all__ = [
    "__version__", "Backbone", "Batch", "Classifier", "Domain", "DomainPair", "Loss", "Matrix", "MatrixError",
    "Method", "MissingDataError", "PairData", "PluginError", "RegistryError", "RunSpec", "Schedule", "Uses",
    "BACKBONES", "METHODS", "PAIRS", "compare", "default_data_root", "expand", "leaderboard", "list_backbones",
    "list_methods", "list_pairs", "load_matrix_file", "load_plugin", "load_results", "register_backbone",
    "register_method", "register_pair", "run", "stratified_split", "validate_method_class",
]
