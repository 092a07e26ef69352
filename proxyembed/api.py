"""The Python API's verbs that need torch: :func:`train` and :func:`export` (``proxyembed.train(...)``).

Each takes the same typed settings as its CLI command, not a second copy: ``train`` resolves
:class:`~proxyembed.training.config.TrainConfig` (defaults < recipe < your keywords) exactly as
``proxyembed train`` does, and ``export`` passes its keywords to
:class:`~proxyembed.export.pipeline.ExportOptions`. Both check their extras first, so a runtime-only
install gets a :class:`~proxyembed.runtime.errors.MissingDependency` naming what to install.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyembed.extras import require_extras
from proxyembed.runtime.errors import BadInput
from proxyembed.training.config import TrainConfig, resolve_config

if TYPE_CHECKING:
    from proxyembed.run import Run
    from proxyembed.runtime.bundle import Bundle

DEFAULT_RUN_DIR = Path("runs/default")


def train(
    config: TrainConfig | str | None = None,
    *,
    out: str | Path = DEFAULT_RUN_DIR,
    resume: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Run:
    """Train a model and return its :class:`~proxyembed.run.Run`.

    ``config`` is a :class:`TrainConfig`, a recipe name or JSON path (``"cub200"``), or None for the
    defaults; ``overrides`` are TrainConfig fields (``epochs=2, loss="proxy_nca"``) and win over both.
    ``progress=True`` shows the CLI's progress bar and per-epoch lines.
    """
    require_extras("proxyembed.train", "train")
    from proxyembed.run import Run
    from proxyembed.training.reporting import Reporter
    from proxyembed.training.trainer import train as run_training

    if isinstance(config, TrainConfig):
        cfg = resolve_config({**config.to_dict(), **overrides})
    elif config is None or isinstance(config, str):
        cfg = resolve_config(overrides, config)
    else:
        raise BadInput(f"config must be a TrainConfig, a recipe name or a JSON path, got {type(config).__name__}")
    if progress:
        from rich.console import Console

        from proxyembed.training.reporting import RichReporter

        with RichReporter(Console(stderr=True)) as reporter:
            result = run_training(cfg, Path(out), resume=resume, reporter=reporter)
    else:
        result = run_training(cfg, Path(out), resume=resume, reporter=Reporter())
    return Run(result.run_dir)


def export(run: str | Path | Run, out: str | Path, *, progress: bool = False, **options: Any) -> Bundle:
    """Export a run (dir, checkpoint file or :class:`Run`) to a validated bundle at ``out``; return the loaded bundle.

    ``options`` are :class:`~proxyembed.export.pipeline.ExportOptions` fields: ``fp16``, ``int8``,
    ``tensorrt``, ``data``, ``calibration_size``, ``max_drop={"int8": 1.0}``, ``force``, ...
    An artifact over its allowed Recall@1 drop is refused: :class:`~proxyembed.runtime.errors.CheckFailed`
    is raised naming it (the bundle is written without it), as ``proxyembed export`` exits 1.
    """
    require_extras("proxyembed.export", "train", "export")
    from proxyembed.export.pipeline import ExportOptions, run_export
    from proxyembed.export.validate import parse_max_drop
    from proxyembed.run import Run
    from proxyembed.runtime.bundle import Bundle

    known = {f.name for f in fields(ExportOptions)} - {"run", "out"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInput(f"export: unknown option(s) {unknown}", hint=f"valid options: {', '.join(sorted(known))}")
    if "max_drop" in options:
        options["max_drop"] = parse_max_drop([f"{k}={v}" for k, v in options["max_drop"].items()])
    source = run.path if isinstance(run, Run) else Path(run)
    reporter = _ExportProgress() if progress else None
    result = run_export(ExportOptions(run=source, out=Path(out), **options), reporter)
    result.raise_if_refused()
    assert result.bundle is not None  # no refusal means fp32 passed, so the bundle was written
    return Bundle.load(result.bundle)


class _ExportProgress:
    """``export(progress=True)``: the pipeline's steps and notes as lines on stderr, validation as a bar."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    def step(self, text: str) -> None:
        self.console.print(f"> {text}", markup=False, highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"  note: {text}", markup=False, highlight=False)

    def embedding(self, total: int) -> Any:
        from proxyembed.runtime.progress import progress_callback

        return progress_callback(True, total, "  validating")
