"""One declarative check for the JSON proxyembed reads back: a field table per file, a one-line error per fault.

A schema maps field names to what they must hold: a type annotation (``int``, ``float``, ``str``,
``bool``, ``dict``, ``list``, ``Literal[...]``, ``X | None``, ``dict[str, Any]``, a tuple of types), a
nested schema (an object inside the object), or a :class:`Field` that adds "may be absent", the type of
each element of a list or value of an object, a rule on the value and a hint. :func:`validate` walks the
table and raises at the first fault, naming the file and the field's path (``embedding.dim``,
``artifacts[0].file``), so a malformed manifest, sidecar, config or baseline never becomes a KeyError
deep inside a command.

It is a few dozen lines of plain Python on purpose: the runtime runs on devices, where a JSON-schema
library would be one more dependency for the handful of shapes proxyembed writes itself. In JSON a
bool is never a number and an integer is a valid float.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from .errors import BadInput, ProxyEmbedError

_SHOWN_CHARS = 60  # a hostile or huge value is cut in the message, which stays one line


@dataclass(frozen=True)
class Field:
    """One field of a schema: its ``type`` (an annotation or a nested schema) and what else it must satisfy.

    ``required=False`` lets the field be absent (a present field is still checked). ``items`` is the type
    (or schema) of each element of a list, or of each value of an object. ``rule`` returns why a value of
    the right type is still wrong (e.g. ``"must be positive, got 0"``), or None. ``hint`` replaces the
    schema's hint in this field's errors.
    """

    type: Any = Any
    required: bool = True
    items: Any = None
    rule: Callable[[Any], str | None] | None = None
    hint: str | None = None


Schema = Mapping[str, Any]
"""Field name -> annotation, nested schema (a mapping) or :class:`Field`."""


def fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value has the type ``annotation`` names (an int is a valid float; a bool is never a number)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in get_args(annotation))
    if origin in (Union, UnionType):
        return any(fits(value, arg) for arg in get_args(annotation))
    if isinstance(annotation, tuple):
        return any(fits(value, arg) for arg in annotation)
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def describe(annotation: Any) -> str:
    """``annotation`` in the words of an error message: "an integer", "one of "f32", "f16"", "a string or null"."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, UnionType):
        return " or ".join(describe(a) for a in get_args(annotation))
    if isinstance(annotation, tuple):
        return " or ".join(describe(a) for a in annotation)
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", None: "null", type(None): "null", dict: "an object",
             list: "a list", tuple: "a list"}  # fmt: skip
    return names.get(origin or annotation, getattr(annotation, "__name__", str(annotation)))


def validate(data: Any, schema: Schema, *, where: str, error: type[ProxyEmbedError] = BadInput, hint: str | None = None) -> None:
    """Raise ``error`` (one line: ``where``, the field's path, what is wrong) unless ``data`` is an object matching ``schema``.

    Fields not in the schema are allowed (a newer writer may add some). ``hint`` goes with every error
    unless the field brings its own.
    """
    _check_object(data, schema, "", where, error, hint)


def _check_object(data: Any, schema: Schema, path: str, where: str, error: type[ProxyEmbedError], hint: str | None) -> None:
    if not isinstance(data, dict):
        raise error(f"{where}: {_place(path)}{_shown(data)} is not an object", hint=hint)
    for name, spec in schema.items():
        field = spec if isinstance(spec, Field) else Field(spec)
        at = f"{path}.{name}" if path else name
        if name not in data:
            if field.required:
                raise error(f"{where}: missing field '{at}'", hint=field.hint or hint)
            continue
        _check_value(data[name], field, at, where, error, field.hint or hint)


def _check_value(value: Any, field: Field, path: str, where: str, error: type[ProxyEmbedError], hint: str | None) -> None:
    if isinstance(field.type, Mapping):
        _check_object(value, field.type, path, where, error, hint)
    elif not fits(value, field.type):
        raise error(f"{where}: {_place(path)}{_shown(value)} is not {describe(field.type)}", hint=hint)
    if field.items is not None and isinstance(value, (list, dict)):
        inner = field.items if isinstance(field.items, Field) else Field(field.items)
        pairs = enumerate(value) if isinstance(value, list) else value.items()
        for key, item in pairs:
            _check_value(item, inner, f"{path}[{key}]" if isinstance(value, list) else f"{path}.{key}", where, error, inner.hint or hint)
    if field.rule is not None:
        why = field.rule(value)
        if why:
            raise error(f"{where}: {path} {why}", hint=hint)


def _place(path: str) -> str:
    return f'"{path}": ' if path else ""


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, default=repr)
    except ValueError:  # a circular structure cannot come from JSON, but say something rather than crash
        text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
