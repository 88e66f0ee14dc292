"""Figures for reports: accuracy per pair, gain heatmap, learning curves, CD diagram, t-SNE.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: the
figure owns an Agg canvas, so nothing depends on a display, on the global backend or on
pyplot's global state (safe in workers and tests). :func:`save_figure` writes PNG and SVG.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .stats import FriedmanResult, selected_runs
from .tables import Leaderboard, source_only_baseline


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas, independent of the pyplot backend
    return fig


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg`` (parents created); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        p = stem.with_suffix(f".{fmt}")
        fig.savefig(p, format=fmt, dpi=120 if fmt == "png" else None)
        out.append(p)
    return out


def png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG, for ``<img src="data:image/png;base64,...">``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: longest label a figure shows: a longer pair or row name (a pair given by a long parametric name, a
#: configuration label listing many settings) would squeeze the axes until constrained layout gives up
LABEL_MAX = 30


def short_label(text: object, width: int = LABEL_MAX) -> str:
    """``text`` as is, or its start and end around an ellipsis when longer than ``width``; every
    ``$`` escaped, since matplotlib reads the text between two ``$`` as mathtext: a plugin's
    ``m$x`` with a hyperparameter ``$a^b$`` was drawn as italic maths, not as the table's row name."""
    s = str(text)
    if len(s) > width:
        keep = width - 1
        s = s[: (keep + 1) // 2] + "…" + s[len(s) - keep // 2 :]
    return s.replace("$", r"\$")


def short_labels(names: Sequence[object], width: int = LABEL_MAX) -> dict[str, str]:
    """Each distinct name's :func:`short_label`, distinct for distinct names.

    Two configurations that differ only in the middle of a long row name (``dann (backbone.width=64,
    lr=0.01, steps=600)`` vs ``...width=128...``) shortened to one label would share a legend
    entry, and a learning curve keyed by its label would average the two as if they were seeds of
    one row. Names whose labels collide are widened, a character at a time, until they differ.
    """
    full = [str(n) for n in dict.fromkeys(str(n) for n in names)]
    widths = dict.fromkeys(full, width)
    while True:
        labels = {n: short_label(n, widths[n]) for n in full}
        groups: dict[str, list[str]] = {}
        for n, lab in labels.items():
            groups.setdefault(lab, []).append(n)
        clash = [n for g in groups.values() if len(g) > 1 for n in g if widths[n] < len(n)]
        if not clash:
            return labels
        for n in clash:
            widths[n] += 1


def _entries_in_order(lb: Leaderboard) -> list[str]:
    return list(lb.summary.index)


def accuracy_figure(lb: Leaderboard) -> Figure | None:
    """Grouped bars: mean accuracy per pair and row, error bars = 95% t-interval over seeds.

    The intervals are the leaderboard's (clipped to [0, 100]); the axis is 0–100. A cell that
    misses planned seeds is hatched and its label says k/n.
    """
    if lb.cells.empty:
        return None
    entries, pairs = _entries_in_order(lb), list(lb.pairs)
    names = short_labels(entries)
    # the legend sits right of the axes, one column per 18 rows, with room for its labels (inside
    # the axes, four columns of long row names on one pair were wider than the axes, and
    # constrained layout collapsed them to nothing)
    legend_cols = max(1, math.ceil(len(entries) / 18))
    label_chars = max((len(names[e]) for e in entries), default=0)
    legend_w = legend_cols * (0.06 * label_chars + 0.5)
    fig = _figure(max(4.0, 1.2 * len(pairs) * max(1, len(entries)) * 0.35 + 1.5) + legend_w, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(entries))
    colors = sns.color_palette("colorblind", len(entries))
    x = np.arange(len(pairs))
    for i, (e, c) in enumerate(zip(entries, colors)):
        sub = lb.cells[lb.cells["entry"] == e].set_index("pair").reindex(pairs)
        mean = sub["mean"].to_numpy(float)
        lo = np.nan_to_num(mean - sub["ci_low"].to_numpy(float))
        hi = np.nan_to_num(sub["ci_high"].to_numpy(float) - mean)
        bars = ax.bar(
            x + (i - (len(entries) - 1) / 2) * width,
            mean,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=names[e],
            color=c,
            edgecolor="none",
        )
        if "complete" in sub:
            for bar, done in zip(bars, sub["complete"].fillna(True)):
                if not bool(done):
                    bar.set_hatch("//")
                    bar.set_edgecolor("k")
    pair_names = short_labels(pairs)
    ax.set_xticks(x, [pair_names[p] for p in pairs], rotation=20 if len(pairs) > 3 else 0)
    ax.set_ylabel("target accuracy (%)")
    ax.set_ylim(0, 100)
    hatch = "; hatched: seeds missing" if "complete" in lb.cells and (~lb.cells["complete"]).any() else ""
    ax.set_title(f"Accuracy per pair (rule: {lb.rule})\nbars: 95% t-interval over seeds{hatch}", fontsize=9)
    ax.legend(fontsize=7, ncols=legend_cols, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def gain_table(lb: Leaderboard) -> pd.DataFrame:
    """Per entry × pair: mean accuracy minus the source-only row's (UDA) mean on that pair.

    The baseline is the leaderboard's (:func:`~dabench.analysis.tables.source_only_baseline`):
    one row, so several source-only configurations neither pool nor break the figure; the
    other source-only rows are shown against it like any row."""
    if lb.cells.empty:  # no complete run: no cells, not even their columns
        return pd.DataFrame()
    so_entry, base = source_only_baseline(lb.cells)
    if so_entry is None:
        return pd.DataFrame()
    rows = lb.cells[lb.cells["entry"] != so_entry]
    g = rows.assign(gain=rows["mean"] - rows["pair"].map(base)).pivot_table(
        index="entry", columns="pair", values="gain"
    )
    order = [e for e in _entries_in_order(lb) if e in g.index]
    return g.reindex(index=order, columns=list(lb.pairs))


def gain_heatmap(lb: Leaderboard) -> Figure | None:
    """Heatmap of the gain over source-only (accuracy points), diverging around 0."""
    g = gain_table(lb)
    if g.empty:
        return None
    rows, cols = short_labels(g.index), short_labels(g.columns)
    g = g.rename(index=lambda e: rows[str(e)], columns=lambda p: cols[str(p)])
    # room for the tick labels too (seaborn turns long column names vertical): ~0.07 in per character
    row_chars = max((len(str(i)) for i in g.index), default=0)
    col_chars = max((len(str(c)) for c in g.columns), default=0)
    fig = _figure(
        max(4.0, 1.1 * g.shape[1] + 2.5 + 0.07 * row_chars), max(2.2, 0.45 * g.shape[0] + 1.2 + 0.07 * col_chars)
    )
    ax = fig.add_subplot()
    lim = float(np.nanmax(np.abs(g.to_numpy()))) if np.isfinite(g.to_numpy()).any() else 1.0
    with warnings.catch_warnings():  # seaborn's own colormap deprecation notice, not ours
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(
            g,
            ax=ax,
            annot=True,
            fmt="+.1f",
            cmap="RdBu",
            center=0,
            vmin=-lim,
            vmax=lim,
            cbar_kws={"label": "gain (points)"},
        )
    ax.set_xlabel("pair")
    ax.set_ylabel("")
    ax.set_title(f"Gain over source-only (rule: {lb.rule})", fontsize=9)
    return fig


def learning_curves(df: pd.DataFrame, rule: str = "last", metric: str = "target_acc") -> Figure | None:
    """``metric`` against step from each complete run's logged evaluations; mean ± sd over seeds."""
    sel = selected_runs(df, rule)
    names = short_labels(sel["entry"])  # one line per row: two rows never share a (shortened) label
    rows = [
        {"entry": names[str(e)], "pair": p, "seed": s, "step": c.get("step"), "value": c.get(metric)}
        for e, p, s, curve in zip(sel["entry"], sel["pair"], sel["seed"], sel["curve"])
        for c in curve
    ]
    long = pd.DataFrame(rows, columns=["entry", "pair", "seed", "step", "value"]).dropna()
    if long.empty:
        return None
    long["value"] = long["value"].astype(float)
    pairs = sorted(long["pair"].unique())
    ncol = min(3, len(pairs))
    nrow = math.ceil(len(pairs) / ncol)
    hue_order = sorted(long["entry"].unique())
    # the legend sits right of the first panel: room for it in width, and in height for its
    # rows (sixteen methods in a 3-inch panel collapsed the axes to nothing)
    fig = _figure(4.0 * ncol + 2.2, max(3.0 * nrow, 0.5 + 0.2 * len(hue_order)))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        sns.lineplot(
            data=long[long["pair"] == pair],
            x="step",
            y="value",
            hue="entry",
            hue_order=hue_order,
            errorbar="sd",
            ax=ax,
            marker="o",
            markersize=3,
            legend=pair == pairs[0],
        )
        if pair == pairs[0] and ax.get_legend() is not None:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, title=None, frameon=False)
        ax.set_title(short_label(pair, 2 * LABEL_MAX), fontsize=9)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if metric == "target_acc":  # the ± sd band must not suggest accuracies outside [0, 100]
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(0.0, lo), min(100.0, hi))
    for ax in list(axes.flat)[len(pairs) :]:
        ax.set_visible(False)
    return fig


def cd_diagram(fr: FriedmanResult, title: str | None = None) -> Figure:
    """Critical-difference diagram (Demšar 2006, Fig. 1): average ranks on an axis, the CD
    as a scale bar, and a thick bar joining each group of methods not separated by Nemenyi
    (the groups are :func:`dabench.analysis.stats.cd_cliques`, i.e. ``fr.cliques``)."""
    ranks = fr.avg_ranks.sort_values()
    names = short_labels(ranks.index)
    k = len(ranks)
    half = math.ceil(k / 2)
    fig = _figure(7.0, 1.6 + 0.32 * max(half, k - half) + 0.25 * len(fr.cliques))
    ax = fig.add_subplot()
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.set_axis_off()
    y_axis = 0.0
    ax.hlines(y_axis, lo, hi, color="k", lw=1)
    for r in range(lo, hi + 1):
        ax.vlines(r, y_axis, y_axis + 0.08, color="k", lw=1)
        ax.text(r, y_axis + 0.12, str(r), ha="center", va="bottom", fontsize=8)
    # CD scale bar above the axis, starting at rank 1.
    ax.hlines(y_axis + 0.45, lo, lo + fr.cd, color="k", lw=1.5)
    ax.vlines([lo, lo + fr.cd], y_axis + 0.4, y_axis + 0.5, color="k", lw=1)
    ax.text(lo + fr.cd / 2, y_axis + 0.52, f"CD = {fr.cd:.2f}", ha="center", va="bottom", fontsize=8)
    # Method labels: best half to the left, the rest to the right; lines drop from the axis.
    step = 0.3
    for i, (name, r) in enumerate(ranks.items()):
        if i < half:
            y, x_text, ha = -(i + 1) * step - 0.2 - 0.2 * len(fr.cliques), lo - 0.45, "left"
        else:
            y, x_text, ha = -(k - i) * step - 0.2 - 0.2 * len(fr.cliques), hi + 0.45, "right"
        ax.plot([r, r, x_text], [y_axis, y, y], color="k", lw=0.8)
        label = f"{names[str(name)]} ({r:.2f})"
        ax.text(x_text, y + 0.04, label, ha=ha, va="bottom", fontsize=8)
    for j, clique in enumerate(fr.cliques):
        rs = ranks[list(clique)]
        y = -0.12 - 0.2 * j
        ax.hlines(y, rs.min() - 0.03, rs.max() + 0.03, color="tab:red", lw=3.5)
    ax.set_ylim(-(max(half, k - half) + 1) * step - 0.3 - 0.2 * len(fr.cliques), 0.9)
    ax.set_title(
        title or f"Critical difference (Nemenyi, α = {fr.alpha}), labels {fr.labels}, N = {fr.n_blocks}", fontsize=9
    )
    return fig


def tsne_figure(
    features_source: np.ndarray | tuple[np.ndarray, np.ndarray],
    features_target_before: np.ndarray,
    features_target_after: np.ndarray,
    labels_source: np.ndarray | None = None,
    labels_target: np.ndarray | None = None,
    perplexity: float = 30.0,
    seed: int = 0,
    max_points: int = 1000,
    max_iter: int = 1000,
    title: str = "t-SNE of features",
) -> Figure:
    """Two t-SNE panels, source vs target features before and after adaptation.

    ``features_source`` is one array (used in both panels) or a pair (source features of the
    model before, after). Each panel embeds source and target jointly (van der Maaten &
    Hinton 2008) so their overlap is visible; colour = domain, marker = class when labels are
    given. At most ``max_points`` points per domain are drawn (a fixed random subset).
    """
    from sklearn.manifold import TSNE  # imported here: sklearn is slow to import
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    src_before, src_after = (
        features_source if isinstance(features_source, tuple) else (features_source, features_source)
    )
    rng = np.random.default_rng(seed)

    def sub(x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if len(x) <= max_points:
            return x, y
        idx = np.sort(rng.choice(len(x), max_points, replace=False))
        return x[idx], (None if y is None else np.asarray(y)[idx])

    fig = _figure(9.0, 4.2)
    axes = fig.subplots(1, 2)
    markers = "os^vD<>Pp*hX"
    for ax, (name, xs, xt) in zip(
        axes,
        [
            ("before adaptation", src_before, features_target_before),
            ("after adaptation", src_after, features_target_after),
        ],
    ):
        xs_, ys_ = sub(xs, labels_source)
        xt_, yt_ = sub(xt, labels_target)
        both = np.concatenate([xs_, xt_])
        perp = float(min(perplexity, max(2.0, (len(both) - 1) / 3)))
        # One OpenMP thread: with several OpenMP runtimes loaded (torch, sklearn) threads spin
        # against each other and a 100-point t-SNE took 10+ s instead of 0.1 s on 2 cores.
        with threadpool_limits(limits=1):
            emb = TSNE(
                n_components=2, perplexity=perp, init="pca", random_state=seed, max_iter=max(250, max_iter)
            ).fit_transform(both)
        es, et = emb[: len(xs_)], emb[len(xs_) :]
        for e, y, color, dom in [(es, ys_, "tab:blue", "source"), (et, yt_, "tab:orange", "target")]:
            if y is None:
                ax.scatter(e[:, 0], e[:, 1], s=6, alpha=0.6, c=color, label=dom)
                continue
            for ci, cls in enumerate(np.unique(y)):
                m = np.asarray(y) == cls
                ax.scatter(
                    e[m, 0],
                    e[m, 1],
                    s=8,
                    alpha=0.6,
                    c=color,
                    marker=markers[ci % len(markers)],
                    label=dom if ci == 0 else None,
                )
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return fig


def validator_correlation_figure(table: pd.DataFrame) -> Figure | None:
    """Heatmap of Spearman ρ (validator score vs target accuracy) per pair and pooled, −1 … 1.

    ``table`` is :func:`dabench.analysis.validators.validator_correlations`'s (its ``points``
    column is dropped here); rows are validators, one column per pair and ``pooled``, as in
    Musgrave et al. (2022)'s validator benchmark. Cells without a ρ stay blank."""
    g = table.drop(columns=["points"], errors="ignore").astype(float)
    if "points" in table:  # dev rests on fewer points (final checkpoints only): say how many
        g.index = [f"{v} (n={int(n)})" for v, n in zip(table.index, table["points"])]
    if g.empty or not np.isfinite(g.to_numpy()).any():
        return None
    cols = short_labels(g.columns)
    g = g.rename(columns=lambda p: cols[str(p)])
    # as gain_heatmap: room for the tick labels, so long pair names never collapse the axes
    row_chars = max((len(str(i)) for i in g.index), default=0)
    col_chars = max((len(str(c)) for c in g.columns), default=0)
    fig = _figure(
        max(4.0, 1.0 * g.shape[1] + 2.5 + 0.07 * row_chars), max(2.4, 0.45 * g.shape[0] + 1.2 + 0.07 * col_chars)
    )
    ax = fig.add_subplot()
    with warnings.catch_warnings():  # seaborn's own colormap deprecation notice, not ours
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(
            g, ax=ax, annot=True, fmt="+.2f", cmap="RdBu", center=0, vmin=-1, vmax=1, cbar_kws={"label": "Spearman ρ"}
        )
    ax.set_xlabel("pair")
    ax.set_ylabel("validator")
    ax.set_title("Validator score vs target accuracy (all runs × checkpoints)", fontsize=9)
    return fig
