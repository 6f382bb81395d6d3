"""Settings, one way for every settings object: nested dataclasses built from a mapping by one `from_mapping`
(validated on construction by each dataclass's __post_init__), and one dotted override (`section.key=VALUE`,
the value read as YAML) shared by `eam finetune --settings/--set`, `eam gmm --set` and the bench knobs."""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing


def yaml_value(raw: str):
    import yaml

    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse(spec: str) -> tuple[str, object]:
    """`KEY=VALUE` → (KEY, VALUE read as YAML)."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE, got {spec!r}")
    return key, yaml_value(raw)


def apply(settings: dict, key: str, value) -> dict:
    """Set the dotted `key` of a settings mapping in place (sections created as needed); returns it."""
    *path, leaf = str(key).split(".")
    node = settings
    for part in path:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"setting {key!r}: {part} is not a section")
    node[leaf] = value
    return settings


def applied(settings: dict, overrides: dict) -> dict:
    """A copy of `settings` with every dotted override of `overrides` applied."""
    out = copy.deepcopy(settings)
    for key, value in overrides.items():
        apply(out, key, value)
    return out


def _number(value, kinds: tuple):
    """`value` as the number the field wants where it is one: YAML strings like 1e-4 (PyYAML reads a number without
    a dot as a string) and integer-valued floats for int fields (1e3); anything else unchanged for the field's
    own check to name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (int in kinds or float in kinds):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and int in kinds and float not in kinds and value.is_integer():
        return int(value)
    if isinstance(value, int) and float in kinds and int not in kinds:
        return float(value)
    return value


def from_mapping(cls, data, what: str = "", path: str = ""):
    """The dataclass `cls` from a mapping: nested dataclass fields from their own mappings, numbers from YAML
    (`_number`); an unknown key or a section that is not a mapping is a one-line error naming it (`what` names the
    top level in messages, e.g. "fine-tuning"; nested sections go by their dotted path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} setting {path} must be a mapping of settings, got {data!r}" if path else
                         f"{what} settings must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    kw = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        if key not in known:
            raise ValueError(f"unknown {what} setting {name!r}; known{f' in {path}' if path else ''}: {', '.join(known)}")
        hint = hints[key]
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else (hint,)
        sub = next((k for k in kinds if dataclasses.is_dataclass(k)), None)
        if sub is not None and (value is not None or type(None) not in kinds):
            value = from_mapping(sub, value, what, name)
        elif dict in kinds or typing.get_origin(hint) is dict:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ValueError(f"{what} setting {name} must be a mapping of settings, got {value!r}")
        elif isinstance(value, (list, tuple)) and any(typing.get_origin(k) in (list, tuple) for k in kinds):
            items = next(typing.get_args(k) for k in kinds if typing.get_origin(k) in (list, tuple))
            value = [_number(v, items) for v in value]  # [2e-3, 9e-3]: numbers inside lists too
        else:
            value = _check_type(_number(value, kinds), kinds, what, name)
        kw[key] = value
    return cls(**kw)


PLAIN = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(value, kinds: tuple, what: str, name: str):
    """`value` if it is of one of the plain types of its field's hint (bool, int, float, str; None where the hint
    allows it; a bool is not an integer, an integer is a number), else a one-line error naming the field."""
    plain = [k for k in kinds if k in PLAIN]
    if not plain or value is None and type(None) in kinds:
        return value
    ok = any(isinstance(value, bool) if k is bool else
             isinstance(value, (int, float)) and not isinstance(value, bool) if k is float else
             isinstance(value, int) and not isinstance(value, bool) if k is int else isinstance(value, k)
             for k in plain)
    if not ok:
        wanted = " or ".join(PLAIN[k] for k in plain) + (" or null" if type(None) in kinds else "")
        raise ValueError(f"{what} setting {name} must be {wanted}, got {value!r}")
    return value


def check_choices(obj, what: str, **choices):
    """One-line errors for the fields of `obj` that must be one of a few names: `field=(allowed, ...)`."""
    for name, allowed in choices.items():
        v = getattr(obj, name)
        if v not in allowed:
            raise ValueError(f"unknown {what} {name} {v!r}; expected one of {', '.join(allowed)}")


def check_positive(obj, what: str, ints=(), numbers=(), optional=()):
    """One-line errors for the fields of `obj` that must be positive integers (`ints`) or positive finite numbers
    (`numbers`); those also in `optional` may be null. `what` names the settings (e.g. "fine-tuning")."""
    for name in (*ints, *numbers):
        v = getattr(obj, name)
        if v is None and name in optional:
            continue
        plain = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = plain and (isinstance(v, int) and v >= 1 if name in ints else math.isfinite(v) and v > 0)
        if not ok:
            kind = "integer" if name in ints else "number"
            raise ValueError(f"{what} setting {name} must be a positive {kind}{' or null' if name in optional else ''}, "
                             f"got {v!r}")
