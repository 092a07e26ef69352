"""A nearest-neighbour index over embeddings: hnswlib with the checks hnswlib leaves to its caller.

What this adds to hnswlib 0.8 (REFERENCES.md): ids of the caller's choosing (strings or ints) and
JSON metadata per item; capacity that grows by itself; dimension, k and finiteness checks before any
call into C++; fewer than k hits instead of an exception when the live items (or those passing a
filter) run short; exact numpy search for small galleries and for measuring recall; ``ef`` and the
space/dim stored beside the index file, with its sha256 checked before hnswlib ever reads it; and a
readers-writer lock, so searches run in parallel while add / remove wait for exclusive access.

Duplicate ids: adding an id that is already live raises :class:`BadInput` unless ``replace=True``, in
which case the old vector is removed and the new one added (an id occurs once in any result).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import BadInput, IntegrityError
from .files import read_json_object, write_json_atomic
from .manifest import sha256_file
from .metrics import knn
from .rwlock import RWLock

ItemId = str | int
Filter = Callable[[dict[str, Any]], bool] | Mapping[str, Any]

INDEX_FILE = "index.bin"
SIDECAR_FILE = "index.json"
FORMAT_VERSION = 1

# Chosen from benchmarks/index_speed.py (results/index_speed.md): the smallest ef with recall@10 >= 0.99
# against exact search on clustered unit vectors, dim 128, M=16, ef_construction=200 — at 100k items
# ef=32 gives 0.985 and ef=64 0.994 (10k: 0.9992 / 0.9997). At 1M items (results/index_speed_1m.md) M=16
# tops out at 0.974 even with ef=256: galleries that large want M=32 and a larger ef, measured on them.
DEFAULT_EF = 64
# Below this many live items search is exact: a numpy pass costs well under a millisecond per query at
# this size (same benchmark), so hnswlib's approximation would buy nothing worth a missed neighbour.
EXACT_BELOW = 2000
_INITIAL_CAPACITY = 1024


@dataclass(frozen=True)
class Hit:
    """One search result: the caller's id, the similarity (cosine for space='cosine'), the item's metadata."""

    id: ItemId
    score: float
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "metadata": self.metadata}


class Index:
    """hnswlib HNSW index keyed by caller ids, with metadata, filters, exact search and safe save/load.

    ``space="cosine"`` normalises vectors (zero vectors are refused); ``"ip"`` uses raw inner products.
    Scores are similarities, higher is better, in both spaces.
    """

    def __init__(
        self,
        dim: int,
        space: Literal["cosine", "ip"] = "cosine",
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = DEFAULT_EF,
        exact_below: int = EXACT_BELOW,
        capacity: int = _INITIAL_CAPACITY,
        _load_from: Path | None = None,
    ) -> None:
        import hnswlib

        if not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"index dim must be a positive integer, got {dim!r}")
        if space not in ("cosine", "ip"):
            raise BadInput(f"unknown index space '{space}'", hint="use 'cosine' or 'ip'")
        for name, value in (("M", M), ("ef_construction", ef_construction), ("ef", ef)):
            if not isinstance(value, int) or value <= 0:
                raise BadInput(f"index {name} must be a positive integer, got {value!r}")
        self.dim, self.space, self.M, self.ef_construction = dim, space, M, ef_construction
        self.exact_below = exact_below
        self._ef = ef
        self._hnsw = hnswlib.Index(space=space, dim=dim)
        if _load_from is None:
            self._hnsw.init_index(max_elements=max(capacity, 1), ef_construction=ef_construction, M=M)
        else:  # Index.load: the sha256 was checked, so hnswlib reads a file it wrote
            try:
                self._hnsw.load_index(str(_load_from), max_elements=capacity)
            except RuntimeError as exc:
                raise IntegrityError(f"hnswlib cannot read {_load_from}: {exc}") from exc
        self._hnsw.set_ef(ef)
        self._ids: list[ItemId | None] = []  # label -> id, None once removed
        self._meta: list[dict[str, Any] | None] = []  # label -> metadata
        self._labels: dict[ItemId, int] = {}  # live id -> label
        self._lock = RWLock()
        self._matrix_lock = threading.Lock()
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None  # (labels, vectors) of live items, for exact search

    # -- properties ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of live (not removed) items."""
        return len(self._labels)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._labels

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
        """Live ids in insertion order."""
        with self._lock.read():
            return [i for i in self._ids if i is not None]

    def metadata(self, item_id: ItemId) -> dict[str, Any]:
        with self._lock.read():
            if item_id not in self._labels:
                raise BadInput(f"id {item_id!r} is not in the index")
            return dict(self._meta[self._labels[item_id]] or {})

    def params(self) -> dict[str, Any]:
        """The construction and search parameters (what a gallery records)."""
        return {
            "dim": self.dim,
            "space": self.space,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self._ef,
        }

    # -- mutation ------------------------------------------------------------------------------------

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[ItemId],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Add ``vectors`` (N, dim) under ``ids``; metadata must be JSON-serialisable dicts.

        Everything is checked before anything is inserted, so a bad batch leaves the index unchanged.
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
            dupes = [i for i in ids if i in self._labels]
            if dupes and not replace:
                raise BadInput(
                    f"{len(dupes)} id(s) already in the index, e.g. {dupes[0]!r}",
                    hint="remove them first, or pass replace=True to overwrite",
                )
            start = len(self._ids)
            needed = start + len(ids)
            if needed > self._hnsw.get_max_elements():
                self._hnsw.resize_index(max(needed, 2 * self._hnsw.get_max_elements()))
            self._hnsw.add_items(vectors, np.arange(start, needed, dtype=np.int64))
            for item_id in dupes:
                self._delete_label(self._labels[item_id])
            for offset, (item_id, meta) in enumerate(zip(ids, metas, strict=True)):
                self._ids.append(item_id)
                self._meta.append(meta)
                self._labels[item_id] = start + offset
            self._matrix = None

    def remove(self, ids: Sequence[ItemId]) -> None:
        """Remove items by id; an unknown id is an error (and nothing is removed)."""
        ids = list(ids)
        with self._lock.write():
            missing = [i for i in ids if i not in self._labels]
            if missing:
                raise BadInput(f"cannot remove {len(missing)} unknown id(s), e.g. {missing[0]!r}")
            for item_id in ids:
                self._delete_label(self._labels.pop(item_id))
            self._matrix = None

    def _delete_label(self, label: int) -> None:
        self._hnsw.mark_deleted(label)
        self._ids[label] = None
        self._meta[label] = None

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
        accept = _make_filter(filter)
        lock = self._lock.write() if ef is not None and ef != self._ef else self._lock.read()
        with lock:
            allowed = None
            n_live = len(self._labels)
            if accept is not None:
                allowed = np.array(
                    [label for label in self._labels.values() if accept(self._meta[label] or {})], np.int64
                )
                n_live = len(allowed)
            k = min(int(k), n_live)
            if k == 0 or len(queries) == 0:
                return [[] for _ in queries]
            use_exact = exact if exact is not None else n_live < self.exact_below
            if use_exact:
                labels, scores = self._exact(queries, k, allowed)
            else:
                labels, scores = self._approximate(queries, k, ef, allowed)
            return [
                [
                    Hit(self._ids[lab], float(s), dict(self._meta[lab] or {}))
                    for lab, s in zip(row_l, row_s, strict=True)
                    if lab >= 0
                ]
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
                mask = np.zeros(len(self._ids), bool)
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
        if allowed is not None:
            keep = np.isin(labels, allowed)
            labels, vectors = labels[keep], vectors[keep]
        if self.space == "cosine":
            queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        idx, sims = knn(queries, vectors, k)
        return labels[idx], sims

    def _live_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Live labels and their stored vectors (normalised by hnswlib for cosine), cached until a change."""
        with self._matrix_lock:
            if self._matrix is None:
                labels = np.array(sorted(self._labels.values()), np.int64)
                # get_items returns lists in every hnswlib build we install (chroma-hnswlib 0.7 has no return_type)
                vectors = np.asarray(self._hnsw.get_items(labels) if len(labels) else [], dtype=np.float32).reshape(-1, self.dim)
                self._matrix = (labels, np.ascontiguousarray(vectors))
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

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``index.bin`` (hnswlib) and ``index.json`` (params, id table, metadata, sha256) into ``folder``.

        The sidecar is written last and names the index file's hash, so a crash in between is detected
        at load. Searches may continue while saving; writers wait.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            tmp_index = folder / (INDEX_FILE + ".tmp")
            self._hnsw.save_index(str(tmp_index))
            digest = sha256_file(tmp_index)
            sidecar = {
                "format_version": FORMAT_VERSION,
                **self.params(),
                "count": len(self._labels),
                "capacity": self._hnsw.get_max_elements(),
                "index_file": INDEX_FILE,
                "index_sha256": digest,
                "ids": self._ids,
                "metadata": self._meta,
            }
            os.replace(tmp_index, folder / INDEX_FILE)
            write_json_atomic(folder / SIDECAR_FILE, sidecar, indent=1)

    @classmethod
    def load(cls, folder: str | Path, *, exact_below: int = EXACT_BELOW) -> Index:
        """Read an index written by :meth:`save`; an altered or truncated file raises :class:`IntegrityError`."""
        folder = Path(folder)
        side = _read_sidecar(folder / SIDECAR_FILE)
        index_file = folder / INDEX_FILE
        if not index_file.is_file():
            raise IntegrityError(f"index file missing: {index_file}")
        if sha256_file(index_file) != side["index_sha256"]:
            raise IntegrityError(
                f"index file altered or truncated: {index_file} does not match {SIDECAR_FILE}",
                hint="rebuild the gallery",
            )
        index = cls(
            side["dim"],
            side["space"],
            M=side["M"],
            ef_construction=side["ef_construction"],
            ef=side["ef"],
            exact_below=exact_below,
            capacity=side["capacity"],
            _load_from=index_file,
        )
        ids, meta = side["ids"], side["metadata"]
        if index._hnsw.element_count != len(ids) or len(meta) != len(ids):
            raise IntegrityError(
                f"{folder / SIDECAR_FILE} lists {len(ids)} items, {index_file} holds {index._hnsw.element_count}"
            )
        index._ids, index._meta = ids, meta
        index._labels = {item_id: label for label, item_id in enumerate(ids) if item_id is not None}
        if len(index._labels) != side["count"]:
            raise IntegrityError(f"{folder / SIDECAR_FILE}: count {side['count']} but {len(index._labels)} live ids")
        return index


def _make_filter(filter: Filter | None) -> Callable[[dict[str, Any]], bool] | None:
    if filter is None or callable(filter):
        return filter
    if isinstance(filter, Mapping):
        wanted = dict(filter)
        return lambda meta: all(key in meta and meta[key] == value for key, value in wanted.items())
    raise BadInput(f"filter must be a callable or a dict of metadata values, got {type(filter).__name__}")


_SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "dim": int,
    "space": str,
    "M": int,
    "ef_construction": int,
    "ef": int,
    "count": int,
    "capacity": int,
    "index_sha256": str,
    "ids": list,
    "metadata": list,
}


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = read_json_object(
        path,
        missing=f"index sidecar missing: {path}",
        hint="is this a folder written by Index.save or `proxyembed index`?",
        broken_hint="rebuild the gallery",
        fields=_SIDECAR_FIELDS,
    )
    if side["format_version"] != FORMAT_VERSION:
        raise BadInput(
            f"{path}: index format_version {side['format_version']} is not supported (expected {FORMAT_VERSION})"
        )
    if side["space"] not in ("cosine", "ip"):
        raise IntegrityError(f"{path}: unknown space {side['space']!r}")
    return side
