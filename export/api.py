"""``proxyembed.export(run, out, ...)``: the Python API's export verb, the twin of ``proxyembed export``.

It passes its keywords to :class:`~proxyembed.export.options.ExportOptions`, the settings the CLI
command fills, and checks its extras first, so a runtime-only install gets a
:class:`~proxyembed.runtime.errors.MissingDependency` naming what to install. It lives in the export
stage, so nothing below the stage imports it to reach it (``Run.export`` calls it; it never imports
:mod:`proxyembed.run` back).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyembed.extras import require_extras
from proxyembed.runtime.bundle import Bundle
from proxyembed.runtime.errors import BadInput

if TYPE_CHECKING:
    from proxyembed.run import Run


def export(run: str | os.PathLike[str] | Run, out: str | Path, *, progress: bool = False, **options: Any) -> Bundle:
    """Export a run (dir, checkpoint file or :class:`~proxyembed.run.Run`) to a validated bundle at ``out``; return the loaded bundle.

    ``options`` are :class:`~proxyembed.export.options.ExportOptions` fields: ``fp16``, ``int8``,
    ``tensorrt``, ``data``, ``calibration_size``, ``max_drop={"int8": 1.0}``, ``force``, ...
    An artifact over its allowed Recall@1 drop is refused: :class:`~proxyembed.runtime.errors.CheckFailed`
    is raised naming it (the bundle is written without it), as ``proxyembed export`` exits 1.
    """
    require_extras("proxyembed.export", "train", "export")
    from rich.console import Console

    from proxyembed.runtime.progress import Reporter, RichReporter

    from .options import ExportOptions, max_drop_limits
    from .pipeline import export_run

    known = {f.name for f in fields(ExportOptions)} - {"run", "out"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInput(f"export: unknown option(s) {unknown}", hint=f"valid options: {', '.join(sorted(known))}")
    if "max_drop" in options:
        options["max_drop"] = max_drop_limits(options["max_drop"])
    source = Path(getattr(run, "path", run))  # a Run, without importing proxyembed.run: export sits above it
    with RichReporter(Console(stderr=True)) if progress else contextlib.nullcontext(Reporter()) as reporter:
        result = export_run(ExportOptions(run=source, out=Path(out), **options), reporter)
    result.raise_if_refused()
    assert result.bundle is not None  # no refusal means fp32 passed, so the bundle was written
    return Bundle.load(result.bundle)
