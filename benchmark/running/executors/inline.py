"""The inline executor: runs in this process, one after another (the default)."""

from __future__ import annotations

import pathlib

from ...core.domain import default_data_root
from ...core.registry import load_plugin
from ...core.spec import RunSpec
from ...core.store import RunStore
from ...engine.train import resolve_device
from ..unit import Outcome, run_claimed, run_group_claimed
from .base import Executor, ExecutorOptions, _step_bar, register_executor


@register_executor("inline")
class InlineExecutor(Executor):
    """In this process: ``submit`` runs the spec to the end before returning."""

    def __init__(self, results_dir: pathlib.Path, opts: ExecutorOptions) -> None:
        self.opts = opts
        for plugin in opts.plugins:  # already loaded by expand(); harmless and needed for --rerun
            load_plugin(plugin)
        self.device = resolve_device(opts.device)
        self.root = opts.data_root or default_data_root()
        self.store = RunStore(results_dir)
        self._done: list[Outcome] = []

    groups = True

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def submit(self, spec: RunSpec) -> None:
        bar = _step_bar(self.opts.progress, 1)
        bar.set_description_str(spec.label)

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            self._done.append(run_claimed(spec, self.store, self.device, self.root, on_step, self.opts.engine))
        finally:
            bar.close()

    def submit_group(self, specs: list[RunSpec]) -> None:
        bar = _step_bar(self.opts.progress, 1)
        bar.set_description_str(f"{specs[0].label} ({len(specs)} seeds batched)")

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            self._done.extend(run_group_claimed(specs, self.store, self.device, self.root, on_step, self.opts.engine))
        finally:
            bar.close()

    def wait(self, timeout: float) -> list[Outcome]:
        out, self._done = self._done, []
        return out
