"""``proxyembed serve GALLERY``: run a gallery as an HTTP search service with a page (FastAPI + uvicorn).

Torch-free like ``search``. The service itself is :mod:`proxyembed.serve`; this command checks the
options, loads nothing heavy before uvicorn starts, and prints where the server listens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from proxyembed.runtime.encoder import PrecisionChoice

from ._common import err_console, user_errors


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("serve", rich_help_panel="Runtime")(serve_command)


@user_errors
def serve_command(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder written by `proxyembed index`.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0 picks a free one).")] = 8000,
    worker_threads: Annotated[
        int,
        typer.Option("--worker-threads", "--workers-threads", min=1, help="Requests handled at once (threads that decode, encode, search)."),
    ] = 8,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse POST /items and DELETE /items/{id} (403).")] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body accepted, in MiB (larger: 413).")] = 20.0,
    bundle: Annotated[Path | None, typer.Option(help="Bundle to use instead of the one the gallery records.")] = None,
    precision: Annotated[PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")] = "auto",
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads per inference call.")] = 1,
    encoders: Annotated[int | None, typer.Option(min=1, help="Inference calls run in parallel (default: one per core).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per inference call when concurrent requests are batched.")] = 32,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(help="A folder whose images GET /items/{id}/image may send (repeatable; the gallery's own image folders always may)."),
    ] = None,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve GALLERY over HTTP: search by image or vector, browse items, add and delete them, a page at /."""
    from proxyembed.extras import require_extras

    require_extras("proxyembed serve", "serve")
    import uvicorn

    from proxyembed.runtime.retriever import read_gallery_info
    from proxyembed.serve import ServeOptions, create_app

    read_gallery_info(gallery)  # a missing or damaged gallery is refused here, before uvicorn starts
    options = ServeOptions(
        gallery=gallery.resolve(),
        bundle=bundle,
        precision=precision,
        threads=threads,
        encoders=encoders,
        read_only=read_only,
        max_upload_bytes=int(max_upload_mb * 2**20),
        image_roots=tuple(image_root or ()),
        worker_threads=worker_threads,
        max_batch=max_batch,
    )
    app = create_app(options)
    err_console.print(f"serving {gallery} on http://{host}:{port} ({'read-only' if read_only else 'read-write'}); Ctrl-C stops", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")
