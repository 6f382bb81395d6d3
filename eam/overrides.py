"""One dotted override for every settings path: `eam finetune --set`, `eam gmm --set` and the bench knobs
all name a setting as `section.key` and read its value as YAML (with `1e-4`, a string to PyYAML, a number)."""
from __future__ import annotations

import copy


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


def set_field(cfg, key: str, value):
    """Set the dotted `key` of a nested dataclass config, converting the value to the field's current type
    (None-valued and boolean fields take the YAML value as it is)."""
    *path, last = key.split(".")
    obj = cfg
    for name in path:
        obj = getattr(obj, name, None)
    if obj is None or not hasattr(obj, "__dataclass_fields__") or last not in obj.__dataclass_fields__:
        raise ValueError(f"unknown setting {key!r} in --set")
    current = getattr(obj, last)
    if current is None or isinstance(current, bool):
        setattr(obj, last, value)
        return
    kind = type(current)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e3
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))) \
            or kind is int and not isinstance(value, int):
        raise ValueError(f"--set {key}: {value!r} is not a {kind.__name__}")
    setattr(obj, last, kind(value))
