"""What every CLI command shares: turning user errors into one line and an exit code, and the consoles.

Commands stay thin: they parse options and call plain functions. A :class:`ProxyEmbedError` raised
anywhere below becomes ``error: <message> (<hint>)`` on stderr with its exit code (2 bad input, 1 failed
check); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from proxyembed.runtime.errors import ProxyEmbedError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Send what libraries write to stdout to stderr for the block, both Python prints and file descriptor 1.

    A ``--json`` command promises parseable stdout, but ONNX Runtime prints its provider fall-back banner
    ("EP Error ... Falling back") and native libraries may write to descriptor 1 directly.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def user_errors(fn: F) -> F:
    """Decorate a command so user-facing errors exit cleanly instead of with a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProxyEmbedError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


def fail(exc: ProxyEmbedError) -> None:
    """Print a user error as one line and exit with its code."""
    msg = exc.message + (f" — {exc.hint}" if exc.hint else "")
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)
