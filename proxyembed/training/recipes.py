"""Shipped recipes: the published settings for the standard benchmarks, as JSON package data.

They live in ``models/recipes/`` in the repository and install as the ``proxyembed.recipes`` package,
so ``--recipe cub200`` works from a wheel as well as from a checkout: they are read through
``importlib.resources``, never through a path relative to the source tree.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from proxyembed.runtime.errors import BadInput

_PACKAGE = "proxyembed.recipes"


def _shipped() -> dict[str, Any]:
    """Shipped recipe name -> its resource (a Traversable)."""
    return {entry.name[: -len(".json")]: entry for entry in resources.files(_PACKAGE).iterdir() if entry.name.endswith(".json")}


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``cub200``, ``sop``, ...)."""
    return sorted(_shipped())


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's settings, by shipped name or JSON path."""
    shipped = _shipped()
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped:
        source, where = shipped[name_or_path], f"recipe '{name_or_path}'"
    elif path.suffix and path.is_file():
        source, where = path, f"'{path}'"
    else:
        raise BadInput(f"--recipe: '{name_or_path}' not found", hint=f"shipped recipes: {', '.join(sorted(shipped)) or 'none'}; or give a JSON file")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"--recipe: cannot parse {where}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"--recipe: {where} must hold a JSON object of settings")
    data.pop("_comment", None)
    return data
