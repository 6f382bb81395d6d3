"""Name → class registries, so a reward or a base model is one file plus its decorator.

Every module of `eam.rewards` and `eam.adapters` is imported on first lookup (a new file there registers
itself), and the workflow checks a config's reward and model names against `catalogue()` (`eam list`)."""
from __future__ import annotations

import importlib
import pkgutil

_REGISTRIES: dict[str, dict[str, type]] = {}
_TRAITS: dict[str, dict[str, dict]] = {}
# Importing every module of these packages registers every entry of their kind.
_PACKAGES = {"model": "eam.adapters", "reward": "eam.rewards"}
# What each kind declares: `domain` says which benchmarks may use an entry (the text-to-image DAG takes
# domain "image"); rewards also say whether they load weights (`weights`: a folder or hub cache) and whether
# `features(images)` embeds images for the distance to the base (`features`).
TRAITS = {"model": {"domain"}, "reward": {"domain", "weights", "features"}}
# What an entry of a domain must define besides: a `toy` reward gives a case file's keys and its exact tilt.
INTERFACES = {("reward", "toy"): ("case_keys", "tilt")}


def register(kind: str, name: str, **traits):
    """Class decorator: `@register("reward", "pickscore", domain="image", weights=True, features=True)`."""
    if kind in TRAITS and set(traits) != TRAITS[kind]:
        raise TypeError(f"{kind} {name!r} must declare exactly {sorted(TRAITS[kind])}, got {sorted(traits)}")

    def wrap(cls):
        missing = [a for a in INTERFACES.get((kind, traits.get("domain")), ()) if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"{kind} {name!r} of domain {traits['domain']!r} must define {', '.join(missing)}")
        table = _REGISTRIES.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name].__module__} and {cls.__module__})")
        table[name] = cls
        cls.registered_name = name  # the adapter or reward knows its own name (messages, saved configs)
        _TRAITS.setdefault(kind, {})[name] = dict(traits)
        return cls

    return wrap


def discover(kind: str):
    """Import every module of the kind's package (each registers what it defines)."""
    if kind not in _PACKAGES:
        return
    package = importlib.import_module(_PACKAGES[kind])
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def lookup(kind: str, name: str) -> type:
    discover(kind)
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def names(kind: str, **traits) -> list[str]:
    """Registered names of a kind, those whose declared traits match `traits` if given."""
    discover(kind)
    return sorted(n for n, t in _TRAITS.get(kind, {}).items() if all(t.get(k) == v for k, v in traits.items()))


def catalogue() -> dict:
    """Every registered model and reward with its class and declared traits (`eam list --json`)."""
    out = {}
    for kind in _PACKAGES:
        discover(kind)
        out[kind] = {n: {"class": f"{c.__module__}.{c.__qualname__}", **_TRAITS[kind][n]}
                     for n, c in sorted(_REGISTRIES.get(kind, {}).items())}
    return out
