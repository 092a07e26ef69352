"""``proxyembed serve``: a gallery as an HTTP search service with a page (the ``serve`` extra: FastAPI + uvicorn).

:func:`create_app` builds the app for a gallery (:class:`ServeOptions`); :class:`GalleryService` is the
same service without HTTP. Torch-free, like the runtime it serves. Only :class:`ServeOptions` loads with
the package (``proxyembed serve`` reads its defaults at start-up); the rest, which needs the extra, loads
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .options import ServeOptions

_LAZY = {"create_app": ".app", "GalleryService": ".service", "ServiceError": ".service"}

__all__ = ["GalleryService", "ServeOptions", "ServiceError", "create_app"]

if TYPE_CHECKING:
    from .app import create_app
    from .service import GalleryService, ServiceError


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'proxyembed.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
