"""Items: one item, its image and its nearest neighbours; adding and deleting items (writes, 403 under ``--read-only``).

Ids are one percent-encoded path segment (the guard routes ``/items/...`` on the raw path, see
:mod:`..guard`); the routes with a literal suffix (``/neighbors``, ``/image``) come before the bare
``/items/{id}`` so that the suffix picks the route.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from ..service import MAX_K, GalleryService, Timings
from ..web import SearchResults, Service, decode_item_id, file_chunks, image_url, json_list_of_objects, read_upload, search_results

router = APIRouter()


@router.get("/items/{item_id:path}/neighbors", summary="The k items nearest to an indexed item (itself left out).", response_model=SearchResults)
def neighbors(service: Service, item_id: str, k: Annotated[int, Query(ge=1, le=MAX_K)] = 5) -> JSONResponse:
    timings = Timings()
    return search_results(service.neighbors(decode_item_id(item_id), k, timings), timings)


@router.get("/items/{item_id:path}/image", summary="The image file of an item, when the server may send it.", response_class=StreamingResponse)
def item_image(service: Service, item_id: str) -> StreamingResponse:
    file, media_type = service.image_file(decode_item_id(item_id))
    return StreamingResponse(file_chunks(file), media_type=media_type, headers={"content-security-policy": "default-src 'none'"})


@router.get("/items/{item_id:path}", summary="One item's id and metadata (ids percent-encoded as one segment: / as %2F).")
def item(service: Service, item_id: str) -> dict[str, Any]:
    found, meta = service.item(decode_item_id(item_id))
    return {"id": found, "metadata": GalleryService.public_metadata(meta), "image_url": image_url(found, meta)}


@router.post("/items", summary="Embed and add images under the given ids; saved before the reply (403 under --read-only).")
def add_items(
    service: Service,
    images: Annotated[list[UploadFile], File(description="One or more images.")],
    ids: Annotated[list[str], Form(description="One id per image, in the same order.")],
    metadata: Annotated[str | None, Form(description="JSON list of one metadata object per image.")] = None,
    replace: Annotated[bool, Form(description="Replace items whose id is already in the gallery (else 409).")] = False,
) -> dict[str, Any]:
    metas = json_list_of_objects(metadata)
    uploads = [(f.filename or f"image {i}", read_upload(f)) for i, f in enumerate(images)]
    timings = Timings()
    return {**service.add(uploads, ids, metas, replace, timings), "timing_ms": timings.as_ms()}


@router.delete("/items/{item_id:path}", summary="Remove an item; saved before the reply (403 under --read-only).")
def delete_item(service: Service, item_id: str) -> dict[str, Any]:
    timings = Timings()
    return {**service.delete(decode_item_id(item_id), timings), "timing_ms": timings.as_ms()}
