"""Registries: protocols, rule kinds and hook types declare themselves here.

A registry maps a name to what a kind of extension declares (a protocol's device model and driver factory,
a rule kind's model and evaluator, a hook type's model and sender). The built-ins register on import of
their layer; anything else registers through a Python entry point of the registry's group, so an installed
package extends dcim without an edit to it:

    # pyproject.toml of a plugin
    [project.entry-points."dcim.protocols"]
    toy = "toy_protocol:PROTOCOL"

`Registry.load_plugins()` imports every entry point of the group once and registers what it names.
Registration after a model that depends on the registry was built (the configuration union) bumps
`version`, which such builders key their caches on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class RegistryError(Exception):
    pass


class Registry(Generic[T]):
    def __init__(self, what: str, group: str, name_of: Callable[[T], str]) -> None:
        self.what = what
        self.group = group
        self._name_of = name_of
        self._items: dict[str, T] = {}
        self._plugins_loaded = False
        self.version = 0

    def register(self, item: T, *, replace: bool = False) -> T:
        name = self._name_of(item)
        if name in self._items and not replace and self._items[name] is not item:
            raise RegistryError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        self.version += 1
        return item

    def unregister(self, name: str) -> None:
        if self._items.pop(name, None) is not None:
            self.version += 1

    def load_plugins(self) -> None:
        """Register every entry point of this registry's group (once per process)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            try:
                item = ep.load()
            except Exception as err:  # a broken plugin is reported, never fatal to the built-ins
                log.error("plugin failed to load", group=self.group, entry_point=ep.name, error=repr(err))
                continue
            self.register(item, replace=True)

    def get(self, name: str) -> T:
        self.load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items) or "none"
            raise RegistryError(f"unknown {self.what} {name!r} (known: {known})") from None

    def names(self) -> tuple[str, ...]:
        self.load_plugins()
        return tuple(self._items)

    def __iter__(self) -> Iterator[T]:
        self.load_plugins()
        return iter(tuple(self._items.values()))

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items
