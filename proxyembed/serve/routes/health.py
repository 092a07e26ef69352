"""Whether the service is up and ready, what it serves, and its Prometheus metrics.

``/healthz`` and ``/readyz`` never need the token (a load balancer probes them); ``/readyz`` is 503
until the lifespan has loaded the gallery.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..prometheus import CONTENT_TYPE
from ..web import Service

router = APIRouter()


@router.get("/healthz", summary="The process is up.")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The gallery is loaded and can answer searches (503 until then).")
def readyz(service: Service) -> dict[str, Any]:
    return {"ready": True, "count": len(service.retriever)}


@router.get("/info", summary="Bundle, artifact, precision, dim, count, preprocessing, ef and self-measured recall.")
def info(service: Service) -> dict[str, Any]:
    return service.info()


@router.get("/metrics", summary="Prometheus metrics: per-stage time, requests by route and status, gallery size.")
def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
