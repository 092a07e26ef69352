"""``proxyembed serve GALLERY``: run a gallery as an HTTP search service with a page (FastAPI + uvicorn).

Torch-free like ``search``. The service itself is :mod:`proxyembed.serve`; this command checks the
options, loads nothing heavy before uvicorn starts, and prints where the server listens.

The token comes from a file or the environment, never the command line (``ps`` shows every process's
arguments). A server that listens beyond loopback with writes open and no token is refused: anyone who
reached the port could delete the gallery.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from proxyembed.runtime import BadInput
from proxyembed.runtime.encoder import PrecisionChoice
from proxyembed.serve.options import DEFAULT_MAX_UPLOAD_MB, ServeOptions

from ._common import err_console, user_errors

TOKEN_ENV = "PROXYEMBED_TOKEN"
MIN_TOKEN_CHARS = 16


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
    ] = ServeOptions.worker_threads,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse POST /items and DELETE /items/{id} (403).")] = ServeOptions.read_only,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body accepted, in MiB (larger: 413).")] = DEFAULT_MAX_UPLOAD_MB,
    bundle: Annotated[Path | None, typer.Option(help="Bundle to use instead of the one the gallery records.")] = None,
    precision: Annotated[
        PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")
    ] = ServeOptions.precision,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads per inference call.")] = ServeOptions.threads,
    encoders: Annotated[int | None, typer.Option(min=1, help="Inference calls run in parallel (default: one per core).")] = ServeOptions.encoders,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most images per inference call when concurrent requests are batched.")
    ] = ServeOptions.max_batch,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(help="Send only the indexed image files inside this folder (repeatable; default: every file `index` recorded here)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help=f"File with the token writes need as 'Authorization: Bearer TOKEN' (reads too with --protect-reads); or set {TOKEN_ENV}."),
    ] = None,
    protect_reads: Annotated[
        bool, typer.Option("--protect-reads", help="Reads need the token too (all but /, /docs, /healthz, /readyz).")
    ] = ServeOptions.protect_reads,
    max_connections: Annotated[int, typer.Option(min=1, help="Connections served at once; more get 503 (slow clients cannot pile up).")] = 256,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve GALLERY over HTTP: search by image or vector, browse items, add and delete them, a page at /."""
    from proxyembed.extras import require_extras

    require_extras("proxyembed serve", "serve")
    import uvicorn

    from proxyembed.runtime.retriever import open_gallery_info
    from proxyembed.serve import create_app

    token = read_token(token_file)
    if protect_reads and token is None:
        raise BadInput("--protect-reads needs a token", hint=f"pass --token-file FILE or set {TOKEN_ENV}")
    if not read_only and token is None and not is_loopback(host):
        raise BadInput(
            f"--host {host} would let anyone who reaches the port change the gallery",
            hint=f"add --read-only, or give a token with --token-file FILE or {TOKEN_ENV}",
        )
    open_gallery_info(gallery)  # repairs an interrupted save exactly as loading does; a missing or damaged gallery is refused here
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
        token=token,
        protect_reads=protect_reads,
    )
    app = create_app(options)
    mode = "read-only" if read_only else "read-write" + (", writes need the token" if token else "")
    err_console.print(f"serving {gallery} on http://{host}:{port} ({mode}); Ctrl-C stops", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug", limit_concurrency=max_connections)


def read_token(token_file: Path | None) -> str | None:
    """The service token from ``--token-file`` or ``$PROXYEMBED_TOKEN`` (not both), or None; too short is refused."""
    from_env = os.environ.get(TOKEN_ENV, "").strip() or None
    if token_file is not None and from_env is not None:
        raise BadInput(f"both --token-file and {TOKEN_ENV} give a token", hint="use one of them")
    if token_file is None:
        token, where = from_env, TOKEN_ENV
    else:
        try:
            token, where = token_file.read_text(encoding="utf-8").strip(), str(token_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read --token-file {token_file} ({exc.__class__.__name__})", hint="pass a readable UTF-8 file") from exc
    if token is not None and (len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token)):
        raise BadInput(
            f"the token in {where} is shorter than {MIN_TOKEN_CHARS} characters or holds spaces",
            hint='make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``--host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to any interface
