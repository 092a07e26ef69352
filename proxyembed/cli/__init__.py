"""The ``proxyembed`` command line: train, eval, export, embed, index, search, serve, check.

Each stage registers its commands from its own module; heavy imports (torch, onnx) happen inside the
commands, so ``proxyembed search`` and ``proxyembed --help`` start without torch. :func:`main` owns the
exit-code contract (README): 0 success, 1 a failed check, 2 bad input, 3 a crash, 130 interrupted.
"""

from __future__ import annotations

from typing import Annotated

import typer

from proxyembed._version import __version__

from ._common import run_guarded

app = typer.Typer(
    name="proxyembed",
    help="Proxy-based image embeddings from training to the edge: train -> export -> index/search, with check as a CI gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"proxyembed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Proxy-based image embeddings from training to the edge."""


def _register() -> None:
    from . import check, embed, export, gallery, serve, train

    for module in (train, export, embed, gallery, serve, check):
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and exit with its code (a crash exits 3, see :func:`run_guarded`)."""
    run_guarded(lambda: app(args=argv, prog_name="proxyembed"), argv)
