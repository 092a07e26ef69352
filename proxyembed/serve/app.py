"""The HTTP face of :class:`GalleryService`: the FastAPI app, assembled from its routers, its guard and its error handlers.

The model and index load once, in the lifespan, before the server accepts a connection. Handlers are
plain ``def`` functions, so FastAPI runs them on its thread pool: decoding, encoding and searching
never block the event loop. Requests decode in parallel, their images are encoded in shared batches
(:mod:`proxyembed.serve.batching`), and hnswlib searches run in parallel under the index's read lock.
Every error a client can cause is a 4xx with ``{"error": "one line"}``; anything else is a
500 with the same shape, logged, and never takes the server down.

One router per concern (:mod:`proxyembed.serve.routes`): the page and API docs, searches, items, and
health with metrics. Before a request reaches a route, :class:`~.guard.Guard` checks what needs no body:
the token (writes, and reads with ``protect_reads``), ``--read-only``, the body's size and how long it
takes to arrive. Item ids travel in the path percent-encoded as one segment, and ``/items/...`` paths are
routed before they are decoded, so an id holding ``/``, ``%`` or ``..`` reaches the route it was sent to.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from proxyembed._version import __version__
from proxyembed.runtime import ProxyEmbedError

from .guard import Guard
from .options import ServeOptions
from .prometheus import ServiceMetrics
from .routes import health, items, page, search
from .service import GalleryService, ServiceError
from .web import error_response

log = logging.getLogger("proxyembed.serve")


def create_app(options: ServeOptions) -> FastAPI:
    """The FastAPI app serving the gallery of ``options``; it loads in the lifespan (start-up), once."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = options.worker_threads
        app.state.service = await anyio.to_thread.run_sync(lambda: GalleryService(options, metrics))
        yield
        service, app.state.service = app.state.service, None
        service.close()

    app = FastAPI(
        title="proxyembed",
        version=__version__,
        summary="Image search over one proxyembed gallery.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN: the page router serves a local /docs instead
        redoc_url=None,
    )
    app.state.metrics = metrics
    app.add_middleware(Guard, options=options, metrics=metrics)  # type: ignore[arg-type]
    _add_error_handlers(app)
    # the order /docs and /openapi.json list them in; matching depends only on the order within items
    for router in (page.router, health.router, search.router, items.router):
        app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc.status, exc.message)

    @app.exception_handler(ProxyEmbedError)
    async def bad_input(request: Request, exc: ProxyEmbedError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return error_response(422, f"{where or 'request'}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({exc.__class__.__name__}); the server logged it and keeps running")
