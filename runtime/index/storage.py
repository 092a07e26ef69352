"""How an index measures and stores vectors: the metric space, the vector storage and the graph that holds them.

``space`` is the similarity: ``"cosine"`` (vectors made unit length, so the dot product is the cosine) or
``"ip"`` (raw inner products). ``vectors`` is how the graph stores them: float32 in hnswlib, or float16 /
int8 in usearch (:mod:`.usearch`, the ``quantized`` extra). Both graphs answer the same few calls, so
:class:`~.core.Index` never asks which one it holds.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from ..errors import BadInput
from ..metrics import l2_normalize

Space = Literal["cosine", "ip"]
SPACES: tuple[Space, ...] = get_args(Space)
VectorStorage = Literal["f32", "f16", "i8"]
VECTOR_STORAGE: tuple[VectorStorage, ...] = get_args(VectorStorage)
BYTES_PER_VALUE: dict[str, int] = {"f32": 4, "f16": 2, "i8": 1}


def check_storage(vectors: str, space: str) -> None:
    """Refuse an unknown space or storage, and int8 for inner products (its per-vector scaling discards the norm)."""
    if space not in SPACES:
        raise BadInput(f"unknown index space '{space}'", hint=f"use one of {', '.join(SPACES)}")
    if vectors not in VECTOR_STORAGE:
        raise BadInput(f"unknown vector storage {vectors!r}", hint=f"use one of {', '.join(VECTOR_STORAGE)}")
    if vectors == "i8" and space != "cosine":
        raise BadInput("int8 vector storage needs space='cosine'", hint="use --vectors f16 for inner-product galleries")


def in_space(x: np.ndarray, space: str) -> np.ndarray:
    """Rows as the space compares them: unit length for ``"cosine"``, unchanged for ``"ip"``."""
    return l2_normalize(x) if space == "cosine" else x


def new_graph(space: Space, dim: int, vectors: VectorStorage, *, capacity: int, M: int, ef_construction: int, init: bool = True) -> Any:
    """A graph for this storage (hnswlib for f32, usearch for f16 / i8): empty with ``init``, else ready for ``load_index``."""
    if vectors == "f32":
        import hnswlib

        graph = hnswlib.Index(space=space, dim=dim)
    else:
        from .usearch import QuantizedGraph

        graph = QuantizedGraph(space, dim, vectors)
    if init:
        graph.init_index(max_elements=capacity, ef_construction=ef_construction, M=M, allow_replace_deleted=True)
    return graph
