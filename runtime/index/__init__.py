"""A nearest-neighbour index over embeddings: hnswlib with the checks hnswlib leaves to its caller.

What this adds to hnswlib 0.8, whose saved file holds neither space, dim nor a checksum and whose
knn_query raises below k hits: ids of the caller's choosing (strings or ints) and
JSON metadata per item; capacity that grows by itself; dimension, k and finiteness checks before any
call into C++; fewer than k hits instead of an exception when the live items (or those passing a
filter) run short; exact numpy search for small galleries and for measuring recall; ``ef`` and the
space/dim stored beside the index file, with its sha256 checked before hnswlib ever reads it; and a
readers-writer lock, so searches run in parallel while add / remove wait for exclusive access.

Duplicate ids: adding an id that is already live raises :class:`BadInput` unless ``replace=True``, in
which case the old vector is removed and the new one added (an id occurs once in any result).

Growth without decay: a removed item's slot is reused by the next add (hnswlib ``replace_deleted``), so
a gallery whose items are replaced over and over keeps its size; hnswlib labels are never reused (a
reused label would leave a stale entry in hnswlib's label table).

One concern a module:

- :mod:`.core`: :class:`Index` — checks, locks, add / remove, and search picking exact or approximate.
- :mod:`.items`: the item table (caller ids, graph labels, metadata).
- :mod:`.search`: :class:`Hit`, metadata filters, exact search.
- :mod:`.storage`: the metric space and the vector storage, and the graph that holds them.
- :mod:`.usearch`: float16 / int8 storage in usearch behind hnswlib's calls (the ``quantized`` extra).
- :mod:`.recall`: recall calibration against exact search (:meth:`Index.calibrate`).
- :mod:`.persist`: ``index.bin``, an int8 gallery's ``index.residual.npy`` and the sealed ``index.json`` sidecar
  (:meth:`Index.save`, :meth:`Index.load`).
"""

from .core import DEFAULT_EF, EXACT_BELOW, LARGE_GALLERY, Index
from .persist import FORMAT_VERSION, INDEX_FILE, RESIDUAL_FILE, SIDECAR_FILE
from .recall import CALIBRATION_QUERIES, RECALL_K, TARGET_RECALL
from .search import Filter, Hit, ItemId
from .storage import SPACES, VECTOR_STORAGE, Space, VectorStorage

__all__ = [
    "CALIBRATION_QUERIES",
    "DEFAULT_EF",
    "EXACT_BELOW",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "RESIDUAL_FILE",
    "LARGE_GALLERY",
    "RECALL_K",
    "SIDECAR_FILE",
    "SPACES",
    "TARGET_RECALL",
    "VECTOR_STORAGE",
    "Filter",
    "Hit",
    "Index",
    "ItemId",
    "Space",
    "VectorStorage",
]
