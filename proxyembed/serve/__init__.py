"""``proxyembed serve``: a gallery as an HTTP search service with a page (the ``serve`` extra: FastAPI + uvicorn).

:func:`create_app` builds the app for a gallery (:class:`ServeOptions`); :class:`GalleryService` is the
same service without HTTP. Torch-free, like the runtime it serves.
"""

from .app import create_app
from .service import GalleryService, ServeOptions, ServiceError

__all__ = ["GalleryService", "ServeOptions", "ServiceError", "create_app"]
