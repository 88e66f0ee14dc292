"""Backbones, one file per family; each registers its factories on import."""

from .base import Backbone
from . import lenet  # noqa: F401  (registers)
from . import cnn32, efficientnet, resnet  # noqa: F401  (cnn32, tf_efficientnet_lite0, resnet50)

__all__ = ["Backbone"]
