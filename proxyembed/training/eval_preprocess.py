"""The evaluation preprocessing policy of a run: which :class:`PreprocessSpec` evaluation, the checkpoint and export use.

Torch-free: the config's sizes and fit over the data's own, over the defaults. Training augments on top
of the same spec (:func:`proxyembed.data.torch_dataset.train_transform`).
"""

from __future__ import annotations

from proxyembed.runtime.preprocess import PreprocessSpec

from .config import TrainConfig


def eval_spec(cfg: TrainConfig, data_spec: PreprocessSpec | None) -> PreprocessSpec:
    """The evaluation transform of a run: sizes from the data (or ``image_size`` / ``resize``); the fit from
    ``eval_fit``, else the data's own, else :class:`PreprocessSpec`'s default (one default for training and runtime)."""
    base = data_spec or PreprocessSpec()
    crop = cfg.image_size or base.crop
    resize = cfg.resize or (base.resize if crop == base.crop else round(crop * 8 / 7))
    fit = cfg.eval_fit or base.fit
    return PreprocessSpec(resize=resize, crop=crop, fit=fit, mean=base.mean, std=base.std, interpolation=base.interpolation, decode=cfg.decode)
