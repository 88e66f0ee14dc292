"""Figures (PNG + SVG), the self-contained HTML report, and a headless-browser check of it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dabench.analysis import figures as F
from dabench.analysis.report import report_text, write_report
from dabench.analysis.results import load_results
from dabench.analysis.stats import friedman
from dabench.analysis.tables import leaderboard
from fake_runs import curve_from, write_failed, write_run

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    for pair, base in zip(["digits-offline", "mnist-usps", "office-a-w"], [60.0, 50.0, 70.0]):
        for m, gain in [("source-only", 0), ("dan", 5), ("dann", 6), ("coral", 2)]:
            for seed in range(3):
                accs = list(base + gain + np.array([-6.0, -1.0, 0.0]) + rng.normal(0, 1, 3))
                write_run(d, f"{m}-{pair}-{seed}", m, pair, seed, curve=curve_from(accs))
    write_failed(d, "f1", "dann", "mnist-usps", 7, "CUDA error: device-side assert\nmore")
    write_run(d, "f2", "dan", "mnist-usps", 8, status="diverged", diverged_at_step=300)
    return d


def _check_files(paths):
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "<svg" in svg.read_text()[:2000]


def test_tsne_figure_on_separable_features(tmp_path):
    rng = np.random.default_rng(0)
    src = rng.normal(0, 1, (40, 16))
    tgt_before = rng.normal(6, 1, (40, 16))  # far from source: a domain gap
    tgt_after = rng.normal(0.2, 1, (40, 16))  # aligned with source after adaptation
    labels = np.repeat([0, 1], 20)
    fig = F.tsne_figure(
        src, tgt_before, tgt_after, labels_source=labels, labels_target=labels, perplexity=10, max_iter=250
    )
    assert len(fig.axes) == 2
    assert [a.get_title() for a in fig.axes] == ["before adaptation", "after adaptation"]
    _check_files(F.save_figure(fig, tmp_path / "tsne"))
    # more points than max_points is subsampled, and one array for source is allowed
    fig2 = F.tsne_figure((src, src), tgt_before, tgt_after, max_points=15, max_iter=250)
    assert sum(len(c.get_offsets()) for c in fig2.axes[0].collections) == 30


def test_figures_from_results(results, tmp_path):
    df = load_results(results)
    lb = leaderboard(df)
    for name, fig in {
        "acc": F.accuracy_figure(lb),
        "gain": F.gain_heatmap(lb),
        "curves": F.learning_curves(df),
    }.items():
        assert fig is not None
        _check_files(F.save_figure(fig, tmp_path / name))
    g = F.gain_table(lb)
    assert "source-only" not in g.index and list(g.columns) == list(lb.pairs)


def test_gain_figure_with_two_source_only_configurations_uses_the_tables_baseline(tmp_path):
    """Two source-only configurations (steps=100, steps=200): the gain table used to raise
    (a per-pair baseline with two values per pair), so report.html silently lost the gain
    figure. It now measures every row against the same source-only row as the leaderboard's
    gain column, and shows the other source-only configuration against it."""
    for seed in range(3):
        for pair, so, so2, dann in [("a", 50.0, 55.0, 60.0), ("b", 40.0, 30.0, 45.0)]:
            write_run(tmp_path, f"s-{pair}{seed}", "source-only", pair, seed, acc=so + seed, schedule={"steps": 100})
            write_run(tmp_path, f"t-{pair}{seed}", "source-only", pair, seed, acc=so2 + seed, schedule={"steps": 200})
            write_run(tmp_path, f"d-{pair}{seed}", "dann", pair, seed, acc=dann + seed, schedule={"steps": 100})
    lb = leaderboard(load_results(tmp_path))
    g = F.gain_table(lb)
    assert set(g.index) == {"dann", "source-only (steps=200)"}
    assert g.loc["dann"].tolist() == [10.0, 5.0] and g.loc["source-only (steps=200)"].tolist() == [5.0, -10.0]
    assert lb.summary.loc["dann", "gain"] == pytest.approx(g.loc["dann"].mean())  # the table's baseline
    assert F.gain_heatmap(lb) is not None


def test_cd_diagram_draws_one_bar_per_clique(tmp_path):
    rng = np.random.default_rng(0)
    scores = pd.DataFrame(rng.normal(size=(6, 5)) + np.array([0, 0.2, 1.5, 1.6, 3.0]), columns=list("ABCDE"))
    fr = friedman(scores)
    fig = F.cd_diagram(fr)
    red = [c for c in fig.axes[0].collections if c.get_linewidth()[0] == 3.5]
    assert len(red) == len(fr.cliques)
    _check_files(F.save_figure(fig, tmp_path / "cd"))


def test_write_report_outputs(results, tmp_path):
    out = tmp_path / "out"
    paths = write_report([results], rule="last", formats=("md", "csv", "tex", "html"), out=out, reps=200)
    assert set(paths) == {"md", "csv", "csv_missing", "tex", "html", "figures", "report"}
    assert all(p.exists() for p in paths.values())
    assert (out / "figures" / "cd_diagram_labels_0.svg").exists()
    page = paths["report"].read_text()
    # self-contained: every image is a data: URI; no external script, stylesheet or link
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page) and "<link" not in page
    for text in (
        "Leaderboard",
        "Friedman",
        "Holm",
        "Selection-rule regret",
        "Environment",
        "RuntimeError: CUDA error: device-side assert",
        "diverged",
        "2.14.1",
        "cpu",
    ):
        assert text in page
    assert "more" not in re.findall(r"<td>RuntimeError[^<]*</td>", page)[0]  # first line only


def test_default_out_is_first_dir_and_oracle_is_loud(results, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    paths = write_report(copy, rule="oracle", reps=100)
    assert paths["report"] == copy / "report.html" and paths["md"] == copy / "leaderboard.md"
    page = paths["report"].read_text()
    assert 'class="oracle"' in page and "ORACLE" in page
    with pytest.raises(ValueError, match="valid: md, csv, tex, html"):
        write_report(copy, formats=("pdf",))
    with pytest.raises(ValueError, match="valid rules"):
        write_report(copy, rule="best")


def test_report_text_is_the_markdown_leaderboard(results):
    text = report_text(results, "last")
    assert text.startswith("## Target accuracy") and "| source-only" in text and "labels" in text


def test_report_renders_in_headless_chromium(results, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (install with: apt-get install -y chromium)")
    page = write_report(results, out=tmp_path / "r", reps=100)["report"]
    # Inject a probe that, once the page has loaded, counts images that actually decoded.
    probe = (
        "<script>window.addEventListener('load',function(){var n=0,im=document.images;"
        "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)n++;}"
        "var d=document.createElement('div');d.id='probe';"
        "d.textContent='IMAGES_DECODED='+n+'/'+im.length;document.body.appendChild(d);});</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout
    m = re.search(r'<div id="probe">IMAGES_DECODED=(\d+)/(\d+)</div>', dom)
    assert m, "probe did not run: " + dom[-500:]
    decoded, total = map(int, m.groups())
    assert total >= 4 and decoded == total
    assert "Friedman" in dom and "<table" in dom


def test_report_text_names_failed_and_diverged_runs(results):
    text = report_text(results, "last")
    assert (
        "- dann (steps=600) | mnist-usps | seed 7 | failed | RuntimeError: CUDA error: device-side assert" not in text
    )
    assert "- dann | mnist-usps | seed 7 | failed | RuntimeError: CUDA error: device-side assert" in text
    assert "- dan | mnist-usps | seed 8 | diverged | non-finite loss at step 300" in text
    assert "(3/4)" in text
    # older records (no 'validators' field) are flagged
    assert "no 'validators' field" in text


def test_transductive_validators_are_named(tmp_path):
    v = {"split": "target_adapt", "samples": 500}
    write_run(
        tmp_path, "r1", "dann", "office31-A-W", 0, acc=70.0, extra={"validators": {**v, "overlaps_evaluation": True}}
    )
    write_run(
        tmp_path, "r2", "dann", "mnist-usps", 0, acc=80.0, extra={"validators": {**v, "overlaps_evaluation": False}}
    )
    text = report_text(tmp_path)
    assert "Transductive" in text and "office31-A-W" in text.split("Transductive")[1].split("\n")[0]
    assert "mnist-usps" not in text.split("Transductive")[1].split("\n")[0]
    assert "DEV" in text.split("Transductive")[1].split("\n")[0]  # DEV's target features are the same images
    assert "older records" not in text
    page = write_report(tmp_path, reps=50)["report"].read_text()
    assert "Transductive" in page
    # a run that diverged before its first evaluation has no validators field: it is no old record
    write_run(tmp_path, "r3", "dann", "mnist-usps", 1, status="diverged", diverged_at_step=3)
    assert "older records" not in report_text(tmp_path)


def test_cli_report_where(results, tmp_path, capsys):
    from dabench.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    assert main(["report", str(copy), "--where", "method=dann,source-only", "--where", "steps=600"]) == 0
    out = capsys.readouterr().out
    assert "| dann" in out and "| dan " not in out
    assert main(["report", str(copy), "--where", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'nope'" in err and "steps" in err and "trade_off" not in err


def test_figures_never_collapse_with_long_names_and_two_seeds(tmp_path):
    """Long pair and row names (a parametric pair, a plugin's long name) used to squeeze the axes
    until matplotlib gave up ("constrained_layout not applied because axes sizes collapsed")."""
    import warnings

    long_pair = "folder:source=/home/someone/data/" + "deep/" * 12 + "src,target=/home/someone/data/tgt"
    i = 0
    for pair in (long_pair, "p" * 150, "digits-offline"):
        for m in ("source-only", "dann", "dan", "coral", "a-plugin-method-with-a-rather-long-registered-name"):
            for s in (0, 1):
                write_run(tmp_path, f"r{i:04d}", m, pair, s, acc=50 + 10 * s + i % 7)
                i += 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(tmp_path, formats=("md",))
    assert not [w for w in caught if "collapsed" in str(w.message)], [str(w.message) for w in caught]
    assert (out["figures"] / "accuracy_per_pair.png").exists()


def test_learning_curves_of_sixteen_methods_on_one_pair_do_not_collapse(tmp_path):
    """The whole zoo on one pair: the learning-curve figure's legend (sixteen rows) once squeezed
    its single 3-inch panel to nothing; the legend now sits beside the panel with room for it."""
    import warnings

    names = [f"method-{k:02d}" for k in range(16)]
    for i, m in enumerate(names):
        for s in (0, 1, 2):
            curve = [{"step": st, "target_acc": 40.0 + i + st / 100 + s} for st in (100, 200, 300)]
            write_run(tmp_path, f"r{i:02d}{s}", m, "digits-offline", s, curve=curve)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(tmp_path, formats=("md",))
    assert not [w for w in caught if "collapsed" in str(w.message)], [str(w.message) for w in caught]
    assert (out["figures"] / "learning_curves.png").exists()


def test_accuracy_figure_of_long_row_names_on_one_pair_does_not_collapse(tmp_path):
    """Five configurations with long names on one pair: the legend (four columns inside the
    axes) was wider than the 5-inch figure and constrained layout collapsed the axes."""
    import warnings

    for i, m in enumerate(("source-only", "dann", "coral", "dan", "mcc")):
        for s in (0, 1, 2):
            write_run(tmp_path, f"a{i}{s}", m, "digits-offline", s, acc=50.0 + i + s, schedule={"steps": 150})
            write_run(tmp_path, f"b{i}{s}", m, "digits-offline", s, acc=40.0 + i + s, hparams={"lr": 1000.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(tmp_path, formats=("md",), reps=50)
    assert not [w for w in caught if "collapsed" in str(w.message)], [str(w.message) for w in caught]
    _check_files([out["figures"] / "accuracy_per_pair.png", out["figures"] / "accuracy_per_pair.svg"])


def test_one_method_one_seed_report_draws_what_it_can(tmp_path):
    """One method, one seed: no statistics to test, but the report and its figures are written."""
    import warnings

    write_run(tmp_path, "only", "dann", "digits-offline", 0, curve=curve_from([40.0, 50.0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_report(tmp_path, formats=("md", "csv", "tex", "html"), reps=50)
    assert not [str(w.message) for w in caught if "figure" in str(w.message) or "collapsed" in str(w.message)]
    assert sorted(p.name for p in out["figures"].glob("*.png")) == ["accuracy_per_pair.png", "learning_curves.png"]
    assert "50.0 ± –" in out["md"].read_text() and "50.0" in out["csv"].read_text()


def test_rows_whose_long_names_differ_in_the_middle_keep_their_own_lines_and_labels(tmp_path):
    """Three dann configurations whose names differ only mid-name: shortened to 30 characters, two
    of them printed alike, so the learning-curve plot (keyed by the label) drew them as ONE line,
    averaging two configurations as seeds, and the legends and CD labels could not tell them apart."""
    for i, (a, b) in enumerate([(1, 5), (2, 5), (1, 6)]):
        hp = {"alpha_long_key": a, "beta_long_key": b}
        for seed in range(2):
            write_run(
                tmp_path, f"r{i}{seed}", "dann", "p", seed, curve=curve_from([10.0 + 30 * i, 20.0 + 30 * i]), hparams=hp
            )
    df = load_results(tmp_path)
    lb = leaderboard(df)
    assert len(lb.table) == 3
    fig = F.learning_curves(df)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and len(fig.axes[0].get_lines()) >= 3
    bars = F.accuracy_figure(lb).axes[0].get_legend_handles_labels()[1]
    assert len(set(bars)) == 3
    names = F.short_labels(lb.table.index)
    assert len(set(names.values())) == 3 and all(len(v) <= len(k) for k, v in names.items())


def test_dollar_signs_in_row_and_pair_names_are_drawn_as_text_not_maths(tmp_path):
    """A row ``m$x (tag=$\\frac{)`` was drawn as mathtext (``mx(tag=\\frac{)`` in italics): the
    figure named a row the table does not have. Every label a figure draws is the literal name."""
    from matplotlib.text import Text

    for s in range(2):
        for p in ("p$1", "q"):
            for rid, m, hp, acc in [
                ("a", "m$x", "$a^b_c$", 50.0),
                ("b", "m$x", "$\\frac{", 60.0),
                ("c", "source-only", None, 40.0),
            ]:
                write_run(
                    tmp_path,
                    f"{rid}{s}{p}",
                    m,
                    p,
                    s,
                    curve=curve_from([acc + s, acc + 2]),
                    hparams={"tag": hp} if hp else None,
                )
    df = load_results(tmp_path)
    lb = leaderboard(df)

    def shown(text: str) -> str:
        t = Text(text=text)
        s, math = t._preprocess_math(t.get_text())
        assert not math, text
        return s

    names = set(lb.table.index)
    for fig in (F.accuracy_figure(lb), F.learning_curves(df)):
        legend = {shown(t.get_text()) for t in fig.axes[0].get_legend().get_texts()}
        assert legend == names
    ticks = {shown(t.get_text()) for t in F.accuracy_figure(lb).axes[0].get_xticklabels()}
    assert ticks == {"p$1", "q"}
    rows = {shown(t.get_text()) for t in F.gain_heatmap(lb).axes[0].get_yticklabels()}
    assert rows == names - {"source-only"}
