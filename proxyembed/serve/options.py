"""What ``proxyembed serve`` is started with: :class:`ServeOptions` and its defaults, light to import.

The command reads its option defaults from here, so they are written once, and it can do that at start-up
(``proxyembed --help``) without FastAPI, uvicorn or Prometheus: this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from proxyembed.runtime.encoder import PrecisionChoice

DEFAULT_MAX_UPLOAD_MB = 20


@dataclass(frozen=True)
class ServeOptions:
    """What ``proxyembed serve`` was started with (see its ``--help``)."""

    gallery: Path
    bundle: Path | None = None
    precision: PrecisionChoice = "auto"
    threads: int | None = 1  # ONNX Runtime intra-op threads per inference call; the cores go to parallel calls
    encoders: int | None = None  # parallel inference calls (None: one per core)
    read_only: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20
    image_roots: tuple[Path, ...] = field(default_factory=tuple)
    worker_threads: int = 8
    max_batch: int = 32
    token: str | None = None  # writes (and with protect_reads, reads) need "Authorization: Bearer TOKEN"
    protect_reads: bool = False
    # Pixels decoded at once across all requests (one image larger than this still decodes, alone); the
    # default is Pillow's per-image limit, so the worst case is one image at that limit (see README).
    decode_pixel_budget: int = field(default_factory=lambda: int(Image.MAX_IMAGE_PIXELS or 89_478_485))
    decode_wait_s: float = 30.0  # a request waits this long for the budget, then gets 503
    body_timeout_s: float = 60.0  # a request body must arrive within this long (else 408)
