"""The text of a parametric folder pair's name: ``folder:[name=NAME,]source=DIR,target=DIR[,...]``.

Parsing only (no file access, no torch): :mod:`dabench.datasets.folder` builds the pair from it,
and reading results (:mod:`dabench.analysis.results`) shows its short label without importing
the datasets. Importing this module registers the ``folder`` label in
:data:`dabench.core.registry.PAIRS`.
"""

from __future__ import annotations

import pathlib
import re

from .registry import PAIRS, RegistryError

OPTIONS = ("name", "source", "target", "size", "channels", "backbone", "eval", "augment", "shots")
USAGE = (
    "folder:[name=NAME,]source=DIR,target=DIR[,size=32][,channels=1|3][,backbone=NAME][,eval=half|all]"
    "[,augment=...][,shots=5]"
)
NAME_CHARS = re.compile(r"[A-Za-z0-9._+\-]+")


def parse_arguments(arguments: str) -> dict[str, str]:
    """``"source=a,target=b,size=32"`` → a dict; an unknown or missing key is an error saying the usage."""
    out: dict[str, str] = {}
    last = ""
    for part in (p.strip() for p in arguments.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in OPTIONS:
            hint = ""
            if last in ("source", "target"):  # most likely the rest of a path that holds a comma
                hint = (
                    f" If {last}={out[last]},{part} is one folder: a comma inside a path is not supported "
                    f"(commas separate the options); rename the folder or make a link without a comma to it "
                    f"(ln -s '{out[last]},{part}' /some/where) and name the link."
                )
            raise RegistryError(
                f"folder pair: bad option {part!r}; options: {', '.join(OPTIONS)}.{hint} Usage: {USAGE}"
            )
        out[key] = value.strip()
        last = key
    missing = [k for k in ("source", "target") if not out.get(k)]
    if missing:
        raise RegistryError(f"folder pair: missing {' and '.join(missing)}. Usage: {USAGE}")
    if "name" in out and not NAME_CHARS.fullmatch(out["name"]):
        raise RegistryError(
            f"folder pair: name={out['name']!r} is not a valid short name: use letters, digits "
            f"and . _ + - only (e.g. name=photos-sketches). Usage: {USAGE}"
        )
    return out


def folder_label(arguments: str) -> str:
    """The short name shown in tables and figures for ``folder:<arguments>``.

    ``name=`` when given; else ``<source folder>-<target folder>`` (their parents too when the
    two folder names are equal), followed by the other options given, so that two folder
    pairs of different settings never share a column. Parses the text only (no file access).
    """
    opts = parse_arguments(arguments)
    if opts.get("name"):
        return opts["name"]
    src, tgt = pathlib.PurePath(opts["source"]), pathlib.PurePath(opts["target"])
    if src.name == tgt.name:
        label = f"{src.parent.name}/{src.name}-{tgt.parent.name}/{tgt.name}"
    else:
        label = f"{src.name}-{tgt.name}"
    extra = [f"{k}={v}" for k, v in opts.items() if k not in ("source", "target", "name")]
    return f"{label} ({','.join(extra)})" if extra else label


PAIRS.register_label("folder", folder_label)
