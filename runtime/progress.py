"""Progress, one contract at two sizes: a per-batch callback, and the :class:`Reporter` protocol of long commands.

``progress=`` for long library calls is ``False`` (silent), ``True`` (a bar on stderr) or your own
callback. A callback receives the number of images just finished (``callback(n)`` after each batch), the
contract of ``Retriever.add``, export validation and ``check``.

Commands made of several phases (training, export) report through a :class:`Reporter`: lines of text
(:meth:`Reporter.log`), and phases with a count of work (:meth:`Reporter.phase`) whose
:meth:`Reporter.advance` is such a callback. The base class says nothing (library use, tests);
:class:`RichReporter` draws it. Training adds its epoch vocabulary on top
(``proxyembed.training.reporting.TrainingReporter``); export calls the protocol directly. The bar is
rich's (a base dependency of proxyembed), imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console

ProgressCallback = Callable[[int], None]
"""Called after each batch with the number of items just finished."""
ProgressArg = bool | ProgressCallback
LineKind = Literal["info", "step", "note", "warning"]
"""What a reported line is: information (rich markup allowed), a phase of work beginning, a fact worth
noticing (a skipped stage, a CPU caveat), or a warning. The last three are plain text."""


class Reporter:
    """The progress protocol of long commands; every method does nothing here (library use, tests)."""

    def log(self, message: str, *, kind: LineKind = "info") -> None:
        """A line of text (see :data:`LineKind`)."""

    def phase(self, label: str, total: int | None) -> None:
        """A phase of ``total`` units of work begins (None: unknown); it replaces the previous phase."""

    def advance(self, n: int, **fields: float) -> None:
        """``n`` more units of the current phase done; ``fields`` (a loss, images/s) for display. A :data:`ProgressCallback`."""


class RichReporter(Reporter):
    """:class:`Reporter` on a rich console: lines above one transient bar (with ``fields`` beside it). A context manager."""

    _PREFIX = {"step": "[bold cyan]>[/] ", "note": "  [yellow]note:[/] ", "warning": "[yellow]warning:[/] "}

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

    def log(self, message: str, *, kind: LineKind = "info") -> None:
        from rich.markup import escape

        text = message if kind == "info" else self._PREFIX[kind] + escape(message)
        self.progress.console.print(text, highlight=False)

    def phase(self, label: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(label, total=total, stats="")

    def advance(self, n: int, **fields: float) -> None:
        stats = "  ".join(f"{k} {v:.3f}" if k == "loss" else f"{v:.0f} img/s" for k, v in fields.items())
        self.progress.update(self.task, advance=n, stats=stats)


@contextlib.contextmanager
def progress_callback(progress: ProgressArg, total: int | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """Yield the per-batch callback for ``progress``: None, the caller's own, or one that drives a stderr bar."""
    if not progress:
        yield None
        return
    if callable(progress):
        yield progress
        return
    with progress_bar(label, total) as advance:
        yield advance


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, *, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """A transient bar on stderr (or ``console``), the one every long command shows; yields ``advance(n)``.

    With ``total`` None (unknown) it counts up with the elapsed time instead of a bar and a time left.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) if total is not None else (
        TextColumn(label), MofNCompleteColumn(), TimeElapsedColumn()
    )
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
