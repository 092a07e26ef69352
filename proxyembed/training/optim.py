"""The optimizer and learning-rate schedule of a run, built from its config.

Parameters fall into four groups with their own learning rates: the backbone (``lr``), the embedding
head (``lr * head_lr_mult``), the proxies (``lr * proxy_lr_mult``) and the loss's other weights such as
NIR's flow (``lr * aux_lr_mult``); proxies and loss weights get no weight decay.
"""

from __future__ import annotations

import copy
import math

import torch

from proxyembed.losses.base import MetricLoss
from proxyembed.models import Embedder

from .config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: Embedder, loss_fn: MetricLoss) -> torch.optim.Optimizer:
    """Adam or AdamW (``cfg.optimizer``) over the non-empty parameter groups of ``model`` and ``loss_fn``, with the
    fused update where the parameters' device has one."""
    groups = [
        {"params": list(model.backbone.parameters()), "lr": cfg.lr, "name": "backbone"},
        {"params": list(model.head.parameters()), "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
        {"params": list(loss_fn.proxy_parameters()), "lr": cfg.lr * cfg.proxy_lr_mult, "name": "proxies", "weight_decay": 0.0},
        # no weight decay on the loss's own weights either: the official NIR code gives its flow none
        {"params": list(loss_fn.other_parameters()), "lr": cfg.lr * cfg.aux_lr_mult, "name": "loss", "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel updates every tensor in one pass: the same Adam step, a few percent of a CPU step faster than
    # PyTorch's default per-tensor loop (docs/benchmarks.md); it exists for CPU and CUDA parameters.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(groups, weight_decay=cfg.weight_decay, eps=cfg.adam_eps, fused=fused)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule ``cfg.schedule``: cosine to zero at ``cfg.epochs``, step, multistep or constant."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * min(e, cfg.epochs) / cfg.epochs)))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)


class WeightAverage:
    """An exponential moving average of a network's weights and BatchNorm statistics.

    Short runs at a constant learning rate end wherever the last noisy steps left them; the average is a
    smoother point of the same trajectory, costs no inference time (it is the same network) and is what
    evaluation, ``best.pt`` and export use. The decay ramps up from 0.1 (``(1 + n) / (10 + n)`` after ``n``
    updates) so the random initial weights do not linger in the average of a run of a few hundred steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0) -> None:
        self.decay = decay
        self.updates = updates
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimizer step)."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach(), 1 - d)
            else:  # BatchNorm's step counters
                avg.copy_(cur)
