"""What the training loop reads: the validation classes held out of the training data, and each epoch's loader.

An epoch's loader depends only on the config, the world and the epoch number (seeded per epoch), so a
resumed run draws the batches the uninterrupted run would have.
"""

from __future__ import annotations

import os
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


MAX_AUTO_WORKERS = 8


def loader_settings(cfg: TrainConfig, device: torch.device, world: World) -> dict[str, Any]:
    """The DataLoader settings of a run (written to config.json): ``cfg.workers``, else a choice for the device.

    - workers: none on a CPU, where the training step already keeps every core busy and a worker only takes
      cores from it (measured with the image cache, docs/benchmarks.md); on a GPU, this process's share of the
      cores less one for the training loop, at most :data:`MAX_AUTO_WORKERS`.
    - pinned memory on CUDA only (it speeds host-to-device copies, and nothing else);
    - no persistent workers: each epoch's loader is new so its workers are seeded from that epoch's seed, which
      keeps a resumed run's augmentations those of the uninterrupted run; with cached pixels a worker starts
      in milliseconds (fork, no decoding state to rebuild);
    - prefetch 2 batches a worker (PyTorch's default): cached batches take about the same time each.
    """
    workers = cfg.workers
    if workers is None:
        if device.type == "cpu":
            workers = 0
        else:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size if world.distributed else 1))
            workers = max(1, min(MAX_AUTO_WORKERS, cores // max(local, 1) - 1))
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": False, "prefetch_factor": 2 if workers else None}


def train_loader(dataset: TrainDataset, cfg: TrainConfig, world: World, epoch: int, *, settings: dict[str, Any]) -> DataLoader:
    """The batches of ``epoch`` for this process with :func:`loader_settings`: the balanced sampler, a shard of a
    shuffle under torchrun, or a plain seeded shuffle; refuses a batch larger than the data."""
    kw = dict(settings)
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
