"""What the routes of ``proxyembed serve`` share: the request and response shapes, parsing what clients send, one-line errors.

Every error a client can cause is a 4xx with ``{"error": "one line"}`` (:func:`error_response`); JSON that
clients send in form fields is bounded in size and depth (:func:`json_object`). Routes reach the gallery
through :data:`Service`, the :class:`GalleryService` the app loaded at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import Depends, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from proxyembed.runtime.index import Hit

from .service import MAX_K, GalleryService, ServiceError, Timings

# A JSON form field (filter, metadata): at most this many bytes and this deep.
MAX_JSON_FIELD = 256 * 1024
MAX_JSON_DEPTH = 32


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


async def current_service(request: Request) -> GalleryService:
    """The app's gallery service (503 until the lifespan has loaded it); async, so it costs no worker thread."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceError(503, "the gallery is not loaded yet")
    return service


Service = Annotated[GalleryService, Depends(current_service)]


def read_upload(upload: UploadFile) -> bytes:
    """An upload's bytes (from the start: FastAPI may have read into the spooled file)."""
    upload.file.seek(0)
    return upload.file.read()


def decode_item_id(segment: str) -> str:
    """The id a path segment names: routing saw it still percent-encoded (see :class:`~.guard.Guard`), so decode it now."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError as exc:
        raise ServiceError(400, "the item id in the path is not percent-encoded UTF-8") from exc


def file_chunks(file: Any, size: int = 1 << 16) -> Iterator[bytes]:
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


def json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """A form field holding a JSON object (``filter``), or None when absent; anything else is a 400."""
    value = _parse_json(text, what)
    if value is not None and not isinstance(value, dict):
        raise ServiceError(400, f'{what} must be a JSON object such as {{"label": "cat"}}')
    return value


def json_list_of_objects(text: str | None) -> list[dict[str, Any]] | None:
    """The ``metadata`` form field: a JSON list of objects, or None when absent; anything else is a 400."""
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


def image_url(item_id: Any, meta: dict[str, Any]) -> str | None:
    """Where an item's image is served, or None for an item without an image file."""
    return f"/items/{id_segment(item_id)}/image" if isinstance(meta.get("path"), str) else None


def search_results(hits: list[Hit], timings: Timings) -> JSONResponse:
    """The :class:`SearchResults` body, sent as built (it is JSON-ready: FastAPI's re-encoding would only cost time)."""
    results = [
        {"rank": r, "id": h.id, "score": h.score, "metadata": GalleryService.public_metadata(h.metadata), "image_url": image_url(h.id, h.metadata)}
        for r, h in enumerate(hits, 1)
    ]
    return JSONResponse({"results": results, "timing_ms": timings.as_ms()})


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": "one line"}`` with ``status``: the shape of every error the service sends."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)
