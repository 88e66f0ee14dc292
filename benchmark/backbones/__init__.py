"""Backbones, one file per family; each registers its factories on import."""
from .base import Backbone
from . import lenet  # noqa: F401  (registers)

__all__ = ["Backbone"]
