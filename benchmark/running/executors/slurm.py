"""The SLURM executor, on submitit: runs become SLURM jobs, ``gpus_per_job × runs_per_gpu`` runs per job.

How it submits: the scheduler hands runs over ``free_slots()`` at a time and submits a dependant
(linear probe, fine-tune) only once its source-only run is terminal; this executor gathers what
one scheduling round submitted and sends it as **one job array per round** (submitit's
``executor.batch()``), each array task a group of up to ``gpus_per_job × runs_per_gpu`` runs.
The first round is the whole matrix but its dependants; each later round holds the dependants
freed by the runs that ended.

Inside a job (the task, :class:`~dabench.running.slurm_task.SlurmTask`, torch-free) each run is a ``python -m dabench.running.executors.worker`` process (the local
pool's worker: claim → run → record → release; it dies with the job), ``runs_per_gpu`` of them per
GPU of the job (``CUDA_VISIBLE_DEVICES`` set per worker). Claims (``running/unit.py run_claimed``)
keep two submissions, or a requeued job and a straggler, from running a spec twice.

Time limit and preemption: SLURM signals the job (``USR2``) before its time limit or on
preemption. Whenever it comes, the task stops its workers, frees their claims and lets submitit
requeue the same task (:meth:`SlurmTask.checkpoint` → ``helpers.DelayedSubmission``), carrying
the outcomes of the runs that had already answered; if every run had answered, the job simply
finishes. The requeued job resumes each unfinished run from its mid-run checkpoint
(``checkpoints/<id>.partial.pt``, written every ``--checkpoint-every`` steps; without it a
requeued run starts again from step 0). How a signal at any moment is handled without blocking
(the job once hung there) is in the :class:`SlurmTask` docstring.

``DIR/slurm/jobs.json`` lists the jobs with their ids, states and runs (``dabench status`` prints
the queued and running ones); submitit's own files (pickles, logs) are in ``DIR/slurm/submitit/``.
The results folder must be on storage every node sees. Needs ``pip install 'dabench[slurm]'``.
``slurm_cluster="local"`` runs the jobs as local processes through submitit's ``LocalExecutor``
(same code path, no SLURM: the tests use it).
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import time
import uuid
from typing import Any

from ...core.jsonio import dump_json, load_json
from ...core.record import utc_now
from ...core.spec import RunSpec
from ...core.store import RunStore, atomic_write_text, file_lock, machine_tag, process_gone
from ..jobs import FINISHED_STATES, JOBS_FILE, PREEMPTED_ENDED
from ..slurm_task import SlurmTask
from ..unit import Outcome
from .base import Executor, ExecutorError, ExecutorOptions, _absolute_plugins, record_death, register_executor

#: sacct states in which a job ended without running its body to the end: no result pickle is
#: coming, so the runs are recorded at once with the state (``job.result()`` would first wait
#: submitit's 15 s for a result file, per array task, blocking the whole matrix)
NO_RESULT_STATES = ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


#: what submitit itself replaces in any part of its folder's path (``JobPaths``: the job and task
#: ids), so a results folder whose path holds one cannot be its folder
SUBMITIT_TAGS = ("%j", "%t", "%A", "%a")


def escape_log_patterns(script: str, folder: str) -> str:
    """``script`` (submitit's sbatch script) with every ``%`` of ``folder`` written ``%%`` where
    SLURM reads a filename pattern: the ``#SBATCH --output/--error`` values and srun's
    ``--output/--error`` arguments. SLURM replaces ``%j``, ``%A``, ``%a``, ``%u``, ``%x``, ``%%`` ...
    in those (sbatch(1), *filename pattern*): a results folder named ``acc_100%u`` sent the job's
    logs to ``acc_100<user>``, where neither submitit nor ``dabench`` looked. The patterns submitit
    put after the folder (``%A_%a_0_log.out``) stay patterns; the folder's argument to submitit's
    own command (not a pattern) stays as it is.
    """
    if "%" not in folder:
        return script
    escaped = folder.replace("%", "%%")

    def fix(path: str) -> str:
        return escaped + path[len(folder) :] if path.startswith(folder) else path

    lines = []
    for line in script.splitlines():
        for flag in ("#SBATCH --output=", "#SBATCH --error="):
            if line.startswith(flag):
                (value,) = shlex.split(line[len(flag) :])
                line = flag + shlex.quote(fix(value))
        if line.startswith("srun "):
            words = shlex.split(line)
            for i in range(len(words) - 1):
                if words[i] in ("--output", "--error"):
                    words[i + 1] = fix(words[i + 1])
            line = " ".join(shlex.quote(w) for w in words)
        lines.append(line)
    return "\n".join(lines) + ("\n" if script.endswith("\n") else "")


def job_state(raw: object) -> str:
    """A job's state as sacct names it, without its qualifier: ``CANCELLED by 1000`` is ``CANCELLED``
    (the qualifier made the state unknown to :data:`FINISHED_STATES`, and the job was listed ``FINISHED``)."""
    words = str(raw).upper().split()
    return words[0] if words else "UNKNOWN"


def _read_jobs(path: pathlib.Path) -> list[dict[str, Any]]:
    """The jobs listed in ``jobs.json`` now (none when it is absent or unreadable: rewritten whole)."""
    try:
        payload = load_json(path.read_text(encoding="utf-8"))
        jobs = payload.get("jobs", []) if isinstance(payload, dict) else []
    except (OSError, ValueError):
        return []
    return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def _runner_alive(job: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether ``job`` of ``jobs.json`` belongs to another runner that may still be running."""
    runner = job.get("runner")
    if not isinstance(runner, dict) or runner == me:
        return False  # an older dabench's entry, or this runner's own (rewritten from memory)
    try:
        return not process_gone(int(runner["pid"]), str(runner["machine"]))
    except (KeyError, TypeError, ValueError):
        return False


@register_executor("slurm")
class SlurmExecutor(Executor):
    """One job array per scheduling round through submitit; ``workers`` caps the runs in flight."""

    reads = frozenset({"workers", "runs_per_gpu", "slurm_partition", "gpus_per_job", "slurm_time_min", "slurm_cluster"})

    def __init__(self, results_dir: pathlib.Path, opts: ExecutorOptions) -> None:
        try:
            import submitit  # late: an optional extra (pip install 'dabench[slurm]')
        except ImportError:
            raise ImportError(
                "--executor slurm needs submitit: pip install 'dabench[slurm]' (or pick --executor inline or local)"
            ) from None
        # the option values are checked by make_executor (check_executor_options)
        self.submitit = submitit
        self.opts = opts = opts.resolved()  # the defaults of the options not given
        # (resolved: never None; the conditionals only tell the type checker so)
        gpus_per_job = 1 if opts.gpus_per_job is None else opts.gpus_per_job
        self.store = RunStore(results_dir)
        self.root = self.store.root.resolve()
        self.group = max(1, gpus_per_job) * (opts.runs_per_gpu or 1)  # runs packed in one job
        cluster = opts.slurm_cluster
        # never submitit's auto-detection (cluster=None): on a machine without SLURM it silently
        # picks its local executor, and a "SLURM" matrix ran as processes on the login node
        cluster = cluster or "slurm"
        if cluster == "slurm":
            missing = [c for c in ("sbatch", "srun", "sacct") if shutil.which(c) is None]
            if missing:
                raise ConnectionError(
                    f"--executor slurm: {', '.join(missing)} not found on PATH (is this a SLURM login node?); "
                    "--slurm-cluster local runs the same jobs as local processes"
                )
        folder = self.root / "slurm" / "submitit"
        tags = [t for t in SUBMITIT_TAGS if t in str(folder)]
        if tags:
            raise ValueError(
                f"--results {self.root}: the path holds {', '.join(tags)}, which submitit replaces by job ids in "
                f"every path of its folder ({folder}); for --executor slurm pick a folder whose path has none of "
                f"{', '.join(SUBMITIT_TAGS)}"
            )
        self.ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
        self.cluster = self.ex.cluster
        if self.cluster == "slurm" and "%" in str(folder):
            # SLURM expands % patterns in the log paths; submitit writes the folder as it is. The hook
            # is a private method of submitit's SlurmExecutor: only a folder with a % depends on it
            inner: Any = self.ex._executor
            make_text = getattr(inner, "_make_submission_file_text", None)
            if make_text is None:
                raise ValueError(
                    f"--results {self.root}: SLURM expands the '%' of this path in its log paths, and this "
                    f"submitit ({getattr(submitit, '__version__', '?')}) has no hook to escape it; pick a "
                    "folder whose path has no '%'"
                )
            inner._make_submission_file_text = lambda command, uid: escape_log_patterns(
                make_text(command, uid), str(inner.folder)
            )
        params: dict[str, Any] = {
            "timeout_min": 240 if opts.slurm_time_min is None else opts.slurm_time_min,
            "gpus_per_node": gpus_per_job,
            "tasks_per_node": 1,
            "nodes": 1,
            "name": "dabench",
        }
        if self.cluster == "slurm":
            # --signal USR2@120: two minutes' warning before the time limit, for submitit's requeue
            params.update(slurm_signal_delay_s=120, cpus_per_task=max(1, self.group))
            if opts.slurm_partition:
                params["slurm_partition"] = opts.slurm_partition
        self.ex.update_parameters(**params)
        # a local "cluster" runs every job on this machine: one job at a time unless told otherwise
        self._slots = opts.workers or (self.group if self.cluster == "local" else 256)
        self._pending: list[RunSpec] = []
        self._jobs: list[dict[str, Any]] = []  # {"job", "specs", "submitted_at", "state"}
        self._runner_id = uuid.uuid4().hex[:12]  # this executor in jobs.json (two may share a process)
        self._preempted_since: dict[str, float] = {}  # job id -> when it was first seen PREEMPTED
        self._task_args: dict[str, Any] = {
            "results_dir": str(self.root),
            "device": opts.device,
            "gpus": gpus_per_job,
            "data_root": str(opts.data_root) if opts.data_root else None,
            "plugins": _absolute_plugins(opts.plugins),
            "engine": opts.engine,
        }

    @property
    def workers(self) -> int:
        return self._slots

    def _inflight(self) -> int:
        return len(self._pending) + sum(len(j["specs"]) for j in self._jobs if j["state"] not in FINISHED_STATES)

    def free_slots(self) -> int:
        return self._slots - self._inflight()

    def submit(self, spec: RunSpec) -> None:
        self._pending.append(spec)  # sent with the rest of this round, as one array, by wait()

    def _flush(self) -> None:
        if not self._pending:
            return
        groups = [self._pending[i : i + self.group] for i in range(0, len(self._pending), self.group)]
        self._pending = []
        tasks = [SlurmTask([{**s.to_dict(), "_run_id": s.run_id} for s in g], **self._task_args) for g in groups]
        try:
            with self.ex.batch():
                jobs = [self.ex.submit(t) for t in tasks]
        except (self.submitit.core.utils.FailedJobError, OSError) as exc:
            # sbatch refused the array (bad partition or account, a QOS limit ...): its own words,
            # once; nothing of it was queued, its runs have no record and the next dabench run sends them
            said = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ExecutorError(
                f"sbatch refused the job array of {len(groups)} job(s) ({sum(map(len, groups))} runs): {said}"
            ) from exc
        for job, group in zip(jobs, groups):
            self._jobs.append({"job": job, "specs": group, "submitted_at": utc_now(), "state": "PENDING"})
        self._write_jobs()

    def _write_jobs(self) -> None:
        """Write this runner's jobs into ``DIR/slurm/jobs.json``, keeping those of the other runners
        on the folder: read, merge and write under a lock (``slurm/.jobs.lock``), so that two
        ``dabench run --executor slurm`` on one folder do not each overwrite the other's list.

        Each job names its runner (``runner``: pid, :func:`~dabench.core.store.machine_tag` and
        the executor's random id);
        another runner's jobs are kept unless that runner is gone (a process of this machine that
        is not alive: its list is as stale as the old overwrite left it). Entries of an older
        dabench (no ``runner``) are replaced, as they always were.
        """
        runner = {"pid": os.getpid(), "machine": machine_tag(), "id": self._runner_id}
        mine = [
            {
                "job_id": str(j["job"].job_id),
                "state": j["state"],
                "submitted_at": j["submitted_at"],
                "run_ids": [s.run_id for s in j["specs"]],
                "runner": runner,
            }
            for j in self._jobs
        ]
        path = self.root / JOBS_FILE
        with file_lock(path.with_name(".jobs.lock")):
            ids = {j["job_id"] for j in mine}
            others = [j for j in _read_jobs(path) if j.get("job_id") not in ids and _runner_alive(j, runner)]
            payload = {"format": 1, "updated_at": utc_now(), "cluster": self.cluster, "jobs": others + mine}
            atomic_write_text(path, dump_json(payload, indent=1))

    #: seconds a job may stay PREEMPTED before it counts as ended: submitit counts PREEMPTED as
    #: unfinished (SLURM requeues a preempted job, and sacct shows PREEMPTED meanwhile), but on a
    #: partition that cancels preempted jobs it stays so for ever, and the matrix waited for ever
    preempted_grace_s: float = 600.0

    def _ended(self, job: Any, state: str) -> bool:
        if state != "PREEMPTED":
            self._preempted_since.pop(str(job.job_id), None)
            return bool(job.done())
        since = self._preempted_since.setdefault(str(job.job_id), time.monotonic())
        return bool(job.done()) or time.monotonic() - since >= self.preempted_grace_s

    def _collect(self) -> list[Outcome]:
        out: list[Outcome] = []
        changed = False
        for j in self._jobs:
            if j["state"] in FINISHED_STATES:
                continue
            job = j["job"]
            state = job_state(job.state)
            done = self._ended(job, state)
            if done and state not in FINISHED_STATES:
                # PREEMPTED for longer than the grace: kept as the state, listed as ended
                state = PREEMPTED_ENDED if state == "PREEMPTED" else "FINISHED"
            if state != j["state"]:
                j["state"], changed = state, True
            if not done:
                continue
            if state.split()[0] in NO_RESULT_STATES and not job.paths.result_pickle.exists():
                why = f"SLURM job {job.job_id} ended {state} without a result"
                detail = f"sacct state {job.state}; the job's log: {job.paths.stderr}"
                out += [self._death(spec, why, detail) for spec in j["specs"]]
                continue
            try:
                results = job.result()
                out += [Outcome.from_message(r) for r in results]
            except Exception as exc:  # noqa: BLE001 - the job failed, was cancelled or lost its node
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                why = f"SLURM job {job.job_id} ended without a result: {first}"
                out += [self._death(spec, why, str(exc)) for spec in j["specs"]]
        if changed or out:
            self._write_jobs()
        return out

    def _death(self, spec: RunSpec, why: str, detail: str) -> Outcome:
        return record_death(self.store, spec, why, detail, self.opts.device, remote=True)

    def wait(self, timeout: float) -> list[Outcome]:
        self._flush()
        deadline = time.monotonic() + timeout
        while True:
            out = self._collect()
            if out or time.monotonic() >= deadline or not self._inflight():
                return out
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        # jobs still queued or running are cancelled: their runs stay "running" and the next
        # dabench run resumes them (as with the other executors)
        for j in self._jobs:
            if j["state"] not in FINISHED_STATES:
                try:
                    j["job"].cancel(check=False)
                except Exception:  # noqa: BLE001 - best effort: the job may have just ended
                    pass
                j["state"] = "CANCELLED"
        if self._jobs:
            self._write_jobs()
