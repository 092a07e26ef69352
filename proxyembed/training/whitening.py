"""The map after training: within-class whitening of the pooled features, reduced to the embedding size, as the head.

After training, the directions in which photos of one training class still differ from each other carry
noise, not identity; cosine similarity weighs them as much as any other. Dividing each direction by its
spread within the training classes (the pooled within-class covariance, shrunk towards its mean
eigenvalue) is the "learned whitening" of image retrieval (Mikolajczyk & Matas 2007; Radenović et al.
2018). It is fitted to the backbone's pooled features rather than to the trained head's output: the head
squeezes the features to the embedding size for the training classes alone, and unseen classes differ in
directions it dropped. The whitened features are then reduced to the embedding size: every direction
in which the training classes' means differ (at most as many as the classes less one, LDA's directions),
and the rest of the size filled by a seeded random orthonormal projection of what those leave out, which
keeps distances there on average instead of betting on some of its directions. The result is one linear
map from the pooled features to the embedding, installed in the head's place, so export, the runtime and
``check`` see the mapped embedding without knowing about it. docs/defaults.md (round 15) has the
measurement behind it and the default shrinkage.

The features it reads are every stage's pooled output from stride 4 on, not the last stage's alone
(:meth:`~proxyembed.models.Embedder.stage_features`; resnet18: layers 1 to 4, 960-d): earlier stages keep
parts and textures that the last one, trained for the training classes, discards, and the fit weighs them by
how well they separate classes. Backbones without such stages (ViTs) use the last stage, as before.
docs/defaults.md (round 17) has that measurement.

A checkpoint stores the fitted map beside the trained weights (``--resume`` continues from those);
:meth:`~proxyembed.training.checkpoint.Checkpoint.build_model` folds it in. Checkpoints of rounds 15 and 16
hold a map of the last stage (``on="features"``, replacing the head's weights), and those from before round 15
a whitening of the head's output (``on="head"``); both still load as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from proxyembed.data.types import Sample
from proxyembed.models import Embedder
from proxyembed.runtime.errors import BadInput

WHITEN_MAX_IMAGES = 20_000  # --whiten fits on at most this many training images per evaluation


# what a map applies to: every stage's pooled features (installed as the model's ``map``), the last stage's (replacing
# the head's weights; rounds 15-16), or the head's output (before round 15)
STAGES, FEATURES, HEAD = "stages", "features", "head"
_FILL_SEED = 0  # the random fill is the same for every run, rank and resume


@dataclass(frozen=True)
class Whitening:
    """``z -> matrix @ (x - mean)`` before the L2 normalisation, where ``x`` is every stage's pooled features (``on="stages"``:
    ``matrix`` is (D, S)), the last stage's (``on="features"``: (D, F), replacing the head) or the head's output
    (``on="head"``: (D, D), checkpoints before round 15)."""

    mean: torch.Tensor  # (S,), (F,) or (D,)
    matrix: torch.Tensor  # (D, S), (D, F) or (D, D)
    shrink: float
    images: int
    on: str = FEATURES

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "matrix": self.matrix, "shrink": self.shrink, "images": self.images, "on": self.on}

    @classmethod
    def from_dict(cls, d: Any, model: Embedder, source: str) -> Whitening:
        """Read a checkpoint's map, refusing one that cannot belong to ``model``'s embedding and features."""
        dim = model.head.out_features
        try:
            mean, matrix, on = d["mean"], d["matrix"], d.get("on", HEAD)
            width = {STAGES: model.stage_width, FEATURES: model.head.in_features, HEAD: dim}[on]
            ok = isinstance(mean, torch.Tensor) and isinstance(matrix, torch.Tensor)
            ok = ok and tuple(mean.shape) == (width,) and tuple(matrix.shape) == (dim, width)
            ok = ok and bool(torch.isfinite(mean).all() and torch.isfinite(matrix).all())
            w = cls(mean.float(), matrix.float(), float(d["shrink"]), int(d["images"]), on) if ok else None
        except (AttributeError, KeyError, TypeError, ValueError):  # not a dict, a key missing, an unknown "on"
            w = None
        if w is None:
            raise BadInput(
                f"checkpoint '{source}' holds a damaged whitening (not a finite map to a {dim}-d embedding)", hint="retrain, or re-save the run"
            )
        return w


def _within_class(z: np.ndarray, keys: np.ndarray, classes: int, shrink: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean, symmetric whitening matrix, class means) of ``z`` (N, D) in float64; None when nothing can be measured."""
    if shrink <= 0:
        raise ValueError(f"shrink must be positive, got {shrink}")
    n, dim = z.shape
    dof = n - classes
    if dof < 1:
        return None
    sums = np.zeros((classes, dim))
    np.add.at(sums, keys, z)
    means = sums / np.bincount(keys, minlength=classes)[:, None]
    residual = z - means[keys]
    cov = residual.T @ residual / dof
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval, 0.0, None)
    if eigval.mean() <= 0:
        return None
    scale = 1.0 / np.sqrt(eigval + shrink * eigval.mean())
    return z.mean(0), (eigvec * scale) @ eigvec.T, means  # the symmetric (ZCA) form keeps the input's axes


def _class_keys(labels: Sequence[Hashable]) -> tuple[np.ndarray, int]:
    index: dict[Hashable, int] = {}
    keys = np.asarray([index.setdefault(y, len(index)) for y in labels], dtype=np.int64)
    return keys, len(index)


def whitening_from_embeddings(z: np.ndarray, labels: Sequence[Hashable], shrink: float) -> Whitening | None:
    """The within-class whitening of ``z`` (N, D) alone, same size in and out (``on="head"``): the map checkpoints before
    round 15 hold, and the first step of :func:`map_from_features`.

    ``shrink`` adds that many times the mean eigenvalue to every eigenvalue, so directions that hardly
    vary within a class are not blown up. None when no class has two images (nothing to measure).
    """
    keys, classes = _class_keys(labels)
    fitted = _within_class(np.asarray(z, dtype=np.float64), keys, classes, shrink)
    if fitted is None:
        return None
    mean, matrix, _ = fitted
    return Whitening(torch.from_numpy(mean).float(), torch.from_numpy(matrix).float(), shrink, len(keys), HEAD)


def map_from_features(f: np.ndarray, labels: Sequence[Hashable], shrink: float, dim: int) -> Whitening | None:
    """Fit the map from pooled features ``f`` (N, F) of labelled training images to a ``dim``-d embedding (the module's
    docstring says what it is). Where ``dim`` exceeds F the last rows are zero: the head could not span more either."""
    keys, classes = _class_keys(labels)
    f64 = np.asarray(f, dtype=np.float64)
    fitted = _within_class(f64, keys, classes, shrink)
    if fitted is None:
        return None
    mean, white, means = fitted
    centres = (means - means.mean(0)) @ white.T  # the class means in whitened coordinates, centred
    eigval, eigvec = np.linalg.eigh(centres.T @ centres)
    order = np.argsort(eigval)[::-1]
    k = min(dim, f64.shape[1])
    rank = min(k, int((eigval > eigval[order[0]] * 1e-9).sum())) if eigval[order[0]] > 0 else 0
    span = eigvec[:, order[:rank]]
    rest = np.random.default_rng(_FILL_SEED).standard_normal((f64.shape[1], k - rank))
    fill = np.linalg.qr(rest - span @ (span.T @ rest))[0] if k > rank else rest
    matrix = np.zeros((dim, f64.shape[1]))
    matrix[:k] = np.concatenate([span, fill], axis=1).T @ white
    return Whitening(torch.from_numpy(mean).float(), torch.from_numpy(matrix).float(), shrink, len(keys), FEATURES)


class PooledFeatures(torch.nn.Module):
    """``model``'s pooled features of every stage, answering the embedding calls (``normalize=False`` as the map's fit asks)."""

    def __init__(self, model: Embedder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.stage_features(x)


def fit_whitening(
    model: Embedder, samples: Sequence[Sample], shrink: float, *, embed: Callable[[torch.nn.Module, Sequence[Sample]], np.ndarray]
) -> Whitening | None:
    """Fit the map of ``model`` on ``samples`` (evaluation preprocessing, no augmentation).

    ``embed(module, samples)`` returns ``module``'s (N, S) outputs for a :class:`PooledFeatures` module; the trainer passes
    its single-process or data-parallel embedding, so every rank fits the same map.
    """
    f = embed(PooledFeatures(model), samples)
    w = map_from_features(f, [s.label for s in samples], shrink, model.head.out_features)
    return replace(w, on=STAGES) if w is not None and model.stages else w


def fold_whitening(model: Embedder, whitening: Whitening) -> Embedder:
    """Fold ``whitening`` into ``model`` in place: a new ``map`` with ``W = A``, ``b = -A mean`` on every stage's features,
    the head's ``W <- A``, ``b <- -A mean`` on the last stage's, or ``W <- A W``, ``b <- A (b - mean)`` on the head's output."""
    head = model.head
    with torch.no_grad():
        a = whitening.matrix.to(head.weight.device, head.weight.dtype)
        mean = whitening.mean.to(head.weight.device, head.weight.dtype)
        if whitening.on == STAGES:
            model.map = torch.nn.Linear(a.shape[1], a.shape[0]).to(head.weight.device, head.weight.dtype)
            model.map.weight.copy_(a)
            model.map.bias.copy_(-(a @ mean))
        elif whitening.on == FEATURES:
            head.weight.copy_(a)
            head.bias.copy_(-(a @ mean))
        else:
            head.bias.copy_(a @ (head.bias - mean))
            head.weight.copy_(a @ head.weight)
    return model


def whitening_images(train: Sequence[Sample]) -> Sequence[Sample]:
    """The training images the map is fitted on: all of them, or an even stride through them when there are more
    than WHITEN_MAX_IMAGES (a covariance of a few hundred dimensions needs thousands, not the whole of a large dataset)."""
    return train[:: -(-len(train) // WHITEN_MAX_IMAGES)]


def whitened(
    model: Embedder, samples: Sequence[Sample], shrink: float, *, embed: Callable[[torch.nn.Module, Sequence[Sample]], np.ndarray]
) -> tuple[Embedder, Whitening | None]:
    """``model`` with the map fitted on ``samples`` now folded into a copy of its head, and that map;
    ``model`` itself and None when whitening is off (``shrink`` 0) or has nothing to fit.

    The map is returned so the caller saves it beside the unwhitened weights of the same epoch.
    """
    if not shrink:
        return model, None
    whitening = fit_whitening(model, samples, shrink, embed=embed)
    if whitening is None:
        return model, None
    return fold_whitening(copy.deepcopy(model), whitening), whitening
