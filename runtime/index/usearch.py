"""Quantized vector storage for :class:`~proxyembed.runtime.index.Index`: a usearch HNSW graph behind hnswlib's calls.

:class:`Index` keeps ids, metadata, locks, checks and calibration; it talks to its graph through the
few calls hnswlib's ``Index`` offers (``add_items``, ``knn_query``, ``mark_deleted``, ``get_items`` ...).
:class:`QuantizedGraph` answers the same calls with usearch storing each vector in float16 or int8, so
every guarantee of :class:`Index` (append, delete, save/load with checksums, exact fall-back) holds
unchanged for every storage choice. Why usearch rather than hnswlib with a quantized re-ranking copy:
hnswlib keeps float32 vectors inside its graph, so a quantized copy adds memory instead of saving it;
usearch stores the graph's own vectors quantized (docs/benchmarks.md, "Gallery memory"). faiss's
``IndexHNSWSQ`` was measured too (``benchmarks/quantized_engines.py``): its int8 walk is cheaper (1.1x hnswlib
f32 per query at equal ef against usearch's 1.4x, 512-d, 100k, with this module's re-ranking put on top), but
its per-dimension codes alone stop below the 0.99 gate and its graph cannot remove an item.

int8 codes are made here, not by usearch: usearch scales a unit vector by 127, which leaves a 128-d
embedding (components ~0.09) about 3 bits; scaling each vector so its largest component is 127 uses the
whole range. Cosine similarity ignores a vector's scale, so the codes rank exactly as the rescaled
vectors do (on clustered 128-d unit vectors: recall@10 0.992 against float32, where usearch's own cast
gives 0.945). Queries are coded the same way. Only ``space="cosine"`` can store int8: inner products
depend on the scale that the per-vector coding discards.

An int8 gallery also keeps one residual bit per value beside the graph: whether the value lay above or
below its code. The graph walks on the codes alone; the candidates it returns are re-ranked on the codes
refined by their bits (code +- 1/4, half the rounding error). That bit is 1/8 of the code's bytes and
lifts what exact search on the stored vectors can reach from 0.9918 to 0.9956 recall@10 (512-d, 100k
clustered vectors, ``index_memory.py --codes``): the 0.99 gate then no longer needs a graph that finds
nearly every code neighbour: at 512-d, 100k, int8 reads 0.9948 at float32's ef (64), and calibration with
its sample margin stops it at 80 (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError, require
from .storage import Space, VectorStorage, check_storage, in_space, residual_bytes

_I8_MAX = 127
# An int8 search asks usearch for this many times k candidates on the coded query, then orders them by the
# float query against their codes: on 50k clustered 128-d vectors recall@10 went from 0.9914 to 0.9934
# (twice k; more candidates gained nothing), at about a third more time per query.
_I8_RERANK = 2
# A filtered search asks usearch for this many times k candidates, keeps the ones the filter accepts and
# reports a short answer when fewer than k remain, so Index falls back to its exact search.
_FILTER_OVERSAMPLE = 8
# usearch 2.26's concurrent add can leave a new item stored but unreachable by any search (unum-cloud/USearch
# issue 735; the fix, pull request 772, is not released). After a threaded add each new item searches for itself
# at this ef and the ones not found are added again on one thread. On 100k clustered 128-d vectors (M=16, two
# threads) it found all 8 stranded items among 626 re-added, for 5.5 s on a 29 s build; ef=8 re-added 4,397
# (11 s), ef=32 re-added 21 but searched for 6 s.
_RELINK_EF = 16


def _import_usearch() -> Any:
    """usearch's index module, imported after onnxruntime when that is installed.

    usearch 2.26.6's compiled module loaded first makes a later ``import onnxruntime`` (1.32, Linux x86_64)
    die with a segmentation fault; in the other order both work. A gallery is loaded before its encoder
    (``Retriever.load``), so the order is fixed here rather than left to the caller.
    """
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime  # noqa: F401

    return require("usearch.index", "quantized")


def _scaled(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` scaled so each one's largest absolute component is 127."""
    return x * (_I8_MAX / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.finfo(np.float32).tiny))


def quantize_i8(x: np.ndarray) -> np.ndarray:
    """int8 codes of the rows of ``x``: each row scaled so its largest absolute component is 127, then rounded."""
    return np.rint(_scaled(x)).astype(np.int8)


def encode_i8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes of the rows of ``x`` and their residual bits, packed (a set bit: the value lay above its code; none at +-127)."""
    scaled = _scaled(x)
    codes = np.rint(scaled)
    return codes.astype(np.int8), np.packbits((scaled > codes) & (np.abs(codes) < _I8_MAX), axis=1)


def _decode_table() -> np.ndarray:
    """The float value of each (code, bit) pair, indexed by the code's byte times two plus the bit."""
    code = np.arange(256).astype(np.uint8).view(np.int8).astype(np.float32)
    step = np.where(np.abs(code) == _I8_MAX, 0.0, 0.25).astype(np.float32)
    return np.stack([code - step, code + step], axis=1).reshape(-1)


_DECODE = _decode_table()


def decode_i8(codes: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float32 rows of int8 ``codes`` refined by their residual ``bits``: code +- 1/4, except at +-127.

    A row's peak is exactly +-127 (nothing was rounded there), so it stays put: coding a decoded row again
    gives the same codes and bits, and a gallery rebuilt from its stored vectors loses nothing.
    """
    codes = np.asarray(codes, dtype=np.int8)
    up = np.unpackbits(bits, axis=-1, count=codes.shape[-1])
    return _DECODE[(codes.view(np.uint8).astype(np.intp) << 1) | up]


class QuantizedGraph:
    """The subset of ``hnswlib.Index`` that :class:`Index` calls, on a usearch graph storing f16 or i8 vectors.

    Labels are usearch keys. Distances are ``1 - similarity`` as hnswlib's, so :class:`Index` turns them
    into scores the same way. ``get_items`` returns the stored vectors decoded to float32 (unit length for
    ``space="cosine"``; int8 codes refined by their residual bits), which is what exact search and a rebuild
    read. An int8 graph's residual bits live in a numpy array by label, saved and read beside the graph
    file (:meth:`save_residual`, :meth:`load_residual`).
    """

    def __init__(self, space: Space, dim: int, vectors: VectorStorage) -> None:
        check_storage(vectors, space)
        if vectors == "f32":
            raise BadInput("QuantizedGraph stores f16 or i8 vectors; f32 galleries use hnswlib")
        self.space, self.dim, self.vectors = space, dim, vectors
        self._usearch = _import_usearch()
        self._graph = None
        self._threads = 0  # usearch: 0 is every core, as hnswlib's default
        # int8 only: residual bits by label (row = label); labels only grow, so rows are never reused
        self._bits = np.zeros((0, residual_bytes(dim)), np.uint8) if vectors == "i8" else None

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
        labels = np.asarray(labels, dtype=np.int64)
        if self._bits is None:
            rows = self._code(vectors)
        else:
            rows, bits = encode_i8(np.asarray(vectors, dtype=np.float32))
            end = int(labels.max()) + 1 if len(labels) else 0
            if end > len(self._bits):  # grow by half, not double: these rows are resident memory on a device
                grown = np.zeros((max(end, len(self._bits) * 3 // 2), self._bits.shape[1]), np.uint8)
                grown[: len(self._bits)] = self._bits
                self._bits = grown
            self._bits[labels] = bits
        # An inner product ranks a longer vector above a row's own, so only a cosine graph can find its stranded
        # items by searching for them; an inner-product graph is built on one thread instead.
        threads = self._threads if self.space == "cosine" else 1
        self._graph.add(labels.astype(np.uint64), rows, threads=threads)
        if threads != 1 and len(labels) > 1:
            self._relink(labels, rows)

    def _relink(self, labels: np.ndarray, rows: np.ndarray) -> None:
        """Add again, on one thread, the items of a threaded add that a search for themselves does not find (see _RELINK_EF)."""
        ef = self._graph.expansion_search
        self._graph.expansion_search = _RELINK_EF
        try:
            found = self._graph.search(rows, 1, threads=self._threads)
        finally:
            self._graph.expansion_search = ef
        keys = np.asarray(found.keys, dtype=np.int64).reshape(-1)
        # another item at distance 0 holds the same stored vector: any search that wants one finds the other
        lost = np.flatnonzero((keys != labels) & (np.asarray(found.distances).reshape(-1) > 1e-6))
        for row in lost:
            self._graph.remove(int(labels[row]))
            self._graph.add(int(labels[row]), rows[row], threads=1)

    def mark_deleted(self, label: int) -> None:
        self._graph.remove(int(label))

    def get_items(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.uint64)
        if not len(labels):
            return np.zeros((0, self.dim), np.float32)
        stored = np.asarray(self._graph.get(labels)).reshape(len(labels), self.dim)
        if self._bits is not None:
            stored = decode_i8(stored, self._bits[labels.astype(np.int64)])
        return in_space(stored.astype(np.float32, copy=False), self.space)

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

        float16 queries are rounded as usearch rounds them; int8 answers are ordered by the float query against
        the refined codes (:meth:`_rescore`), which :meth:`get_items` returns.
        """
        if self.vectors == "i8":
            x = np.asarray(queries, dtype=np.float32)
        else:
            x = self._code(queries).astype(np.float16).astype(np.float32)
        return in_space(x, self.space)

    def _rescore(self, queries: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order int8 candidates by the float query against their codes refined by the residual bits (only the gallery is rounded)."""
        q = in_space(np.asarray(queries, dtype=np.float32), "cosine")  # int8 storage is cosine only
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        safe = np.where(valid, keys, keys[:, :1]).reshape(-1)
        codes = np.asarray(self._graph.get(safe.astype(np.uint64))).reshape(len(safe), self.dim)
        refined = decode_i8(codes, self._bits[safe]).reshape(*keys.shape, self.dim)
        # an all-zero code (a zero vector) scores 0; einsum: half the time of np.linalg.norm on 20 x 512
        lengths = np.maximum(np.sqrt(np.einsum("ncd,ncd->nc", refined, refined)), np.float32(1e-12))
        sims = np.where(valid, np.einsum("nd,ncd->nc", q, refined) / lengths, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")
        return np.take_along_axis(keys, order, axis=1), (1.0 - np.take_along_axis(sims, order, axis=1)).astype(np.float32)

    def save_index(self, path: str) -> None:
        self._graph.save(path)

    def _label_rows(self) -> int:
        """Rows of residual bits the graph's items need: its largest label plus one."""
        return int(np.asarray(self._graph.keys, dtype=np.int64).max()) + 1 if len(self._graph) else 0

    def save_residual(self, path: str) -> None:
        """Write an int8 graph's residual bits (one row per label up to the largest in the graph) as a .npy file."""
        with open(path, "wb") as f:
            np.save(f, self._bits[: self._label_rows()], allow_pickle=False)

    def load_residual(self, path: str) -> None:
        """Read the residual bits :meth:`save_residual` wrote for this graph (after :meth:`load_index`), refusing a mismatch."""
        try:
            bits = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IntegrityError(f"cannot read residual bits {path}: {exc}") from exc
        rows = self._label_rows()
        if bits.dtype != np.uint8 or bits.ndim != 2 or bits.shape[1] != residual_bytes(self.dim) or len(bits) < rows:
            raise IntegrityError(f"{path} does not hold residual bits for {rows} items of dim {self.dim}")
        self._bits = np.ascontiguousarray(bits)
