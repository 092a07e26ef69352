"""How an index measures and stores vectors: the metric space and the vector storage, checked and applied.

``space`` is the similarity: ``"cosine"`` (vectors made unit length, so the dot product is the cosine) or
``"ip"`` (raw inner products). ``vectors`` is how the graph stores them: float32 in hnswlib, or float16 /
int8 in usearch (:mod:`.usearch`, the ``quantized`` extra, which reads these definitions). Both graphs
answer the same few calls, so :class:`~.core.Index` picks one when it makes a graph and never asks again.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..errors import BadInput
from ..metrics import l2_normalize

Space = Literal["cosine", "ip"]
SPACES: tuple[Space, ...] = get_args(Space)
VectorStorage = Literal["f32", "f16", "i8"]
VECTOR_STORAGE: tuple[VectorStorage, ...] = get_args(VectorStorage)
BYTES_PER_VALUE: dict[str, int] = {"f32": 4, "f16": 2, "i8": 1}


def residual_bytes(dim: int) -> int:
    """Bytes of one int8 vector's residual bits (one a value, packed; :mod:`.usearch`)."""
    return (dim + 7) // 8


def vector_bytes(dim: int, vectors: str) -> int:
    """Bytes one stored vector of ``dim`` values takes: dim x 4, 2 or 1, and int8's residual bits."""
    return dim * BYTES_PER_VALUE[vectors] + (residual_bytes(dim) if vectors == "i8" else 0)


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
