"""One worker process of the local pool: ``python -m dabench.running.executors.worker --results DIR ...``.

It reads run specs as JSON lines on stdin (``{"spec": {...}}``), runs each through
:func:`dabench.running.unit.run_claimed` (claim → run → record → release) — or a seed group
(``{"specs": [...]}``, ``--seed-batch``) through :func:`~dabench.running.unit.run_group_claimed`,
answering one outcome per spec — and answers on its original stdout with JSON lines::

    {"event": "ready", "pid": 123}
    {"event": "step", "run_id": "...", "done": 50, "total": 600}
    {"event": "outcome", "run_id": "...", "kind": "ran", "record": {...}}
    {"event": "outcome", "run_id": "...", "kind": "write-fault", "error": "cannot write ...: ..."}

Anything the run itself prints goes to stderr (a plugin's ``print`` cannot corrupt the
protocol). The worker exits after ``--max-runs`` runs, when stdin closes, or — on Linux —
when its parent dies (``PR_SET_PDEATHSIG``), so a killed ``dabench run`` leaves no orphan
training a run whose claim it still holds.

:func:`run_one` is the same unit of work for the Ray executor's remote tasks.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pathlib
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import IO, Any

import torch

from ...core.domain import default_data_root
from ...core.jsonio import dump_json, load_json
from ...core.registry import load_plugin
from ...core.spec import RunSpec
from ...core.store import RunStore, WriteFault
from ...engine.options import EngineOptions
from ...engine.train import resolve_device
from ..unit import Outcome, record_failure, run_claimed, run_group_claimed
from .base import run_marker


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL us when the parent dies (Linux); exit if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: stdin EOF still ends us
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect


def _received(spec_dict: dict[str, Any]) -> tuple[RunSpec, str | None]:
    """The spec a parent sent, and the run id the parent computed for it (``_run_id``; None when
    not sent)."""
    spec_dict = dict(spec_dict)
    expected_id = spec_dict.pop("_run_id", None)  # the parent's id: a JSON round trip must not change it
    return RunSpec.from_dict(spec_dict), expected_id


def _check_transit(spec: RunSpec, expected_id: str | None) -> RunSpec:
    """``spec``, once its run id is checked to be the one the parent sent."""
    if expected_id is not None and spec.run_id != expected_id:
        raise RuntimeError(f"spec changed in transit: run id {expected_id} became {spec.run_id}")
    return spec


def run_one(
    spec_dict: dict[str, Any],
    results_dir: str | os.PathLike,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    plugins: Sequence[str] = (),
    engine: EngineOptions = EngineOptions(),
    threads: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Load plugins, then claim, run and record one spec; returns ``{"run_id", "kind", "record"}``.

    Never raises for a failure of the run: a plugin that fails to import is recorded as the
    run's failure (with the error), like any other exception.
    """
    if threads:
        torch.set_num_threads(int(threads))
    spec, expected_id = _received(spec_dict)
    store = RunStore(results_dir)
    try:
        for plugin in plugins:
            load_plugin(plugin)
    except Exception as exc:  # noqa: BLE001 - recorded, the matrix goes on
        try:
            if not store.claim(spec.run_id):
                return Outcome(spec.run_id, "busy").to_message()
            try:
                rec = record_failure(spec, store, type(exc).__name__, str(exc), traceback.format_exc(), device)
            finally:
                store.release(spec.run_id)
        except WriteFault as fault:
            return Outcome(spec.run_id, "write-fault", error=str(fault)).to_message()
        return Outcome(spec.run_id, "ran", rec).to_message()
    _check_transit(spec, expected_id)
    root = pathlib.Path(data_root) if data_root else default_data_root()
    try:
        out = run_claimed(spec, store, resolve_device(device), root, on_step, engine)
    except WriteFault as exc:  # the parent stops the matrix with this one-line message
        return Outcome(spec.run_id, "write-fault", error=str(exc)).to_message()
    return out.to_message()


def run_group_one(
    spec_dicts: list[dict[str, Any]],
    results_dir: str | os.PathLike,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    plugins: Sequence[str] = (),
    engine: EngineOptions = EngineOptions(),
    threads: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_one` for a seed group (``--seed-batch``): one outcome message per spec."""
    if threads:
        torch.set_num_threads(int(threads))
    specs = [_check_transit(*_received(d)) for d in spec_dicts]
    try:
        for plugin in plugins:
            load_plugin(plugin)
    except Exception:  # noqa: BLE001 - each seed records the failure, as run_one does
        return [run_one({**s.to_dict(), "_run_id": s.run_id}, results_dir, device, data_root, plugins) for s in specs]
    store = RunStore(results_dir)
    root = pathlib.Path(data_root) if data_root else default_data_root()
    try:
        outs = run_group_claimed(specs, store, resolve_device(device), root, on_step, engine)
    except WriteFault as exc:
        return [Outcome(s.run_id, "write-fault", error=str(exc)).to_message() for s in specs]
    return [o.to_message() for o in outs]


def _mark_run(run_ids: Sequence[str | None]) -> None:
    print(f"{run_marker(os.getpid())}{', '.join(str(r) for r in run_ids)} starts ---", file=sys.stderr, flush=True)


def _send(proto: IO[str], msg: dict[str, Any]) -> None:
    proto.write(dump_json(msg, default=str) + "\n")
    proto.flush()


def _parser() -> argparse.ArgumentParser:
    # the engine flags are those EngineOptions.to_flags() writes (the local pool's and a SLURM job's command)
    p = argparse.ArgumentParser(prog="python -m dabench.running.executors.worker", description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, type=pathlib.Path)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--plugin", action="append", default=[])
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-runs", type=int, default=0, help="exit after this many runs (0: until stdin closes)")
    p.add_argument("--parent-pid", type=int, default=None)
    return p


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The worker's engine flags (:meth:`EngineOptions.to_flags`) read back as one value."""
    return EngineOptions(args.checkpoint_every, args.compile, args.cuda_graphs)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    engine = engine_options(args)

    _die_with_parent(args.parent_pid)
    # keep the real stdout for the protocol; everything else printed goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    _send(proto, {"event": "ready", "pid": os.getpid()})
    done = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = load_json(line)
        if "specs" in msg:  # a seed group: one vmapped run, one outcome per seed
            first = msg["specs"][0].get("_run_id")
            _mark_run([d.get("_run_id") for d in msg["specs"]])

            def on_group_step(n: int, total: int, _id: str | None = first) -> None:
                _send(proto, {"event": "step", "run_id": _id, "done": n, "total": total})

            for result in run_group_one(
                msg["specs"], args.results, args.device, args.data_root, args.plugin,
                engine, args.threads, on_group_step,
            ):  # fmt: skip
                _send(proto, {"event": "outcome", **result})
            done += 1
            if args.max_runs and done >= args.max_runs:
                break
            continue
        spec_dict = msg["spec"]
        run_id = spec_dict.get("_run_id")
        _mark_run([run_id])

        def on_step(n: int, total: int, _id: str | None = run_id) -> None:
            _send(proto, {"event": "step", "run_id": _id, "done": n, "total": total})

        result = run_one(
            spec_dict, args.results, args.device, args.data_root, args.plugin, engine, args.threads, on_step
        )
        _send(proto, {"event": "outcome", **result})
        done += 1
        if args.max_runs and done >= args.max_runs:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
