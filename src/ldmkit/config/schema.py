"""Typed configuration: a component's frozen dataclass is its config (DESIGN habit 1).

Fields are declared with :func:`option`, which records a one-line help text and the allowed values
(``choices``, ``min``, ``max``). :func:`from_dict` builds a config from plain data (YAML, JSON) and
rejects, in one line naming the key, the value and what is allowed:

- an unknown key (suggesting the closest valid one),
- a value of the wrong type,
- a NaN or infinite number (unless the field is declared with ``allow_nonfinite=True``),
- a value outside its range or choices.

:func:`to_dict` turns a config back into plain data, so ``from_dict(C, to_dict(c)) == c``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from ldmkit.config.checks import is_finite_number
from ldmkit.errors import ConfigError

C = TypeVar("C")
_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    choices: typing.Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    allow_nonfinite: bool = False,
    default_factory: Any = _MISSING,
) -> Any:
    """A config field with documentation and allowed values.

    Mutable defaults (lists, nested configs) go through ``default_factory``; tuples may be plain defaults.
    Numbers must be finite unless ``allow_nonfinite`` (NaN and inf poison training and sampling silently).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
                "allow_nonfinite": allow_nonfinite}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        if origin is tuple:
            return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigError(f"config key '{key}': got {shown}, expected {allowed}")


def _coerce(value: Any, tp: Any, key: str, finite: bool = True) -> Any:
    """Check ``value`` against the type hint ``tp`` and convert lists to tuples where declared.

    With ``finite``, a number must not be NaN or infinite.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        if value not in get_args(tp):
            raise _fail(key, value, _describe(tp))
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, finite)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(key, value, _describe(tp))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, _describe(tp))
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _fail(key, value, _describe(tp))
            items = [_coerce(v, a, f"{key}[{i}]", finite) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]", finite) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, value, "a mapping")
        args = get_args(tp)
        value_tp = args[1] if args else Any
        return {str(k): _coerce(v, value_tp, f"{key}.{k}", finite) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, "an integer")
        return value
    if tp is float:
        return _coerce_float(value, key, finite)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _fail(key, value, _describe(tp))
    return value


def _coerce_float(value: Any, key: str, finite: bool) -> float:
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads "3e-4" as a string; accept any string Python reads as a number.
        try:
            number = float(value)
        except ValueError:
            raise _fail(key, value, "a number") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, "a number")
    else:
        number = value
    if finite and not is_finite_number(number):
        raise _fail(key, value, "a finite number (not NaN or infinite)")
    try:
        return float(number)
    except OverflowError:  # an integer beyond the float range
        raise _fail(key, value, "a number within the float range") from None


def _check_limits(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value is not None:
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if v not in choices:
                raise _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))
    lo, hi = meta.get("min"), meta.get("max")
    if value is None or (lo is None and hi is None):
        return
    values = value if isinstance(value, (list, tuple)) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise _fail(key, value, f"a value in [{lo_s}, {hi_s}]")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[C], data: Any, prefix: str = "") -> C:
    """Build and validate a config dataclass from plain data (a mapping)."""
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{where}': got {data!r}, expected a mapping ({cls.__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise ConfigError(f"config key '{full}' is required ({f.metadata.get('help', '')})")
            continue
        value = _coerce(data[name], hints[name], full, finite=not f.metadata.get("allow_nonfinite", False))
        _check_limits(value, f.metadata, full)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith("config key"):
            raise ConfigError(f"config '{prefix}': {exc}") from None
        raise


def to_dict(config: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a config, ready for YAML or JSON."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested configs flattened with dotted keys."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, key + "."))
            continue
        if f.default is not _MISSING:
            default = repr(f.default)
        elif f.default_factory is not _MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((key, default, f.metadata.get("help", "")))
    return rows
