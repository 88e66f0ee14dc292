"""Reports: leaderboard exports and one self-contained ``report.html``.

``report.html`` embeds every figure as a base64 PNG (``data:`` URI) and holds its CSS
inline, so it can be mailed or archived on its own: no external file, script or network
request. Figures are also written next to it as PNG and SVG (``figures/``) for papers.
"""

from __future__ import annotations

import datetime as _dt
import functools
import html
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import figures as F
from .render import html_table, md_table
from .tables import Leaderboard, leaderboard, missing_csv_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from .results import filter_runs, load_results
from .selection import RULES, check_rule, mark_not_applicable, protocol_notes, rule_regret, rule_title
from .stats import Comparison, compare

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from .dev import with_dev_scores
from .render import cell_text, latex_grid, tex_escape
from .sweeps import chosen_table, has_sweeps, ranking_change, rule_table
from .sweeps import select_config as _select_config
from .validators import validator_correlations

#: what the configuration-selection section says (Markdown and HTML)
CONFIG_TEXT = (
    "Each rule picks, per method, pair and seed, one configuration of the sweep and one "
    "evaluation of it (argmax of the rule's score over trials x evaluations) using only what the "
    "rule may see; cells are the target accuracy (%) of that pick, mean over seeds per pair, then over pairs (each pair counts once). "
    "The oracle column selects on the target test labels: an upper bound, not a result. "
    "Regret: oracle's accuracy minus the rule's on the same runs (points, >= 0); trials: "
    "configurations per pair and seed, the budget each rule chose from. A seed where no trial has "
    "a rule's score (dev without saved features) is left out of that rule's column, so its mean may "
    "rest on fewer seeds than the oracle's; regret and Kendall's tau compare with the oracle on the "
    "rule's own picks only."
)
#: said under the tables whenever the dev column is there
DEV_TEXT = (
    "dev (You et al. 2019) is computed from features saved for each run's final model only "
    "(--set save_features=true), so it chooses among configurations at their final checkpoint, "
    "never among checkpoints; runs without saved features have no dev score."
)
TAU_TEXT = (
    "How the ranking of methods changes from oracle to each honest rule: Kendall's tau_b between the "
    "methods' mean accuracies under oracle and under the rule, both over the runs the rule picked "
    "on, per label budget (1: same order; "
    "-1: reversed; methods: how many were ranked)."
)
CORR_TEXT = (
    "Which validator to trust (Musgrave et al. 2022): Spearman's rho between each validator's score "
    "(signed so that higher is better, as the rule orders it) and target accuracy, over every "
    "evaluation (checkpoint) of every complete run, per pair and pooled over pairs; points: the "
    "pooled number of evaluations."
)


#: the header the oracle's column carries in every shown rules table (Markdown, HTML, LaTeX): a
#: table copied into a paper without its prose must still say which column peeked at the test labels
ORACLE_COLUMN = "oracle (target test labels)"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A rules table as shown: its ``oracle`` column headed :data:`ORACLE_COLUMN`."""
    return table.rename(columns={"oracle": ORACLE_COLUMN})


#: what a rules table does with the runs a rule may not select (selection.protocol_notes)
RULES_NA_EFFECT = "its cells for them read n/a and they are left out of its column (never filled from another rule)."
VALIDATOR_NA_EFFECT = "their evaluations are left out of its correlation."


def rules_notes(df: pd.DataFrame, rules: Iterable[str], effect: str = RULES_NA_EFFECT) -> list[str]:
    """Why some rules of a methods x rules table have "n/a" cells: one line per rule and protocol
    whose runs the rule may not select (e.g. "source-val reads source labels; source-free runs
    cannot use it ...")."""
    return protocol_notes(df, [r for r in rules if r in RULES], effect)


def _md_notes(notes: list[str]) -> str:
    return "".join(f"\n\n- {n}" for n in notes)


def _html_notes(notes: list[str]) -> list[str]:
    return ['<ul class="legend">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"] if notes else []


def _write_md(lb: Leaderboard, path: Path) -> None:
    path.write_text(lb.to_markdown(), encoding="utf-8")


def _write_csv(lb: Leaderboard, path: Path) -> None:
    lb.to_csv(path)  # and the runs left out of the means beside it (tables.missing_csv_path)


def _write_tex(lb: Leaderboard, path: Path) -> None:
    path.write_text(lb.to_latex(), encoding="utf-8")


def _write_html(lb: Leaderboard, path: Path) -> None:
    path.write_text(lb.to_html(full_page=True), encoding="utf-8")


#: leaderboard export formats: name -> writer(leaderboard, path of ``leaderboard.<name>``). Adding
#: a format is one entry here; ``write_report`` and the CLI's ``--format`` read this table.
FORMATS: dict[str, Callable[[Leaderboard, Path], None]] = {
    "md": _write_md,
    "csv": _write_csv,
    "tex": _write_tex,
    "html": _write_html,
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
thead th{background:#f2f2f2}
caption{font-weight:600;text-align:left;padding:4px 0}
.oracle{background:#fee;border:2px solid #c00;padding:.5em 1em;font-weight:700}
.legend{font-size:12px;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0}
code{background:#f5f5f5;padding:0 3px}
"""


def _dirs(dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(dirs, (str, Path)):
        return [Path(dirs)]
    out = [Path(d) for d in dirs]
    if not out:
        raise ValueError("write_report needs at least one results folder")
    return out


def _check_formats(formats: Iterable[str] | str, name: str = "formats") -> tuple[str, ...]:
    """The export formats of a comma string or a list; ``name``: how the error names the setting
    (``--format`` for the CLI, ``formats`` for :func:`write_report` and ``dabench.report``)."""
    given_text = formats if isinstance(formats, str) else None
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    elif isinstance(formats, Iterable):
        formats = list(formats)  # read twice below: a generator would be empty the second time
    if not isinstance(formats, list) or any(not isinstance(f, str) for f in formats):
        raise ValueError(f"{name}={formats!r}: expected a comma string such as 'md,csv' or a list of formats")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"{name}: unknown report format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")
    if not formats and given_text is not None:  # --format '' (or ',') wrote no table and said nothing
        raise ValueError(f"{name} {given_text!r}: expected comma-separated formats; valid: {', '.join(FORMATS)}")
    return tuple(formats)


def _make_out_dir(out_dir: Path) -> None:
    """Create the report's output folder, or refuse it in one line naming ``--out``: a file there
    (FileExistsError) or a folder that cannot be made escaped as an OS error without the flag."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} is a file, not a folder; give a folder for the report's files")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"--out {str(out_dir)!r}: cannot create the folder ({exc.strerror or exc}); give a writable folder"
        ) from None


def validator_notes(df: pd.DataFrame) -> list[str]:
    """Notes on where the label-free validators (entropy, IM, SND) were computed.

    New records carry ``"validators": {"split", "samples", "overlaps_evaluation"}``; records
    without it (older ones) computed them on the evaluation images.
    """
    if df.empty or "validators" not in df:
        return []
    # only complete runs are selected with (a failed or diverged record may stop before any
    # evaluation, so it has no validators field without being an old record)
    real = df[df["status"] == "complete"]
    out = []
    vals = list(real["validators"])
    overlap = sorted(
        {str(p) for p, v in zip(real["pair"], vals) if isinstance(v, dict) and v.get("overlaps_evaluation") is True}
    )
    if overlap:
        out.append(
            "Transductive: the label-free validators see the evaluated images on "
            + ", ".join(overlap)
            + " (entropy/IM/SND selection and DEV's target features there use the test images, unlabelled)."
        )
    # only complete records: a run that failed, was skipped or diverged before its end has no
    # validators field because it never finished, not because an older dabench wrote it
    old = sum(1 for v, st in zip(vals, real["status"]) if st == "complete" and not isinstance(v, dict))
    if old:
        out.append(
            f"{old} record(s) have no 'validators' field (older records): their entropy/IM/SND were "
            "computed on the evaluation images."
        )
    return out


def prepare_runs(
    df: pd.DataFrame, rule: str = "last", where: list[str] | dict | None = None, flag: str = "--where"
) -> pd.DataFrame:
    """The runs every table of a report reads, from :func:`load_results`' table: filtered by
    ``where``, with DEV's scores on the runs that saved features (computed once here for every
    table that reads them); ``rule`` dev without any is one clear error. ``flag`` names the filter
    in errors (``--where``, or ``where`` for the Python API). ``dabench report`` and
    ``dabench.leaderboard`` / ``compare`` / ``report`` all read their runs through here."""
    check_rule(rule)
    return with_dev_scores(filter_runs(df, where, flag=flag), strict=rule == "dev")


def load_runs(
    dirs: str | Path | Iterable[str | Path],
    where: list[str] | dict | None = None,
    rule: str = "last",
    flag: str = "--where",
) -> pd.DataFrame:
    """:func:`prepare_runs` of the folders' records.

    ``write_report`` and ``report_text`` take the result as ``runs=``, so that ``dabench report``
    reads the folders (and warns about each bad record) once."""
    check_rule(rule)  # before reading: a typo must not wait for (and warn about) every record
    return prepare_runs(load_results(*_dirs(dirs)), rule, where, flag)


_load = load_runs


def selected_runs(df: pd.DataFrame, rule: str, select_config: bool = False) -> pd.DataFrame:
    """``df`` itself, or with ``select_config`` one run per method, pair and seed chosen by ``rule``
    over a sweep's trials (:func:`dabench.analysis.sweeps.select_config`; ValueError for ``last``,
    which has no score to choose by). What every table of ``--select-config`` is made of."""
    return _select_config(df, rule) if select_config else df


_selected = selected_runs


def report_leaderboard(runs: pd.DataFrame, rule: str = "last", select_config: bool = False) -> Leaderboard:
    """The leaderboard ``dabench report`` prints and exports, of :func:`prepare_runs`' ``runs``."""
    return leaderboard(selected_runs(runs, rule, select_config), rule)


def make_report(
    dirs: str | Path | Iterable[str | Path],
    rule: str = "last",
    formats: Iterable[str] | str = ("md", "csv"),
    out: str | os.PathLike | None = None,
    where: list[str] | dict | None = None,
    select_config: bool = False,
    tsne: str | None = None,
    flag: str = "--",
) -> tuple[str, dict[str, Path]]:
    """What ``dabench report`` does, for the CLI and ``dabench.report`` alike: the files of
    :func:`write_report` and the Markdown text of :func:`report_text`, the folders read once.
    ``flag``: ``"--"`` names settings in errors as the CLI's flags (``--format``, ``--where``),
    ``""`` as keywords (``formats``, ``where``)."""
    fmts = _check_formats(formats, "--format" if flag else "formats")  # before reading the folders
    runs = load_runs(dirs, where, rule, flag=f"{flag}where")
    paths = write_report(
        dirs, rule=rule, formats=fmts, out=out, tsne=tsne, where=where, select_config=select_config, runs=runs
    )
    return report_text(dirs, rule=rule, where=where, select_config=select_config, runs=runs), paths


def _selection_title(rule: str) -> str:
    return (
        f"Configurations chosen by rule {rule!r} per method, pair and seed (over trials x evaluations); "
        "one row per method (a plain run beside its sweep keeps its own row).\n\n"
    )


def _chosen_text(rule: str) -> str:
    return (
        f"What rule {rule!r} chose for each method, pair and seed of a sweep: the swept settings of the pick, "
        "the evaluation step it picked, trials: the configurations it chose from for that seed (a diverged "
        "trial or one without the rule's score is no candidate), and the target accuracy (%) of the pick."
    )


def chosen_markdown(selected: pd.DataFrame, rule: str) -> str:
    """The ``--select-config`` picks (:func:`dabench.analysis.sweeps.chosen_table`) of ``selected``
    (:func:`selected_runs`' output) as a Markdown section; '' when no sweep was chosen from."""
    t = chosen_table(selected, rule)
    if t.empty:
        return ""
    return f"\n## Configurations chosen by {rule}\n\n{_chosen_text(rule)}\n\n" + md_table(t, ".1f") + "\n"


def config_selection_markdown(df: pd.DataFrame) -> str:
    """The methods x rules and regret tables of a folder holding sweeps ('' when it holds none)."""
    if not has_sweeps(df):
        return ""
    acc, regret = rule_table(df)
    if acc.empty:
        return ""
    return (
        "\n## Configuration selection (methods x rules)\n\n"
        + CONFIG_TEXT
        + ("\n\n" + DEV_TEXT if "dev" in acc.columns else "")
        + _md_notes(rules_notes(df, acc.columns))
        + "\n\n"
        + md_table(shown(mark_not_applicable(acc, df)), ".1f", index=True)
        + "\n\n### Regret against the oracle (points)\n\n"
        + md_table(shown(mark_not_applicable(regret, df)), ".2f", index=True)
        + "\n\n### Ranking change from oracle (Kendall's tau)\n\n"
        + TAU_TEXT
        + "\n\n"
        + md_table(mark_not_applicable(ranking_change(acc, regret), df), ".2f", index=True)
        + "\n"
    )


def validator_markdown(df: pd.DataFrame) -> str:
    """The validator-correlation section ('' when no complete run has a scored evaluation)."""
    corr = validator_correlations(df)
    if corr.empty:
        return ""
    note = "\n\n" + DEV_TEXT if "dev" in corr.index else ""
    note += _md_notes(rules_notes(df, corr.index, VALIDATOR_NA_EFFECT))
    return (
        "\n## Which validator to trust (Spearman rho with target accuracy)\n\n"
        + CORR_TEXT
        + note
        + "\n\n"
        + md_table(corr, "+.2f", index=True)
        + "\n"
    )


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def selection_latex(df: pd.DataFrame) -> str:
    """The methods x rules, regret, Kendall's tau and validator-correlation tables as booktabs LaTeX
    ('' when the folder has neither sweeps nor scored evaluations); ``write_report`` writes it as
    ``selection.tex`` beside ``leaderboard.tex`` for a folder holding sweeps."""
    blocks = []

    def grid(table: pd.DataFrame, fmt: str, comment: str) -> str:
        d = table.reset_index()
        rows = [[tex_escape(cell_text(v, fmt)) for v in r] for r in d.itertuples(index=False)]
        # names left, numbers right: by the values (a column of numbers holding "n/a" is object, a
        # column of names may be pandas' string dtype: the dtype put each on the wrong side)
        spec = "".join("r" if any(_is_number(v) for v in d[c]) else "l" for c in d.columns)
        return latex_grid([str(c) for c in d.columns], rows, spec, [comment])

    if has_sweeps(df):
        acc, regret = rule_table(df)
        if not acc.empty:
            na = " ".join(rules_notes(df, acc.columns))
            blocks.append(
                grid(
                    shown(mark_not_applicable(acc, df)),
                    ".1f",
                    "target accuracy (%) of each rule's configuration + checkpoint pick" + (f". {na}" if na else ""),
                )
            )
            blocks.append(grid(shown(mark_not_applicable(regret, df)), ".2f", "regret against the oracle (points)"))
            blocks.append(
                grid(
                    mark_not_applicable(ranking_change(acc, regret), df),
                    ".2f",
                    "Kendall's tau_b: ranking of methods, oracle vs rule",
                )
            )
    corr = validator_correlations(df)
    if not corr.empty:
        na = " ".join(rules_notes(df, corr.index, VALIDATOR_NA_EFFECT))
        blocks.append(
            grid(
                corr, "+.2f", "Spearman rho of each validator's score with target accuracy" + (f". {na}" if na else "")
            )
        )
    return "\n".join(blocks)


def report_text(
    dirs: str | Path | Iterable[str | Path],
    rule: str = "last",
    where: list[str] | dict | None = None,
    select_config: bool = False,
    runs: pd.DataFrame | None = None,
) -> str:
    """The Markdown leaderboard the CLI prints for ``dabench report``, with the runs left out
    of the means (method, pair, seed, status, first error line) and the validator notes.

    ``select_config``: collapse the trials of sweeps, each rule choosing the configuration
    (analysis/sweeps.py). A folder holding sweeps gets the methods x rules tables either way.
    ``runs``: :func:`load_runs` of the same folders, ``where`` and ``rule``, already read.
    """
    df = _load(dirs, where, rule) if runs is None else runs
    head = _selection_title(rule) if select_config else ""
    sel = selected_runs(df, rule, select_config)
    text = head + leaderboard(sel, rule).to_markdown()
    text += chosen_markdown(sel, rule) if select_config else ""
    notes = validator_notes(df)
    text += "\n" + "\n".join(notes) + "\n" if notes else ""
    # a sweep's folder: the rule tables and which validator to trust (a plain run's print stays short)
    return text + (config_selection_markdown(df) + validator_markdown(df) if has_sweeps(df) else "")


def write_report(
    dirs: str | Path | Iterable[str | Path],
    rule: str = "last",
    formats: Sequence[str] | str = ("md", "csv"),
    out: str | os.PathLike | None = None,
    reps: int = 2000,
    tsne: str | None = None,
    where: list[str] | dict | None = None,
    select_config: bool = False,
    runs: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write leaderboard exports (``leaderboard.<fmt>``), figures and ``report.html``.

    Args:
        dirs: one results folder or several (merged; duplicates and corrupt records warn).
        rule: selection rule (see :data:`dabench.analysis.selection.RULES`).
        formats: leaderboard exports among ``md, csv, tex, html`` (list or comma string).
        out: output folder; default the first results folder.
        reps: handed to :func:`~dabench.analysis.stats.compare` (its intervals are t-intervals
            now; no built-in test resamples).
        tsne: a run id (or unique prefix) whose saved features, beside those of the source-only
            run of the same pair and seed, make a t-SNE figure (runs save features when run
            with ``--set save_features=true``).
        where: ``["steps=2000", …]`` keeps only matching configurations
            (:func:`dabench.analysis.results.filter_runs`).
        select_config: one run per method, pair and seed, the configuration ``rule`` picks
            over a sweep's trials (:func:`dabench.analysis.sweeps.select_config`).
        runs: :func:`load_runs` of the same ``dirs``, ``where`` and ``rule``, already read (the
            CLI reads the folders once for the files and the printed text).

    Returns:
        name → path: the formats, ``"report"`` (report.html) and ``"figures"`` (folder).
    """
    formats = _check_formats(formats)
    if tsne is not None and not (isinstance(tsne, str) and tsne.strip()):  # '' was taken as "no t-SNE"
        raise ValueError(f"--tsne {tsne!r}: expected a run id (see DIR/runs/<run_id>.json)")
    ds = _dirs(dirs)
    raw = _load(ds, where, rule) if runs is None else runs
    out_dir = Path(out) if out is not None else ds[0]
    _make_out_dir(out_dir)
    df = _selected(raw, rule, select_config)
    lb = leaderboard(df, rule)
    written: dict[str, Path] = {}
    for fmt in formats:
        p = out_dir / f"leaderboard.{fmt}"
        FORMATS[fmt](lb, p)
        written[fmt] = p
    if "csv" in formats and missing_csv_path(written["csv"]).exists():
        written["csv_missing"] = missing_csv_path(written["csv"])  # the runs left out of the means
    picks = chosen_table(df, rule) if select_config else pd.DataFrame()
    if "csv" in formats and len(picks):
        # each seed's pick and the trials it saw, beside the leaderboard it makes
        written["selection_choices"] = out_dir / "selection_choices.csv"
        picks.to_csv(written["selection_choices"], index=False)
    if "tex" in formats and has_sweeps(raw):
        tex = selection_latex(raw)
        if tex:
            written["selection_tex"] = out_dir / "selection.tex"
            written["selection_tex"].write_text(tex, encoding="utf-8")
    cmp_ = compare(df, rule, reps=reps) if not lb.cells.empty else None
    figs = _figures(df, lb, cmp_, rule, raw)
    if tsne:
        figs[f"tsne_{tsne}"] = tsne_for_run(df, tsne)
    fig_dir = out_dir / "figures"
    for name, fig in figs.items():
        F.save_figure(fig, fig_dir / name)
    if figs:
        written["figures"] = fig_dir
    page = _html_page(df, lb, cmp_, figs, rule, ds, raw, picks)
    rp = out_dir / "report.html"
    rp.write_text(page, encoding="utf-8")
    written["report"] = rp
    return written


def _figures(
    df: pd.DataFrame, lb: Leaderboard, cmp_: Comparison | None, rule: str, raw: pd.DataFrame | None = None
) -> dict:
    figs = {}
    every = df if raw is None else raw  # the validators are judged on every run, not the selected ones
    makers: list[tuple[str, Callable[[], Figure | None]]] = [
        ("accuracy_per_pair", lambda: F.accuracy_figure(lb)),
        ("gain_over_source_only", lambda: F.gain_heatmap(lb)),
        ("learning_curves", lambda: F.learning_curves(df, rule)),
        ("validator_correlation", lambda: F.validator_correlation_figure(validator_correlations(every))),
    ]
    if cmp_ is not None:
        for fr in cmp_.friedman:
            makers.append((f"cd_diagram_labels_{fr.labels.replace('/', '_per_')}", functools.partial(F.cd_diagram, fr)))
    for name, make in makers:
        try:
            fig = make()
        except Exception as exc:  # noqa: BLE001 - a figure must never cost the whole report
            warnings.warn(f"figure {name} failed: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        if fig is not None:
            figs[name] = fig
    return figs


def tsne_for_run(df: pd.DataFrame, run_id: str):
    """t-SNE of source vs target features: the source-only run of the same pair and seed (before
    adaptation) beside the chosen run (after). Both must have saved their features."""
    hits = df[df["run_id"].astype(str).str.startswith(run_id)]
    if len(hits) != 1:
        raise ValueError(f"--tsne {run_id!r} matches {len(hits)} runs; give a unique run id (see runs/*.json)")
    run = hits.iloc[0]
    base = df[
        (df["method"] == "source-only")
        & (df["pair"] == run["pair"])
        & (df["seed"] == run["seed"])
        & (df["status"] == "complete")
    ]
    if run["method"] == "source-only" or base.empty:
        raise ValueError(
            f"--tsne needs an adapted run with a complete source-only run of the same pair and "
            f"seed; run {run['run_id']} is {run['method']} on {run['pair']} seed {run['seed']}"
        )

    def features(row) -> dict:
        path = Path(row["source_dir"]) / "features" / f"{row['run_id']}.npz"
        if not path.exists():
            raise FileNotFoundError(
                f"no saved features for run {row['run_id']} ({row['method']}) at {path}; rerun it with "
                f"`dabench run --rerun {row['run_id']} --set save_features=true --results {row['source_dir']}`"
            )
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    before, after = features(base.iloc[0]), features(run)
    return F.tsne_figure(
        (before["source_features"], after["source_features"]),
        before["target_features"],
        after["target_features"],
        labels_source=after["source_labels"],
        labels_target=after["target_labels"],
        title=f"t-SNE: source-only vs {run['method']} on {run['pair']}, seed {run['seed']}",
    )


def _environment(df: pd.DataFrame) -> pd.DataFrame:
    """Devices and library versions seen in the runs, with counts."""
    rows = []
    for dev, n in Counter(str(d) for d in df["device"]).most_common():
        rows.append({"what": "device", "value": dev, "runs": n})
    vers: Counter = Counter()
    for v in df["versions"]:
        for lib, ver in (v or {}).items():
            vers[(lib, str(ver))] += 1
    for (lib, ver), n in sorted(vers.items()):
        rows.append({"what": lib, "value": ver, "runs": n})
    return pd.DataFrame(rows, columns=["what", "value", "runs"])


def _problems(df: pd.DataFrame, lb: Leaderboard) -> pd.DataFrame:
    """Every planned run left out of the means (leaderboard row, pair, seed, status, why)."""
    cols = ["entry", "pair", "seed", "status", "detail", "run_id"]
    if lb.missing.empty:
        return pd.DataFrame(columns=cols)
    return lb.missing[cols].rename(columns={"entry": "row", "detail": "error / reason"}).astype(object)


def _html_page(
    df: pd.DataFrame,
    lb: Leaderboard,
    cmp_: Comparison | None,
    figs: dict,
    rule: str,
    dirs: list[Path],
    raw: pd.DataFrame | None = None,
    picks: pd.DataFrame | None = None,
) -> str:
    esc = html.escape
    status = Counter(df["status"]) if len(df) else Counter()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>dabench report — {esc(rule)}</title><style>{_CSS}</style></head><body>",
        "<h1>dabench report</h1>",
        f"<p>Results: {', '.join('<code>' + esc(str(d)) + '</code>' for d in dirs)} — "
        f"{len(df)} runs ({', '.join(f'{esc(str(k))}: {v}' for k, v in sorted(status.items())) or 'none'}). "
        f"Generated {esc(_dt.datetime.now().isoformat(timespec='seconds'))}.</p>",
        f"<p>Selection rule: <b>{esc(rule_title(rule))}</b>. Citation: {esc(RULES[rule].citation)}.</p>",
    ]
    if rule == "oracle":
        parts.append(
            '<p class="oracle">ORACLE selection: each run reports its best evaluation on the '
            "target test labels. This is an upper bound, not an achievable result; compare "
            "with the honest rules (rule-regret table below).</p>"
        )
    # the runs left out of the means have their own section below
    parts += ["<h2>Leaderboard</h2>", lb.to_html(left_out=False) if not lb.table.empty else "<p>No complete runs.</p>"]
    if picks is not None and len(picks):
        parts += [
            f"<h2>Configurations chosen by {esc(rule)}</h2>",
            f"<p>{esc(_chosen_text(rule))}</p>",
            html_table(picks, ".1f"),
        ]
    vnotes = validator_notes(df)
    if vnotes:
        parts.append('<ul class="legend">' + "".join(f"<li>{esc(n)}</li>" for n in vnotes) + "</ul>")
    if cmp_ is not None:
        parts += ["<h2>Statistics</h2>", cmp_.to_html()]
    if len(df):
        reg = rule_regret(df)
        if not reg.empty:
            parts += [
                "<h2>Selection-rule regret</h2>",
                "<p>Mean over runs of (oracle accuracy − accuracy under the rule), in points: "
                "what a rule loses against peeking at the target test labels.</p>",
                html_table(shown(mark_not_applicable(reg, df)).reset_index(), ".2f"),
                *_html_notes(rules_notes(df, reg.columns)),
            ]
    raw = df if raw is None else raw
    if has_sweeps(raw):
        acc, regret = rule_table(raw)
        if not acc.empty:
            parts += [
                "<h2>Configuration selection (methods x rules)</h2>",
                f"<p>{esc(CONFIG_TEXT)}</p>",
                *_html_notes(rules_notes(raw, acc.columns)),
                html_table(shown(mark_not_applicable(acc, raw)).reset_index(), ".1f"),
                "<h3>Regret against the oracle (points)</h3>",
                html_table(shown(mark_not_applicable(regret, raw)).reset_index(), ".2f"),
                "<h3>Ranking change from oracle (Kendall's tau)</h3>",
                f"<p>{esc(TAU_TEXT)}</p>",
                html_table(mark_not_applicable(ranking_change(acc, regret), raw).reset_index(), ".2f"),
            ]
            if "dev" in acc.columns:
                parts.append(f'<p class="legend">{esc(DEV_TEXT)}</p>')
    corr = validator_correlations(raw)
    if not corr.empty:
        parts += [
            "<h2>Which validator to trust</h2>",
            f"<p>{esc(CORR_TEXT)} Figure: validator correlation.</p>",
            html_table(corr.reset_index(), "+.2f"),
            *_html_notes(rules_notes(raw, corr.index, VALIDATOR_NA_EFFECT)),
        ]
        if "dev" in corr.index:
            parts.append(f'<p class="legend">{esc(DEV_TEXT)}</p>')
    if figs:
        parts.append("<h2>Figures</h2>")
        for name, fig in figs.items():
            parts.append(
                f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{F.png_base64(fig)}">'
                f"<figcaption>{esc(name.replace('_', ' '))}</figcaption></figure>"
            )
    probs = _problems(df, lb)
    parts.append("<h2>Failed, diverged and unfinished runs</h2>")
    parts.append(
        "<p>Policy: a seed that failed, diverged, was skipped or has not run is never dropped "
        "silently. Its cell shows (completed/planned) seeds and is never marked best; the statistics "
        "exclude such cells (their rows leave the across-pair tests) and say which. Planned seeds come "
        "from <code>matrix.json</code> and from every record of the configuration.</p>"
    )
    parts.append(html_table(probs) if len(probs) else "<p>None.</p>")
    if len(df):
        parts += ["<h2>Environment</h2>", html_table(_environment(df))]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_markdown(
    dirs: str | Path | Iterable[str | Path],
    rule: str = "last",
    reps: int = 2000,
    where: list[str] | dict | None = None,
    select_config: bool = False,
) -> str:
    """Leaderboard plus statistics as Markdown (for terminals and notebooks)."""
    raw = _load(dirs, where, rule)
    df = _selected(raw, rule, select_config)
    lb = leaderboard(df, rule)
    text = lb.to_markdown()
    if not lb.cells.empty:
        text += "\n" + compare(df, rule, reps=reps).to_markdown()
    reg = rule_regret(df)
    if not reg.empty:
        text += (
            "\n## Selection-rule regret (oracle − rule, points)\n\n"
            + md_table(shown(mark_not_applicable(reg, df)), ".2f", index=True)
            + _md_notes(rules_notes(df, reg.columns))
            + "\n"
        )
    return text + config_selection_markdown(raw) + validator_markdown(raw)
