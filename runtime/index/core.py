"""The :class:`Index`: checks and locks around an HNSW graph and its item table, and the search that picks exact or approximate.

The package docstring (:mod:`proxyembed.runtime.index`) says what this adds to hnswlib; the item table is
:mod:`.items`, calibration :mod:`.recall`, files :mod:`.persist`, storage choices :mod:`.storage`, result
types and exact search :mod:`.search`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError
from ..rwlock import RWLock
from . import persist, recall
from .items import ItemTable
from .recall import CALIBRATION_QUERIES, MAX_EF, MAX_M, TARGET_RECALL
from .search import Filter, Hit, ItemId, exact_search, make_filter
from .storage import Space, VectorStorage, check_storage, in_space, vector_bytes

# Chosen from benchmarks/index_speed.py (results/index_speed.md): the smallest ef with recall@10 >= 0.99
# against exact search on clustered unit vectors, dim 128, M=16, ef_construction=200 — at 100k items
# ef=32 gives 0.985 and ef=64 0.994 (10k: 0.9992 / 0.9997). At 1M items (results/index_speed_1m.md) M=16
# tops out at 0.974 even with ef=256: galleries that large want M=32 and a larger ef, measured on them
# (M=32 at 1M: ef=512 gives 0.993, the calibrated ef=1024 0.998).
DEFAULT_EF = 64
# M=16 reaches 0.99 at 100k; at 1M it stalls below it (0.974 at ef=256), so larger galleries get M=32.
# M is fixed when the graph is built: pass the expected size as ``capacity`` so the choice is right.
LARGE_GALLERY = 250_000
# Below this many live items search is exact: a numpy pass costs well under a millisecond per query at
# this size (same benchmark), so hnswlib's approximation would buy nothing worth a missed neighbour.
EXACT_BELOW = 2000
_INITIAL_CAPACITY = 1024
# Items read from the graph at a time when the live matrix is assembled (_live_matrix).
_GET_BLOCK = 8192


class Index:
    """hnswlib HNSW index keyed by caller ids, with metadata, filters, exact search and safe save/load.

    ``space="cosine"`` normalises vectors (zero vectors are refused); ``"ip"`` uses raw inner products.
    Scores are similarities, higher is better, in both spaces. ``capacity`` is the expected size: it
    picks ``M`` when not given (16, or 32 from :data:`LARGE_GALLERY` items) and grows by itself.
    ``vectors`` is how the graph stores vectors: ``"f32"`` (hnswlib), ``"f16"`` or ``"i8"`` (usearch,
    cosine only for i8). A quantized index built in this process keeps a float32 copy of what it was
    given, so :meth:`calibrate` measures against exact float32 search; one loaded from disk has only its
    stored vectors and measures against exact search on those.
    """

    def __init__(
        self,
        dim: int,
        space: Space = "cosine",
        *,
        M: int | None = None,
        ef_construction: int = 200,
        ef: int = DEFAULT_EF,
        exact_below: int = EXACT_BELOW,
        capacity: int = _INITIAL_CAPACITY,
        vectors: VectorStorage = "f32",
        _load_from: Path | None = None,
    ) -> None:
        if M is None:
            M = 32 if capacity >= LARGE_GALLERY else 16
        if not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"index dim must be a positive integer, got {dim!r}")
        check_storage(vectors, space)
        for name, value in (("M", M), ("ef_construction", ef_construction), ("ef", ef)):
            if not isinstance(value, int) or value <= 0:
                raise BadInput(f"index {name} must be a positive integer, got {value!r}")
        self.dim, self.space, self.M, self.ef_construction = dim, space, M, ef_construction
        self.vectors: VectorStorage = vectors
        self.exact_below = exact_below
        self._ef = ef
        self._hnsw = self._new_graph(max(capacity, 1), M, init=_load_from is None)
        if _load_from is not None:  # Index.load: the sha256 was checked, so the library reads a file it wrote
            try:
                self._hnsw.load_index(str(_load_from), max_elements=capacity, allow_replace_deleted=True)
            except RuntimeError as exc:
                raise IntegrityError(f"hnswlib cannot read {_load_from}: {exc}") from exc
        self._hnsw.set_ef(ef)
        self._items = ItemTable()
        self._recall: dict[str, Any] = {}
        # float32 rows by label for a quantized index built here (the calibration's exact reference)
        self._reference: np.ndarray | None = np.zeros((0, dim), np.float32) if vectors != "f32" and _load_from is None else None
        self._held: list[tuple[np.ndarray, list[ItemId], list[dict[str, Any]]]] = []  # see add(held_out=)
        self._lock = RWLock()
        self._matrix_lock = threading.Lock()
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None  # (labels, vectors) of live items, for exact search

    def _new_graph(self, capacity: int, M: int, *, init: bool = True) -> Any:
        """A graph of this index's space and storage (hnswlib for f32, usearch for f16 / i8): empty with ``init``, else for ``load_index``."""
        if self.vectors == "f32":
            import hnswlib

            graph = hnswlib.Index(space=self.space, dim=self.dim)
        else:
            from .usearch import QuantizedGraph

            graph = QuantizedGraph(self.space, self.dim, self.vectors)
        if init:
            graph.init_index(max_elements=capacity, ef_construction=self.ef_construction, M=M, allow_replace_deleted=True)
        return graph

    # -- properties ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of live (not removed) items."""
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    @property
    def ef(self) -> int:
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        if not isinstance(value, int) or value <= 0:
            raise BadInput(f"ef must be a positive integer, got {value!r}")
        with self._lock.write():
            self._ef = value
            self._hnsw.set_ef(value)

    def ids(self) -> list[ItemId]:
        """Live ids in insertion order (a replaced id counts as inserted when it was replaced)."""
        with self._lock.read():
            return self._items.ids()

    def recall(self) -> dict[str, Any]:
        """The last recall measurement (:meth:`calibrate`): recall@10 vs exact search, ef, queries; {} if none."""
        return dict(self._recall)

    def metadata(self, item_id: ItemId) -> dict[str, Any]:
        with self._lock.read():
            return self._items.metadata(item_id)

    def vector(self, item_id: ItemId) -> np.ndarray:
        """The stored vector of ``item_id`` (normalised for ``space="cosine"``), e.g. to search by an indexed item."""
        with self._lock.read():
            return np.asarray(self._hnsw.get_items([self._items.label(item_id)]), dtype=np.float32).reshape(self.dim)

    def params(self) -> dict[str, Any]:
        """The construction and search parameters (what a gallery records)."""
        return {
            "dim": self.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self._ef,
            "vectors": self.vectors,
        }

    def vector_bytes(self) -> int:
        """Bytes one stored vector takes (dim x 4, 2 or 1, and int8's residual bit a value): what the storage choice changes."""
        return vector_bytes(self.dim, self.vectors)

    # -- mutation ------------------------------------------------------------------------------------

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[ItemId],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        replace: bool = False,
        held_out: bool = False,
    ) -> None:
        """Add ``vectors`` (N, dim) under ``ids``; metadata must be JSON-serialisable dicts.

        Everything is checked before anything is inserted, so a bad batch leaves the index unchanged.
        ``held_out`` keeps the batch out of the graph until the next :meth:`calibrate` (or :meth:`save`)
        has searched with it as unseen queries and then inserts it; until then its items are not found.
        """
        vectors = self._check_vectors(vectors, "vectors")
        ids = list(ids)
        if len(ids) != len(vectors):
            raise BadInput(f"got {len(vectors)} vectors but {len(ids)} ids")
        metas = [dict(m) if m else {} for m in metadata] if metadata is not None else [{} for _ in ids]
        if len(metas) != len(ids):
            raise BadInput(f"got {len(ids)} ids but {len(metas)} metadata entries")
        seen: set[ItemId] = set()
        for item_id, meta in zip(ids, metas, strict=True):
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
                raise BadInput(f"ids must be str or int, got {item_id!r} ({type(item_id).__name__})")
            if item_id in seen:
                raise BadInput(f"id {item_id!r} appears twice in one add() call")
            seen.add(item_id)
            try:
                json.dumps(meta, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise BadInput(f"metadata of id {item_id!r} is not JSON-serialisable: {exc}") from exc
        if not len(vectors):
            return
        with self._lock.write():
            held = {i for _, held_ids, _ in self._held for i in held_ids}
            if any(i in held for i in ids):
                raise BadInput(f"id {next(i for i in ids if i in held)!r} is already held out for calibration", hint="save the index first")
            dupes = [i for i in ids if i in self._items]
            if dupes and not replace:
                raise BadInput(
                    f"{len(dupes)} id(s) already in the index, e.g. {dupes[0]!r}",
                    hint="remove them first, or pass replace=True to overwrite",
                )
            if held_out:
                self._held.append((vectors, ids, metas))
            else:
                self._insert(vectors, ids, metas)

    def _insert(self, vectors: np.ndarray, ids: list[ItemId], metas: list[dict[str, Any]]) -> None:
        """Put checked items into the graph, replacing live ones of the same id (under the write lock)."""
        for item_id in [i for i in ids if i in self._items]:
            self._hnsw.mark_deleted(self._items.pop(item_id))
        # replace_deleted puts new items into removed items' slots first; only the rest need room
        slots = self._hnsw.element_count + max(0, len(ids) - (self._hnsw.element_count - len(self._items)))
        if slots > self._hnsw.get_max_elements():
            self._hnsw.resize_index(max(slots, 2 * self._hnsw.get_max_elements()))
        start = self._items.next_label
        self._hnsw.add_items(vectors, np.arange(start, start + len(ids), dtype=np.int64), replace_deleted=True)
        self._remember(start, vectors)
        self._items.append(ids, metas)
        self._matrix = None

    def remove(self, ids: Sequence[ItemId]) -> None:
        """Remove items by id; an unknown id is an error (and nothing is removed)."""
        ids = list(ids)
        with self._lock.write():
            missing = [i for i in ids if i not in self._items]
            if missing:
                raise BadInput(f"cannot remove {len(missing)} unknown id(s), e.g. {missing[0]!r}")
            for item_id in ids:
                self._hnsw.mark_deleted(self._items.pop(item_id))
            self._matrix = None

    # -- search --------------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef: int | None = None,
        filter: Filter | None = None,
        exact: bool | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row, best first; fewer than ``k`` when fewer items qualify.

        ``queries`` is (N, dim) or a single (dim,) vector (then one list is returned in the outer list).
        ``filter`` is a callable on an item's metadata or a dict of required metadata values.
        ``exact=None`` uses exact search below ``exact_below`` live items or when the filter leaves few;
        ``ef`` other than the index default serialises this call (hnswlib keeps ef index-wide).
        """
        queries = self._check_vectors(np.atleast_2d(queries) if np.ndim(queries) == 1 else queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise BadInput(f"k must be a positive integer, got {k!r}")
        if ef is not None and (not isinstance(ef, int) or ef <= 0):
            raise BadInput(f"ef must be a positive integer, got {ef!r}")
        accept = make_filter(filter)
        lock = self._lock.write() if ef is not None and ef != self._ef else self._lock.read()
        with lock:
            allowed = None if accept is None else self._items.labels(accept)
            n_live = len(self._items) if allowed is None else len(allowed)
            k = min(int(k), n_live)
            if k == 0 or len(queries) == 0:
                return [[] for _ in queries]
            use_exact = exact if exact is not None else n_live < self.exact_below
            if use_exact:
                labels, scores = self._exact(queries, k, allowed)
            else:
                labels, scores = self._approximate(queries, k, ef, allowed)
            return [
                [self._items.hit(lab, float(s)) for lab, s in zip(row_l, row_s, strict=True) if lab >= 0]
                for row_l, row_s in zip(labels, scores, strict=True)
            ]

    def _approximate(
        self, queries: np.ndarray, k: int, ef: int | None, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if ef is not None and ef != self._ef:
            self._hnsw.set_ef(ef)  # under the write lock, see search()
        try:
            if allowed is None:
                labels, dists = self._hnsw.knn_query(queries, k=k)
            else:
                mask = np.zeros(self._items.next_label, bool)
                mask[allowed] = True
                # The Python callback runs under the GIL, so extra hnswlib threads would only contend.
                labels, dists = self._hnsw.knn_query(queries, k=k, num_threads=1, filter=lambda lab: bool(mask[lab]))
        except RuntimeError:
            # hnswlib raises when the graph walk finds fewer than k (sparse filter, many deletions):
            # the exact answer is always available and correct.
            return self._exact(queries, k, allowed)
        finally:
            if ef is not None and ef != self._ef:
                self._hnsw.set_ef(self._ef)
        return labels.astype(np.int64), 1.0 - dists  # hnswlib distance is 1 - similarity for cosine and ip

    def _exact(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        labels, vectors = self._live_matrix()
        return exact_search(queries, labels, vectors, k, self.space, allowed)

    def _live_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Live labels and their stored vectors (normalised by hnswlib for cosine), cached until a change."""
        with self._matrix_lock:
            if self._matrix is None:
                labels = self._items.labels()
                # get_items returns lists of Python floats in every hnswlib build we install (chroma-hnswlib 0.7
                # has no return_type), 32 B a value: read in blocks into one float32 array, so the peak stays
                # near the matrix (2 GB at 1M x 512) instead of 16 GB of lists, which killed a 1M x 512 calibration
                vectors = np.empty((len(labels), self.dim), np.float32)
                for start in range(0, len(labels), _GET_BLOCK):
                    block = labels[start : start + _GET_BLOCK]
                    vectors[start : start + len(block)] = np.asarray(self._hnsw.get_items(block), dtype=np.float32).reshape(-1, self.dim)
                self._matrix = (labels, vectors)
            return self._matrix

    def _check_vectors(self, x: Any, what: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise BadInput(
                f"{what} must have shape (N, {self.dim}), got {x.shape}", hint="was it embedded by another model?"
            )
        if not np.isfinite(x).all():
            raise BadInput(f"{what} contain NaN or infinite values")
        if self.space == "cosine" and len(x) and (np.linalg.norm(x, axis=1) == 0).any():
            raise BadInput(f"{what} contain an all-zero vector, which has no direction for cosine similarity")
        return np.ascontiguousarray(x)

    # -- recall ----------------------------------------------------------------------------------------

    def calibrate(
        self,
        *,
        target: float = TARGET_RECALL,
        queries: int = CALIBRATION_QUERIES,
        max_ef: int = MAX_EF,
        max_M: int = MAX_M,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Measure recall@10 against exact float32 search; raise ``ef`` (by a quarter a step), then ``M`` (a rebuild), until it reaches ``target``.

        With items held out (``add(..., held_out=True)``) up to ``queries`` of them are the queries and
        all are inserted afterwards; the same ef is also measured with stored items as queries, and the
        difference is recorded as the gallery's ``gap``. Without held-out items up to ``queries`` stored
        vectors are the queries (each excluding itself from both answers) and must reach ``target`` plus
        the recorded gap (:data:`.recall.DEFAULT_GAP` if none). A quantized index also measures exact search on
        its stored vectors (``ceiling``): no ef or M can beat it, so when it is below the target they are
        raised only until the graph comes within :data:`.recall.CEILING_SLACK` of it; when it is at or above
        the target, ef is raised towards the target and M only while the graph is farther than that from it.
        The recall must pass with a margin for its sample: the mean minus :data:`.recall.CONFIDENCE_Z` standard
        errors, except within the slack of a quantized ceiling.
        ``ef`` and ``M`` are never lowered. Searches wait while it runs. The result is recorded
        (:meth:`recall`) and returned.
        """
        return recall.calibrate(self, target=target, queries=queries, max_ef=max_ef, max_M=max_M, seed=seed)

    def _rebuild(self, M: int, live: np.ndarray, vectors: np.ndarray) -> None:
        """Build the graph again with ``M`` links per node from the ``live`` labels' ``vectors`` (under the write lock)."""
        graph = self._new_graph(max(len(live), 1), M)
        if len(live):
            graph.add_items(vectors, live, replace_deleted=True)
        self._hnsw, self.M = graph, M

    def _remember(self, start: int, vectors: np.ndarray) -> None:
        """Keep the float32 rows of labels ``start``... (unit length for cosine) for :meth:`calibrate`, if this index keeps them."""
        if self._reference is None:
            return
        end = start + len(vectors)
        if end > len(self._reference):
            grown = np.zeros((max(end, 2 * len(self._reference)), self.dim), np.float32)
            grown[: len(self._reference)] = self._reference
            self._reference = grown
        self._reference[start:end] = in_space(vectors, self.space)

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, folder: str | Path, *, calibrate: bool = True) -> None:
        """Write ``index.bin`` (hnswlib) and the sealed ``index.json`` (params, items, recall, sha256) into ``folder``.

        With ``calibrate``, or while items are held out, the recall is measured first (:meth:`calibrate`),
        raising ``ef`` only: a rebuild with a larger ``M`` takes minutes at a million items, too long to
        hold a live service's searches (``proxyembed serve`` saves here), so it is left to an explicit
        :meth:`calibrate` (``proxyembed index`` calls it). The sidecar is written last and names the index
        file's hash, so a crash in between is detected at load. Searches may continue while writing;
        writers wait.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if calibrate or self._held:
            self.calibrate(max_M=self.M)
        with self._lock.read():
            persist.write(self, folder)

    @classmethod
    def load(cls, folder: str | Path, *, exact_below: int = EXACT_BELOW) -> Index:
        """Read an index written by :meth:`save`; an altered or truncated file raises :class:`IntegrityError`."""
        return persist.read(cls, Path(folder), exact_below=exact_below)
