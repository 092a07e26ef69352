"""The one evaluation core: embed an evaluation split with any model(s), then compute the retrieval metrics.

Training-time evaluation (PyTorch), export validation (PyTorch reference and every exported artifact)
and ``proxyembed check`` (bundle artifacts through the runtime) differ only in how they embed images,
so that step is passed in and everything else — which samples, in which order, which Ks, which mode
(all-vs-all or query -> gallery) and the metrics themselves — lives here, torch-free.

``embed(samples)`` receives the split's sample objects (anything with ``source`` and ``label``) and
returns one L2-normalised float32 (N, D) array per model, keyed by a name the caller chooses: one
call feeds several models from one decode of each image. The queries are embedded first, then the
gallery (when the split has one), in two calls. :func:`embed_sources` is that step for any set of
:data:`EncodeBatch` callables (a PyTorch model, a served artifact, a bundle's :class:`Encoder`): each
batch is decoded and preprocessed once and fed to all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .metrics import NmiMode, retrieval_metrics
from .preprocess import Preprocessor


class EvalSample(Protocol):
    """An evaluation image: its source (a path or an array) and its class."""

    @property
    def source(self) -> Any: ...

    @property
    def label(self) -> int: ...


class EvalSplit(Protocol):
    """Evaluation data: ``eval`` (all-vs-all, or the queries), an optional ``gallery``, and the Recall@K Ks."""

    @property
    def eval(self) -> Sequence[EvalSample]: ...

    @property
    def gallery(self) -> Sequence[EvalSample] | None: ...

    @property
    def ks(self) -> Sequence[int]: ...


Embed = Callable[[Sequence[Any]], Mapping[str, np.ndarray]]

EncodeBatch = Callable[[np.ndarray], np.ndarray]
"""A preprocessed NCHW float32 batch in, (N, D) L2-normalised float32 embeddings out: ``Encoder.encode_batch``,
an exported file as served (``proxyembed.export.validate.served``) or a PyTorch model
(``proxyembed.training.inference.torch_encode_batch``)."""


def embed_sources(
    sources: Iterable[Any],
    preprocessor: Preprocessor,
    encoders: Mapping[str, EncodeBatch],
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings of ``sources`` (paths or images) by every encoder, keyed as ``encoders``; each image decoded once.

    ``on_batch(n)`` is called after each batch with the number of images in it. With no source at all,
    each array is empty, shaped (0, 0).
    """
    out: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    for batch in preprocessor.batches(sources, batch_size):
        for name, encode in encoders.items():
            out[name].append(encode(batch))
        if on_batch is not None:
            on_batch(len(batch))
    return {name: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for name, parts in out.items()}


@dataclass
class SplitEvaluation:
    """Each model's metrics, and the embeddings they came from (queries; gallery rows or None)."""

    metrics: dict[str, dict[str, float]]
    queries: dict[str, np.ndarray]
    gallery: dict[str, np.ndarray] | None


def evaluate_split(split: EvalSplit, embed: Embed, *, ks: Sequence[int] | None = None, nmi: NmiMode | bool = False) -> SplitEvaluation:
    """Embed ``split`` with ``embed`` and compute Recall@K (``ks``, default the split's), MAP@R and R-Precision per model.

    NMI (``nmi``: a mode of :func:`~proxyembed.runtime.metrics.nmi_wanted`) is computed in all-vs-all
    mode only: clustering a query set against a separate gallery has no single ground truth.
    """
    ks = tuple(split.ks if ks is None else ks)
    labels = np.array([s.label for s in split.eval])
    queries = dict(embed(split.eval))
    if not split.gallery:
        metrics = {name: retrieval_metrics(q, labels, ks=ks, nmi=nmi) for name, q in queries.items()}
        return SplitEvaluation(metrics, queries, None)
    gallery = dict(embed(split.gallery))
    g_labels = np.array([s.label for s in split.gallery])
    metrics = {
        name: retrieval_metrics(q, labels, ks=ks, gallery=gallery[name], gallery_labels=g_labels) for name, q in queries.items()
    }
    return SplitEvaluation(metrics, queries, gallery)
