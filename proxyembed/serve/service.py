"""The gallery behind ``proxyembed serve``: loaded once, searched concurrently, changed by one writer at a time.

:class:`GalleryService` is the service without HTTP: the FastAPI app (:mod:`proxyembed.serve.app`) turns
requests into its calls and its exceptions into status codes. Searches read the index under its
readers-writer lock, so they run in parallel with each other and with a save; adds and deletes are
serialised, applied in memory, then persisted with :meth:`Retriever.save` (a staged folder swapped into
place, every file checksummed: the guarantees of ``proxyembed index --append``). A change is
acknowledged only once it is on disk; a save that fails reloads the gallery from disk, so memory never
holds a change the disk does not. While it runs, the service is the gallery's only writer.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed.runtime import BadInput, Retriever
from proxyembed.runtime.encoder import PrecisionChoice
from proxyembed.runtime.index import Hit, ItemId
from proxyembed.runtime.preprocess import describe

from .batching import EncodeBatcher
from .metrics import ServiceMetrics

DEFAULT_MAX_UPLOAD_MB = 20
MAX_K = 1000
# A save measures recall (Index.calibrate) again once the gallery has grown or shrunk by this share since the
# last measurement; in between, saves keep the measured ef (calibrating costs seconds at 100k items).
RECALIBRATE_CHANGE = 0.1
_INT_ID = re.compile(r"-?\d+")


class ServiceError(Exception):
    """A request the service refuses: ``status`` is the HTTP status, ``message`` one line for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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
        # Files the service may send back: those under --image-root, and those in the folders that the
        # gallery's own items came from when it was loaded (written by `proxyembed index`, so chosen by
        # the operator). A client-supplied "path" elsewhere is never read.
        self._image_dirs = {Path(p).parent for p in (self._path_of(m) for m in self._all_metadata()) if p}
        self._image_roots = tuple(Path(r).resolve() for r in options.image_roots)
        self.metrics.bind_count(lambda: len(self.retriever))

    def _load(self) -> Retriever:
        o = self.options
        return Retriever.load(o.gallery, bundle=o.bundle, precision=o.precision, threads=o.threads)

    def close(self) -> None:
        """Stop the encoder thread (after the requests it has queued)."""
        self._batcher.close()

    def _all_metadata(self) -> Iterator[dict[str, Any]]:
        index = self.retriever.index
        for item_id in index.ids():
            yield index.metadata(item_id)

    # -- reading -------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Bundle, artifact, dim, count, preprocessing, ef and self-measured recall: what a client may want to check."""
        r = self.retriever
        enc, index = r.encoder, r.index
        return {
            "gallery": str(self.options.gallery),
            "bundle": {**enc.bundle.signature, "path": str(enc.bundle.path)},
            "encoder": {"precision": enc.precision, "provider": enc.provider, "artifact": enc.artifact.file, "describe": enc.describe()},
            "dim": enc.dim,
            "count": len(index),
            "preprocess": enc.bundle.manifest.preprocess.to_dict(),
            "index": index.params(),
            "recall": index.recall(),
            "read_only": self.options.read_only,
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
        pre = self.retriever.encoder.preprocessor
        try:
            with self._stage(timings, "decode"):
                img = pre.decode(data)
        except BadInput as exc:
            raise ServiceError(400, exc.message.replace(describe(data), f"upload {name!r}")) from exc
        with self._stage(timings, "preprocess"):
            batch = pre.normalise(pre.square(img))[None]
        with self._stage(timings, "encode"):
            return self._batcher.encode(batch)[0]

    def search_vector(self, vector: Sequence[float] | np.ndarray, k: int, filter: Mapping[str, Any] | None, timings: Timings) -> list[Hit]:
        """Top-``k`` items for a query vector of the gallery's dim (it need not be normalised)."""
        dim = self.retriever.index.dim
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (dim,):
            raise ServiceError(400, f"vector has {v.size} values; this gallery's model has dim {dim}")
        if not np.isfinite(v).all() or not np.any(v):
            raise ServiceError(400, "vector must be finite and not all zero")
        with self._stage(timings, "search"):
            return self.retriever.index.search(v[None], self._check_k(k), filter=filter)[0]

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
            hits = self.retriever.index.search(vector[None], min(k + 1, MAX_K + 1))[0]
        return [h for h in hits if h.id != item_id][:k]

    def image_file(self, raw_id: str) -> Path:
        """The image file of an item, if its metadata names one the service may send (see ``__init__``)."""
        _, meta = self.item(raw_id)
        path = self._path_of(meta)
        if path is None:
            raise ServiceError(404, f"item {raw_id!r} has no image file recorded in its metadata")
        allowed = path.parent in self._image_dirs or any(path.is_relative_to(root) for root in self._image_roots)
        if not allowed:
            raise ServiceError(404, f"item {raw_id!r}: its image is outside the folders this server shares (see --image-root)")
        if not path.is_file():
            raise ServiceError(404, f"item {raw_id!r}: its image file is gone from the server")
        return path

    @staticmethod
    def _path_of(meta: Mapping[str, Any]) -> Path | None:
        raw = meta.get("path")
        if not isinstance(raw, str) or not raw or "\0" in raw:
            return None
        return Path(os.path.realpath(raw))

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
        if any(not i for i in ids):
            raise ServiceError(400, "ids must be non-empty strings")
        metas = [dict(m) for m in metadata] if metadata is not None else [{} for _ in ids]
        if len(metas) != len(ids):
            raise ServiceError(400, f"got {len(ids)} ids but {len(metas)} metadata objects")
        vectors = np.stack([self.embed_upload(data, name, timings) for name, data in uploads])
        with self._write_lock:
            index = self.retriever.index
            taken = [i for i in ids if i in index]
            if taken and not replace:
                raise ServiceError(409, f"id {taken[0]!r} is already in the gallery (send replace=true to replace it)")
            try:
                index.add(vectors, list(ids), metas, replace=replace)
            except BadInput as exc:
                raise ServiceError(400, exc.message) from exc
            with self._stage(timings, "save"):
                self._persist()
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

    def _persist(self) -> None:
        index = self.retriever.index
        last = index.recall().get("count")
        calibrate = not last or abs(len(index) - last) > RECALIBRATE_CHANGE * last
        try:
            self.retriever.save(self.options.gallery, calibrate=calibrate)
        except Exception as exc:
            self.retriever = self._load()  # drop the unsaved change: memory matches disk again
            raise ServiceError(500, f"could not save the gallery ({exc.__class__.__name__}: {exc}); the change was rolled back") from exc
