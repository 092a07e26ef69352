"""Test helper: import a script of ``benchmarks/`` without leaving that folder on ``sys.path``.

The scripts import their shared ``_common`` module through the folder they sit in (each puts it on
``sys.path`` itself); for a test that is a change to the whole session, so the path is put back once the
module is loaded.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/NAME.py``, imported (once per session, as any module) with ``sys.path`` restored after."""
    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
