"""Table rendering for every text output of the analysis: Markdown, HTML and LaTeX.

One place builds tables so that the leaderboard (:mod:`dabench.analysis.tables`), the
statistics (:mod:`dabench.analysis.stats`) and the report page (:mod:`dabench.analysis.report`)
look alike and escape alike. Two levels:

* grids of ready-made cell strings: :func:`md_grid` (a padded GitHub pipe table),
  :func:`html_grid` (cells are HTML fragments, so callers may mark them up), :func:`latex_grid`
  (a booktabs ``tabular``);
* DataFrames: :func:`md_table` and :func:`html_table` format each value with :func:`cell_text`
  (NaN → "–", floats by ``floatfmt``, tuples joined by commas) and escape it.

No tabulate or jinja2: the report must build without optional dependencies.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd


def cell_text(v: object, floatfmt: str = ".3g") -> str:
    """One value as table text: NaN → "–", floats by ``floatfmt``, tuples/lists joined by ", "."""
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else format(float(v), floatfmt)
    if isinstance(v, (tuple, list)):
        return ", ".join(map(str, v))
    return str(v)


# ---- grids of cell strings ----------------------------------------------------------------
#: a ``|`` and the backslashes before it (GFM splits a row at a bar after an even number of them)
_BAR = re.compile(r"(\\*)\|")
#: the characters Markdown reads as markup inside a line: code spans, emphasis, raw HTML, links,
#: entities, strikethrough, math (GitHub), a table's cell bar; each is shown as itself once escaped
#: by a backslash (CommonMark: any ASCII punctuation may be). ``#`` and list marks are markup only
#: at the start of a line, where :func:`md_text`'s callers never put it
# ``_`` inside a word (``DABENCH_DOWNLOAD``, ``save_features``) and ``~`` before ``/`` (a home path)
# never start emphasis or strikethrough in GitHub Markdown: left bare, the printed report's error
# text can be copied into a shell as it is
_MD_SPECIALS = re.compile(r"([\\`*<>\[\]&$|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|~(?!/))")


def md_text(text: object) -> str:
    """Plain text (an error message, a file name) as Markdown that shows it as it is: the inline
    specials backslash-escaped (:data:`_MD_SPECIALS`) and line breaks as spaces. For text from
    outside (a failing run's error can hold backticks, ``<script>``, ``*``, ``_``, ``|``). Its
    ``|`` come out escaped, so :func:`md_grid` leaves them as they are (a table cell of it is safe)."""
    return _MD_SPECIALS.sub(r"\\\1", re.sub(r"[\r\n]+", " ", str(text)))


def _md_cell(text: object) -> str:
    """One Markdown table cell: every unescaped ``|`` escaped (GitHub reads ``\\|`` as a literal bar;
    one after an even number of backslashes, ``\\\\|``, still ends the cell), a line break (which
    would end the row) as a space. The cell is a Markdown fragment (the leaderboard bolds): its
    other markup is kept; plain text from outside is escaped first (:func:`md_text`)."""

    def bar(m: re.Match[str]) -> str:
        slashes = m.group(1)
        return slashes + ("|" if len(slashes) % 2 else "\\|")

    return _BAR.sub(bar, re.sub(r"[\r\n]+", " ", str(text)))


def md_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub pipe table with every column padded to its widest cell (aligned in a terminal).

    A ``|`` inside a cell (a plugin's method or pair name, a string hyperparameter in a row name)
    is escaped as ``\\|``: left bare it ends the cell, and the row gets a column too many."""
    cols = [_md_cell(c) for c in header]
    rows = [[_md_cell(c) for c in r] for r in rows]
    widths = [max([len(c)] + [len(r[j]) for r in rows]) for j, c in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def html_grid(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    css_class: str,
    caption: str | None = None,
    row_header: bool = False,
    sep: str = "",
) -> str:
    """An HTML ``<table>``; ``header`` and ``caption`` are plain text (escaped here), body cells
    are HTML fragments (the caller escapes them, which lets the leaderboard bold or underline).

    ``row_header`` renders each row's first cell as ``<th>`` (a row name); ``sep`` goes between
    the caption/head, body start, rows and end (``"\\n"`` keeps long tables diffable).
    """
    cap = f"<caption>{html.escape(caption)}</caption>" if caption is not None else ""
    head = "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead>"

    def tr(cells: Sequence[str]) -> str:
        first = f"<th>{cells[0]}</th>" if row_header and len(cells) else ""
        rest = cells[1:] if row_header else cells
        return "<tr>" + first + "".join(f"<td>{c}</td>" for c in rest) + "</tr>"

    if sep:
        return sep.join([f'<table class="{css_class}">{cap}', head, "<tbody>", *map(tr, rows), "</tbody></table>"])
    return f'<table class="{css_class}">{cap}{head}<tbody>{"".join(map(tr, rows))}</tbody></table>'


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "†": r"$^\dagger$",
    "→": r"$\to$",
    # OT1-encoded text fonts print < > | as ¡ ¿ — (a plugin's name may hold them)
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "−": r"$-$",
    "·": r"$\cdot$",
    "√": r"$\surd$",
    "∈": r"$\in$",  # a row chosen among a sweep's values: dann (trade_off∈{0.1, 1.0})
}


def tex_escape(s: str) -> str:
    """LaTeX-safe text: specials escaped, ± – — † → as their math/text equivalents."""
    return "".join(_TEX.get(ch, ch) for ch in s)


def latex_grid(header: Sequence[str], rows: Sequence[Sequence[str]], spec: str, comments: Sequence[str] = ()) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); ``header`` is escaped here,
    body cells are LaTeX fragments; ``comments`` become leading ``%`` lines."""
    # a comment is one line: a newline inside one (a note, an error text) would end it and put
    # the rest into the document as text
    lines = [f"% {line}" for c in comments for line in str(c).splitlines() or [""]]
    lines += [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(tex_escape(str(c)) for c in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---- DataFrames ---------------------------------------------------------------------------
def md_table(df: pd.DataFrame, floatfmt: str = ".3g", index: bool = False) -> str:
    """A padded GitHub pipe table of ``df`` (``index=True`` shows the index as first column)."""
    d = df.reset_index() if index else df
    rows = [[cell_text(v, floatfmt) for v in r] for r in d.itertuples(index=False)]
    return md_grid([str(c) for c in d.columns], rows)


def html_table(df: pd.DataFrame, floatfmt: str = ".3g", css_class: str = "stats") -> str:
    """An escaped HTML table of ``df`` (the index is not shown; ``reset_index()`` first to show it)."""
    rows = [[html.escape(cell_text(v, floatfmt)) for v in r] for r in df.itertuples(index=False)]
    return html_grid([str(c) for c in df.columns], rows, css_class)
