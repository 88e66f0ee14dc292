"""``dabench list`` without torch: the built-ins' descriptors (``dabench/core/builtins.json``)
stay equal to the real classes, every form of the command prints from them exactly what the
registries print, imports no torch doing it, and plugins are still listed (core/listing.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dabench.cli import main
from dabench.core.listing import CATALOG, Listing

TESTS = Path(__file__).resolve().parent
DABENCH = Path(sys.executable).with_name("dabench")

#: every form of ``dabench list``: each kind, a glob, a comma list, a pattern matching nothing
FORMS = [
    ["methods"],
    ["methods", "da*"],
    ["methods", "dann,fine-tune"],
    ["methods", "nothing*"],
    ["pairs"],
    ["pairs", "office31-*"],
    ["backbones"],
    ["backbones", "l*,resnet50"],
]


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, **kw)


def test_catalog_equals_the_builtin_classes() -> None:
    """The descriptors built from the imported classes (a fresh interpreter: only the built-ins
    registered) equal the file ``dabench list`` reads; a change to a built-in method's docstring,
    defaults, protocol or uses, a pair or a backbone fails here, naming the entry and the fix."""
    out = _python(
        "from dabench.core.listing import from_registries\nprint(from_registries(builtins_only=True).to_json())"
    )
    assert out.returncode == 0, out.stderr
    real = Listing.from_json(out.stdout)
    stored = Listing.from_json(CATALOG.read_text(encoding="utf-8"))
    fix = "rewrite it with: python -m dabench.core.listing --write"
    for kind in ("methods", "pairs", "backbones"):
        want = {i.name: i for i in getattr(real, kind)}
        have = {i.name: i for i in getattr(stored, kind)}
        assert want.keys() == have.keys(), (
            f"{CATALOG.name} lists {kind} {sorted(have)}, registered: {sorted(want)}; {fix}"
        )
        stale = [n for n in want if want[n] != have[n]]
        assert not stale, f"{CATALOG.name} is stale for {kind} {stale}: {[want[n] for n in stale]}; {fix}"
    assert stored.method_groups == real.method_groups, fix
    assert stored.to_json() == real.to_json(), fix  # key order (the defaults' order is shown)


def test_every_list_form_prints_the_registries_output_without_torch() -> None:
    """In one fresh interpreter: every form through the catalog (torch must stay unimported),
    then every form through the registries (what ``dabench list`` printed before): same text."""
    code = f"""
import contextlib, io, json, sys
from dabench.cli import main
from dabench.core import listing

def run_all():
    outs = []
    for form in {FORMS!r}:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["list", *form])
        outs.append([rc, buf.getvalue()])
    return outs

light = run_all()
heavy = sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules)
listing.listing = lambda plugins=False: listing.from_registries()
full = run_all()
assert "torch" in sys.modules  # the registries' path did read the classes
print(json.dumps({{"heavy": heavy, "light": light, "full": full}}))
"""
    out = _python(code)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["heavy"] == [], f"dabench list imported {got['heavy']}"
    for form, light, full in zip(FORMS, got["light"], got["full"]):
        assert light == full, f"dabench list {' '.join(form)} differs from the registries' listing"
    assert all(rc == 0 for rc, _ in got["light"])
    rows = {" ".join(f): _names(t) for f, (_, t) in zip(FORMS, got["light"])}
    assert rows["methods da*"] >= {"dan", "dann"} and "coral" not in rows["methods da*"]
    assert rows["methods dann,fine-tune"] >= {"dann", "fine-tune"} and "dan" not in rows["methods dann,fine-tune"]
    assert "(nothing matches)" in got["light"][FORMS.index(["methods", "nothing*"])][1]
    assert "office31-A-W" in rows["pairs office31-*"] and "mnist-usps" not in rows["pairs office31-*"]
    assert rows["backbones l*,resnet50"] >= {"lenet", "resnet50"} and "cnn32" not in rows["backbones l*,resnet50"]


def _names(text: str) -> set[str]:
    """The first column of every line of a listing (table rows, headers and notes alike)."""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def test_plugin_file_is_listed(capsys) -> None:
    """``--plugin FILE.py`` adds its registrations to the listing (through the registries)."""
    assert main(["list", "methods", "--plugin", str(TESTS / "tiny_plugin.py")]) == 0
    out = capsys.readouterr().out
    assert "slow" in out and "sleep=0.05" in out and "dann" in out
    assert main(["list", "pairs", "tiny", "--plugin", str(TESTS / "tiny_plugin.py")]) == 0
    assert "tiny" in capsys.readouterr().out


def _tiny_entry_point_env(tmp_path: Path) -> dict[str, str]:
    """A subprocess environment whose path holds an installed package (a hand-made dist-info) with
    the tiny plugin as a ``dabench.methods`` entry point."""
    site = tmp_path / "site"
    info = site / "tiny_dabench_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-dabench-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dabench.methods]\ntiny = tiny_plugin\n")
    return {"PYTHONPATH": f"{site}:{TESTS}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


def test_installed_entry_point_plugin_is_listed(tmp_path: Path) -> None:
    """An installed package's entry point (a hand-made dist-info on the path) is listed beside the built-ins."""
    env = _tiny_entry_point_env(tmp_path)
    listed = subprocess.run([str(DABENCH), "list", "methods"], capture_output=True, text=True, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert "slow" in names and {"source-only", "dann", "fine-tune"} <= set(names)
    builtins = len(json.loads(CATALOG.read_text())["methods"])
    assert f"all ({builtins + 1})" in listed.stdout  # the built-ins + the plugin's


def test_the_catalog_of_builtins_ignores_installed_plugins(tmp_path: Path) -> None:
    """A plugin author's environment (an entry point installed) neither changes ``builtins.json``
    nor fails its test: the built-ins' catalog leaves the plugin out, groups included, and
    ``python -m dabench.core.listing`` prints it (it refused before, and the test failed)."""
    env = _tiny_entry_point_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "dabench.core.listing"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert Listing.from_json(out.stdout) == Listing.from_json(CATALOG.read_text(encoding="utf-8"))
