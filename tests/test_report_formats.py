"""A report format is one entry of ``dabench.analysis.report.FORMATS`` (docs/architecture.md)."""
from __future__ import annotations

from pathlib import Path

from dabench.analysis import report
from fake_runs import write_matrix


def test_a_new_format_is_one_table_entry(tmp_path: Path, monkeypatch) -> None:
    write_matrix(tmp_path, {("dann", "mnist-usps"): [80.0, 81.0], ("source-only", "mnist-usps"): [70.0, 71.0]})
    monkeypatch.setitem(report.FORMATS, "json",
                        lambda lb, path: path.write_text(lb.summary.to_json(), encoding="utf-8"))
    written = report.write_report(tmp_path, formats="md,json", out=tmp_path / "out")
    assert '"dann"' in written["json"].read_text() or "dann" in written["json"].read_text()
    assert written["md"].read_text().startswith("## Target accuracy")
