"""The two image caches of a training run (:mod:`proxyembed.data.image_cache`): what training crops from, what evaluation embeds.

The training cache keeps the training images in the view the augmentation needs (the side view of
:func:`~proxyembed.data.image_cache.train_side` for random-resized crops, the square model input for
``--augment none``); the evaluation cache keeps the square model input of every image an evaluation
embeds (test classes, gallery, validation classes and the whitening's training images), so from the
second evaluation on an evaluation costs the forward passes only. ``auto`` shares one RAM budget
between the two, training first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxyembed.data.image_cache import CacheInfo, CacheView, ImageCache, open_cache, ram_budget, source_id, train_side
from proxyembed.data.torch_dataset import augment_crop_scale
from proxyembed.data.types import DataSplit, Sample
from proxyembed.runtime.preprocess import PreprocessSpec

from .config import TrainConfig


@dataclass
class RunCaches:
    """The caches of a run (None each with ``--cache off``) and what building or opening them did."""

    train: ImageCache | None = None
    eval: ImageCache | None = None
    info: dict[str, Any] = field(default_factory=dict)


def train_view(cfg: TrainConfig, spec: PreprocessSpec) -> CacheView:
    """What the training cache keeps of each image for ``cfg``'s augmentation."""
    scale = augment_crop_scale(cfg.augment, cfg.crop_scale)
    return CacheView(spec) if scale is None else CacheView(spec, train_side(spec.crop, scale))


def eval_samples(data: DataSplit, val: DataSplit | None, whitening: Sequence[Sample]) -> list[Sample]:
    """Every image an evaluation of the run embeds, each once, in a fixed order."""
    seen: set[str] = set()
    out: list[Sample] = []
    for s in [*data.eval, *(data.gallery or []), *(val.eval if val else []), *whitening]:
        if (sid := source_id(s)) not in seen:
            seen.add(sid)
            out.append(s)
    return out


def open_run_caches(
    cfg: TrainConfig,
    train: Sequence[Sample],
    evaluated: Sequence[Sample],
    spec: PreprocessSpec,
    *,
    shared: bool,
    phase: Callable[[str, int], Callable[[int], None]],
) -> RunCaches:
    """Open (or build) the training and evaluation caches of ``cfg``; ``shared`` under torchrun (so ``auto`` uses
    disk files every rank maps); ``phase(label, n)`` gives the ``advance`` of a progress display (called only while decoding)."""
    if cfg.cache == "off":
        return RunCaches(info={"mode": "off"})
    folder = Path(cfg.cache_dir) if cfg.cache_dir else None
    budget = ram_budget(cfg.cache_ram_gb)
    caches = RunCaches(info={"mode": cfg.cache, "ram_budget_bytes": budget})
    infos: dict[str, CacheInfo] = {}
    for name, samples, view in (("train", train, train_view(cfg, spec)), ("eval", evaluated, CacheView(spec))):
        if not samples:  # training from streamed shards: no list of training images to cache
            continue
        cache, infos[name] = open_cache(
            samples, view, cfg.cache, folder=folder, budget=budget, shared=shared, progress=phase(f"caching {name} images", len(samples))
        )
        budget -= infos[name].nbytes if infos[name].where == "ram" else 0
        setattr(caches, name, cache)
        caches.info[name] = {**infos[name].to_dict(), "side": view.side}
    return caches
