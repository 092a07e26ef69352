"""``KEY=VALUE`` options: the one parser behind ``--max-recall-drop``, ``--max-drop`` / ``--min``, ``--loss-param``
and ``--data synthetic:KEY=VALUE,...``.

Torch-free and free of the rest of proxyembed, so ``check``, the CLI and the export stage all import it.
A value may hold several comma-separated items (``fp16=0.5,int8=1.0``) and the option may be repeated;
a later item wins. Every mistake is one :class:`BadInput` line naming the option, the item and an example.
The Python API passes mappings straight to the code that checks them; only command lines come through here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

from .errors import BadInput

T = TypeVar("T")


def number(raw: str) -> float:
    """A float; NaN is refused (a limit of NaN compares false with everything, so it would never gate)."""
    value = float(raw)
    if math.isnan(value):
        raise ValueError(raw)
    return value


def json_or_text(raw: str) -> Any:
    """The value as JSON (``32``, ``0.1``, ``true``, ``[1, 2]``), else the text as given."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_key_values(
    values: Iterable[str],
    option: str,
    *,
    example: str,
    convert: Callable[[str], T] = number,  # type: ignore[assignment]
    keys: Collection[str] | None = None,
    commas: bool = True,
    form: str = "KEY=VALUE",
) -> dict[str, T]:
    """``["a=1,b=2", "c=3"]`` -> ``{"a": 1.0, "b": 2.0, "c": 3.0}``, keys stripped, values through ``convert``.

    ``keys`` limits the keys allowed; ``commas=False`` keeps each value whole (for values that hold commas,
    such as a JSON list). ``convert`` raises ``ValueError`` for a value it refuses. ``form`` names the
    expected shape in messages (``METRIC=NUMBER``).
    """
    out: dict[str, T] = {}
    items = (part for value in values for part in (value.split(",") if commas else [value]))
    for item in filter(None, (i.strip() for i in items)):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"{option} '{item}' is not {form}", hint=f"e.g. {option} {example}")
        if keys is not None and key not in keys:
            raise BadInput(f"{option} '{item}': unknown key '{key}'", hint=f"keys: {', '.join(keys)}; e.g. {option} {example}")
        try:
            out[key] = convert(raw.strip())
        except ValueError:
            raise BadInput(f"{option} '{item}' is not {form}: cannot read '{raw.strip()}'", hint=f"e.g. {option} {example}") from None
    return out
