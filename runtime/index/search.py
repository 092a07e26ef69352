"""What a search returns and how it narrows: :class:`Hit`, metadata filters, and exact search over the live items.

Exact search is the index's answer below ``exact_below`` items, when a filter leaves few, and whenever the
graph walk finds fewer than k (hnswlib raises then); it is also the truth calibration measures against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInput
from ..metrics import knn
from .storage import in_space

ItemId = str | int
Filter = Callable[[dict[str, Any]], bool] | Mapping[str, Any]


@dataclass(frozen=True)
class Hit:
    """One search result: the caller's id, the similarity (cosine for space='cosine'), the item's metadata."""

    id: ItemId
    score: float
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "metadata": self.metadata}


def make_filter(filter: Filter | None) -> Callable[[dict[str, Any]], bool] | None:
    """A predicate on an item's metadata: the callable given, or one requiring every key/value of a dict."""
    if filter is None or callable(filter):
        return filter
    if isinstance(filter, Mapping):
        wanted = dict(filter)
        return lambda meta: all(key in meta and meta[key] == value for key, value in wanted.items())
    raise BadInput(f"filter must be a callable or a dict of metadata values, got {type(filter).__name__}")


def exact_search(
    queries: np.ndarray, labels: np.ndarray, vectors: np.ndarray, k: int, space: str, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (labels, similarities) of ``queries`` among the stored ``vectors`` (rows of ``labels``), only ``allowed`` labels if given."""
    if allowed is not None:
        keep = np.isin(labels, allowed)
        labels, vectors = labels[keep], vectors[keep]
    idx, sims = knn(in_space(queries, space), vectors, k)
    return labels[idx], sims
