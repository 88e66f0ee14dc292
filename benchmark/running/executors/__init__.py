"""Executors: where the runs of a matrix execute (inline, a local process pool, Ray, SLURM). One file per
executor, registered by name (:func:`register_executor`); importing this package registers them."""

from .base import (
    EXECUTORS,
    Executor,
    ExecutorError,
    ExecutorOptions,
    check_executor_options,
    make_executor,
    register_executor,
)
from . import inline, local_pool, ray, slurm  # noqa: F401  (register the built-in executors)

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "ExecutorOptions",
    "check_executor_options",
    "make_executor",
    "register_executor",
]
