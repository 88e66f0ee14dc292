"""Decorator registries for methods, pairs and backbones (timm style).

Each registry maps a name to an object and remembers where it was registered, so
that a second registration of one name can be refused naming both sources.
Installed plugins are discovered through entry points (groups ``dabench.methods``,
``dabench.pairs``, ``dabench.backbones``) the first time a registry is read. An entry point
that fails to import (a package whose module is gone, a plugin that raises) is reported once
as a :class:`PluginWarning` naming its package and ``pip uninstall <package>``, and everything
else keeps working; only asking for a name that plugin would have provided is an error.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pathlib
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .spec import PROTOCOLS

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name or a conflicting registration; the message says which names are valid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class PluginError(ImportError):
    """A plugin (entry point, file or module) failed to import."""


class PluginWarning(UserWarning):
    """An installed plugin's entry point failed to load; the rest of dabench goes on without it."""


def _source_of(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        # e.g. a class made with type(): its module's file still says where it came from
        import sys

        module = getattr(obj, "__module__", None)
        path = getattr(sys.modules.get(module or ""), "__file__", None)
        return path or module or repr(obj)


def _in_dabench(source: str) -> bool:
    """Whether a registration's source (``file:line``) is a file of dabench itself (``dabench``,
    ``dabench.methods``, ``dabench.datasets``): a built-in, whichever module imported it first."""
    head, _, line = source.rpartition(":")
    path = head if head and line.isdigit() else source
    if not os.path.isfile(path):
        return False  # an entry point, a factory, a class made in a session
    roots = [
        pathlib.Path(p).resolve()
        for mod in ("dabench", "dabench.methods", "dabench.datasets")
        for p in getattr(sys.modules.get(mod), "__path__", ())
    ]
    resolved = pathlib.Path(path).resolve()
    return any(resolved.is_relative_to(root) for root in roots)


class Registry(Generic[T]):
    """A named collection of ``T`` with pattern listing and entry-point discovery."""

    def __init__(
        self,
        kind: str,
        entry_point_group: str,
        prepare: Callable[[str, Any], Any] | None = None,
        builtin: str | None = None,
    ) -> None:
        self.kind = kind
        self.group = entry_point_group
        #: the module whose import registers the built-in entries (``dabench.methods`` ...): imported
        #: on the first registration or read, not by ``import dabench``, so that reading results
        #: (which needs only the registries' labels) never imports the torch-based built-ins
        self._builtin = builtin
        self._builtin_loaded = builtin is None
        # applied to an object named by an entry point before it is registered (a method class
        # gets its name set and is validated, exactly as @register_method would do)
        self._prepare = prepare
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._entry_points_loaded = False
        #: group name → its members, or a function giving them when expanded (``all``: whatever is registered then)
        self._groups: dict[str, tuple[str, ...] | Callable[[], list[str]]] = {}
        self._factories: dict[str, Callable[[str], T]] = {}
        self._labels: dict[str, Callable[[str], str]] = {}
        #: entry points that failed to load: entry-point name → the message (why, and the fix)
        self._broken: dict[str, str] = {}
        #: the installed package whose entry point is being loaded (named in conflict messages)
        self._loading_dist: str | None = None
        self._dists: dict[str, str] = {}
        #: the names registered from dabench's own files (see :meth:`is_builtin`, :meth:`code`)
        self._builtin_names: set[str] = set()

    @property
    def loaded(self) -> bool:
        """Whether the built-in entries are imported (by a read or a registration in this process)."""
        return self._builtin_loaded

    def _load_builtin(self) -> None:
        """Import the built-in entries once, before any other registration or read.

        Built-ins first, as when ``import dabench`` registered them: a plugin taking a built-in
        name is refused at its own registration, naming both sources.
        """
        if self._builtin_loaded:
            return
        self._builtin_loaded = True  # set first: the built-in modules register (and read) while importing
        try:
            importlib.import_module(self._builtin)  # type: ignore[arg-type]
        except BaseException:
            self._builtin_loaded = False  # a failed import must fail again, not leave a silent empty registry
            raise

    def register(self, name: str, obj: T, source: str | None = None) -> T:
        self._load_builtin()
        source = source or _source_of(obj)
        if name in self._items and self._sources[name] != source:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: first by {self._describe(name)}, "
                f"again by {self._describe(name, source, self._loading_dist)}. Pick another name for one of them."
            )
        self._items[name] = obj
        self._sources[name] = source
        if _in_dabench(source):
            self._builtin_names.add(name)
        if self._loading_dist:
            self._dists[name] = self._loading_dist
        return obj

    def _forget(self, name: str) -> None:
        """Undo the registration of ``name`` (an entry point's module that failed to import)."""
        self._items.pop(name, None)
        self._sources.pop(name, None)
        self._dists.pop(name, None)
        self._builtin_names.discard(name)

    def _describe(self, name: str, source: str | None = None, dist: str | None = None) -> str:
        """A registration's source, with the installed package it came from when known."""
        if source is None:
            source, dist = self._sources[name], self._dists.get(name)
        return f"{source} (installed package {dist})" if dist else source

    def decorator(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def register_group(self, name: str, members: list[str] | tuple[str, ...] | Callable[[], list[str]]) -> None:
        """A name that selects several entries at once (e.g. ``office31`` → its six pairs).

        ``members`` is a list, or a function returning one when the group is expanded (for groups
        such as ``all`` that must include plugins registered later).
        """
        self._groups[name] = members if callable(members) else tuple(members)

    def groups(self) -> dict[str, list[str]]:
        """Every group and its members now, by group name."""
        self._load_builtin()  # built-in modules register groups too (``zoo``)
        return {name: self.group_members(name) for name in sorted(self._groups)}

    def group_members(self, name: str) -> list[str]:
        self._load_builtin()
        members = self._groups[name]
        return list(members() if callable(members) else members)

    def register_factory(
        self, prefix: str, factory: Callable[[str], T], label: Callable[[str], str] | None = None
    ) -> None:
        """Entries made on demand from a parametric name ``prefix:arguments`` (e.g. ``folder:source=...``).

        ``factory(arguments)`` returns the object, which is then registered under the full name,
        so a worker process given the same name rebuilds the same entry. ``label(arguments)``
        gives the short name tables and figures show instead of the full one (it must only parse
        the text: results are read without the data at hand).
        """
        self._factories[prefix] = factory
        if label is not None:
            self.register_label(prefix, label)

    def register_label(self, prefix: str, label: Callable[[str], str]) -> None:
        """The short display name of ``prefix:arguments`` names, without the factory.

        Results are read without building pairs (no data, no torch): a torch-free module can
        register the label alone (:mod:`dabench.core.pairnames` does it for ``folder:``).
        """
        self._labels[prefix] = label

    def label(self, name: str) -> str:
        """The short display name of ``name``: a parametric name's ``label``, else ``name`` itself.

        Never raises: a name whose arguments no longer parse is shown in full.
        """
        prefix, sep, arguments = str(name).partition(":")
        if not sep or prefix not in self._labels:
            return str(name)
        try:
            return self._labels[prefix](arguments) or str(name)
        except Exception:  # noqa: BLE001 - a display name must never stop a report
            return str(name)

    def _load_entry_points(self) -> None:
        self._load_builtin()  # every read goes through here
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True  # set first: a plugin importing dabench must not recurse
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None)
            where = f"plugin entry point {ep.name!r} ({ep.value}{', package ' + dist if dist else ''}) in group {self.group!r}"
            self._loading_dist = dist
            before = set(self._items)
            try:
                try:
                    obj = ep.load()
                except Exception:
                    # The module raised part-way through its import: what it registered before the
                    # error is half a plugin (the rest of the module never ran). Drop it, so that
                    # "going on without it" is what happens and asking for it names the failure.
                    for name in set(self._items) - before:
                        self._forget(name)
                    raise
                # An entry point may name a module (which registers on import) or an object.
                if not inspect.ismodule(obj):
                    if ep.name in self._items and self._items[ep.name] is obj:
                        continue  # the same object, already registered (e.g. its file came by --plugin)
                    if aliases := [n for n, o in self._items.items() if o is obj]:
                        # its module registered it under another name (@register_method("x") with
                        # the entry point "y = mod:Cls"): a second name would rename the class (its
                        # ``name``) and run one method twice under two names (groups, "all")
                        raise ValueError(
                            f"it names {ep.value}, which its module already registers as {aliases[0]!r}; "
                            f"give the entry point that name ({aliases[0]} = {ep.value}), or name the "
                            "module itself (a module entry point registers what it holds)"
                        )
                    if self._prepare is not None:
                        obj = self._prepare(ep.name, obj)
                    self.register(ep.name, obj, source=f"entry point {ep.value}")
            except RegistryError:
                # A name clash: the message names the two sources of that name, and only them
                # (the entry point being loaded may be another, innocent one of the package).
                raise
            except Exception as exc:  # noqa: BLE001 - any import error is the plugin's
                # One broken installed package must not stop every run and listing: warn once,
                # remember why, and fail only if one of its names is asked for (see get()).
                fix = f"reinstall it, or remove it with: pip uninstall {dist}" if dist else "remove or repair it"
                message = f"{where} failed to load: {type(exc).__name__}: {exc}; {fix}"
                self._broken[ep.name] = message
                warnings.warn(f"{message}. Going on without it.", PluginWarning, stacklevel=3)
            finally:
                self._loading_dist = None

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted; ``pattern`` is a shell-style glob (``dan*``) or a list ``a,b``."""
        self._load_entry_points()
        return match_names(sorted(self._items), pattern)

    def get(self, name: str) -> T:
        self._load_entry_points()
        if name not in self._items and ":" in name and name.split(":", 1)[0] in self._factories:
            prefix, arguments = name.split(":", 1)
            obj = self._factories[prefix](arguments)
            canonical = _canonical(name, obj)
            if canonical != name:
                # e.g. a folder pair's relative paths: kept under the absolute spelling only, since the
                # same text names another folder after a chdir
                return self._items.get(canonical) or self.register(canonical, obj, source=f"factory {prefix!r}")
            self.register(name, obj, source=f"factory {prefix!r}")
        if name not in self._items:
            if name in self._broken:
                raise PluginError(f"{self.kind} {name!r} is unavailable: {self._broken[name]}")
            extra = ""
            if self._broken:
                extra += f"; broken plugins (they may have provided it): {'; '.join(self._broken.values())}"
            if self._groups:
                extra += f"; groups: {', '.join(sorted(self._groups))}"
            if self._factories:
                extra += f"; parametric: {', '.join(p + ':...' for p in sorted(self._factories))}"
            # the two usual causes: a typo (the closest names), or a plugin's name without its plugin
            close = difflib.get_close_matches(name, [*self._items, *self._groups], n=3)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            extra += f"; a plugin's {self.kind} is loaded with --plugin FILE.py|MODULE (or installed as a package)"
            raise RegistryError(
                f"unknown {self.kind} {name!r}{hint}; valid {self.kind}s: {', '.join(sorted(self._items))}{extra}"
            )
        return self._items[name]

    def source(self, name: str) -> str:
        self._load_builtin()
        return self._sources[name]

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` was registered by dabench's own built-in module (not a plugin)."""
        self._load_builtin()
        return name in self._builtin_names

    def code(self, name: str) -> dict[str, str] | None:
        """What identifies a *plugin* entry's code in its run records (``plugin_code``), None for a
        built-in or factory-made entry (dabench's own version and commit, in ``versions``, say
        which code made those) or an unregistered name.

        ``file``: the file that registered it (a method: the file defining its class), ``sha256``:
        the first 16 hex digits of that file's bytes, and ``package`` (``name version``) for an
        entry point of an installed package. A run id is its spec, not its code, so without this
        a resume after an edit of the plugin would keep the old version's records beside the new
        one's with nothing to tell them apart. Only that one file is hashed: a plugin spread over
        several modules should bump its package version with each change.
        """
        self._load_builtin()
        if name not in self._items or name in self._builtin_names:
            return None
        source = self._sources[name]
        if source.startswith("factory "):
            return None
        where = _source_of(self._items[name]) if source.startswith("entry point ") else source
        head, _, line = where.rpartition(":")
        path = head if head and line.isdigit() else where  # "file:line", or a bare module file
        out: dict[str, str] = {"file": path}
        try:
            out["sha256"] = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]
        except OSError:
            out["sha256"] = "unknown"  # a class made in an interactive session: no file to hash
        if dist := self._dists.get(name):
            try:
                out["package"] = f"{dist} {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                out["package"] = dist
        return out

    def expand(self, patterns: str | list[str]) -> list[str]:
        """Expand comma-separated names/globs; an unmatched entry is an error naming the choices."""
        parts = split_names(patterns) if isinstance(patterns, str) else list(patterns)
        # first: a group that a built-in module registers (``zoo``) must be known before the
        # lookups below, which would otherwise load the built-ins only after missing it
        self._load_builtin()
        out: list[str] = []
        for part in (p.strip() for p in parts):
            if not part:
                continue
            if ":" in part and part.split(":", 1)[0] in self._factories:
                # built by its factory (a path may hold glob characters); listed by its own spelling
                hits = [_canonical(part, self.get(part))]
            elif part in self._groups:
                hits = self.group_members(part)
            elif any(c in part for c in "*?["):
                hits = self.names(part)
            else:
                self.get(part)  # raises with the valid choices
                hits = [part]
            if not hits:
                raise RegistryError(
                    f"{self.kind} pattern {part!r} matches nothing; valid {self.kind}s: {', '.join(self.names())}"
                )
            out += [h for h in hits if h not in out]
        return out

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _canonical(name: str, obj: object) -> str:
    """The spelling a factory-made entry gives itself (its ``name``), else ``name``: a folder pair
    named with relative paths is ``folder:`` with absolute ones, so that a run id never stands for
    whatever folder the current directory holds."""
    own = getattr(obj, "name", None)
    return own if isinstance(own, str) and own.startswith(name.split(":", 1)[0] + ":") else name


def match_names(names: list[str], pattern: str | None) -> list[str]:
    """``names`` matching ``pattern``, a shell-style glob (``dan*``) or a list ``a,b`` of them, in
    the order of ``names`` per part; all of them for no pattern (``dabench list`` reads it too)."""
    if not pattern:
        return list(names)
    out: list[str] = []
    for part in pattern.split(","):
        out += [n for n in names if fnmatch.fnmatchcase(n, part.strip()) and n not in out]
    return out


def _prepare_method(name: str, cls: Any) -> Any:
    """Name a method class and refuse it, saying what is missing, when it is incomplete."""
    # late: method.py imports torch; reading the registries' labels (dabench report) must not
    from .method import validate_method_class

    validate_method_class(cls)
    cls.name = name
    return cls


def split_names(text: str) -> list[str]:
    """Split a comma-separated list of names, keeping a parametric name's ``key=value`` arguments
    together: ``"dann,folder:source=a,target=b"`` → ``["dann", "folder:source=a,target=b"]``.

    A part with ``=`` continues the parametric name before it (plain names never hold ``=``).
    """
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if out and ":" in out[-1] and "=" in part and ":" not in part.split("=", 1)[0]:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


METHODS: Registry = Registry("method", "dabench.methods", prepare=_prepare_method, builtin="dabench.methods")


def _methods_of_protocol(protocol: str | None) -> Callable[[], list[str]]:
    """The registered methods of one protocol (every one for ``None``), read when the group is used."""

    def members() -> list[str]:
        return [n for n in METHODS.names() if protocol is None or METHODS.get(n).protocol == protocol]

    return members


# ``--methods all`` / ``uda`` / ``few-shot``: built-ins and plugins alike (``zoo``, the built-ins
# only, is registered by dabench.methods)
METHODS.register_group("all", _methods_of_protocol(None))
for _protocol in PROTOCOLS:
    METHODS.register_group(_protocol, _methods_of_protocol(_protocol))

PAIRS: Registry = Registry("pair", "dabench.pairs", builtin="dabench.datasets")
BACKBONES: Registry = Registry("backbone", "dabench.backbones", builtin="dabench.backbones")


def register_method(name: str):
    """Register a :class:`~dabench.Method` subclass under ``name``; sets ``cls.name``."""

    def wrap(cls):
        return METHODS.register(name, _prepare_method(name, cls))

    return wrap


def ensure_method_registered(cls: type) -> str:
    """The registered name of method class ``cls``, registering it on the fly when it is not.

    The name is one set on the class itself, else its lower-cased class name (a subclass of a
    registered method inherits the parent's ``name`` and would otherwise claim the parent's
    entry). A different class under a taken name is refused naming both sources, never
    silently replaced by (or run as) the registered one. ``dabench.run(methods=[Cls])`` and
    ``dabench.testing.check_method(Cls)`` both go through here.
    """
    name = cls.__dict__.get("name") or cls.__name__.lower()
    if name not in METHODS or METHODS.get(name) is not cls:
        register_method(name)(cls)
    return name


def register_pair(pair):
    """Register a :class:`~dabench.DomainPair` (an instance) under its own name."""
    return PAIRS.register(pair.name, pair, source=_caller())


def register_backbone(name: str):
    """Register a backbone factory ``f(**options) -> Backbone`` under ``name``."""
    return BACKBONES.decorator(name)


#: factory arguments the engine fills from the pair (never ``backbone.<option>``s)
BACKBONE_PAIR_ARGS = ("in_channels", "image_size")


def backbone_options(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """The ``backbone.<option>``s a factory takes, with their defaults; ``None`` when it takes any
    (a ``**options`` factory, or one without a readable signature: nothing to check against)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in params.items()
        if n not in BACKBONE_PAIR_ARGS
    }


def _caller() -> str:
    frame = inspect.stack()[2]
    return f"{frame.filename}:{frame.lineno}"


def list_methods(pattern: str | None = None) -> list[str]:
    """The registered methods' names, sorted (built-ins and loaded plugins); ``pattern``: a glob (``"d*"``) or a list ``a,b``."""
    return METHODS.names(pattern)


def list_pairs(pattern: str | None = None) -> list[str]:
    """The registered pairs' names, sorted (built-ins and loaded plugins); ``pattern``: a glob (``"d*"``) or a list ``a,b``."""
    return PAIRS.names(pattern)


def list_backbones(pattern: str | None = None) -> list[str]:
    """The registered backbones' names, sorted (built-ins and loaded plugins); ``pattern``: a glob (``"d*"``) or a list ``a,b``."""
    return BACKBONES.names(pattern)


def load_plugin(ref: str) -> None:
    """Import a plugin given as a ``.py`` file path or a dotted module name; it registers itself."""
    if not ref.strip():  # importlib's "Empty module name" did not say what a plugin reference is
        raise PluginError(f"plugin {ref!r}: expected a FILE.py path or an importable module name")
    try:
        if ref.endswith(".py") or "/" in ref:
            path = pathlib.Path(ref).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            # Import each file once, whatever name it was first imported under (an editable install
            # imports it as a package module via its entry point; --plugin then must not import it
            # again). Two different files with one stem are still two plugins.
            for mod in list(sys.modules.values()):
                if (file := getattr(mod, "__file__", None)) and _same_file(file, path):
                    return
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
            mod_name = f"dabench_plugin_{path.stem.replace('-', '_')}_{digest}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:  # not a .py file: Python has no loader for it
                raise PluginError(
                    f"plugin {ref!r}: {path} is not a Python file; expected a FILE.py path or an importable module name"
                )
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
        else:
            importlib.import_module(ref)
    except (RegistryError, PluginError):
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {ref!r} failed to import: {type(exc).__name__}: {exc}{_plugin_hint(ref, exc)}"
        ) from exc


def _plugin_hint(ref: str, exc: BaseException) -> str:
    """Where a plugin's import failed, or what a module name that is not importable should be.

    The exception alone (``NameError: name 'x' is not defined``) does not say which line of the
    plugin raised; the deepest frame of the traceback outside the import machinery does. A
    ``SyntaxError`` names its own file and line. A dotted name that is not importable at all is
    most often a file path typed without ``.py`` or a package not installed.
    """
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (ref == missing or ref.startswith(missing + ".")) and not ref.endswith(".py"):
        return (
            f" (give a plugin file as a path ending in .py, e.g. ./{ref.replace('.', '/')}.py; "
            "a module name must be importable: an installed package or a folder on PYTHONPATH)"
        )
    if isinstance(exc, SyntaxError):  # its message names the file's base name only
        return f" (at {exc.filename}:{exc.lineno})" if exc.filename else ""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen") and os.sep + "importlib" + os.sep not in f.filename
    ]
    # the registry's own frames (load_plugin) are not where the plugin went wrong
    frames = [f for f in frames if not _same_file(f.filename, __file__)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _same_file(a: str, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
