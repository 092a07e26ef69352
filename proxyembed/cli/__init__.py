"""The ``proxyembed`` command line: train, eval, export, index, search, check.

Each stage registers its commands from its own module; heavy imports (torch, onnx) happen inside the
commands, so ``proxyembed search`` and ``proxyembed --help`` start without torch.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="proxyembed",
    help="Proxy-based image embeddings from training to the edge: train -> export -> index/search, with check as a CI gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _register() -> None:
    from . import check, export, runtime, train

    for module in (train, export, runtime, check):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
