"""Training progress: the :class:`Reporter` hooks the trainer calls, and :class:`RichReporter`, which shows them.

:class:`RichReporter` draws a rich progress bar per epoch phase and one summary line per epoch for
``proxyembed train`` and ``proxyembed.train(..., progress=True)``; the trainer itself only calls the hooks.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console


class Reporter:
    """Hooks the CLI uses to show progress; the defaults print nothing (library use, tests)."""

    def log(self, message: str) -> None:
        """A line of information."""

    def epoch_start(self, epoch: int, steps: int, phase: str) -> None:
        """A phase (``train`` or ``eval``) of an epoch begins with ``steps`` units of work."""

    def advance(self, n: int, **fields: float) -> None:
        """``n`` more units done; ``fields`` such as loss and images/s for display."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch's metrics.jsonl record."""


class RichReporter(Reporter):
    """Shows training with a rich progress bar (loss, images/s) and one summary line per epoch on ``console``."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message)

    def epoch_start(self, epoch: int, steps: int, phase: str) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"epoch {epoch} {phase}" if epoch else ("untrained eval" if phase == "eval" else phase)
        self.task = self.progress.add_task(label, total=steps, stats="")

    def advance(self, n: int, **fields: float) -> None:
        stats = "  ".join(f"{k} {v:.3f}" if k == "loss" else f"{v:.0f} img/s" for k, v in fields.items())
        self.progress.update(self.task, advance=n, stats=stats)

    def epoch_end(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record['epoch']:>3}"]
        if record.get("loss") is not None:
            parts.append(f"loss {record['loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("recall@", "map@r", "nmi"))]
        parts.append(f"{record['time_s']:.1f}s")
        self.progress.console.print("  ".join(parts), highlight=False)
