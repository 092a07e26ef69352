"""What the training loop reads: the validation classes held out of the training data, and each epoch's loader.

An epoch's loader depends only on the config, the world and the epoch number (seeded per epoch), so a
resumed run draws the batches the uninterrupted run would have.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from proxyembed.data import DataSplit
from proxyembed.data.torch_dataset import BalancedSampler, TrainDataset, sharded_shuffle
from proxyembed.data.types import hold_out_classes
from proxyembed.runtime.errors import BadInput

from .config import TrainConfig
from .distributed import World


def hold_out_validation(data: DataSplit, val_fraction: float) -> DataSplit | None:
    """Move the last ``val_fraction`` of ``data``'s training classes into a validation split (None when 0).

    Selecting best.pt on the test classes inflates the reported number (a known pitfall of published
    DML results); with validation classes, best.pt is chosen on them and the test metrics of that
    epoch are an honest figure. ``data.train`` keeps the remaining classes.
    """
    if not val_fraction:
        return None
    if data.stream is not None:
        raise BadInput("--val-fraction needs the training classes listed up front, which streamed shards do not give",
                       hint="use --val-fraction 0 with shards, or train from the folder or list")
    classes = sorted({s.label for s in data.train})
    n_val = round(len(classes) * val_fraction)
    if n_val < 2 or len(classes) - n_val < 2:
        raise BadInput(
            f"--val-fraction {val_fraction} leaves {n_val} validation and {len(classes) - n_val} training classes",
            hint="each side needs at least 2 classes; change --val-fraction",
        )
    data.train, val = hold_out_classes(data.train, val_fraction)
    return DataSplit(name=f"{data.name} validation classes", train=[], eval=val, ks=data.ks)


def train_loader(dataset: TrainDataset, cfg: TrainConfig, world: World, epoch: int, *, pin_memory: bool) -> DataLoader:
    """The batches of ``epoch`` for this process: the balanced sampler, a shard of a shuffle under torchrun,
    or a plain seeded shuffle; refuses a batch larger than the data."""
    kw: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": pin_memory, "persistent_workers": False}
    if cfg.sampler == "balanced":
        sampler = BalancedSampler(dataset.labels, cfg.batch_size, cfg.samples_per_class, cfg.seed, num_replicas=world.size, rank=world.rank)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_sampler=sampler, **kw)
    if world.distributed:
        if len(dataset) // world.size < cfg.batch_size:
            raise BadInput(
                f"--batch-size {cfg.batch_size} x {world.size} processes exceeds the {len(dataset)} training images",
                hint="lower --batch-size (it is per process) or use fewer processes",
            )
        shard = sharded_shuffle(len(dataset), cfg.seed, epoch, world.size, world.rank)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=shard, drop_last=True, **kw)
    if len(dataset) < cfg.batch_size:
        raise BadInput(f"--batch-size {cfg.batch_size} exceeds the {len(dataset)} training images", hint="lower --batch-size")
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=gen, **kw)
