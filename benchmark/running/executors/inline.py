"""The inline executor: runs in this process, one after another (the default)."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator

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
    reads = frozenset()  # one run at a time in this process: no pool, cluster or job options

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def submit(self, spec: RunSpec) -> None:
        with self._bar_for(spec.label) as on_step:
            self._done.append(run_claimed(spec, self.store, self.device, self.root, on_step, self.opts.engine))

    def submit_group(self, specs: list[RunSpec]) -> None:
        with self._bar_for(f"{specs[0].label} ({len(specs)} seeds batched)") as on_step:
            self._done.extend(run_group_claimed(specs, self.store, self.device, self.root, on_step, self.opts.engine))

    @contextlib.contextmanager
    def _bar_for(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A step bar labelled ``label`` for what runs inside the block, and the ``on_step``
        callback that moves it; the bar is closed after, whatever happened."""
        bar = _step_bar(self.opts.progress, 1)
        bar.set_description_str(label)

        def on_step(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            yield on_step
        finally:
            bar.close()

    def wait(self, timeout: float) -> list[Outcome]:
        out, self._done = self._done, []
        return out
