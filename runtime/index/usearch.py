"""Quantized vector storage for :class:`~proxyembed.runtime.index.Index`: a usearch HNSW graph behind hnswlib's calls.

:class:`Index` keeps ids, metadata, locks, checks and calibration; it talks to its graph through the
few calls hnswlib's ``Index`` offers (``add_items``, ``knn_query``, ``mark_deleted``, ``get_items`` ...).
:class:`QuantizedGraph` answers the same calls with usearch storing each vector in float16 or int8, so
every guarantee of :class:`Index` (append, delete, save/load with checksums, exact fall-back) holds
unchanged for every storage choice. Why usearch rather than hnswlib with a quantized re-ranking copy:
hnswlib keeps float32 vectors inside its graph, so a quantized copy adds memory instead of saving it;
usearch stores the graph's own vectors quantized (docs/benchmarks.md, "Gallery memory").

int8 codes are made here, not by usearch: usearch scales a unit vector by 127, which leaves a 128-d
embedding (components ~0.09) about 3 bits; scaling each vector so its largest component is 127 uses the
whole range. Cosine similarity ignores a vector's scale, so the codes rank exactly as the rescaled
vectors do (on clustered 128-d unit vectors: recall@10 0.992 against float32, where usearch's own cast
gives 0.945). Queries are coded the same way. Only ``space="cosine"`` can store int8: inner products
depend on the scale that the per-vector coding discards.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError, require
from .storage import Space, VectorStorage, check_storage, in_space

_I8_MAX = 127
# An int8 search asks usearch for this many times k candidates on the coded query, then orders them by the
# float query against their codes: on 50k clustered 128-d vectors recall@10 went from 0.9914 to 0.9934
# (twice k; more candidates gained nothing), at about a third more time per query.
_I8_RERANK = 2
# A filtered search asks usearch for this many times k candidates, keeps the ones the filter accepts and
# reports a short answer when fewer than k remain, so Index falls back to its exact search.
_FILTER_OVERSAMPLE = 8


def _import_usearch() -> Any:
    """usearch's index module, imported after onnxruntime when that is installed.

    usearch 2.26.6's compiled module loaded first makes a later ``import onnxruntime`` (1.32, Linux x86_64)
    die with a segmentation fault; in the other order both work. A gallery is loaded before its encoder
    (``Retriever.load``), so the order is fixed here rather than left to the caller.
    """
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime  # noqa: F401

    return require("usearch.index", "quantized")


def quantize_i8(x: np.ndarray) -> np.ndarray:
    """int8 codes of the rows of ``x``: each row scaled so its largest absolute component is 127, then rounded."""
    peak = np.abs(x).max(axis=1, keepdims=True)
    return np.rint(x * (_I8_MAX / np.maximum(peak, np.finfo(np.float32).tiny))).astype(np.int8)


class QuantizedGraph:
    """The subset of ``hnswlib.Index`` that :class:`Index` calls, on a usearch graph storing f16 or i8 vectors.

    Labels are usearch keys. Distances are ``1 - similarity`` as hnswlib's, so :class:`Index` turns them
    into scores the same way. ``get_items`` returns the stored vectors decoded to float32 (unit length for
    ``space="cosine"``), which is what exact search and a rebuild read.
    """

    def __init__(self, space: Space, dim: int, vectors: VectorStorage) -> None:
        check_storage(vectors, space)
        if vectors == "f32":
            raise BadInput("QuantizedGraph stores f16 or i8 vectors; f32 galleries use hnswlib")
        self.space, self.dim, self.vectors = space, dim, vectors
        self._usearch = _import_usearch()
        self._graph = None
        self._threads = 0  # usearch: 0 is every core, as hnswlib's default

    def init_index(self, max_elements: int, ef_construction: int, M: int, allow_replace_deleted: bool = True) -> None:
        self._graph = self._usearch.Index(
            ndim=self.dim,
            metric="cos" if self.space == "cosine" else "ip",
            dtype=self.vectors,
            connectivity=M,
            expansion_add=ef_construction,
        )

    def load_index(self, path: str, max_elements: int = 0, allow_replace_deleted: bool = True) -> None:
        """Read a graph written by :meth:`save_index`; the file records its own dim, metric and storage."""
        try:
            graph = self._usearch.Index.restore(path)
        except (RuntimeError, ValueError, OSError) as exc:
            raise IntegrityError(f"usearch cannot read {path}: {exc}") from exc
        if graph is None or graph.ndim != self.dim or str(graph.dtype).rsplit(".", 1)[-1].lower() != self.vectors:
            raise IntegrityError(f"{path} does not hold a graph of {self.vectors} vectors of dim {self.dim}")
        self._graph = graph

    def set_num_threads(self, threads: int) -> None:
        """Threads for adds and for searches that name none, as hnswlib's call (0 or less: every core)."""
        self._threads = max(int(threads), 0)

    def set_ef(self, ef: int) -> None:
        self._graph.expansion_search = ef

    @property
    def ef(self) -> int:
        return int(self._graph.expansion_search)

    @property
    def element_count(self) -> int:
        """Items in the graph; usearch frees a removed item's slot, so this is the live count."""
        return len(self._graph)

    def get_max_elements(self) -> int:
        return int(self._graph.capacity)

    def resize_index(self, max_elements: int) -> None:
        """usearch grows by itself on add; nothing to do (kept so :class:`Index` treats both graphs alike)."""

    def _code(self, x: np.ndarray) -> np.ndarray:
        """Rows as the graph stores them: int8 codes (their per-row scaling makes normalising first pointless), else in the space."""
        x = np.asarray(x, dtype=np.float32)
        return quantize_i8(x) if self.vectors == "i8" else in_space(x, self.space)

    def add_items(self, vectors: np.ndarray, labels: np.ndarray, replace_deleted: bool = True) -> None:
        self._graph.add(np.asarray(labels, dtype=np.uint64), self._code(vectors), threads=self._threads)

    def mark_deleted(self, label: int) -> None:
        self._graph.remove(int(label))

    def get_items(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.uint64)
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        return in_space(np.asarray(self._graph.get(labels), dtype=np.float32).reshape(len(labels), self.dim), self.space)

    def knn_query(
        self, queries: np.ndarray, k: int = 1, num_threads: int = -1, filter: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, distances), each (N, k); raises RuntimeError when fewer than k are found, as hnswlib does."""
        wanted = k * (_FILTER_OVERSAMPLE if filter is not None else 1) * (_I8_RERANK if self.vectors == "i8" else 1)
        count = min(wanted, len(self._graph))
        found = self._graph.search(self._code(queries), count, threads=num_threads if num_threads > 0 else self._threads)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        dists = np.asarray(found.distances, dtype=np.float32).reshape(len(queries), -1)
        # one query row comes back as a Matches (no counts), several as BatchMatches
        counts = np.asarray(found.counts if hasattr(found, "counts") else [len(found.keys)]).reshape(-1)
        if (counts < k).any():
            raise RuntimeError("fewer than k items found")
        if self.vectors == "i8":
            keys, dists = self._rescore(queries, keys, counts)
        if filter is None:
            return keys[:, :k], dists[:, :k]
        labels = np.empty((len(queries), k), np.int64)
        out = np.empty((len(queries), k), np.float32)
        for row in range(len(queries)):
            keep = [j for j in range(int(counts[row])) if filter(int(keys[row, j]))][:k]
            if len(keep) < k:
                raise RuntimeError("fewer than k items found")
            labels[row], out[row] = keys[row, keep], dists[row, keep]
        return labels, out

    def as_stored(self, queries: np.ndarray) -> np.ndarray:
        """``queries`` as the graph scores them: exact search with these over :meth:`get_items` is the best the graph can return.

        float16 queries are rounded as usearch rounds them; int8 answers are ordered by the float query (:meth:`_rescore`).
        """
        if self.vectors == "i8":
            x = np.asarray(queries, dtype=np.float32)
        else:
            x = self._code(queries).astype(np.float16).astype(np.float32)
        return in_space(x, self.space)

    def _rescore(self, queries: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order int8 candidates by the float query against their codes (asymmetric: only the gallery side is rounded).

        The cosine of a unit query with a code is their dot product over the code's length, so the codes are
        read as they are stored (no decoded float copy, no normalised query copy per candidate).
        """
        q = in_space(np.asarray(queries, dtype=np.float32), "cosine")  # int8 storage is cosine only
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        safe = np.where(valid, keys, keys[:, :1])
        codes = np.asarray(self._graph.get(safe.reshape(-1).astype(np.uint64)), dtype=np.float32).reshape(*keys.shape, self.dim)
        lengths = np.maximum(np.linalg.norm(codes, axis=2), np.float32(1e-12))  # an all-zero code (a zero vector) scores 0
        sims = np.where(valid, np.einsum("nd,ncd->nc", q, codes) / lengths, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")
        return np.take_along_axis(keys, order, axis=1), (1.0 - np.take_along_axis(sims, order, axis=1)).astype(np.float32)

    def save_index(self, path: str) -> None:
        self._graph.save(path)
