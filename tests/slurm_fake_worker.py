"""A fake SLURM-job worker for ``tests/slurm_fakes.py``: ``python slurm_fake_worker.py DIR``.

Speaks the worker protocol (one ``{"spec": ...}`` line in, one ``outcome`` line out) but trains
nothing: it answers when ``DIR/go`` or ``DIR/go-RUN`` exists and exits when ``DIR/exit`` or
``DIR/exit-RUN`` exists, leaving ``started-RUN`` / ``answered-RUN`` markers and a line
``RUN PID`` in ``DIR/starts.txt``, so a test knows and chooses where each worker is.
Standard library only, so it starts at once even on a loaded machine.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import signal
import sys
import time


def _await(cond) -> None:
    # the job's harness runs under the test's timeout, and this process dies with it (PDEATHSIG)
    while not cond():
        time.sleep(0.005)


def worker(d: pathlib.Path) -> None:
    """A worker that answers when ``go[-RUN]`` exists and exits when ``exit[-RUN]`` exists."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: never outlive the job
    run_id = json.loads(sys.stdin.readline())["spec"]["_run_id"]
    with open(d / "starts.txt", "a") as f:
        f.write(f"{run_id} {os.getpid()}\n")
    (d / f"started-{run_id}").touch()
    _await(lambda: (d / "go").exists() or (d / f"go-{run_id}").exists())
    sys.stdout.write(json.dumps({"event": "outcome", "run_id": run_id, "kind": "ran", "record": None}) + "\n")
    sys.stdout.flush()
    os.close(1)  # answered, pipe closed: what a worker looks like while torch tears down
    (d / f"answered-{run_id}").touch()
    _await(lambda: (d / "exit").exists() or (d / f"exit-{run_id}").exists())


if __name__ == "__main__":
    worker(pathlib.Path(sys.argv[1]))
