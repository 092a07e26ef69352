"""The item table of an index: caller ids and graph labels, one to one, and each live item's metadata.

Labels are handed out in increasing order and never reused: the graph may put a new item into a removed
item's slot, but a reused label would leave a stale entry in hnswlib's label table. The table is not
locked itself; :class:`~.core.Index` calls it under its readers-writer lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError
from .search import Hit, ItemId


class ItemTable:
    """Live items: id -> label, label -> id and metadata, in insertion order (a replaced id counts as new)."""

    def __init__(self) -> None:
        self._ids: dict[int, ItemId] = {}  # live label -> id, in insertion order (so in label order)
        self._meta: dict[int, dict[str, Any]] = {}  # live label -> metadata
        self._labels: dict[ItemId, int] = {}  # live id -> label
        self.next_label = 0

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._labels

    def ids(self) -> list[ItemId]:
        return list(self._ids.values())

    def label(self, item_id: ItemId) -> int:
        """The graph label of a live id; an unknown id is a :class:`BadInput`."""
        if item_id not in self._labels:
            raise BadInput(f"id {item_id!r} is not in the index")
        return self._labels[item_id]

    def metadata(self, item_id: ItemId) -> dict[str, Any]:
        """A copy of a live item's metadata."""
        return dict(self._meta[self.label(item_id)])

    def labels(self, accept: Callable[[dict[str, Any]], bool] | None = None) -> np.ndarray:
        """Live labels in ascending order; only those whose metadata ``accept`` passes, when given."""
        return np.array([label for label in sorted(self._ids) if accept is None or accept(self._meta[label])], np.int64)

    def hit(self, label: int, score: float) -> Hit:
        return Hit(self._ids[label], score, dict(self._meta[label]))

    def append(self, ids: Sequence[ItemId], metas: Sequence[dict[str, Any]]) -> int:
        """Give new ids the next labels (none of them may be live); returns the first label."""
        start = self.next_label
        for label, (item_id, meta) in enumerate(zip(ids, metas, strict=True), start):
            self._ids[label], self._meta[label], self._labels[item_id] = item_id, meta, label
        self.next_label = start + len(ids)
        return start

    def pop(self, item_id: ItemId) -> int:
        """Forget a live id; returns the label it had (for the graph to delete)."""
        label = self._labels.pop(item_id)
        del self._ids[label], self._meta[label]
        return label

    def to_json(self) -> dict[str, Any]:
        """The table as the sidecar stores it."""
        return {"next_label": self.next_label, "labels": list(self._ids), "ids": list(self._ids.values()), "metadata": list(self._meta.values())}

    @classmethod
    def from_json(cls, side: dict[str, Any], where: Path) -> ItemTable:
        """The table a sidecar stores; labels must be distinct integers below ``next_label`` and ids distinct."""
        labels, ids, meta, next_label = side["labels"], side["ids"], side["metadata"], side["next_label"]
        if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < next_label for x in labels):
            raise IntegrityError(f"{where}: labels must be integers below next_label {next_label}")
        table = cls()
        table._ids = dict(zip(labels, ids, strict=True))
        table._meta = dict(zip(labels, meta, strict=True))
        table._labels = {item_id: label for label, item_id in table._ids.items()}
        if not (len(table._ids) == len(table._labels) == len(ids)):
            raise IntegrityError(f"{where}: a label or an id occurs twice")
        table.next_label = next_label
        return table
