"""How many runs should share one GPU? ``python -m dabench.speed.gpu_pack``

Runs the same matrix through the local pool once per ``--runs-per-gpu`` value, each into its
own fresh results folder, and prints wall time and runs/min per value. Small models (LeNet on
digits) cannot fill a GPU alone, so packing several runs per GPU should raise throughput until
the GPU (or the CPU feeding it) saturates.

Example (the lead's comparison on one GPU; about 2–4 minutes on an H100)::

    python -m dabench.speed.gpu_pack --runs-per-gpu 1,4 --seeds 0,1,2 --out /tmp/pack

Any ``dabench run`` matrix flag after ``--`` is passed on (``-- --set steps=300``).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

from ..core.record import Status
from ..core.store import RunStore


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dabench.speed.gpu_pack", description=__doc__.splitlines()[0])
    p.add_argument("--runs-per-gpu", default="1,4", help="comma-separated K values to compare (default: 1,4)")
    p.add_argument("--methods", default=None, help="as dabench run (default: the quick matrix's six)")
    p.add_argument("--pairs", default="digits-offline")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--runs-per-process",
        default="0",
        help="as dabench run; 0 (reuse workers) measures the GPU, not process start-up (default: 0)",
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/dabench_gpu_pack"))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="more dabench run flags, after --")
    args = p.parse_args(argv)
    extra = [a for a in args.rest if a != "--"]
    rows = []
    for k in [int(v) for v in args.runs_per_gpu.split(",") if v.strip()]:
        folder = args.out / f"k{k}"
        shutil.rmtree(folder, ignore_errors=True)  # a fresh folder: nothing may be skipped as complete
        cmd = [
            sys.executable,
            "-m",
            "dabench.cli",
            "run",
            "--executor",
            "local",
            "--runs-per-gpu",
            str(k),
            "--runs-per-process",
            args.runs_per_process,
            "--pairs",
            args.pairs,
            "--seeds",
            args.seeds,
            "--results",
            str(folder),
            "--no-progress",
            *extra,
        ]
        if args.methods:
            cmd += ["--methods", args.methods]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        recs = list(RunStore(folder).records())
        done = [r for r in recs if r.status is Status.COMPLETE]
        run_s = sum((r.timings or {}).get("total_s", 0) for r in done)
        rows.append(
            (k, len(done), len(recs), wall, 60 * len(done) / wall if wall else 0.0, run_s / len(done) if done else 0.0)
        )
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-3000:], sep="\n")
    print("\n| runs per GPU | complete/runs | wall s | runs/min | mean run s |")
    print("|---|---|---|---|---|")
    for k, ok, n, wall, rpm, mean in rows:
        print(f"| {k} | {ok}/{n} | {wall:.1f} | {rpm:.1f} | {mean:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
