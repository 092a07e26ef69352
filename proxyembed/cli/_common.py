"""What every CLI command shares: the exit-code contract, one-line errors, JSON output, the consoles.

Commands stay thin: they parse options and call plain functions. A :class:`ProxyEmbedError` raised
anywhere below becomes ``error: <message> — <hint>`` on stderr with its exit code (2 bad input, 1 failed
check). Anything else is a bug: :func:`run_guarded` prints one line saying where the full traceback was
written and exits 3, so CI can tell a crash from a regression (exit 1).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from proxyembed.runtime.errors import ProxyEmbedError

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAILED_CHECK, EXIT_BAD_INPUT, EXIT_CRASH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

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
    """Decorate a command so user-facing errors exit cleanly with their code, and Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ProxyEmbedError as exc:
            fail(exc)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def fail(exc: ProxyEmbedError) -> None:
    """Print a user error as one line and exit with its code."""
    msg = exc.message + (f" — {exc.hint}" if exc.hint else "")
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def print_json(payload: Any) -> None:
    """``--json``: the command's result as one JSON document on stdout (progress and notes go to stderr)."""
    typer.echo(json.dumps(payload, indent=2, default=str))


def run_guarded(run: Callable[[], Any], argv: list[str] | None = None) -> None:
    """Run the CLI; an unexpected exception exits 3 with one line and a traceback file, never exit 1.

    A ``ModuleNotFoundError`` for a module of an optional extra is bad input (exit 2) naming the extra:
    commands check their extras up front, this catches an import the check did not foresee.
    """
    from proxyembed.extras import EXTRA_MODULES

    try:
        run()
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        root = (getattr(exc, "name", None) or "").partition(".")[0]
        extra = next((e for e, mods in EXTRA_MODULES.items() if root in mods), None)
        if isinstance(exc, ModuleNotFoundError) and extra:
            fail_line = f"this command needs {root} — pip install \"proxyembed[{extra}]\""
            err_console.print(f"[bold red]error:[/] {escape(fail_line)}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_BAD_INPUT)
        path = write_crash_report(exc, sys.argv[1:] if argv is None else argv)
        first = (str(exc).splitlines() or [""])[0][:200]
        err_console.print(
            f"[bold red]crash:[/] {escape(type(exc).__name__)}: {escape(first)} — a bug in proxyembed; traceback written to {escape(str(path))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_CRASH)


def write_crash_report(exc: BaseException, argv: list[str]) -> Path:
    """Write the command line, versions and full traceback to a new file in the temp folder; return its path."""
    from proxyembed._version import __version__

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, name = tempfile.mkstemp(prefix=f"proxyembed-crash-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"proxyembed {__version__}, Python {platform.python_version()}, {platform.platform()}\n")
        fh.write(f"command: proxyembed {' '.join(argv)}\n\n")
        fh.write("".join(traceback.format_exception(exc)))
    return Path(name)


def given_options(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user set (command line or environment), as opposed to their defaults."""
    # by name: recent typer releases bundle their own copy of click, whose enum is not click.core's
    typed = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) in typed}
