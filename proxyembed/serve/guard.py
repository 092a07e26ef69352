"""What ``proxyembed serve`` checks before a route runs: token, ``--read-only``, body size and arrival, raw item paths.

ASGI middleware rather than a FastAPI dependency, so a refused request is answered before its body is read,
and every request (refused or not) is counted in the Prometheus metrics by its route template.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

import anyio
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from .options import ServeOptions
from .prometheus import ServiceMetrics
from .web import error_response

# Bodies that are not uploads are held to MAX_JSON_BODY whatever --max-upload-mb says.
MAX_JSON_BODY = 1 << 20
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})  # never need a token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class Guard:
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
        headers = dict(scope.get("headers", []))  # read once: the refusal and the body limit both look

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await refusal(scope, receive, tracked_send)
            else:
                await self.app(scope, self._bounded_receive(self._limit(headers), receive), tracked_send)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "unmatched"), scope.get("method", ""), status, time.perf_counter() - start)

    def _limit(self, headers: dict[bytes, bytes]) -> int:
        """The most body bytes this request may send: an upload's limit for multipart, the JSON cap otherwise."""
        content_type = headers.get(b"content-type", b"")
        upload = content_type.lower().startswith(b"multipart/form-data")
        return self.options.max_upload_bytes if upload else min(self.options.max_upload_bytes, MAX_JSON_BODY)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> Response | None:
        """The response that answers this request without running it, or None to run it."""
        method, path = scope.get("method", ""), scope.get("path", "")
        write = (method == "POST" and path.rstrip("/") == "/items") or (method == "DELETE" and path.startswith("/items/"))
        if write and self.options.read_only:
            return error_response(403, "this server runs with --read-only; the gallery cannot be changed through it")
        if self._token_digest is not None and (write or (self.options.protect_reads and path not in OPEN_PATHS)):
            problem = self._token_problem(headers.get(b"authorization"))
            if problem is not None:
                response = error_response(401, problem)
                response.headers["www-authenticate"] = "Bearer"
                return response
        length = headers.get(b"content-length", b"")
        limit = self._limit(headers)
        if length.isdigit() and int(length) > limit:
            return error_response(413, _too_large(limit))
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

    def _bounded_receive(self, limit: int, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
        """``receive`` that counts the body against ``limit`` bytes and its arrival against ``body_timeout_s``."""
        deadline = time.monotonic() + self.options.body_timeout_s
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
