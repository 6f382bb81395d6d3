"""Name → class registries, so a reward or a base model is one file plus one registration."""
from __future__ import annotations

import importlib

_REGISTRIES: dict[str, dict[str, type]] = {}
# Importing these packages registers every entry of their kind.
_PACKAGES = {"model": "eam.adapters", "reward": "eam.rewards"}


def register(kind: str, name: str):
    """Class decorator: `@register("reward", "linear")`."""

    def wrap(cls):
        table = _REGISTRIES.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name].__module__} and {cls.__module__})")
        table[name] = cls
        return cls

    return wrap


def lookup(kind: str, name: str) -> type:
    if kind in _PACKAGES:
        importlib.import_module(_PACKAGES[kind])
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def names(kind: str) -> list[str]:
    if kind in _PACKAGES:
        importlib.import_module(_PACKAGES[kind])
    return sorted(_REGISTRIES.get(kind, {}))
