"""One registry per kind of plug-in: the only place its names are listed.

Config validation, CLI help and the benchmarks read names from here. A config value
may also be an import path, `package.module:attribute`, to the user's own code
(installed or on PYTHONPATH); it is imported when the config is validated, so a bad
path fails before any work. Packages outside raysim add names through the
`raysim.plugins` entry-point group: each entry point is a function called once, with
no arguments, that registers what the package brings (autoflip does this), so raysim
never imports them by name.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points, packages_distributions
from typing import Any

PLUGIN_GROUP = "raysim.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Run every installed `raysim.plugins` entry point, once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()()


def is_import_path(name: str) -> bool:
    return ":" in name


def import_object(path: str) -> Any:
    """`package.module:attribute` (the attribute may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise LookupError(f"{path!r}: an import path is package.module:attribute")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"{path!r}: cannot import {module_name} ({exc}); install it or put it on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LookupError(f"{path!r}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    return obj


def top_package(import_path: str) -> str:
    """The top-level package (or module) an import path imports from."""
    return import_path.partition(":")[0].split(".")[0]


def local_packages(import_paths: list[str]) -> list[str]:
    """The top-level packages (or single-file modules) `import_paths` import from that are
    not installed distributions: code a Ray worker's environment cannot be assumed to have."""
    installed = packages_distributions()
    tops = []
    for path in import_paths:
        top = top_package(path)
        if top not in installed and top not in tops:
            tops.append(top)
    return tops


_preloaded: dict[str, Any] = {}


def preload(objects: dict[str, Any]) -> None:
    """Objects a Ray worker received with its task, by import path: `get` returns them
    instead of importing (their module is not on the worker)."""
    _preloaded.update(objects)


@dataclass
class Entry:
    obj: Any
    info: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # registered lazily: imported on first use

    def resolve(self) -> Any:
        if self.path is not None:
            self.obj, self.path = import_object(self.path), None
        return self.obj


class Registry:
    """Names of one kind of plug-in (`kind`, set by the config field `field`)."""

    def __init__(self, kind: str, field_name: str):
        self.kind = kind
        self.field = field_name  # where configs name it, for messages outside config validation
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, **info: Any):
        """Register `obj` under `name`, or decorate: `@REGISTRY.register("name")`.
        `info` is what validation needs to know without building it (e.g. the inputs a
        model takes)."""
        if is_import_path(name):
            raise ValueError(f"{self.kind} name {name!r}: ':' is reserved for import paths")

        def add(target: Any) -> Any:
            if name in self._entries and self._entries[name].resolve() is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(target, dict(info))
            return target

        return add if obj is None else add(obj)

    def register_lazy(self, name: str, path: str, **info: Any) -> None:
        """Register `name` as the object at `path` (package.module:attribute), imported on
        first `get`: its name and `info` are known without importing its code, so config
        validation and CLI help need no torch."""
        if is_import_path(name):
            raise ValueError(f"{self.kind} name {name!r}: ':' is reserved for import paths")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(None, dict(info), path)

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        """The registered object, or the object an import path names."""
        if is_import_path(name):
            return _preloaded[name] if name in _preloaded else import_object(name)
        return self._entry(name).resolve()

    def info(self, name: str) -> dict[str, Any]:
        """What was registered about `name` ({} for an import path)."""
        return {} if is_import_path(name) else self._entry(name).info

    def check(self, name: str) -> str:
        """`name` if it resolves, else a ValueError saying what is allowed (config validation
        puts the field in front). A registered name is not imported here (it may be lazy)."""
        try:
            self.get(name) if is_import_path(name) else self._entry(name)
        except LookupError as exc:
            raise ValueError(str(exc)) from None
        return name

    def _entry(self, name: str) -> Entry:
        load_plugins()
        if name not in self._entries:
            raise LookupError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}, "
                              "or an import path package.module:attribute")
        return self._entries[name]
