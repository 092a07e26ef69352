"""Test helper: a real (random-init) checkpoint written the way ``proxyembed train`` writes one.

``make_checkpoint`` builds an :class:`~proxyembed.models.Embedder` with a fixed seed and saves
``best.pt`` through :func:`save_checkpoint`, with the payload keys ``load_checkpoint`` requires. Small
defaults (32 px crops, a 32-d head) keep export and validation tests fast on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.preprocess import PreprocessSpec
from proxyembed.training.checkpoint import save_checkpoint
from proxyembed.training.run_dir import BEST


def make_checkpoint(
    run_dir: Path,
    backbone: str = "resnet18",
    dim: int = 32,
    resize: int = 40,
    crop: int = 32,
    seed: int = 0,
    data: str = "synthetic:train_classes=4,eval_classes=6,per_class=6",
    **payload: Any,
) -> Path:
    """Write ``run_dir/best.pt`` for a random-init embedder and return its path.

    ``data`` is recorded as the run's training data (what ``export`` validates on by default);
    ``payload`` overrides or adds checkpoint keys (e.g. ``format_version`` to test refusal).
    """
    torch.manual_seed(seed)
    config = ModelConfig(backbone=backbone, embedding_dim=dim, pool="avg+max")
    model = build_embedder(config).eval()
    path = Path(run_dir) / BEST
    save_checkpoint(
        path,
        {
            "model_config": config.to_dict(),
            "model": model.state_dict(),
            "preprocess": PreprocessSpec(resize=resize, crop=crop, fit="center_crop").to_dict(),  # as the pinned numbers were made
            "config": {"data": data, "eval_data": None, "backbone": backbone, "embedding_dim": dim, "seed": seed},
            "epoch": 1,
            "metrics": {},
            **payload,
        },
    )
    return path
