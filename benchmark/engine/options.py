"""EngineOptions: how the engine trains a run (checkpoints, compilation, CUDA graphs), as one value.

Torch-free: the slurm job body (``running/slurm_task.py``) and ``ExecutorOptions`` hold one
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineOptions:
    """The engine's options for a run (``dabench run --checkpoint-every N --compile
    --cuda-graphs/--no-cuda-graphs``). They change speed and robustness, never the run's spec,
    its id or what it computes, so they are not part of :class:`~dabench.core.spec.RunSpec`: the
    same spec run with other options is the same run.

    - ``checkpoint_every``: steps between resumable mid-run checkpoints (``0``: never). A run
      killed and rerun resumes from its last one and ends as the uninterrupted run would.
    - ``compile``: ``torch.compile`` the method's networks (:mod:`dabench.engine.compile`).
    - ``cuda_graphs``: capture the training step in a CUDA graph (:mod:`dabench.engine.graphs`);
      ``None``: the engine's default on CUDA (``graphs.CUDA_GRAPHS_DEFAULT``), never on the CPU.

    Seed batching (``--seed-batch``) is not here: it is the scheduler's grouping of runs
    (``ExecutorOptions.seed_batch``), not an option of how one run trains.
    """

    checkpoint_every: int = 0
    compile: bool = False
    cuda_graphs: bool | None = None

    def __post_init__(self) -> None:
        # bool is an int: checkpoint_every=True would silently mean "every step"
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int):
            raise ValueError(
                f"EngineOptions.checkpoint_every={self.checkpoint_every!r}: must be a whole number of steps "
                "(0: no mid-run checkpoints)"
            )
        if self.checkpoint_every < 0:
            raise ValueError(
                f"EngineOptions.checkpoint_every={self.checkpoint_every}: must be >= 0 "
                "(steps between mid-run checkpoints; 0: never)"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"EngineOptions.compile={self.compile!r}: must be True or False")
        if self.cuda_graphs is not None and not isinstance(self.cuda_graphs, bool):
            raise ValueError(
                f"EngineOptions.cuda_graphs={self.cuda_graphs!r}: must be True, False or None (the default on CUDA)"
            )

    def to_flags(self) -> list[str]:
        """These options as the worker's command-line flags (the same spelling as ``dabench run``'s):
        what the local pool and a SLURM job pass to ``python -m dabench.running.executors.worker``."""
        flags = ["--checkpoint-every", str(self.checkpoint_every)]
        if self.compile:
            flags.append("--compile")
        if self.cuda_graphs is not None:
            flags.append("--cuda-graphs" if self.cuda_graphs else "--no-cuda-graphs")
        return flags


__all__ = ["EngineOptions"]
