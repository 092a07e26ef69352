"""Embedding many images when some may be unreadable: each decoded once, the readable ones encoded in batches.

Every corpus path goes through here: ``proxyembed embed`` (a bundle or a run dir, into an embeddings
file), ``Retriever.add`` (``proxyembed index``) and the Ray actors of ``proxyembed embed --engine ray``.
An unreadable image never stops the others: its row stays zero and the reason travels with it, so the
caller can record it (the embeddings file's ``skipped``, the gallery's report) instead of dropping it.
``encode`` is any preprocessed-batch-to-embeddings call (``Encoder.encode_batch``, or a PyTorch model's),
which is what keeps this module torch-free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .embeddings import EmbeddingWriter
from .encoder import Encoder
from .errors import BadInput
from .preprocess import ImageLike, Preprocessor, map_in_chunks
from .progress import ProgressArg, progress_callback

Encode = Callable[[np.ndarray], np.ndarray]
"""A float32 NCHW batch in, (N, D) float32 embeddings out."""


def encoder_source(encoder: Encoder) -> dict[str, Any]:
    """The identity an embeddings file records for a bundle's encoder: what ``index --from-embeddings`` and a resume check."""
    return {**encoder.bundle.signature, "bundle": str(encoder.bundle.path), "precision": encoder.precision}


def decode_or_error(pre: Preprocessor, src: ImageLike) -> np.ndarray | BadInput:
    """One image preprocessed to a CHW array, or the :class:`BadInput` saying why it cannot be read."""
    try:
        return pre.image(src)
    except BadInput as exc:
        return exc


def encode_readable(encode: Encode, dim: int, decoded: Sequence[np.ndarray | BadInput]) -> np.ndarray:
    """(N, dim) float32 rows for ``decoded``: the readable images encoded in one batch, the others left zero."""
    rows = np.zeros((len(decoded), dim), np.float32)
    ok = [i for i, x in enumerate(decoded) if isinstance(x, np.ndarray)]
    if ok:
        rows[ok] = encode(np.stack([decoded[i] for i in ok]))  # type: ignore[misc]
    return rows


def embed_stream(
    encode: Encode, dim: int, pre: Preprocessor, images: Iterable[ImageLike], batch_size: int, *, workers: int | None = None
) -> Iterator[tuple[np.ndarray, list[tuple[int, BadInput]]]]:
    """Per batch of ``images``, in order: its rows and the (offset, error) of each unreadable image in it.

    Decoding runs on ``workers`` threads one batch ahead of the encoder (:func:`map_in_chunks`), so a
    generator over millions of files streams in bounded memory.
    """
    for chunk in map_in_chunks(functools.partial(decode_or_error, pre), images, batch_size, workers=workers):
        yield encode_readable(encode, dim, chunk), [(i, x) for i, x in enumerate(chunk) if isinstance(x, BadInput)]


def embed_to_file(
    encode: Encode,
    dim: int,
    pre: Preprocessor,
    items: Sequence[dict[str, Any]],
    out: Path,
    *,
    source: dict[str, Any],
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 64,
    workers: int | None = None,
    overwrite: bool = False,
    progress: ProgressArg = False,
) -> dict[str, Any]:
    """Embed ``items`` (``{"id", "path", ...}`` rows, as :func:`list_images` gives) into the embeddings file ``out``.

    Resumes where an interrupted run on the same items, model (``source``) and shard stopped, unless
    ``overwrite``. Returns ``{"rows", "resumed_from", "skipped"}``; the skipped rows' offsets are in the file's sidecar.
    """
    writer = EmbeddingWriter(out, items, dim, source, shard, overwrite=overwrite)
    resumed = writer.done
    with writer, progress_callback(progress, len(items) - resumed, "embedding") as advance:
        for vectors, unreadable in embed_stream(encode, dim, pre, (it["path"] for it in items[resumed:]), batch_size, workers=workers):
            writer.write(vectors, [i for i, _ in unreadable])
            if advance is not None:
                advance(len(vectors))
    return {"rows": len(items), "resumed_from": resumed, "skipped": len(writer.info["skipped"])}
