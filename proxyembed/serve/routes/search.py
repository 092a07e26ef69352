"""Searches: the k gallery items nearest to an uploaded image or to a query embedding.

(The neighbours of an item already in the gallery are an item route: :mod:`.items`.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from ..service import MAX_K, Timings
from ..web import SearchResults, Service, VectorQuery, json_object, read_upload, search_results

router = APIRouter()


@router.post("/search", summary="The k gallery items most similar to an uploaded image.", response_model=SearchResults)
def search(
    service: Service,
    image: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP, ...).")],
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 5,
    filter: Annotated[str | None, Form(description='JSON object of required metadata values, e.g. {"label": "cat"}.')] = None,
) -> JSONResponse:
    timings = Timings()
    hits = service.search_image(read_upload(image), image.filename or "image", k, json_object(filter, "filter"), timings)
    return search_results(hits, timings)


@router.post("/search/vector", summary="The k gallery items most similar to a query embedding.", response_model=SearchResults)
def search_vector(service: Service, query: VectorQuery) -> JSONResponse:
    timings = Timings()
    return search_results(service.search_vector(query.vector, query.k, query.filter, timings), timings)
