"""``progress=`` for long library calls: ``False`` (silent), ``True`` (a bar on stderr) or your own callback.

A callback receives the number of images just finished (``callback(n)`` after each batch), the same
contract as ``Retriever.add`` and export validation use. The bar is rich's (a base dependency of
proxyembed), imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

ProgressArg = bool | Callable[[int], None]


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
