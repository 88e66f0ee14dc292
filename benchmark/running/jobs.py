"""``DIR/slurm/jobs.json``: the job list the slurm executor keeps and ``dabench status`` shows.

Torch-free (the status path must not import torch): the executor (``executors/slurm.py``, which
pulls in the engine) writes the file, :mod:`dabench.running.status` reads it; both take the
file's place and the finished states from here.
"""

from __future__ import annotations

#: where a results folder keeps its SLURM jobs (ids, states, run ids), relative to its root
JOBS_FILE = "slurm/jobs.json"

#: the executor's name for a job that stayed PREEMPTED (SLURM did not requeue it) past its grace
PREEMPTED_ENDED = "PREEMPTED (NOT REQUEUED)"

#: SLURM states after which a job does nothing more (sacct's names; submitit's local ones too)
FINISHED_STATES = (
    "COMPLETED",
    "FINISHED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "INTERRUPTED",
    "NO PROCESS AND NO RESULT",
    PREEMPTED_ENDED,
)
