"""The Python API's training verb: :func:`train` (``proxyembed.train(...)``); exporting is :mod:`proxyembed.export.api`.

``train`` takes the same typed settings as its CLI command, not a second copy: it resolves
:class:`~proxyembed.training.config.TrainConfig` (defaults < recipe < your keywords) exactly as
``proxyembed train`` does. It checks its extras first, so a runtime-only install gets a
:class:`~proxyembed.runtime.errors.MissingDependency` naming what to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyembed.extras import require_extras
from proxyembed.runtime.errors import BadInput
from proxyembed.training.config import TrainConfig, resolve_config

if TYPE_CHECKING:
    from proxyembed.run import Run

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
    from proxyembed.training.trainer import Reporter
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
