"""Within-class whitening of the embedding, fitted on the training images and folded into the head.

After training, the directions in which photos of one training class still differ from each other carry
noise, not identity; cosine similarity weighs them as much as any other. Dividing each direction by its
spread within the training classes (the pooled within-class covariance, shrunk towards its mean
eigenvalue) is the "learned whitening" of image retrieval (Mikolajczyk & Matas 2007; Radenović et al.
2018). It is a linear map of the head's output, so it folds into the head's weights: the network keeps
its shape, and export, the runtime and ``check`` see the whitened embedding without knowing about it.

A checkpoint stores the fitted map beside the unwhitened weights (``--resume`` continues from those);
:meth:`~proxyembed.training.checkpoint.Checkpoint.build_model` folds it in. docs/defaults.md has the
measurement behind the default shrinkage.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from proxyembed.data.types import Sample
from proxyembed.models import Embedder
from proxyembed.runtime.errors import BadInput

WHITEN_MAX_IMAGES = 20_000  # --whiten fits on at most this many training images per evaluation


@dataclass(frozen=True)
class Whitening:
    """``z -> matrix @ (z - mean)`` on the head's output, before the L2 normalisation."""

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D), symmetric
    shrink: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "matrix": self.matrix, "shrink": self.shrink, "images": self.images}

    @classmethod
    def from_dict(cls, d: Any, dim: int, source: str) -> Whitening:
        """Read a checkpoint's whitening, refusing one that cannot belong to a ``dim``-d embedding."""
        try:
            mean, matrix = d["mean"], d["matrix"]
            ok = isinstance(mean, torch.Tensor) and isinstance(matrix, torch.Tensor)
            ok = ok and tuple(mean.shape) == (dim,) and tuple(matrix.shape) == (dim, dim)
            ok = ok and bool(torch.isfinite(mean).all() and torch.isfinite(matrix).all())
            w = cls(mean.float(), matrix.float(), float(d["shrink"]), int(d["images"])) if ok else None
        except (KeyError, TypeError, ValueError):
            w = None
        if w is None:
            raise BadInput(f"checkpoint '{source}' holds a damaged whitening (not a finite {dim}-d map)", hint="retrain, or re-save the run")
        return w


def whitening_from_embeddings(z: np.ndarray, labels: Sequence[Hashable], shrink: float) -> Whitening | None:
    """Fit the whitening to unnormalised embeddings ``z`` (N, D) of labelled training images.

    ``shrink`` adds that many times the mean eigenvalue to every eigenvalue, so directions that hardly
    vary within a class are not blown up. None when no class has two images (nothing to measure).
    """
    if shrink <= 0:
        raise ValueError(f"shrink must be positive, got {shrink}")
    z64 = np.asarray(z, dtype=np.float64)
    index: dict[Hashable, int] = {}
    keys = np.asarray([index.setdefault(y, len(index)) for y in labels], dtype=np.int64)
    n, dim = z64.shape
    dof = n - len(index)
    if dof < 1:
        return None
    sums = np.zeros((len(index), dim))
    np.add.at(sums, keys, z64)
    means = sums / np.bincount(keys)[:, None]
    residual = z64 - means[keys]
    cov = residual.T @ residual / dof
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 0.0, None)
    if eigval.mean() <= 0:
        return None
    scale = 1.0 / np.sqrt(eigval + shrink * eigval.mean())
    matrix = (eigvec * scale) @ eigvec.T  # the symmetric (ZCA) form keeps the head's axes
    return Whitening(torch.from_numpy(z64.mean(0)).float(), torch.from_numpy(matrix).float(), shrink, n)


def fit_whitening(
    model: Embedder, samples: Sequence[Sample], shrink: float, *, embed: Callable[[Embedder, Sequence[Sample]], np.ndarray]
) -> Whitening | None:
    """Fit the whitening of ``model`` on ``samples`` (evaluation preprocessing, no augmentation).

    ``embed(model, samples)`` returns ``model``'s unnormalised (N, D) outputs (``Embedder.forward(normalize=False)``);
    the trainer passes its single-process or data-parallel embedding, so every rank fits the same map.
    """
    z = embed(model, samples)
    return whitening_from_embeddings(z, [s.label for s in samples], shrink)


def fold_whitening(model: Embedder, whitening: Whitening) -> Embedder:
    """Fold ``whitening`` into ``model``'s head in place: ``W <- A W``, ``b <- A (b - mean)``."""
    head = model.head
    with torch.no_grad():
        a = whitening.matrix.to(head.weight.device, head.weight.dtype)
        mean = whitening.mean.to(head.weight.device, head.weight.dtype)
        head.bias.copy_(a @ (head.bias - mean))
        head.weight.copy_(a @ head.weight)
    return model


def whitening_images(train: Sequence[Sample]) -> Sequence[Sample]:
    """The training images the whitening is fitted on: all of them, or an even stride through them when there
    are more than WHITEN_MAX_IMAGES (a 128-d covariance needs thousands, not the whole of a large dataset)."""
    return train[:: -(-len(train) // WHITEN_MAX_IMAGES)]


def whitened(
    model: Embedder, samples: Sequence[Sample], shrink: float, *, embed: Callable[[Embedder, Sequence[Sample]], np.ndarray]
) -> tuple[Embedder, Whitening | None]:
    """``model`` with the whitening fitted on ``samples`` now folded into a copy of its head, and that map;
    ``model`` itself and None when whitening is off (``shrink`` 0) or has nothing to fit.

    The map is returned so the caller saves it beside the unwhitened weights of the same epoch.
    """
    if not shrink:
        return model, None
    whitening = fit_whitening(model, samples, shrink, embed=embed)
    if whitening is None:
        return model, None
    return fold_whitening(copy.deepcopy(model), whitening), whitening
