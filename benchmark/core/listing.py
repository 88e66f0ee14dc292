"""What ``dabench list`` shows of each registration, readable without importing torch.

The built-in methods, pairs and backbones are torch modules: reading their classes (docstring,
hyperparameter defaults, protocol) costs the ~2 s import of torch, timm and every built-in
file. So the same descriptors (:class:`MethodInfo`, :class:`PairInfo`, :class:`BackboneInfo`)
of every built-in registration are kept in ``builtins.json`` beside this module, and
``dabench list`` reads them from there when nothing but the built-ins can be registered.
``tests/test_listing.py`` builds the descriptors from the real classes and compares them
with the file, so the two cannot drift; after changing a built-in, rewrite the file with::

    python -m dabench.core.listing --write

With plugins (``--plugin``, installed entry points) or registries already loaded in this
process, :func:`listing` reads the registries instead (importing torch), through the same
descriptor functions, so both paths print the same thing for the same registrations.
Standard library only (docs/architecture.md, "Import layers").
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

from .jsonio import dump_json, load_json
from .registry import BACKBONES, METHODS, PAIRS, backbone_options, match_names

CATALOG = pathlib.Path(__file__).with_name("builtins.json")


def first_line(doc: str | None) -> str:
    """The first line of a docstring (what the listing shows as the description)."""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


@dataclass(frozen=True)
class MethodInfo:
    """A method class as listed: its registered name, ``description()``, protocol, ``uses`` and
    ``hparam_defaults()`` (the base defaults first, then the method's own, in class order)."""

    name: str
    description: str
    protocol: str
    uses: dict[str, Any]
    defaults: dict[str, Any]


@dataclass(frozen=True)
class PairInfo:
    """A pair as listed: its input, shots and the schedule's headline numbers."""

    name: str
    description: str
    backbone: str
    channels: int
    image_size: int
    target_shots: int
    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone factory as listed: its name, the first line of its docstring and its
    ``backbone.<option>``s with their defaults (``None``: it takes any option)."""

    name: str
    description: str
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Listing:
    """Every registration ``dabench list`` shows, and the ``--methods`` groups with their members."""

    methods: tuple[MethodInfo, ...] = ()
    pairs: tuple[PairInfo, ...] = ()
    backbones: tuple[BackboneInfo, ...] = ()
    method_groups: dict[str, list[str]] = field(default_factory=dict)

    def select(self, what: str, pattern: str | None) -> list[Any]:
        """The descriptors of ``what`` (methods, pairs, backbones) whose names match ``pattern``
        (the registries' glob / comma-list rule), in the registries' order (sorted by name)."""
        items = {i.name: i for i in getattr(self, what)}
        return [items[n] for n in match_names(sorted(items), pattern)]

    def to_json(self) -> str:
        return dump_json(dataclasses.asdict(self), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Listing:
        d = load_json(text)
        return cls(
            methods=tuple(MethodInfo(**m) for m in d["methods"]),
            pairs=tuple(PairInfo(**p) for p in d["pairs"]),
            backbones=tuple(BackboneInfo(**b) for b in d["backbones"]),
            method_groups=d["method_groups"],
        )


def method_info(name: str, cls: Any) -> MethodInfo:
    return MethodInfo(
        name=name,
        description=cls.description(),
        protocol=cls.protocol,
        uses=dataclasses.asdict(cls.uses),
        defaults=dict(cls.hparam_defaults()),
    )


def pair_info(name: str, pair: Any) -> PairInfo:
    sch = pair.schedule
    return PairInfo(
        name=name,
        description=pair.description,
        backbone=pair.backbone,
        channels=pair.channels,
        image_size=pair.image_size,
        target_shots=pair.target_shots,
        steps=sch.steps,
        batch_size=sch.batch_size,
        lr=sch.lr,
    )


def backbone_info(name: str, factory: Any) -> BackboneInfo:
    return BackboneInfo(name=name, description=first_line(factory.__doc__), options=backbone_options(factory))


def from_registries(builtins_only: bool = False) -> Listing:
    """The descriptors of everything registered now (imports the built-ins, hence torch);
    ``builtins_only``: of the built-in registrations alone, whatever plugins are installed (what
    ``builtins.json`` holds: a plugin author's environment must not change it, nor fail its test)."""

    def names(registry) -> list[str]:
        return [n for n in registry.names() if not builtins_only or registry.is_builtin(n)]

    groups = METHODS.groups()
    if builtins_only:
        groups = {g: [m for m in members if METHODS.is_builtin(m)] for g, members in groups.items()}
    return Listing(
        methods=tuple(method_info(n, METHODS.get(n)) for n in names(METHODS)),
        pairs=tuple(pair_info(n, PAIRS.get(n)) for n in names(PAIRS)),
        backbones=tuple(backbone_info(n, BACKBONES.get(n)) for n in names(BACKBONES)),
        method_groups=groups,
    )


def builtin_listing() -> Listing:
    """The built-in registrations' descriptors from ``builtins.json`` (no torch)."""
    return Listing.from_json(CATALOG.read_text(encoding="utf-8"))


def plugins_installed() -> bool:
    """Whether any installed package declares a dabench entry point (a plugin to import and list)."""
    # the registries' groups read now, not at import: tests point a registry at a group of their own
    groups = (METHODS.group, PAIRS.group, BACKBONES.group)
    return any(next(iter(importlib.metadata.entry_points(group=g)), None) for g in groups)


def listing(plugins: bool = False) -> Listing:
    """What ``dabench list`` shows: the built-in catalog when only the built-ins can be
    registered; the registries themselves when ``plugins`` were loaded (``--plugin``), an
    installed package declares an entry point, or a registry is already loaded in this process
    (it may hold registrations made by code, e.g. the Python API)."""
    if plugins or plugins_installed() or any(r.loaded for r in (METHODS, PAIRS, BACKBONES)):
        return from_registries()
    return builtin_listing()


def main(argv: list[str] | None = None) -> int:
    """``python -m dabench.core.listing --write``: rewrite ``builtins.json`` from the built-ins."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"]):
        print("usage: python -m dabench.core.listing [--write]", file=sys.stderr)
        return 2
    text = from_registries(builtins_only=True).to_json()  # installed plugins are listed live, never stored
    if args == ["--write"]:
        CATALOG.write_text(text, encoding="utf-8")
        print(f"wrote {CATALOG}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
