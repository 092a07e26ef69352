"""The HTTP face of :class:`GalleryService`: FastAPI routes, one-line JSON errors, upload limits, metrics.

The model and index load once, in the lifespan, before the server accepts a connection. Handlers are
plain ``def`` functions, so FastAPI runs them on its thread pool: decoding, encoding and searching
never block the event loop. Requests decode in parallel, their images are encoded in shared batches
(:mod:`proxyembed.serve.batching`), and hnswlib searches run in parallel under the index's read lock.
Every error a client can cause is a 4xx with ``{"error": "one line"}``; anything else is a
500 with the same shape, logged, and never takes the server down.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from proxyembed._version import __version__
from proxyembed.runtime import ProxyEmbedError
from proxyembed.runtime.index import Hit

from .metrics import CONTENT_TYPE, ServiceMetrics
from .service import MAX_K, GalleryService, ServeOptions, ServiceError, Timings

log = logging.getLogger("proxyembed.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class VectorQuery(BaseModel):
    """``POST /search/vector``: a query embedding of the gallery's dim (normalised or not)."""

    vector: list[float]
    k: int = Field(5, ge=1, le=MAX_K)
    filter: dict[str, Any] | None = Field(None, description="Only items whose metadata has these values.")


class Result(BaseModel):
    """One hit: rank from 1, the item's id, cosine similarity, metadata, and where its image is served (or null)."""

    rank: int
    id: str | int
    score: float
    metadata: dict[str, Any]
    image_url: str | None


class SearchResults(BaseModel):
    """Hits best first, and the milliseconds each stage of this request took."""

    results: list[Result]
    timing_ms: dict[str, float]


def create_app(options: ServeOptions) -> FastAPI:
    """The FastAPI app serving the gallery of ``options``; it loads in the lifespan (start-up), once."""
    metrics = ServiceMetrics()
    state: dict[str, GalleryService] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = options.worker_threads
        state["service"] = await anyio.to_thread.run_sync(lambda: GalleryService(options, metrics))
        yield
        state.pop("service").close()

    app = FastAPI(
        title="proxyembed",
        version=__version__,
        summary="Image search over one proxyembed gallery.",
        lifespan=lifespan,
    )
    app.add_middleware(_Guard, limit=options.max_upload_bytes, metrics=metrics)  # type: ignore[arg-type]
    _add_error_handlers(app)

    def service() -> GalleryService:
        if "service" not in state:
            raise ServiceError(503, "the gallery is not loaded yet")
        return state["service"]

    page_html = resources.files("proxyembed.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/healthz", summary="The process is up.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The gallery is loaded and can answer searches (503 until then).")
    def readyz() -> dict[str, Any]:
        return {"ready": True, "count": len(service().retriever)}

    @app.get("/info", summary="Bundle, artifact, precision, dim, count, preprocessing, ef and self-measured recall.")
    def info() -> dict[str, Any]:
        return service().info()

    @app.post("/search", summary="The k gallery items most similar to an uploaded image.", response_model=SearchResults)
    def search(
        image: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP, ...).")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 5,
        filter: Annotated[str | None, Form(description='JSON object of required metadata values, e.g. {"label": "cat"}.')] = None,
    ) -> JSONResponse:
        svc, timings = service(), Timings()
        hits = svc.search_image(_read(image), image.filename or "image", k, _json_object(filter, "filter"), timings)
        return _results(hits, timings)

    @app.post("/search/vector", summary="The k gallery items most similar to a query embedding.", response_model=SearchResults)
    def search_vector(query: VectorQuery) -> JSONResponse:
        timings = Timings()
        return _results(service().search_vector(query.vector, query.k, query.filter, timings), timings)

    @app.get("/items/{item_id:path}/neighbors", summary="The k items nearest to an indexed item (itself left out).", response_model=SearchResults)
    def neighbors(item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 5) -> JSONResponse:
        timings = Timings()
        return _results(service().neighbors(item_id, k, timings), timings)

    @app.get("/items/{item_id:path}/image", summary="The image file of an item, when the gallery records it.", response_class=FileResponse)
    def item_image(item_id: str) -> FileResponse:
        return FileResponse(service().image_file(item_id))

    @app.get("/items/{item_id:path}", summary="One item's id and metadata.")
    def item(item_id: str) -> dict[str, Any]:
        found, meta = service().item(item_id)
        return {"id": found, "metadata": meta, "image_url": _image_url(found, meta)}

    @app.post("/items", summary="Embed and add images under the given ids; saved before the reply (403 under --read-only).")
    def add_items(
        images: Annotated[list[UploadFile], File(description="One or more images.")],
        ids: Annotated[list[str], Form(description="One id per image, in the same order.")],
        metadata: Annotated[str | None, Form(description="JSON list of one metadata object per image.")] = None,
        replace: Annotated[bool, Form(description="Replace items whose id is already in the gallery (else 409).")] = False,
    ) -> dict[str, Any]:
        metas = _json_list_of_objects(metadata)
        uploads = [(f.filename or f"image {i}", _read(f)) for i, f in enumerate(images)]
        timings = Timings()
        return {**service().add(uploads, ids, metas, replace, timings), "timing_ms": timings.as_ms()}

    @app.delete("/items/{item_id:path}", summary="Remove an item; saved before the reply (403 under --read-only).")
    def delete_item(item_id: str) -> dict[str, Any]:
        timings = Timings()
        return {**service().delete(item_id, timings), "timing_ms": timings.as_ms()}

    @app.get("/metrics", summary="Prometheus metrics: per-stage time, requests by route and status, gallery size.")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _read(upload: UploadFile) -> bytes:
    upload.file.seek(0)
    return upload.file.read()


def _parse_json(text: str | None, what: str) -> Any:
    """A form field's JSON value (None when the field is absent or blank), or a 400 saying where it is malformed."""
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(400, f"{what} is not valid JSON: {exc.msg} at character {exc.pos}") from exc


def _json_object(text: str | None, what: str) -> dict[str, Any] | None:
    value = _parse_json(text, what)
    if value is not None and not isinstance(value, dict):
        raise ServiceError(400, f'{what} must be a JSON object such as {{"label": "cat"}}')
    return value


def _json_list_of_objects(text: str | None) -> list[dict[str, Any]] | None:
    value = _parse_json(text, "metadata")
    if value is not None and (not isinstance(value, list) or not all(isinstance(m, dict) for m in value)):
        raise ServiceError(400, "metadata must be a JSON list with one object per image")
    return value


def _image_url(item_id: Any, meta: dict[str, Any]) -> str | None:
    return f"/items/{quote(str(item_id), safe='')}/image" if isinstance(meta.get("path"), str) else None


def _results(hits: list[Hit], timings: Timings) -> JSONResponse:
    """The :class:`SearchResults` body, sent as built (it is JSON-ready: FastAPI's re-encoding would only cost time)."""
    results = [{"rank": r, **h.to_dict(), "image_url": _image_url(h.id, h.metadata)} for r, h in enumerate(hits, 1)]
    return JSONResponse({"results": results, "timing_ms": timings.as_ms()})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return _error(exc.status, exc.message)

    @app.exception_handler(ProxyEmbedError)
    async def bad_input(request: Request, exc: ProxyEmbedError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({exc.__class__.__name__}); the server logged it and keeps running")


class _Guard:
    """ASGI middleware: refuses request bodies over ``limit`` bytes (413) and records each request's metrics."""

    def __init__(self, app: ASGIApp, limit: int, metrics: ServiceMetrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        too_large = f"upload too large: the limit is {self.limit / 2**20:g} MiB (--max-upload-mb)"

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counted_receive.seen += len(message.get("body", b""))  # type: ignore[attr-defined]
                if counted_receive.seen > self.limit:  # type: ignore[attr-defined]
                    raise HTTPException(413, too_large)
            return message

        counted_receive.seen = 0  # type: ignore[attr-defined]

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers", [])).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                await _error(413, too_large)(scope, receive, tracked_send)
            else:
                await self.app(scope, counted_receive, tracked_send)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), scope.get("method", ""), status, time.perf_counter() - start)
