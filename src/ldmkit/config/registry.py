"""Explicit name → class registries (DESIGN habit 1: no dotted-path ``target:`` strings)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Mapping, TypeVar

from ldmkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the names used in YAML files to the classes or functions that implement them."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(self.names())}"
            raise ConfigError(f"unknown {self.what} '{name}'; {hint}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def named_preset(presets: Mapping[str, T], name: str, what: str) -> T:
    """``presets[name]``, or a one-line ConfigError naming the closest preset (or all of them)."""
    try:
        return presets[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(presets), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"presets: {', '.join(sorted(presets))}"
        raise ConfigError(f"no {what} preset named '{name}'; {hint}") from None
