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
