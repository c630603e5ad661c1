"""Typed configuration from YAML: the validate-then-run pipeline every package uses.

A config is a (possibly nested) dataclass with defaults. :func:`load_config` reads a
YAML file with ``yaml.safe_load``, applies ``key=value`` overrides (dotted keys,
values parsed as YAML scalars), and builds the dataclass. Unknown keys, wrong types
and values outside a ``Literal`` are a :class:`~engine.errors.ConfigError` that names
the dotted key and, for unknown keys, the allowed ones. Precedence: overrides beat
the file, the file beats the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from engine.errors import ConfigError

T = TypeVar("T")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}``."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of ``extra`` win."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce) ``value`` against the annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = ""
            if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
                # YAML reads off/on/yes/no/true/false unquoted as booleans
                hint = " (YAML reads off, on, yes and no as true or false: write one of the names)"
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}{hint}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} keys, got {value!r}")
        return build_dataclass(tp, value, prefix=key + ".")
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            return tuple(items)
        return items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 1e-4 (no dot) as a string: accept it as the number it is.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    if tp is Path:
        return Path(str(value))
    return value


def build_dataclass(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from ``data``; unknown keys are an error naming the allowed ones."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        allowed = ", ".join(sorted(fields))
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"unknown config key {names} (allowed here: {allowed})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None
    return obj


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> T:
    """Defaults < YAML file < overrides; validated into ``cls``."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    data = deep_merge(data, extra)
    return build_dataclass(cls, data)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML-serialisable data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any, path: str | Path) -> None:
    """Write the resolved config next to an artifact."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")
