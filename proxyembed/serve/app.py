"""The HTTP face of :class:`GalleryService`: FastAPI routes, one-line JSON errors, upload limits, metrics.

The model and index load once, in the lifespan, before the server accepts a connection. Handlers are
plain ``def`` functions, so FastAPI runs them on its thread pool: decoding, encoding and searching
never block the event loop. Requests decode in parallel, their images are encoded in shared batches
(:mod:`proxyembed.serve.batching`), and hnswlib searches run in parallel under the index's read lock.
Every error a client can cause is a 4xx with ``{"error": "one line"}``; anything else is a
500 with the same shape, logged, and never takes the server down.

Before a request reaches a route, :class:`_Guard` checks what needs no body: the token (writes, and
reads with ``protect_reads``), ``--read-only``, the body's size and how long it takes to arrive. Item
ids travel in the path percent-encoded as one segment, and ``/items/...`` paths are routed before
they are decoded, so an id holding ``/``, ``%`` or ``..`` reaches the route it was sent to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from proxyembed._version import __version__
from proxyembed.runtime import ProxyEmbedError
from proxyembed.runtime.index import Hit

from .metrics import CONTENT_TYPE, ServiceMetrics
from .service import MAX_K, GalleryService, ServeOptions, ServiceError, Timings

log = logging.getLogger("proxyembed.serve")

# A JSON form field (filter, metadata) or JSON body: at most this many bytes and this deep. Bodies that
# are not uploads are held to MAX_JSON_BODY whatever --max-upload-mb says.
MAX_JSON_FIELD = 256 * 1024
MAX_JSON_DEPTH = 32
MAX_JSON_BODY = 1 << 20
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})  # never need a token

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
        docs_url=None,  # Swagger UI loads from a CDN: /docs below is a local page instead
        redoc_url=None,
    )
    app.add_middleware(_Guard, options=options, metrics=metrics)  # type: ignore[arg-type]
    _add_error_handlers(app)

    def service() -> GalleryService:
        if "service" not in state:
            raise ServiceError(503, "the gallery is not loaded yet")
        return state["service"]

    page_html = resources.files("proxyembed.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app.openapi()))

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
        return _results(service().neighbors(_item_id(item_id), k, timings), timings)

    @app.get("/items/{item_id:path}/image", summary="The image file of an item, when the server may send it.", response_class=StreamingResponse)
    def item_image(item_id: str) -> StreamingResponse:
        file, media_type = service().image_file(_item_id(item_id))
        return StreamingResponse(_chunks(file), media_type=media_type, headers={"content-security-policy": "default-src 'none'"})

    @app.get("/items/{item_id:path}", summary="One item's id and metadata (ids percent-encoded as one segment: / as %2F).")
    def item(item_id: str) -> dict[str, Any]:
        found, meta = service().item(_item_id(item_id))
        return {"id": found, "metadata": GalleryService.public_metadata(meta), "image_url": _image_url(found, meta)}

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
        return {**service().delete(_item_id(item_id), timings), "timing_ms": timings.as_ms()}

    @app.get("/metrics", summary="Prometheus metrics: per-stage time, requests by route and status, gallery size.")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _read(upload: UploadFile) -> bytes:
    upload.file.seek(0)
    return upload.file.read()


def _item_id(segment: str) -> str:
    """The id a path segment names: routing saw it still percent-encoded (see :class:`_Guard`), so decode it now."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError as exc:
        raise ServiceError(400, "the item id in the path is not percent-encoded UTF-8") from exc


def _chunks(file: Any, size: int = 1 << 16) -> Iterator[bytes]:
    """An open file's bytes in blocks, closing it at the end (or when the client goes away)."""
    with file:
        while block := file.read(size):
            yield block


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative, so any depth is safe to measure).

    Raises ValueError for a string that is not valid Unicode (a lone surrogate escape such as ``"\\ud800"``
    parses, but no response holding it could be encoded).
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            for key in node:
                key.encode("utf-8")
            stack += [(child, depth + 1) for child in node.values()]
        elif isinstance(node, list):
            stack += [(child, depth + 1) for child in node]
        elif isinstance(node, str):
            node.encode("utf-8")
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
    return deepest


def _parse_json(text: str | None, what: str) -> Any:
    """A form field's JSON value (None when absent or blank), or a 400 saying what is wrong with it.

    Bounded in size and depth; every way parsing can fail (a syntax error, nesting deep enough to
    exhaust recursion, an integer too long to convert, a number out of range, NaN) is the client's
    mistake, so a 400 — never a 500.
    """
    if text is None or not text.strip():
        return None
    if len(text) > MAX_JSON_FIELD:
        raise ServiceError(400, f"{what} is {len(text)} characters; the limit is {MAX_JSON_FIELD}")
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
        depth = _depth(value)
    except json.JSONDecodeError as exc:
        raise ServiceError(400, f"{what} is not valid JSON: {exc.msg} at character {exc.pos}") from exc
    except RecursionError as exc:
        raise ServiceError(400, f"{what} nests too deeply (the limit is {MAX_JSON_DEPTH} levels)") from exc
    except ValueError as exc:  # also UnicodeError
        raise ServiceError(400, f"{what} is not usable JSON: {str(exc)[:120]}") from exc
    if depth > MAX_JSON_DEPTH:
        raise ServiceError(400, f"{what} nests too deeply (the limit is {MAX_JSON_DEPTH} levels)")
    return value


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


def id_segment(item_id: Any) -> str:
    """An id as one URL path segment: every reserved character percent-encoded, and a segment of only dots too.

    Clients and browsers resolve ``.`` and ``..`` segments before sending, so an id made of dots is sent
    as ``%2E``s; the page (``static/index.html``) encodes ids the same way.
    """
    segment = quote(str(item_id), safe="")
    return segment.replace(".", "%2E") if set(segment) == {"."} else segment


def _image_url(item_id: Any, meta: dict[str, Any]) -> str | None:
    return f"/items/{id_segment(item_id)}/image" if isinstance(meta.get("path"), str) else None


def _results(hits: list[Hit], timings: Timings) -> JSONResponse:
    """The :class:`SearchResults` body, sent as built (it is JSON-ready: FastAPI's re-encoding would only cost time)."""
    results = [
        {"rank": r, "id": h.id, "score": h.score, "metadata": GalleryService.public_metadata(h.metadata), "image_url": _image_url(h.id, h.metadata)}
        for r, h in enumerate(hits, 1)
    ]
    return JSONResponse({"results": results, "timing_ms": timings.as_ms()})


def _docs_page(schema: dict[str, Any]) -> str:
    """``/docs``: every route with its summary, and a link to the OpenAPI schema; no script, nothing fetched."""
    from html import escape

    rows = "".join(
        f"<tr><td><code>{escape(method.upper())}</code></td><td><code>{escape(path)}</code></td><td>{escape(op.get('summary', ''))}</td></tr>"
        for path, ops in schema.get("paths", {}).items()
        for method, op in ops.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>proxyembed API</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px}td{padding:4px 10px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>proxyembed {escape(schema.get('info', {}).get('version', ''))} API</h1>"
        "<p>The machine-readable schema is <a href='/openapi.json'>/openapi.json</a> (load it into any OpenAPI viewer). "
        "Item ids go in the path percent-encoded as one segment (<code>/</code> as <code>%2F</code>). Writes, and with "
        "<code>--protect-reads</code> reads, need <code>Authorization: Bearer TOKEN</code>.</p>"
        f"<table>{rows}</table></body></html>"
    )


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
    """ASGI middleware: what is checked before a route runs, and each request's metrics.

    In order: ``/items/...`` is routed on the raw (still percent-encoded) path; ``--read-only`` refuses
    a write (403) and a missing or wrong token a protected request (401), both before the body is read;
    a body over its limit is refused (413: ``max_upload_bytes`` for multipart uploads, :data:`MAX_JSON_BODY`
    for anything else) and one that does not arrive within ``body_timeout_s`` too (408). Every response
    says ``X-Content-Type-Options: nosniff``.
    """

    def __init__(self, app: ASGIApp, options: ServeOptions, metrics: ServiceMetrics) -> None:
        self.app, self.options, self.metrics = app, options, metrics
        self._token_digest = hashlib.sha256(options.token.encode()).digest() if options.token else None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        _route_raw_item_path(scope)

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, tracked_send)
            else:
                await self.app(scope, self._bounded_receive(scope, receive), tracked_send)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), scope.get("method", ""), status, time.perf_counter() - start)

    def _limit(self, scope: Scope) -> int:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        upload = content_type.lower().startswith(b"multipart/form-data")
        return self.options.max_upload_bytes if upload else min(self.options.max_upload_bytes, MAX_JSON_BODY)

    def _refusal(self, scope: Scope) -> Response | None:
        """The response that answers this request without running it, or None to run it."""
        method, path = scope.get("method", ""), scope.get("path", "")
        write = (method == "POST" and path.rstrip("/") == "/items") or (method == "DELETE" and path.startswith("/items/"))
        if write and self.options.read_only:
            return _error(403, "this server runs with --read-only; the gallery cannot be changed through it")
        if self._token_digest is not None and (write or (self.options.protect_reads and path not in OPEN_PATHS)):
            problem = self._token_problem(dict(scope.get("headers", [])).get(b"authorization"))
            if problem is not None:
                response = _error(401, problem)
                response.headers["www-authenticate"] = "Bearer"
                return response
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        limit = self._limit(scope)
        if length.isdigit() and int(length) > limit:
            return _error(413, _too_large(limit))
        return None

    def _token_problem(self, header: bytes | None) -> str | None:
        """Why an Authorization header does not carry this server's token (None when it does).

        Both sides are hashed before the constant-time comparison, so neither the token's bytes nor its
        length shows in how long a wrong guess takes.
        """
        if not header:
            return "this request needs the server's token: send 'Authorization: Bearer TOKEN'"
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "send the token as 'Authorization: Bearer TOKEN'"
        if not hmac.compare_digest(hashlib.sha256(given.strip()).digest(), self._token_digest or b""):
            return "the token is wrong"
        return None

    def _bounded_receive(self, scope: Scope, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
        """``receive`` that counts the body against its limit and its arrival against ``body_timeout_s``."""
        limit, deadline = self._limit(scope), time.monotonic() + self.options.body_timeout_s
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError as exc:
                raise HTTPException(408, f"the request body did not arrive within {self.options.body_timeout_s:g} s") from exc
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        return bounded


def _too_large(limit: int) -> str:
    return f"request body too large: the limit is {limit / 2**20:g} MiB (--max-upload-mb for uploads; {MAX_JSON_BODY / 2**20:g} MiB at most else)"


def _route_raw_item_path(scope: Scope) -> None:
    """Route ``/items/...`` on the path as sent, percent-encoding intact (the routes decode the id).

    Servers decode ``%2F`` before routing, so ``/items/dir%2Fimage`` would reach the image route of item
    ``dir``. With the raw path, an encoded id is one segment whatever it holds; the literal suffixes
    ``/image`` and ``/neighbors`` pick the route, and an id sent with bare slashes still works when it
    does not end in one of them.
    """
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes) or not scope.get("path", "").startswith("/items/"):
        return
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = quote(raw, safe="/%")  # bytes a careless client sent unencoded
    if text.startswith("/items/"):
        scope["path"] = text
