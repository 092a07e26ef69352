"""The gallery behind ``proxyembed serve``: loaded once, searched concurrently, changed by one writer at a time.

:class:`GalleryService` is the service without HTTP: the FastAPI app (:mod:`proxyembed.serve.app`) turns
requests into its calls and its exceptions into status codes. Searches read the index under its
readers-writer lock, so they run in parallel with each other and with a save; adds and deletes are
serialised, applied in memory, then persisted with :meth:`Retriever.save` (a staged folder swapped into
place, every file checksummed: the guarantees of ``proxyembed index --append``). A change is
acknowledged only once it is on disk; a save that fails reloads the gallery from disk, so memory never
holds a change the disk does not. While it runs, the service is the gallery's only writer.

What a client can make it do is bounded: every upload's header is checked before a pixel is decoded
(size and shape, :func:`~proxyembed.runtime.preprocess.check_image_size`), the pixels being decoded at
once across all requests stay within a budget, and the heap is handed back to the system after a large
decode. Files are sent only from places the server's owner chose (see :meth:`GalleryService.image_file`).
"""

from __future__ import annotations

import ctypes
import hashlib
import mimetypes
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from proxyembed.runtime import BadInput, Retriever
from proxyembed.runtime.images import IMAGE_EXTENSIONS
from proxyembed.runtime.index import Hit, ItemId
from proxyembed.runtime.preprocess import FORMAT_SUFFIX, describe, read_header
from proxyembed.runtime.retriever import HELD_IMAGES, held_image

from .batching import EncodeBatcher
from .options import ServeOptions
from .prometheus import ServiceMetrics

MAX_K = 1000
MAX_ID_CHARS = 1024
# A save measures recall (Index.calibrate) again once the gallery has grown or shrunk by this share since the
# last measurement; in between, saves keep the measured ef (calibrating costs seconds at 100k items).
RECALIBRATE_CHANGE = 0.1
# After decoding an image this large, free heap pages go back to the system (glibc keeps them otherwise:
# a few large uploads left the server at 3 GiB).
TRIM_AFTER_PIXELS = 4_000_000
_INT_ID = re.compile(r"-?\d+")


class ServiceError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, ``message`` one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Timings:
    """Seconds spent per stage of one request, reported to the client and to ``/metrics``."""

    stages: dict[str, float] = field(default_factory=dict)

    def as_ms(self) -> dict[str, float]:
        return {stage: round(1000 * s, 3) for stage, s in self.stages.items()}


class GalleryService:
    """One gallery and its encoder, with the search and change operations the HTTP API exposes."""

    def __init__(self, options: ServeOptions, metrics: ServiceMetrics | None = None) -> None:
        self.options = options
        self.metrics = metrics or ServiceMetrics()
        self._write_lock = threading.Lock()
        self.retriever = self._load()
        # Encoder threads batch what concurrent requests send (read through self.retriever, which a failed save replaces).
        workers = options.encoders or os.cpu_count() or 1
        self._batcher = EncodeBatcher(lambda batch: self.retriever.encoder.encode_batch(batch), options.max_batch, workers)
        self._budget = PixelBudget(options.decode_pixel_budget)
        self._image_roots = tuple(Path(os.path.realpath(r)) for r in options.image_roots)
        self.metrics.bind_count(lambda: len(self.retriever))

    def _load(self) -> Retriever:
        o = self.options
        return Retriever.load(o.gallery, bundle=o.bundle, precision=o.precision, threads=o.threads)

    def close(self) -> None:
        """Stop the encoder thread (after the requests it has queued)."""
        self._batcher.close()

    # -- reading -------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Bundle, artifact, dim, count, preprocessing, ef and self-measured recall: what a client may want to check."""
        r = self.retriever
        enc, index = r.encoder, r.index
        return {  # names, never the server's paths
            "gallery": self.options.gallery.name,
            "bundle": {**enc.bundle.signature, "name": enc.bundle.path.name},
            "encoder": {"precision": enc.precision, "provider": enc.provider, "artifact": enc.artifact.file, "describe": enc.describe()},
            "dim": enc.dim,
            "count": len(index),
            "preprocess": enc.bundle.manifest.preprocess.to_dict(),
            "index": index.params(),
            "recall": index.recall(),
            "read_only": self.options.read_only,
            "writes_need_token": self.options.token is not None,
            "max_upload_bytes": self.options.max_upload_bytes,
            "max_k": MAX_K,
        }

    @contextmanager
    def _stage(self, timings: Timings, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        timings.stages[stage] = timings.stages.get(stage, 0.0) + elapsed
        self.metrics.observe_stage(stage, elapsed)

    def embed_upload(self, data: bytes, name: str, timings: Timings) -> np.ndarray:
        """The (dim,) embedding of one uploaded image; :class:`ServiceError` 400 when it is not an image."""
        return self._embed(data, name, timings)[1]

    def _embed(self, data: bytes, name: str, timings: Timings) -> tuple[str, np.ndarray]:
        """The upload's format (from its header) and embedding, its decode held within the pixel budget."""
        pre = self.retriever.encoder.preprocessor
        try:
            fmt, (w, h) = read_header(data)  # refused here, before any pixel is decoded, when too large or too thin
            with self._budget.hold(w * h, self.options.decode_wait_s):
                with self._stage(timings, "decode"):
                    img = pre.decode(data)
                with self._stage(timings, "preprocess"):
                    batch = pre.normalise(pre.square(img))[None]
                del img
        except BadInput as exc:
            raise ServiceError(400, exc.message.replace(describe(data), f"upload {name!r}")) from exc
        if w * h >= TRIM_AFTER_PIXELS:
            release_free_memory()
        with self._stage(timings, "encode"):
            return fmt, self._batcher.encode(batch)[0]

    def search_vector(self, vector: Sequence[float] | np.ndarray, k: int, filter: Mapping[str, Any] | None, timings: Timings) -> list[Hit]:
        """Top-``k`` items for a query vector of the gallery's dim (it need not be normalised)."""
        dim = self.retriever.index.dim
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (dim,):
            raise ServiceError(400, f"vector has {v.size} values; this gallery's model has dim {dim}")
        if not np.isfinite(v).all() or not np.any(v):
            raise ServiceError(400, "vector must be finite and not all zero")
        if filter and "path" in filter:  # matching on it would confirm guesses at the server's file paths
            raise ServiceError(400, "metadata key 'path' is the server's: it cannot be filtered on")
        with self._stage(timings, "search"):
            return self.retriever.search_vector(v, self._check_k(k), filter=filter)

    def search_image(self, data: bytes, name: str, k: int, filter: Mapping[str, Any] | None, timings: Timings) -> list[Hit]:
        """Top-``k`` items for an uploaded image."""
        self._check_k(k)
        return self.search_vector(self.embed_upload(data, name, timings), k, filter, timings)

    def resolve_id(self, raw: str) -> ItemId:
        """The gallery id a URL names: the string itself, else its integer value; :class:`ServiceError` 404 if neither."""
        index = self.retriever.index
        if raw in index:
            return raw
        if _INT_ID.fullmatch(raw) and int(raw) in index:
            return int(raw)
        raise ServiceError(404, f"no item with id {raw!r} in this gallery")

    def item(self, raw_id: str) -> tuple[ItemId, dict[str, Any]]:
        item_id = self.resolve_id(raw_id)
        try:
            return item_id, self.retriever.index.metadata(item_id)
        except BadInput as exc:  # deleted since resolve_id
            raise ServiceError(404, f"no item with id {raw_id!r} in this gallery") from exc

    def neighbors(self, raw_id: str, k: int, timings: Timings) -> list[Hit]:
        """The ``k`` nearest other items of an indexed item (the item itself left out)."""
        item_id = self.resolve_id(raw_id)
        self._check_k(k)
        try:
            vector = self.retriever.index.vector(item_id)
        except BadInput as exc:
            raise ServiceError(404, f"no item with id {raw_id!r} in this gallery") from exc
        with self._stage(timings, "search"):
            hits = self.retriever.search_vector(vector, min(k + 1, MAX_K + 1))
        return [h for h in hits if h.id != item_id][:k]

    def image_file(self, raw_id: str) -> tuple[BinaryIO, str]:
        """The image file of an item, opened, and its media type, when it lies where the server's owner chose to share files from.

        Those places are the gallery's own ``images/`` folder (uploads it keeps), the exact files
        ``proxyembed index`` recorded on this machine (an absolute metadata ``path``: clients cannot
        write that key), and, when ``--image-root`` folders are given, only those of the recorded files
        that lie inside them. Symlinks are resolved before the check (a link under a root that points out
        of it is refused), only files with an image extension are sent, and the file is opened here, so a
        save that swaps the gallery folder meanwhile cannot change what is sent.
        """
        _, meta = self.item(raw_id)
        path = self._shared_path(meta)
        if path is None:
            raise ServiceError(404, f"item {raw_id!r}: no image file on this server that it may send (see --image-root)")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ServiceError(404, f"item {raw_id!r}: its image file is gone from the server") from exc
        return os.fdopen(fd, "rb"), mimetypes.guess_type(path.name)[0] or "application/octet-stream"

    def _shared_path(self, meta: Mapping[str, Any]) -> Path | None:
        """The real path of an item's image if the service may send it (see :meth:`image_file`), else None."""
        held = held_image(meta)
        if held is not None:
            own = Path(os.path.realpath(self.options.gallery / HELD_IMAGES))
            real = Path(os.path.realpath(self.options.gallery / held))
            return real if real.parent == own and real.is_file() else None
        raw = meta.get("path")
        if not isinstance(raw, str) or "\0" in raw or not os.path.isabs(raw):
            return None
        real = Path(os.path.realpath(raw))
        if real.suffix.lower() not in IMAGE_EXTENSIONS or not real.is_file():
            return None
        if self._image_roots and not any(real.is_relative_to(root) for root in self._image_roots):
            return None
        return real

    @staticmethod
    def public_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
        """An item's metadata as clients see it: without ``path``, so no server path leaves the server."""
        return {k: v for k, v in meta.items() if k != "path"}

    @staticmethod
    def _check_k(k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise ServiceError(422, f"k must be between 1 and {MAX_K}, got {k}")
        return k

    # -- changing ------------------------------------------------------------------------------------

    def add(
        self, uploads: Sequence[tuple[str, bytes]], ids: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None, replace: bool, timings: Timings
    ) -> dict[str, Any]:
        """Embed and add uploaded images under ``ids``, then persist; all are checked before any is added."""
        self._writable()
        if not uploads:
            raise ServiceError(400, "no images uploaded (send one or more 'images' file fields)")
        if len(ids) != len(uploads):
            raise ServiceError(400, f"got {len(uploads)} images but {len(ids)} ids (send one 'ids' field per image)")
        if len(set(ids)) != len(ids):
            raise ServiceError(400, "ids repeat within the request")
        if any(not i or len(i) > MAX_ID_CHARS for i in ids):
            raise ServiceError(400, f"ids must be non-empty strings of at most {MAX_ID_CHARS} characters")
        metas = [dict(m) for m in metadata] if metadata is not None else [{} for _ in ids]
        if len(metas) != len(ids):
            raise ServiceError(400, f"got {len(ids)} ids but {len(metas)} metadata objects")
        if any("path" in m for m in metas):
            raise ServiceError(
                400, "metadata key 'path' is the server's: it records where the server keeps the image; name yours otherwise"
            )
        vectors, held = [], {}
        for (name, data), meta in zip(uploads, metas, strict=True):
            fmt, vector = self._embed(data, name, timings)
            # The gallery keeps the upload itself (named by its content), so GET /items/{id}/image sends it back.
            meta["path"] = f"{HELD_IMAGES}/{hashlib.sha256(data).hexdigest()}{FORMAT_SUFFIX[fmt]}"
            held[meta["path"]] = data
            vectors.append(vector)
        with self._write_lock:
            index = self.retriever.index
            taken = [i for i in ids if i in index]
            if taken and not replace:
                raise ServiceError(409, f"id {taken[0]!r} is already in the gallery (send replace=true to replace it)")
            try:
                index.add(np.stack(vectors), list(ids), metas, replace=replace)
            except BadInput as exc:
                raise ServiceError(400, exc.message) from exc
            with self._stage(timings, "save"):
                self._persist(held)
            return {"added": len(ids), "replaced": len(taken), "count": len(index)}

    def delete(self, raw_id: str, timings: Timings) -> dict[str, Any]:
        """Remove one item and persist."""
        self._writable()
        with self._write_lock:
            item_id = self.resolve_id(raw_id)
            self.retriever.index.remove([item_id])
            with self._stage(timings, "save"):
                self._persist()
            return {"deleted": item_id, "count": len(self.retriever.index)}

    def _writable(self) -> None:
        if self.options.read_only:
            raise ServiceError(403, "this server runs with --read-only; the gallery cannot be changed through it")

    def _persist(self, new_images: Mapping[str, bytes] | None = None) -> None:
        index = self.retriever.index
        last = index.recall().get("count")
        calibrate = not last or abs(len(index) - last) > RECALIBRATE_CHANGE * last
        try:
            self.retriever.save(self.options.gallery, calibrate=calibrate, new_images=new_images)
        except Exception as exc:
            self.retriever = self._load()  # drop the unsaved change: memory matches disk again
            # The class and errno only: the exception's text would name the server's paths.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
            raise ServiceError(500, f"could not save the gallery ({reason}); the change was rolled back") from exc


class PixelBudget:
    """How many image pixels the service decodes at once, across all requests (a weighted semaphore).

    A request holds its image's pixel count while it decodes and resizes; one that would go over the
    budget waits until others finish. An image larger than the whole budget decodes alone. So the
    memory that decoding takes is bounded whatever many clients send at the same moment.
    """

    def __init__(self, total: int) -> None:
        self.total, self.used = max(1, total), 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, wait_s: float) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the block; :class:`ServiceError` 503 after ``wait_s`` without room."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.total, timeout=wait_s):
                raise ServiceError(503, f"the server is busy decoding other images (waited {wait_s:g} s); try again")
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


@cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps freed large blocks for reuse otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
