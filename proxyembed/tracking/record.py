"""The run dir's record of its tracker runs, ``tracking.json``: what lets ``--resume``, ``export --log`` and
``check --log`` add to the same tracker runs without repeating an id on the command line.

Sealed JSON (:func:`proxyembed.runtime.files.write_sealed_json`): a damaged record is refused, never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxyembed.runtime.errors import IntegrityError
from proxyembed.runtime.files import read_json_object, write_sealed_json

RECORD_NAME = "tracking.json"


def read_record(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Tracker name -> what reopens its run; empty when the run was trained without ``--log``."""
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return {}
    hint = "delete it to start new tracker runs"
    payload = read_json_object(path, missing=f"{path} is missing", hint=hint, broken_hint=hint, fields={"trackers": dict}, sealed=True)
    trackers = payload["trackers"]
    if not all(isinstance(v, dict) for v in trackers.values()):
        raise IntegrityError(f"{path}: 'trackers' is not an object of objects", hint=hint)
    return trackers


def write_record(run_dir: Path, trackers: dict[str, dict[str, Any]]) -> None:
    """Record ``trackers`` (name -> run id and where the run lives) in ``run_dir`` atomically."""
    write_sealed_json(Path(run_dir) / RECORD_NAME, {"trackers": trackers})
