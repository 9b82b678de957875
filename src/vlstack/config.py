"""Typed configuration: dataclasses, YAML recipes and `--set a.b=value` overrides.

Every config in vlstack is a dataclass with defaults and a docstring per field.
`from_dict` builds one from plain data (a YAML file, a JSON checkpoint config)
and rejects unknown keys and wrong types with a message that names the key and
lists the valid ones, so a typo in a recipe fails before any work starts.

A mapping may name a `preset` when the dataclass offers `from_preset(name)`: the
preset's values are the base and the mapping's other keys override them.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vlstack.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from `data`, checking every key and value type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    if "preset" in data and hasattr(cls, "from_preset"):
        base = to_dict(cls.from_preset(data.pop("preset")))
        data = _deep_merge(base, data)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(_join(path, k)) for k in unknown)}"
            f"{where}; valid keys: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(hints[name], value, _join(path, name)) for name, value in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a dataclass, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(cfg: T, overrides: list[str] | None) -> T:
    """Return a copy of `cfg` with `a.b=value` overrides applied and validated.

    Values are parsed as YAML (`3`, `1e-4`, `true`, `[1, 2]`), except for string
    fields, which take the text as written (`null` still clears an optional one).
    """
    if not overrides:
        return cfg
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        field_type = _field_type(type(cfg), key)
        value: Any = raw if _is_str_type(field_type) and raw != "null" else yaml.safe_load(raw)
        _set_nested(data, key.split("."), value)
    return from_dict(type(cfg), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides."""
    cfg = cls() if path is None else from_dict(cls, read_yaml(path), path="")
    return apply_overrides(cfg, overrides)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")


# --- internals ---------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _is_str_type(tp: Any) -> bool:
    if tp is str:
        return True
    args = [a for a in get_args(tp) if a is not type(None)]
    return _is_union(tp) and len(args) == 1 and args[0] is str


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _field_type(cls: type, dotted: str) -> Any:
    """The annotated type of `a.b.c` in dataclass `cls`; unknown keys list the valid ones."""
    tp: Any = cls
    walked = ""
    for key in dotted.split("."):
        if _is_union(tp):  # Optional[SomeConfig]
            tp = next((a for a in get_args(tp) if dataclasses.is_dataclass(a)), tp)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"'{walked}' is a value, not a section; cannot set '{dotted}'")
        hints = get_type_hints(tp)
        if key not in hints:
            valid = ", ".join(sorted(f.name for f in dataclasses.fields(tp)))
            raise ConfigError(f"unknown config key '{_join(walked, key)}'; valid keys: {valid}")
        tp = hints[key]
        walked = _join(walked, key)
    return tp


def _set_nested(data: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[keys[-1]] = value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against annotation `tp`; convert lists to tuples and ints to floats."""
    if tp is Any:
        return value
    if _is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"'{path}': {value!r} does not fit {_type_name(tp)}")
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"'{path}' must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{path}' must be a mapping, got {type(value).__name__}")
        _, value_type = get_args(tp) or (str, Any)
        return {str(k): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise ConfigError(f"'{path}' must be {tp.__name__}, got a boolean {value!r}")
        if not isinstance(value, tp):
            raise ConfigError(f"'{path}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"'{path}': unsupported config type {_type_name(tp)}")  # a bug in a config class


__all__ = [
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_config",
    "read_yaml",
    "save_yaml",
]
