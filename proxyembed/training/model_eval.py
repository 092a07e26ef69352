"""Evaluation of a PyTorch embedding network on held-out classes.

Images go through the runtime's :class:`Preprocessor` (the one evaluation transform), so the numbers
here are the reference that export validation and ``proxyembed check`` compare against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from proxyembed.data.image_cache import ImageCache
from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime.evaluation import evaluate_split
from proxyembed.runtime.metrics import NmiMode
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

from .inference import torch_encode_batch


def embed_samples(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    normalize: bool = True,
    cache: ImageCache | None = None,
) -> np.ndarray:
    """float32 (N, D) embeddings of ``samples``, in order; ``on_batch(n)`` reports progress.

    ``model`` runs in eval mode through :func:`~.inference.torch_encode_batch` (``normalize=False``: its
    output before the L2 normalisation, for fitting the whitening) and is put back in the mode it was in.
    ``cache`` (square view of ``spec``) holds the squared pixels of some or all samples; the others are decoded.
    """
    was_training = model.training
    model.eval()
    encode = torch_encode_batch(model, device=device, autocast_dtype=autocast_dtype, normalize=normalize)
    out = []
    try:
        for batch in input_batches(samples, spec, batch_size, cache):
            out.append(encode(batch))
            if on_batch:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def input_batches(samples: Sequence[Sample], spec: PreprocessSpec, batch_size: int, cache: ImageCache | None = None) -> Iterator[np.ndarray]:
    """NCHW float32 batches of ``samples`` under ``spec``: normalised from ``cache`` where it holds them, else decoded
    (the same pixels: the cache keeps ``Preprocessor.square`` of ``Preprocessor.decode``)."""
    pre = Preprocessor(spec)
    if cache is None:
        yield from pre.batches((s.source for s in samples), batch_size)
        return
    for lo in range(0, len(samples), batch_size):
        chunk = [(s, cache.lookup(s)) for s in samples[lo : lo + batch_size]]
        yield np.stack([pre.image(s.source) if px is None else pre.normalise(px) for s, px in chunk])


def evaluate_model(
    model: torch.nn.Module,
    data: DataSplit,
    spec: PreprocessSpec,
    *,
    device: torch.device | str = "cpu",
    nmi: NmiMode = "auto",
    batch_size: int = 128,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    cache: ImageCache | None = None,
) -> dict[str, float]:
    """Recall@K (the data's Ks), MAP@R, R-Precision and NMI (``nmi``: auto skips it for large splits) on the evaluation classes."""
    kw = dict(device=device, batch_size=batch_size, autocast_dtype=autocast_dtype, on_batch=on_batch, cache=cache)
    return split_metrics(data, lambda samples: embed_samples(model, samples, spec, **kw), nmi=nmi)


def split_metrics(data: DataSplit, embed: Callable[[Sequence[Sample]], np.ndarray], *, nmi: NmiMode = "auto") -> dict[str, float]:
    """The metrics of :func:`evaluate_model` for any way of embedding samples (one process or sharded).

    All-vs-all on ``data.eval``, or queries against ``data.gallery`` when the data defines one (no NMI
    then): the runtime's evaluation core, which export validation and ``check`` share.
    """
    return evaluate_split(data, lambda samples: {"model": embed(samples)}, nmi=nmi).metrics["model"]
