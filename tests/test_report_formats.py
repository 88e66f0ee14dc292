"""A report format is one entry of ``dabench.analysis.report.FORMATS`` (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from dabench.analysis import report
from fake_runs import write_matrix


def test_a_new_format_is_one_table_entry(tmp_path: Path, monkeypatch) -> None:
    write_matrix(tmp_path, {("dann", "mnist-usps"): [80.0, 81.0], ("source-only", "mnist-usps"): [70.0, 71.0]})
    monkeypatch.setitem(
        report.FORMATS, "json", lambda lb, path: path.write_text(lb.summary.to_json(), encoding="utf-8")
    )
    written = report.write_report(tmp_path, formats="md,json", out=tmp_path / "out")
    assert '"dann"' in written["json"].read_text() or "dann" in written["json"].read_text()
    assert written["md"].read_text().startswith("## Target accuracy")


def test_tables_render_in_one_module() -> None:
    """Markdown/HTML tables of the statistics, leaderboard and report page come from analysis/render.py."""
    import pandas as pd

    from dabench.analysis import render, stats, tables

    df = pd.DataFrame({"method": ["a<b", "c"], "p": [0.012345, float("nan")], "seeds": [(0, 1), (2,)]})
    assert render.md_table(df) == (
        "| method | p      | seeds |\n"
        "|--------|--------|-------|\n"
        "| a<b    | 0.0123 | 0, 1  |\n"
        "| c      | –      | 2     |"
    )
    assert render.html_table(df) == (
        '<table class="stats"><thead><tr><th>method</th><th>p</th><th>seeds</th></tr></thead><tbody>'
        "<tr><td>a&lt;b</td><td>0.0123</td><td>0, 1</td></tr><tr><td>c</td><td>–</td><td>2</td></tr></tbody></table>"
    )
    # the leaderboard's row names are row headers; its cells are its own (marked-up) HTML
    assert render.html_grid(
        ["method", "x"], [["a&amp;b", "<b>1</b>"]], "leaderboard", caption="T&", row_header=True, sep="\n"
    ) == (
        '<table class="leaderboard"><caption>T&amp;</caption>\n'
        "<thead><tr><th>method</th><th>x</th></tr></thead>\n<tbody>\n"
        "<tr><th>a&amp;b</th><td><b>1</b></td></tr>\n</tbody></table>"
    )
    # one implementation, whatever module a caller imports it from
    assert stats.md_table is render.md_table and stats.html_table is render.html_table
    assert report.md_table is render.md_table and report.html_table is render.html_table
    assert tables.md_grid is render.md_grid and tables.html_grid is render.html_grid


# ---- every format tells the same story (tests/fake_runs.py records; numbers chosen by hand) ----
import csv as _csv  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402

import pandas as pd  # noqa: E402

from dabench.analysis.results import load_results  # noqa: E402
from dabench.analysis.tables import leaderboard  # noqa: E402
from fake_runs import write_failed, write_run  # noqa: E402

PAIR = "folder:/x/y_z"  # an underscore in a column name


def _adversarial(folder: Path) -> None:
    """Names that break LaTeX or inject HTML, two configurations of one method, a failed and a
    diverged seed."""
    for m, base in [("source-only", 60), ("<b>x</b>", 65), ("my_method", 62), ("a&b#c%", 61)]:
        for s in range(3):
            rid = f"{m}-{s}".replace("<", "L").replace(">", "G").replace("/", "_")
            write_run(folder, rid, m, PAIR, s, acc=base + s)
    for s in range(3):  # a second configuration of my_method: its own row, in every format
        write_run(folder, f"mm2-{s}", "my_method", PAIR, s, acc=70.0 + s, schedule={"steps": 2000})
    write_failed(folder, "fail1", "my_method", PAIR, 3, "boom & <script>alert(1)</script>_%\nsecond line")
    write_run(folder, "div1", "<b>x</b>", PAIR, 3, status="diverged", diverged_at_step=20)


def _tex_problems(tex: str) -> list[str]:
    """What would stop pdflatex on a booktabs tabular: unescaped specials outside comments,
    rows whose column count differs from the column spec, unbalanced braces, raw < >."""
    bad = []
    body = [ln for ln in tex.splitlines() if not ln.startswith("%")]
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex)
    if spec is None:
        return ["no tabular"]
    ncol = len(spec.group(1))
    for ln in body:
        text = re.sub(r"\\[&%#_$]", "", ln)  # escaped specials are fine
        text = re.sub(r"\$[^$]*\$", "", text)  # inline math ($\pm$, $^\dagger$)
        for ch in "%#_<>":
            if ch in text:
                bad.append(f"unescaped {ch!r} in {ln!r}")
        if ln.endswith("\\\\") and text.count("&") != ncol - 1:
            bad.append(f"{text.count('&') + 1} columns, spec has {ncol}: {ln!r}")
        if ln.count("{") - ln.count("\\{") != ln.count("}") - ln.count("\\}"):
            bad.append(f"unbalanced braces: {ln!r}")
    return bad


def test_every_format_shows_the_same_rows_numbers_and_left_out_runs(tmp_path: Path) -> None:
    """Two configurations of my_method were one ambiguous 'my_method' pair of lines in the CSV;
    the failed and diverged seeds were listed in the Markdown only (leaderboard.html and .tex
    said 'listed below' over nothing; the CSV had no trace of them)."""
    _adversarial(tmp_path)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = report.write_report(tmp_path, formats="md,csv,tex,html", out=out, reps=50)
    lb = leaderboard(load_results(tmp_path))
    md, tex = written["md"].read_text(), written["tex"].read_text()
    page, full = written["html"].read_text(), written["report"].read_text()
    rows = pd.read_csv(written["csv"])
    # one header line, a row per configuration, named as the other formats name it
    assert written["csv"].read_text().count("row,method,labels") == 1
    assert list(rows["row"]) == list(lb.summary.index) and rows["row"].is_unique
    assert {"my_method (steps=2000)", "my_method (steps=600)"} <= set(rows["row"])
    # plain numbers (NaN where missing), equal to the mean/std recomputed from the records
    mean, std = rows.set_index("row")[f"{PAIR} mean"], rows.set_index("row")[f"{PAIR} std"]
    assert mean.dtype == float and std.dtype == float
    assert mean["my_method (steps=2000)"] == 71.0 and mean["<b>x</b>"] == 66.0 and std["a&b#c%"] == 1.0
    assert rows.set_index("row")["gain_vs_source_only"].isna()["source-only"]
    assert list(rows.set_index("row")["incomplete"]) == [bool(x) for x in lb.summary["incomplete"]]
    assert rows.set_index("row").at["my_method (steps=600)", f"{PAIR} planned"] == 4
    # the same cell text in md, tex and html: mean ± std [ci] (k/n)
    for cell in ("66.0 ± 1.0 [63.5, 68.5] (3/4)", "63.0 ± 1.0 [60.5, 65.5] (3/4)"):
        assert cell in md and cell in page and cell.replace("±", "$\\pm$") in tex
    # the runs left out of the means, in every format
    left = pd.read_csv(written["csv_missing"])
    assert list(left.columns) == ["row", "method", "labels", "pair", "seed", "status", "detail", "run_id", "rule"]
    assert sorted(zip(left["run_id"], left["status"])) == [("div1", "diverged"), ("fail1", "failed")]
    for run_id in ("div1", "fail1"):
        assert run_id in page and run_id in full
    assert "non-finite loss at step 20" in md and "non-finite loss at step 20" in tex and "step 20" in page
    # names are escaped: no injected markup, no LaTeX error
    for html_text in (page, full):
        assert "<b>x</b>" not in html_text.replace("<b>Bold</b>", "") and "<script>" not in html_text
        assert "&lt;b&gt;x&lt;/b&gt;" in html_text
    assert _tex_problems(tex) == [], _tex_problems(tex)
    assert "\\textless{}b\\textgreater{}x" in tex and "my\\_method" in tex and "a\\&b\\#c\\%" in tex
    assert f"{PAIR.replace('_', chr(92) + '_')}" in tex


def test_a_folder_of_only_diverged_runs_lists_them_in_every_format(tmp_path: Path) -> None:
    """No complete run: the CSV was a bare header, the LaTeX an empty tabular and the HTML an
    empty table, none naming the diverged runs."""
    for s in (0, 1):
        write_run(tmp_path, f"d{s}", "dann", "digits-offline", s, status="diverged", diverged_at_step=4)
    with warnings.catch_warnings(record=True) as caught:  # the gain figure raised KeyError on no cells
        warnings.simplefilter("always")
        written = report.write_report(tmp_path, formats="md,csv,tex,html", out=tmp_path / "o", reps=50)
    assert not [str(w.message) for w in caught if "figure" in str(w.message)]
    assert "No complete runs" in written["html"].read_text() and "d1" in written["html"].read_text()
    tex = written["tex"].read_text()
    assert "no complete runs" in tex and "non-finite loss at step 4" in tex and _tex_problems(tex) == []
    with written["csv_missing"].open() as fh:
        assert [r["run_id"] for r in _csv.DictReader(fh)] == ["d0", "d1"]


def test_latex_comments_stay_comments(tmp_path: Path) -> None:
    """A note with a newline (here: an error text) ended its '%' comment and spilled into the document."""
    from dabench.analysis.render import latex_grid

    tex = latex_grid(["a_b"], [["1"]], "l", comments=["first\nsecond & _ line"])
    assert all(ln.startswith("%") for ln in tex.splitlines()[:2]) and _tex_problems(tex) == []


def test_special_characters_in_names_and_values_stay_inside_their_cells(tmp_path: Path) -> None:
    """A plugin method named ``we|ird…`` or a string hyperparameter ``x|y`` in a row name: a bare ``|``
    ended the Markdown cell (the row had a column too many); LaTeX and HTML escape every special."""
    import csv
    import re

    from fake_runs import curve_from, write_run

    name = "we|ird_m%&#$~^\\{}<b>"
    for s in range(3):
        write_run(tmp_path, f"a{s}", name, "p_1&x", s, curve=curve_from([50.0 + s]), hparams={"tag": "x|y_%"})
        write_run(tmp_path, f"b{s}", name, "p_1&x", s, curve=curve_from([60.0 + s]), hparams={"tag": "z&{q}"})
        write_run(tmp_path, f"c{s}", "source-only", "p_1&x", s, curve=curve_from([40.0 + s]))
    w = report.write_report(tmp_path, formats="md,csv,tex,html", out=tmp_path / "out")
    md = [x for x in w["md"].read_text().splitlines() if x.startswith("|")]
    assert len(md) == 5 and {len(re.findall(r"(?<!\\)\|", x)) for x in md} == {8}  # 7 columns
    assert "we\\|ird" in md[3] and "tag=x\\|y_%" in md[4]
    tex = w["tex"].read_text()
    body = [x for x in tex.splitlines() if x.endswith("\\\\")]
    assert len(body) == 4 and {len(re.findall(r"(?<!\\)&", x)) for x in body} == {6}
    assert r"we\textbar{}ird\_m\%\&\#\$\textasciitilde{}\^{}\textbackslash{}\{\}\textless{}b\textgreater{}" in tex
    assert r"(tag=z\&\{q\})" in tex and r"p\_1\&x" in tex
    page = w["html"].read_text() + w["report"].read_text()
    assert "<b>" + " (tag" not in page and "&lt;b&gt; (tag=z&amp;{q})" in page
    rows = list(csv.reader(w["csv"].open()))
    assert {r[0] for r in rows[1:]} == {"source-only", f"{name} (tag=x|y_%)", f"{name} (tag=z&{{q}})"}


def test_the_legend_says_a_few_shot_rows_gain_is_over_the_unsupervised_source_only_row(tmp_path: Path) -> None:
    """The legend said "gains are within a budget" while a 5/class row's gain is measured against the
    source-only row of budget 0 (tables.source_only_baseline): every format now says which row."""
    write_matrix(tmp_path, {("dann", "p"): [80.0, 81.0], ("source-only", "p"): [70.0, 71.0]})
    write_matrix(tmp_path, {("fine-tune", "p"): [90.0, 91.0]}, shots=5)
    w = report.write_report(tmp_path, formats="md,tex,html", out=tmp_path / "out")
    for fmt in ("md", "tex", "html"):
        text = w[fmt].read_text()
        assert "gains are within a budget" not in text
        assert text.count("gain vs source-only is against the row") == 1
        assert "(0 target labels) in every budget" in text
    assert "+20.0" in w["md"].read_text()  # fine-tune 90.5 - source-only 70.5


def test_selection_tex_puts_names_left_and_numbers_right(tmp_path: Path) -> None:
    """selection.tex aligned by dtype: the method/labels columns (pandas' string dtype) came out
    right-aligned and the numbers (object columns once "n/a" may appear) left-aligned."""
    import json

    from fake_runs import curve_from, write_run

    for s in (0, 1):
        write_run(tmp_path, f"a{s}", "dann", "p", s, curve=curve_from([60.0 + s], snd=[1.0]), hparams={"x": 1})
        write_run(tmp_path, f"b{s}", "dann", "p", s, curve=curve_from([70.0 - s], snd=[2.0]), hparams={"x": 2})
    (tmp_path / "matrix.json").write_text(
        json.dumps({"format": 1, "specs": [], "swept_runs": ["a0", "a1", "b0", "b1"]})
    )
    tex = report.selection_latex(report.load_runs(tmp_path))
    specs = [line[len("\\begin{tabular}{") : -1] for line in tex.splitlines() if line.startswith("\\begin{tabular}")]
    assert specs[0] == "ll" + "r" * 5 and specs[1] == "ll" + "r" * 6  # method, labels | rules (+ trials)
    assert specs[2].startswith("l") and set(specs[2][1:]) == {"r"}  # labels | taus, methods


def _bare_bars(line: str) -> int:
    """The ``|`` in ``line`` that Markdown reads as bars: a backslash escapes the next character
    (``\\\\|`` is an escaped backslash and then a bare bar, as GitHub's table parser reads it)."""
    n, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        n += line[i] == "|"
        i += 1
    return n


HOSTILE = "boom | x `code <script>alert(1)</script> *bold* _it_ \\| [a](b) $x$ &amp; ~~s~~\nsecond | line"


def test_a_hostile_error_message_stays_one_line_and_shows_as_text(tmp_path: Path) -> None:
    """The defect: the runs left out of the means listed the raw error in Markdown: its ``|`` read
    as more fields, a backtick opened a code span, ``<script>`` passed as HTML, ``*`` and ``_`` as
    emphasis, and a line break (in a detail that is not a record's first line) ended the item."""
    from dabench.analysis.render import md_grid, md_text
    from dabench.analysis.tables import missing_markdown

    for s in range(2):
        write_run(tmp_path, f"ok{s}", "dann", "p", s, acc=70.0 + s)
    write_failed(tmp_path, "bad1", "dann", "p", 2, HOSTILE)
    write_failed(tmp_path, "bad2", "dann", "p", 3, "plain failure")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = report.write_report(tmp_path, formats="md,csv,tex,html", out=tmp_path / "out", reps=50)
    md = w["md"].read_text()
    left = md.split("### Runs not in the means (2)")[1].strip().splitlines()
    assert len(left) == 2 and all(x.startswith("- dann | p | seed ") for x in left)  # one line per run
    assert [_bare_bars(x) for x in left] == [4, 4]  # row | pair | seed | status | why: the message's are escaped
    assert left[1] == "- dann | p | seed 3 | failed | RuntimeError: plain failure"
    why = left[0].split(" | ", 4)[4]
    # every Markdown special of the message escaped: a renderer shows the text, markup-free
    assert re.search(r"(?<!\\)[`<>*_\[\]$&~]", why.replace("\\\\", "")) is None, why
    assert why.startswith("RuntimeError: boom \\| x \\`code \\<script\\>") and "\\\\\\| \\[a\\]" in why
    # a line break inside a detail never ends the line; in a table cell the escaped bars stay escaped
    one = pd.DataFrame([{"entry": "m", "pair": "p", "seed": 0, "status": "failed", "detail": HOSTILE}])
    (line,) = missing_markdown(one)[3:]
    assert _bare_bars(line) == 4 and "second \\| line" in line
    table = md_grid(["a", "why"], [["1", md_text(HOSTILE)]]).splitlines()
    assert [_bare_bars(x) for x in table] == [3, 3, 3]
    assert md_text("_a_ b_") == "\\_a\\_ b\\_" and md_text("plain text, 1.5") == "plain text, 1.5"
    # a word's '_' and a home path's '~' start no markup: left as they are, a fix the message
    # names (``DABENCH_DOWNLOAD=1``, ``~/.cache``) can be copied from the printed report
    assert md_text("set DABENCH_DOWNLOAD=1 under ~/.cache") == "set DABENCH_DOWNLOAD=1 under ~/.cache"
    # HTML (leaderboard.html, report.html): the message's '<' only as an entity
    for page in (w["html"].read_text(), w["report"].read_text()):
        assert "bad1" in page and "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # LaTeX: the message only inside '%' comments
    tex = w["tex"].read_text()
    assert _tex_problems(tex) == [] and "boom" in tex
    assert all(ln.startswith("%") for ln in tex.splitlines() if "boom" in ln)
