"""What every experiment tracker implements, and the names ``--log`` accepts.

A tracker mirrors what the run dir already holds (``metrics.jsonl`` stays the source of truth): the resolved
config as parameters, per-step loss and learning rates, per-epoch metrics and stage times, the curves, the
best checkpoint, and the validation tables of ``export`` and ``check``. Each back-end is one small module
(:mod:`.tensorboard`, :mod:`.mlflow`, :mod:`.wandb`) whose package is imported only when it is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

TrackerName = Literal["tensorboard", "mlflow", "wandb"]
"""The back-ends of ``--log`` (repeatable)."""


class Tracker(Protocol):
    """One back-end's run. Methods may raise anything: :class:`~.fanout.Tracking` turns a failure into a warning."""

    name: str

    def start(self, run_dir: Path, params: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
        """Open (or, with ``previous``, reopen) this back-end's run for ``run_dir`` and log ``params`` once;
        return what reopens it later (its run id), which the run dir records."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars at ``step`` (a training step for per-step values, the epoch for per-epoch ones)."""

    def flush(self) -> None:
        """Send what is buffered (called at each epoch's end)."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """A PNG of the run dir (the training curves) as it stands at ``step``."""

    def log_artifact(self, path: Path, folder: str) -> None:
        """A file kept with the run (the best checkpoint); back-ends without artifact storage skip it."""

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        """A table of plain values (export validation, check results)."""

    def log_tags(self, tags: Mapping[str, str]) -> None:
        """Short labels on the run, such as a stage's verdict."""

    def close(self, status: Literal["finished", "failed"]) -> None:
        """Flush and end the run."""
