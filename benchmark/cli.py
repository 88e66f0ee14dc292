"""Command line: ``dabench run | list | report | bench | status``."""

from __future__ import annotations

import argparse
import linecache
import os
import pathlib
import select
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

# torch-free imports only (docs/architecture.md, "Import layers"): ``dabench report`` and
# ``dabench status`` must not import torch; the executors (engine, torch) load in _run
from .core.domain import default_data_root
from .core.record import Status
from .core.registry import PluginError, RegistryError, load_plugin, split_names
from .core.store import WriteFault
from .running.matrix import (
    DEFAULT_METHODS,
    DEFAULT_PAIRS,
    MatrixError,
    expand,
    load_matrix_file,
    parse_overrides,
    parse_sweeps,
    seeds_problem,
    sweep_text,
)

EPILOG = """examples:
  dabench run                                   # quick matrix: 6 methods x digits-offline x 3 seeds
  dabench run --methods dann,source-only --seeds 0,1 --set steps=300 --set dann.trade_off=0.5
  dabench run --matrix experiment.toml --results results/exp1
  dabench run --methods dann --sweep dann.trade_off=0.1,0.3,1,3 --dry-run
  dabench list methods 'da*'
  dabench report results/default --rule source-val --format md,csv,tex,html
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in _csv(text))
    except ValueError:
        seeds = ()
    problem = seeds_problem(seeds)  # the same rule as a matrix file's seeds and dabench.run's
    if problem:
        raise argparse.ArgumentTypeError(
            f"--seeds expects comma-separated non-negative integers like 0,1,2, got {text!r} ({problem})"
        )
    return seeds


def _names(flag: str, text: str | None) -> str | None:
    """``--methods``/``--pairs`` as given; one with no name in it (``''``, ``,``) is refused: ``''``
    ran the default matrix, ``,`` a matrix of no run, and neither said so."""
    if text is not None and not _csv(text):
        raise MatrixError(f"{flag} {text!r}: expected comma-separated names (see dabench list), got none")
    return text


def _path(text: str) -> pathlib.Path:
    """A path flag's value; an empty one is refused: ``pathlib.Path('')`` is the current folder,
    so ``--results ''`` (an unset shell variable) wrote the runs there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return pathlib.Path(text)


class _ExecutorNames:
    """``--executor``'s choices, read from the executor registry only when argparse checks a
    given value or prints the help: importing the executors imports the engine (torch), which
    ``dabench report|status|list`` never need."""

    def _names(self) -> list[str]:
        from .running.executors import EXECUTORS

        return EXECUTORS.names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dabench",
        description="Benchmark domain-adaptation methods on domain pairs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="run a benchmark matrix (resumable) and print the leaderboard",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    r.add_argument(
        "--matrix",
        type=_path,
        help="TOML matrix file ([matrix] methods/pairs/seeds/plugins/max_trials, [set], [sweep]; see README)",
    )
    r.add_argument(
        "--methods",
        help=f"comma-separated names, globs or groups (all, uda, few-shot, source-free, zoo; "
        f"see dabench list methods) (default: {','.join(DEFAULT_METHODS)})",
    )
    r.add_argument("--pairs", help=f"comma-separated names or globs (default: {','.join(DEFAULT_PAIRS)})")
    r.add_argument("--seeds", type=_seeds, help="comma-separated seeds (default: 0,1,2)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override: schedule key (steps, lr, batch_size, eval_every, lr_schedule=inv|cosine|constant "
        "...), target_shots, backbone, backbone.<option>, <method>.<hparam>, <hparam> or "
        "save_features=true; "
        "checked before anything runs; repeatable",
    )
    r.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="sweep a --set key over values (grid; several --sweep multiply), or over a distribution "
        "KEY='log_uniform(a,b)'|'uniform(a,b)'|'choice(x,y)' drawn --trials times; each trial is "
        "its own configuration and run id; repeatable",
    )
    r.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="random-search trials (draws of the --sweep distributions)",
    )
    r.add_argument(
        "--sweep-seed",
        type=int,
        default=None,
        metavar="S",
        help="seed of the random-search draws (default: 0; same seed, same trials; needs a random --sweep)",
    )
    r.add_argument(
        "--max-trials", type=int, default=None, metavar="N", help="refuse a sweep with more trials than N (default: 64)"
    )
    r.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="import a plugin that registers methods/pairs/backbones; repeatable",
    )
    r.add_argument(
        "--results",
        type=_path,
        default=pathlib.Path("results/default"),
        help="results folder (default: results/default); rerunning skips complete runs; the printed "
        "leaderboard covers every run in the folder",
    )
    r.add_argument(
        "--data-root",
        type=_path,
        default=None,
        help=f"where datasets live (default: $DABENCH_DATA or {default_data_root()})",
    )
    r.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    r.add_argument(
        "--rule",
        default="last",
        help="model-selection rule for the printed leaderboard: last, source-val, entropy, im, snd, dev, oracle (default: last)",
    )
    r.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="save a resumable mid-run checkpoint every STEPS steps (default: off)",
    )
    r.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the methods' networks (speed only; not part of the run id)",
    )
    r.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="capture each training step in a CUDA graph and replay it (speed only; not part of the run id; "
        "default: on for CUDA devices, never on the CPU; a step that cannot be captured runs eagerly)",
    )
    r.add_argument(
        "--seed-batch",
        action="store_true",
        help="train the seeds of each configuration as one vmapped model (inline and local executors, refused by "
        "the others; "
        "speed only, not part of the run id; see docs/architecture.md)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true", help="print the run specs and exit")
    r.add_argument(
        "--executor",
        default="inline",
        choices=_ExecutorNames(),
        metavar="NAME",
        help="inline: this process; local: a pool of worker processes (a crash kills only its run); "
        "ray: one Ray task per run (pip install 'dabench[ray]'); slurm: SLURM jobs through "
        "submitit (pip install 'dabench[slurm]') (default: inline)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local/ray: runs at once (default: GPUs x --runs-per-gpu; on CPUs only: 1 for local, "
        "the cluster's CPUs for ray); slurm: runs queued or running at once (default: 256)",
    )
    r.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        metavar="K",
        help="local/ray/slurm: pack K runs on each GPU (small models cannot fill a GPU alone; default: 1)",
    )
    r.add_argument(
        "--runs-per-process",
        type=int,
        default=None,
        metavar="N",
        help="local: runs a worker process does before a fresh one replaces it (0: no limit, "
        "the default: the pair's data is loaded once per worker; 1: each run in a fresh "
        "process). Either way a crash kills only the run in hand and the worker is replaced",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="ray: cluster to join (auto: the one started on this machine, or host:port, "
        "checked to answer within 5 s; default: start a local Ray)",
    )
    r.add_argument(
        "--slurm-partition",
        default=None,
        metavar="NAME",
        help="slurm: partition to submit to (default: the cluster's default)",
    )
    r.add_argument(
        "--gpus-per-job",
        type=int,
        default=None,
        metavar="G",
        help="slurm: GPUs per job, each job running G x --runs-per-gpu runs (0: CPU jobs; default: 1)",
    )
    r.add_argument(
        "--slurm-time",
        type=int,
        default=None,
        metavar="MINUTES",
        help="slurm: time limit of a job; a job reaching it (or preempted) is requeued and its runs "
        "resume from their --checkpoint-every checkpoints (default: 240)",
    )
    r.add_argument(
        "--slurm-cluster",
        default=None,
        choices=("slurm", "local"),
        help="slurm: 'local' runs the jobs as local processes through submitit (a dry run of a "
        "SLURM set-up; default: slurm)",
    )
    r.add_argument(
        "--wait-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for a run that another live runner holds and a run here depends "
        "on, before leaving its dependants for a later run (default: 3600)",
    )
    r.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="local: a run's wall-clock limit; a run still going after it (a hang) has its worker "
        "killed, is recorded failed (RunTimeout) and the matrix goes on (default: none)",
    )
    r.add_argument(
        "--rerun",
        metavar="RUN_ID",
        action="append",
        default=[],
        help="repeat the run RUN_ID of --results from the spec in its record (the old record "
        "moves to DIR/previous/), and the runs there that start from its weights (linear-probe, "
        "fine-tune); repeatable",
    )

    ls = sub.add_parser("list", help="list registered methods, pairs or backbones")
    ls.add_argument("what", choices=["methods", "pairs", "backbones"])
    ls.add_argument("pattern", nargs="?", help="glob such as 'da*' or 'office31-*'")
    ls.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="import a plugin first, so its methods/pairs/backbones are listed too; repeatable",
    )

    rep = sub.add_parser("report", help="leaderboard, statistics and figures from results folders")
    rep.add_argument("dirs", nargs="+", type=_path, help="results folders (several merge)")
    rep.add_argument(
        "--rule",
        default="last",
        help="model-selection rule: last, source-val, entropy, im, snd, dev (needs runs with "
        "--set save_features=true; final checkpoints only), oracle. source-val and dev read source "
        "labels: source-free runs show n/a under them",
    )
    rep.add_argument(
        "--select-config",
        action="store_true",
        help="sweeps: the rule (not last) also picks each method's configuration per pair and seed "
        "(argmax of its score over trials x evaluations); one row per method",
    )
    rep.add_argument("--format", default="md,csv", help="comma-separated: md,csv,tex,html (default: md,csv)")
    rep.add_argument("--out", type=_path, default=None, help="output folder (default: the first DIR)")
    rep.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only matching configurations (repeatable): a schedule key (steps, lr ...), "
        "a hyperparameter (trade_off or dann.trade_off), backbone, target_shots, method, "
        "pair or seed; a comma list means any of",
    )
    rep.add_argument(
        "--tsne",
        metavar="RUN_ID",
        default=None,
        help="add a t-SNE of source/target features, source-only vs this run (both run with --set save_features=true)",
    )

    b = sub.add_parser("bench", help="training images/s per method vs the bare backbone on this machine")
    b.add_argument(
        "--pair", default="digits-offline", help="pair whose data, model and batch are used (default: digits-offline)"
    )
    b.add_argument("--methods", help="comma-separated names or globs (default: all registered)")
    b.add_argument(
        "--steps",
        type=int,
        default=50,
        help="timed steps per method: each rate is the steady state from runs of STEPS and 2*STEPS steps, "
        "each timed REPEATS times (default: 50)",
    )
    b.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds: each times the bare network and every method once at both lengths (order rotated per "
        "round); each ratio is the median of the rounds' own, the table shows the spread (default: 3)",
    )
    b.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps (default: 10)")
    b.add_argument("--batch-size", type=int, default=None, help="per-domain batch (default: the pair's)")
    b.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    b.add_argument("--backbone", default=None, help="backbone (default: the pair's; resnet50 with --synthetic)")
    b.add_argument("--image-size", type=int, default=None, help="input side in px (default: the pair's; 224 synthetic)")
    b.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="no dataset: N random uint8 3-channel images per domain, 31 classes, resized-crop augmentation",
    )
    b.add_argument("--compile", action="store_true", help="torch.compile the networks (warm-up includes compilation)")
    b.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CUDA only: also time each method and the bare network with captured steps (default: on)",
    )
    b.add_argument(
        "--seed-batch",
        type=int,
        default=0,
        metavar="S",
        help="add a column: steps/s per seed with S >= 2 seeds trained as one vmapped model (run --seed-batch); "
        "on CUDA with --cuda-graphs one more with that step captured",
    )
    b.add_argument(
        "--profile",
        action="store_true",
        help="add a section: where each eager step's time goes, by ATen operation (torch.profiler; kernel "
        "time on CUDA, CPU time otherwise), the bare network's included",
    )
    b.add_argument(
        "--data-root",
        type=_path,
        default=None,
        help=f"where datasets live (default: $DABENCH_DATA or {default_data_root()})",
    )
    b.add_argument(
        "--out",
        type=_path,
        default=None,
        help="Markdown table (default: results/bench/<device>.md; raw numbers beside it as .json)",
    )

    st = sub.add_parser("status", help="counts of complete/running/failed/diverged runs of a results folder")
    st.add_argument("dir", type=_path, help="results folder (e.g. results/default)")
    return p


def _list(args: argparse.Namespace) -> int:
    from .core.listing import listing  # late: only this command reads it

    for plugin in args.plugin:
        load_plugin(plugin)
    # the built-ins' torch-free descriptors unless plugins may add registrations (core/listing.py)
    known = listing(plugins=bool(args.plugin))
    if args.what == "methods":
        # one table per protocol (methods of different protocols are never compared head to head);
        # each protocol's name is also a --methods group
        by_protocol: dict[str, list[tuple[str, str, str]]] = {}
        for m in known.select("methods", args.pattern):
            defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items())
            by_protocol.setdefault(m.protocol, []).append((m.name, m.description, defaults))
        if not by_protocol:
            _table(("method",), [])
        for i, (protocol, proto_rows) in enumerate(sorted(by_protocol.items())):
            print(f"{chr(10) if i else ''}{protocol} ({len(proto_rows)}; --methods {protocol}):")
            _table(("method", "description", "defaults"), proto_rows)
        groups = known.method_groups
        print(
            "\ngroups for --methods: "
            + "; ".join(f"{g} ({len(m)})" for g, m in groups.items())
            + f". Default matrix: {','.join(DEFAULT_METHODS)}"
        )
    elif args.what == "pairs":
        rows: list[tuple[str, ...]] = [
            (
                pr.name,
                pr.description,
                f"{pr.backbone}, {pr.channels}x{pr.image_size}px",
                f"uda / source-free / few-shot k={pr.target_shots}",
                f"steps={pr.steps} bs={pr.batch_size} lr={pr.lr}",
            )
            for pr in known.select("pairs", args.pattern)
        ]
        _table(("pair", "description", "input", "protocols", "schedule"), rows)
        print(
            "\nyour own images: folder:[name=NAME,]source=DIR,target=DIR[,size=..,channels=1|3,backbone=..,"
            "eval=half|all] (ImageFolder layout, classes matched by name; channels and size detected unless given)"
        )
    else:
        _table(
            ("backbone", "options (backbone.<option>=default)", "description"),
            [(b.name, _options_text(b.options), b.description) for b in known.select("backbones", args.pattern)],
        )
    return 0


def _options_text(options: dict[str, Any] | None) -> str:
    """``size=small, dropout=0.5``; ``none`` for a factory without options, ``any`` for ``**options``."""
    if options is None:
        return "any"
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "none"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        print("(nothing matches)")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _run(args: argparse.Namespace) -> int:
    # subcommand modules are imported when their command runs: ``dabench list`` and ``--help``
    # stay fast, and one command's heavy dependencies (pandas, scipy, seaborn) never load for another
    from .analysis.selection import check_rule
    from .running.executors import ExecutorOptions
    from .running.plan import (
        check_device,
        check_executor_options,
        check_wait_limit,
        matrix_for,
        open_executor,
        rerun_specs,
    )
    from .running.scheduler import run_matrix

    # the printed leaderboard's rule is checked before anything runs: a typo found only by the
    # report at the end would cost the whole matrix's training time
    try:
        check_rule(args.rule)
    except ValueError as exc:
        raise MatrixError(f"--rule {args.rule}: {exc}") from None
    if args.rerun:
        # as dabench.run(rerun=...) refuses them: --methods, --seeds ... beside --rerun were ignored
        beside = {
            "--matrix": args.matrix,
            "--methods": args.methods,
            "--pairs": args.pairs,
            "--seeds": args.seeds,
            "--sweep": args.sweep or None,
            "--trials": args.trials,
            "--sweep-seed": args.sweep_seed,
            "--max-trials": args.max_trials,
        }
        if asked := [flag for flag, value in beside.items() if value is not None]:
            raise MatrixError(
                f"--rerun repeats a run exactly as recorded; it takes no {', '.join(asked)} "
                "(its only --set is save_features)"
            )
        # a dry run only reads: the records stay where they are (they used to move to previous/)
        specs, plugins = rerun_specs(
            args.results, args.rerun, parse_overrides(args.set), extra_plugins=args.plugin, archive=not args.dry_run
        )
        if dependants := [s.label for s in specs if s.run_id not in args.rerun]:
            print(f"also repeated, as they start from its weights: {', '.join(dependants)}", file=sys.stderr)
        swept: dict = {}
    else:
        matrix = matrix_for(
            load_matrix_file(args.matrix) if args.matrix else None,
            methods=_csv(m) if (m := _names("--methods", args.methods)) is not None else None,
            pairs=split_names(p)
            if (p := _names("--pairs", args.pairs)) is not None
            else None,  # keeps folder:a=..,b=.. whole
            seeds=args.seeds,
            overrides=parse_overrides(args.set),
            sweep=parse_sweeps(args.sweep),
            trials=args.trials,
            sweep_seed=args.sweep_seed,
            max_trials=args.max_trials,
            plugins=args.plugin,
        )
        specs = expand(matrix)
        plugins, swept = matrix.plugins, matrix.sweep
    if args.rule == "dev":  # DEV reads saved features: refuse now, not after the matrix trained
        blind = [s for s in specs if not s.save_features and s.protocol != "source-free"]  # source-free: DEV is n/a
        if blind:
            raise MatrixError(
                f"--rule dev reads each run's saved features, and {len(blind)} of the {len(specs)} runs would not "
                "save them: add --set save_features=true (or save_features = true in a matrix file's [set] table), "
                "or print another rule now and report with --rule dev later"
            )
    if args.checkpoint_every < 0:  # EngineOptions' own message names its field, not the flag
        raise MatrixError(
            f"--checkpoint-every {args.checkpoint_every}: expected a number of steps >= 0 (0: no mid-run checkpoints)"
        )
    if args.wait_limit is not None:
        check_wait_limit(args.wait_limit, "--wait-limit")
    if args.workers is not None and args.executor == "inline":
        raise MatrixError(
            f"--workers {args.workers}: the inline executor runs one run at a time in this process; "
            "use --executor local (or ray) to run several at once"
        )
    options = ExecutorOptions(
        device=args.device,
        data_root=args.data_root,
        progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        seed_batch=args.seed_batch,
        plugins=tuple(plugins),
        workers=args.workers,
        runs_per_gpu=args.runs_per_gpu,
        runs_per_process=args.runs_per_process,
        ray_address=args.ray_address,
        slurm_partition=args.slurm_partition,
        gpus_per_job=args.gpus_per_job,
        slurm_time_min=args.slurm_time,
        slurm_cluster=args.slurm_cluster,
        run_timeout_s=args.run_timeout,
    )
    if args.dry_run:
        # a dry run is the check before a long matrix: the device and the executor's options are
        # refused here as a real run would refuse them (README: "--dry-run included"), without
        # building the executor (that would start Ray or reach SLURM)
        check_device(args.device, local=args.executor in ("inline", "local"))
        check_executor_options(args.executor, options)
        if not args.rerun and swept:
            print(sweep_text(matrix) + "\n")
        for s in specs:
            print(s.run_id, s.label, s.protocol, f"shots={s.target_shots}", s.hparams)
        return 0
    ex = open_executor(
        args.executor, args.results, options, specs, plugins=plugins, sweep=swept, rerun=bool(args.rerun)
    )
    t0 = time.perf_counter()
    waits = {} if args.wait_limit is None else {"wait_limit_s": args.wait_limit}
    summary = run_matrix(specs, args.results, options, executor=ex, **waits)
    wall = time.perf_counter() - t0
    counts = ", ".join(f"{v} {k}" for k, v in summary.counts().items())
    print(
        f"\n{len(specs)} runs in {args.results} ({args.executor} executor, {ex.workers} worker{'' if ex.workers == 1 else 's'}): {counts}; "
        f"wall time {wall:.1f} s\n"
    )
    from .analysis.report import report_text

    print(report_text([args.results], rule=args.rule))
    bad = [r for r in summary.ran if r.status is not Status.COMPLETE]
    return 1 if bad or summary.gave_up or summary.kept_diverged else 0


def _report(args: argparse.Namespace) -> int:
    from .analysis.report import make_report  # late: see _run

    # the one function dabench.report calls too (tests/test_api_parity.py keeps the two in step)
    text, paths = make_report(
        args.dirs,
        rule=args.rule,
        formats=args.format,
        out=args.out,
        where=args.where,
        select_config=args.select_config,
        tsne=args.tsne,
    )
    print(text)
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .speed.bench import default_out, run_bench, write_result  # late: see _run

    # run_bench refuses a bad value (speed/bench.check_bench_args: the device, then each value
    # named with what is valid) before it loads or times anything: the CLI and Python share it
    result = run_bench(
        pair_name=args.pair,
        methods=_csv(args.methods) if args.methods else None,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        device=args.device,
        backbone=args.backbone,
        image_size=args.image_size,
        synthetic=args.synthetic,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs is not False,
        data_root=args.data_root,
        seed_batch=args.seed_batch,
        profile=args.profile,
        repeats=args.repeats,
    )
    out = write_result(result, args.out or default_out(args.device, args.synthetic, args.backbone))
    print(f"wrote {out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .running.status import status_text  # late: see _run

    print(status_text(args.dir))
    return 0


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return False
    if not hasattr(select, "poll"):  # Windows: a BrokenPipeError there is stdout's as a rule
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & select.POLLERR for _, ev in poller.poll(0))


def is_deliberate(exc: BaseException) -> bool:
    """Whether ``exc`` is one of dabench's messages about its input, shown as one line.

    True for dabench's own error classes (``MatrixError``, ``RegistryError``, ...), for a missing
    file (a path the command named), and for an exception a ``raise`` statement in dabench's own
    code raised (``raise ValueError(f"...")``: a check that wrote its message). False for one that
    escaped from elsewhere — a builtin call in dabench's code (``list.remove``, an unpacking), a
    plugin, torch or pandas: that is a defect or an unforeseen input, and one line would hide where.
    """
    if type(exc).__module__.split(".")[0] == "dabench" or isinstance(exc, FileNotFoundError):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    if str(frame.f_globals.get("__name__", "")).split(".")[0] != "dabench":
        return False
    return linecache.getline(frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills `list`'s optional pattern at the first positional it meets, so in
    # `dabench list methods --plugin X 'mcc*'` the pattern after the option would be refused
    if extra and args.command == "list" and args.pattern is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.pattern, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    show_warning = warnings.formatwarning
    if not os.environ.get("DABENCH_TRACEBACK"):
        warnings.formatwarning = _warning_line  # one line per warning; restored below
    try:
        return _main(args)
    finally:
        warnings.formatwarning = show_warning


def _warning_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning as the user reads it: ``dabench: warning: <message>``. Python's default adds the
    file and source line that called ``warnings.warn`` (``registry.py:279: ...  obj = ...``), which
    says nothing to a user; ``DABENCH_TRACEBACK=1`` keeps it, for whoever debugs."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"dabench: warning{kind}: {message}\n"


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "run":
            from .running.executors.base import sigterm_interrupts  # late: see _run

            with sigterm_interrupts():  # SIGTERM unwinds as Ctrl-C does, whatever the executor
                code = _run(args)
        elif args.command == "list":
            code = _list(args)
        elif args.command == "report":
            code = _report(args)
        elif args.command == "bench":
            code = _bench(args)
        else:
            code = _status(args)
        sys.stdout.flush()  # here, where a closed reader is caught below, not at interpreter exit
        return code
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # another pipe (a worker's): its traceback is the information
        # the reader of the output went away (``dabench list methods | head``, quitting ``less``):
        # stop quietly as other command-line tools do; stdout goes to /dev/null so that the
        # interpreter's last flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe stopped
    except WriteFault as exc:
        print(
            f"dabench: error: {exc}; nothing complete is lost: make it writable or free space, "
            "then run the same command again",
            file=sys.stderr,
        )
        return 2
    except (RegistryError, MatrixError, PluginError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("DABENCH_TRACEBACK"):
            raise  # the traceback of a message too: where the check that wrote it sits
        if not is_deliberate(exc):
            # a defect (``list.remove(x): x not in list`` in the scheduler once passed for bad
            # input here), or a plugin's or a library's own error: its traceback is the information
            traceback.print_exc()
            print(
                f"dabench: unexpected error: {type(exc).__name__}: {exc}\n"
                "  (not one of dabench's messages about the input: the traceback above shows where it came "
                "from; if the command and its files look right, please report it)",
                file=sys.stderr,
            )
            return 1
        print(f"dabench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # the state is already right (complete runs kept, the run in hand stays "running" and is
        # redone): one line instead of a traceback
        what = (
            (f"dabench run (results in {args.results}): complete runs are kept; run the same command again to resume")
            if args.command == "run"
            else f"dabench {args.command}"
        )
        # SIGTERM (running.executors.base.Terminated): 143 = 128 + SIGTERM, as when it killed us
        how, code = ("terminated (SIGTERM)", 143) if type(exc).__name__ == "Terminated" else ("interrupted", 130)
        print(f"\ndabench: {how}: {what}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
