"""What a typed record's JSON must hold: each field's value checked against the dataclass's annotation, so a
record read from a file (a bundle, a fit) is refused field by field, by name, before anything is built from it.

The annotations are the one declaration: `int` (not a bool), `float` (finite; an int reads as one), `str`,
`bool`, `tuple[X, ...]` (a JSON list), `X | None`, a nested record (a JSON object, checked by its own reader).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing


def matches(value, hint) -> bool:
    """Whether a JSON value fits the annotation `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args)))
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    raise TypeError(f"records.matches: no rule for the annotation {hint!r}")


def describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(a) for a in args)
    if hint is type(None):
        return "null"
    if hint is tuple or origin is tuple:
        return f"a list of {describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "a list"
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[hint]


def field_problems(cls, data: dict) -> list[str]:
    """Each field of `cls` that `data` lacks, holds with the wrong type, and each key `cls` has no field for."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = [f"{name} missing" for name in names if name not in data]
    out += [f"{name}={short(data[name])} (expected {describe(hints[name])})" for name in names
            if name in data and not matches(data[name], hints[name])]
    out += [f"{key} (no such field)" for key in data if key not in names]
    return out


def short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def as_json(record) -> dict:
    """A record as JSON holds it (tuples as lists): what is saved, and what a comparison with a saved one sees."""
    return json.loads(json.dumps(dataclasses.asdict(record)))


def record_problems(cls, data, lists: dict | None = None) -> list[str]:
    """`field_problems` of a JSON object, then of each item of its lists of nested records (`lists`: field ->
    the items' record type), each named by its place (`per_fold[1].score=...`)."""
    problems = field_problems(cls, data) if isinstance(data, dict) else [f"a JSON {type(data).__name__}"]
    if not problems:
        problems = [f"{name}[{i}].{p}" for name, item in (lists or {}).items() for i, r in enumerate(data[name])
                    for p in (field_problems(item, r) if isinstance(r, dict) else ["not an object"])]
    return problems
