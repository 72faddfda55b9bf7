"""Typed sections from plain dicts: each value coerced to its field's type, every mistake a
problem (``path: message``) with a hint, and a bad value left at its default so that the
sections' own checks still run and the user sees everything in one report."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union

MOVED = {"train.log_every": "monitor.scalars_every"}
"""Fields that moved to another section (older configs and run directories name them)."""


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        null = " (or null)" if type(None) in typing.get_args(tp) else ""
        return " or ".join(type_name(a) for a in args) + null
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """``value`` as type ``tp`` (None, with a problem appended, when it is not one)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], where, problems)
        for a in inner:  # several types (int | list[int] | 'auto'): the first that fits
            found: list[str] = []
            got = coerce(value, a, where, found)
            if not found:
                return got
        problems.append(f"{where}: expected {type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and "off" in choices:
            value = "off" if value is False else value  # YAML 1.1 reads a bare `off` as false
        if value in choices and not isinstance(value, bool):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{where}: {value!r} is not {type_name(tp)}{hint}")
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is str:
            value = [str(value)]
        if not isinstance(value, list):
            problems.append(f"{where}: expected {type_name(tp)}, got {value!r}")
            return None
        items = [coerce(v, item_tp, f"{where}.{i}", problems) for i, v in enumerate(value)]
        return [v for v in items if v is not None]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if math.isfinite(number):
                return number
            problems.append(f"{where}: must be a finite number, got {value!r}")
            return None
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)
    problems.append(f"{where}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")
    return None


def build(cls: Any, raw: Any, where: str, problems: list[str]) -> Any:
    """The dataclass ``cls`` from the mapping ``raw`` found at ``where`` (None when a required
    field is missing or ``raw`` is not a mapping)."""
    prefix = f"{where}." if where else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a mapping of fields, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key, value in raw.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(names)
            if f"{prefix}{key}" in MOVED:
                hint = f"it moved to {MOVED[prefix + key]}"
            problems.append(f"{prefix}{key}: unknown key ({hint})")
            continue
        before = len(problems)
        coerced = coerce(value, hints[key], f"{prefix}{key}", problems)
        # a bad value keeps the default (or, for a required list, its good items) so that the
        # cross-field checks still run and report everything in one go
        if len(problems) == before or (key in required and coerced is not None):
            kwargs[key] = coerced
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    for name in missing:
        problems.append(f"{prefix}{name}: required")
    if missing:
        return None
    return cls(**kwargs)

