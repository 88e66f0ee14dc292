"""The package's import graph has no cycles, and every module imports on its own.

The graph is read from the source with ``ast`` (no import needed): every ``import`` and
``from ... import`` inside the package, at module level *and* inside functions (a late import
that hides a cycle is still a cycle), relative imports resolved. Imports under
``if TYPE_CHECKING:`` are left out: they never run. Layers are described in docs/architecture.md
("Import layers").
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import dabench

PKG = "dabench"
# the package's source folders: dabench, dabench.methods and dabench.datasets live apart
ROOTS = {
    PKG: pathlib.Path(dabench.__file__).parent,
    f"{PKG}.methods": pathlib.Path(dabench.methods.__file__).parent,
    f"{PKG}.datasets": pathlib.Path(dabench.datasets.__file__).parent,
}


def package_modules() -> dict[str, pathlib.Path]:
    """Every module of the package: dotted name → file (a package's ``__init__.py`` is the package)."""
    mods: dict[str, pathlib.Path] = {}
    for root_name, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            if root_name == PKG and rel and rel[0] in ("methods", "datasets"):
                continue  # not under benchmark/ in a source checkout, but be safe
            parts = [root_name, *rel]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes of a module, module level and nested, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports."""
    mods = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                # ``from X import name``: name is a submodule of X, or an attribute of X
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin for a in node.names]
            for target in targets:
                # ``import dabench.core.spec`` binds the package but runs the module: the module counts
                while target and target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != mod:
                    graph[mod].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_in(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle through a strongly connected component, for the failure message."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if back:
            return path[path.index(back[0]) :] + [back[0]]
        fresh = [w for w in nxt if w not in seen]
        path.append(fresh[0])
        seen.add(fresh[0])


def test_graph_sees_relative_and_late_imports():
    """The checker itself: it resolves relative imports at module and function level."""
    graph = import_graph()
    assert "dabench.core.spec" in graph["dabench.running.scheduler"]  # ``from ..core.spec import``
    assert "dabench.analysis.report" in graph["dabench.cli"]  # a function-level import
    assert "dabench.analysis.figures" in graph["dabench.analysis.report"]  # ``from . import figures``
    assert sorted(strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})) == [["a", "b"], ["c"]]


# The one sanctioned loop: the package root imports its built-in plugins last, to register them,
# and the built-in methods import the public API from ``dabench`` exactly as a third-party plugin
# does (tests/test_plugins.py::test_builtin_methods_use_only_the_public_api). The root binds every
# public name before that import, so the loop is safe; any other loop is a cycle.
PLUGIN_REGISTRATION = {(PKG, f"{PKG}.methods"), (PKG, f"{PKG}.datasets")}


def test_no_import_cycles():
    graph = import_graph()
    for src, dst in PLUGIN_REGISTRATION:
        graph[src].discard(dst)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(_cycle_in(graph, c)) for c in cycles)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh package state (one subprocess; torch stays loaded)."""
    names = sorted(package_modules())
    code = (
        "import importlib, json, sys, traceback\n"
        "import torch  # noqa: F401  (kept between modules: only dabench is re-imported)\n"
        "bad = {}\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'dabench' or m.startswith('dabench.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        bad[name] = traceback.format_exc(limit=3)\n"
        "print(json.dumps(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not bad, "modules that fail to import on their own:\n" + "\n".join(f"{k}:\n{v}" for k, v in bad.items())
