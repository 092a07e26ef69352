"""The data model every loader builds and every consumer reads: a :class:`Sample` and a :class:`DataSplit`.

Kept apart from the resolver (:mod:`.resolve`) so the loaders it dispatches to (:mod:`.synthetic`,
:mod:`.folder`, :mod:`.benchmarks`) import these types without importing the resolver back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import ImageLike, PreprocessSpec


@dataclass(frozen=True)
class Sample:
    """One image and its class. ``source`` is a file path, encoded bytes or an in-memory uint8 HxWxC array;
    ``meta`` holds a list file's extra columns (written into shards beside the image)."""

    source: ImageLike
    label: int
    key: str  # stable identifier: relative path, or "synthetic/<class>/<n>"
    meta: dict[str, Any] | None = field(default=None, compare=False, hash=False)


@dataclass
class DataSplit:
    """Training and evaluation samples with disjoint classes.

    In query->gallery mode (In-Shop) ``eval`` holds the queries and ``gallery`` the gallery.
    ``preprocess`` is the evaluation transform that suits the data (the synthetic images are small).
    """

    name: str
    train: list[Sample]
    eval: list[Sample]
    gallery: list[Sample] | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    preprocess: PreprocessSpec | None = None
    ks: tuple[int, ...] = (1, 2, 4, 8)
    warnings: list[str] = field(default_factory=list)
    # Tar shards streamed for training (proxyembed.data.shards.ShardSet) instead of the ``train`` list, which is then empty.
    stream: Any = None

    def describe(self) -> str:
        if self.stream is not None:
            n_ev = len({s.label for s in self.eval})
            return (f"{self.name}: {self.stream.images} training images / {len(self.stream.per_class)} classes streamed from "
                    f"{len(self.stream.urls)} shards, {len(self.eval)} evaluation images / {n_ev} classes")
        n_tr = len({s.label for s in self.train})
        n_ev = len({s.label for s in self.eval})
        return f"{self.name}: {len(self.train)} training images / {n_tr} classes, {len(self.eval)} evaluation images / {n_ev} classes"

    def fingerprint(self) -> dict[str, Any]:
        """A digest of the evaluation file list and labels, to tell whether two runs used the same data."""
        h = hashlib.sha256()
        for part, samples in (("eval", self.eval), ("gallery", self.gallery or [])):
            for s in samples:
                h.update(f"{part}\t{s.key}\t{self.class_names.get(s.label, s.label)}\n".encode())
        n_classes = len({s.label for s in self.eval})
        return {"name": self.name, "sha256": h.hexdigest(), "images": len(self.eval) + len(self.gallery or []), "classes": n_classes}


def hold_out_classes(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """``samples`` split by class: the rest, and the last ``fraction`` of the sorted class labels held out
    (how ``--val-fraction`` picks its validation classes; the reference benchmark scores on the same)."""
    classes = sorted({s.label for s in samples})
    held = set(classes[len(classes) - round(len(classes) * fraction) :])
    return [s for s in samples if s.label not in held], [s for s in samples if s.label in held]


def with_eval_split(name: str, train: list[Sample], names: dict[int, str], eval_split: DataSplit, *, trained: Collection[str] | None = None,
                    warnings: list[str] | None = None, stream: Any = None) -> DataSplit:
    """``--eval-data``: training samples (or a ``stream``) labelled by ``names``, evaluated on every class of ``eval_split``
    (its queries and gallery), relabelled to follow ``names``' labels. A class both trained (``trained``, default every
    name) and evaluated is a :class:`~proxyembed.runtime.errors.BadInput`: evaluation classes must be unseen. Every
    sample keeps its metadata; ``eval_split``'s warnings follow ``warnings``. The list file and shard loaders share it."""
    both = sorted(set(names.values() if trained is None else trained) & set(eval_split.class_names.values()))
    if both:
        raise BadInput(f"classes {both[:5]} are in both '{name}' and '{eval_split.name}'", hint="evaluation classes must be unseen in training")
    shift = max(names, default=-1) + 1

    def moved(samples: list[Sample]) -> list[Sample]:
        return [Sample(s.source, s.label + shift, s.key, s.meta) for s in samples]

    return DataSplit(
        name=name, train=train, eval=moved(eval_split.eval), gallery=None if eval_split.gallery is None else moved(eval_split.gallery),
        class_names={**names, **{label + shift: n for label, n in eval_split.class_names.items()}}, ks=eval_split.ks,
        warnings=[*(warnings or []), *eval_split.warnings], stream=stream,
    )
