"""Atomic writes and strict JSON reads: the "fail loudly, lose nothing" file handling every stage shares.

A file is written beside its target and renamed over it, so a crash leaves the old file or the new one,
never half of either; a folder (bundle, gallery) is swapped in the same way. JSON read back from a
proxyembed artifact is checked to be an object, and a broken file is an :class:`IntegrityError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import BadInput, IntegrityError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temp file beside ``path``, then rename it to ``path``; clean up on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any], indent: int = 2) -> None:
    """Write ``payload`` as JSON atomically; an unserialisable payload fails before any file is touched."""
    atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


def swap_dir_into_place(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``; an old ``target`` is moved aside first and deleted only afterwards."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def read_json_object(
    path: Path, *, missing: str, hint: str, broken_hint: str, fields: dict[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """A JSON object from ``path`` holding ``fields`` with their types.

    :class:`BadInput` (``missing``, ``hint``) if the file is absent; :class:`IntegrityError`
    (``broken_hint``) if it is not valid JSON, not an object, or lacks a field.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInput(missing, hint=hint) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON: {exc}", hint=broken_hint) from exc
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a JSON object with the fields {', '.join(fields)}", hint=broken_hint)
    for key, typ in fields.items():
        if not isinstance(data.get(key), typ) or (typ is int and isinstance(data.get(key), bool)):
            raise IntegrityError(f"{path}: field '{key}' is missing or has the wrong type", hint=broken_hint)
    return data
