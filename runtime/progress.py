"""``progress=`` for long library calls: ``False`` (silent), ``True`` (a bar on stderr) or your own callback.

A callback receives the number of images just finished (``callback(n)`` after each batch), the same
contract as ``Retriever.add`` and export validation use. The bar is rich's (a base dependency of
proxyembed), imported only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
