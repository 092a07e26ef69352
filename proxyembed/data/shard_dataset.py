"""Training straight from tar shards: a torch ``IterableDataset`` over a :class:`~.shards.ShardSet`, and its epoch loader.

Each epoch the shard list is shuffled with the run's seed and the epoch, then dealt out: rank ``r`` of ``W``
takes every ``W``-th shard from position ``r``, and DataLoader worker ``w`` of ``K`` every ``K``-th of those, so
no two readers open the same shard. Within a reader, a shuffle buffer (``SHUFFLE_BUFFER`` images) mixes the
stream. Ranks must take equal steps (their gradients are averaged), so an epoch is the fewest full batches
any rank can fill; with shards of equal size and a batch that divides a rank's share, every image is seen
exactly once per epoch, otherwise the rest of the larger shares waits for a later epoch's dealing.

Streaming has no class-balanced batches: ``--sampler balanced`` (the triplet baseline's default) needs random
access and is refused; the proxy losses compare each image with the proxies, not with the rest of its batch,
so they train the same from a shuffled stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import load_image

from .shards import ShardSet

SHUFFLE_BUFFER = 1000


def deal(n_shards: int, seed: int, epoch: int, rank: int, world: int, worker: int = 0, workers: int = 1) -> list[int]:
    """The shard indices reader (``rank``, ``worker``) reads in ``epoch``: the seeded shuffle, dealt rank-major then by worker."""
    order = list(range(n_shards))
    random.Random(seed * 100003 + epoch).shuffle(order)
    return order[rank::world][worker::workers]


class ShardDataset(IterableDataset):
    """Decoded, augmented training images with labels remapped to ``0 .. n_classes-1`` (as :class:`~.torch_dataset.TrainDataset`)."""

    def __init__(self, shards: ShardSet, transform: Any, *, seed: int, rank: int = 0, world: int = 1, buffer: int = SHUFFLE_BUFFER) -> None:
        self.shards = shards
        self.transform = transform
        self.seed, self.rank, self.world, self.buffer = seed, rank, world, buffer
        self.label_map = {c: i for i, c in enumerate(sorted(shards.per_class))}
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the dealing and the shuffle buffer, so a resumed run streams what the uninterrupted one would have."""
        self.epoch = epoch

    def steps(self, batch_size: int, workers: int) -> int:
        """Full batches per epoch every rank can fill: the smallest over ranks of its workers' full batches."""
        readers = max(workers, 1)  # workers 0: the main process reads
        n = len(self.shards.urls)
        per_rank = [sum(sum(self.shards.counts[i] for i in deal(n, self.seed, self.epoch, rank, self.world, w, readers)) // batch_size
                        for w in range(readers)) for rank in range(self.world)]
        return min(per_rank)

    def _records(self, worker: int, workers: int) -> Iterator[tuple[str, bytes, int]]:
        mine = deal(len(self.shards.urls), self.seed, self.epoch, self.rank, self.world, worker, workers)
        return self.shards.records([self.shards.urls[i] for i in mine])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(((self.seed * 100003 + self.epoch) * self.world + self.rank) * 1009 + worker)
        pool: list[tuple[str, bytes, int]] = []
        for record in self._records(worker, workers):
            if len(pool) < self.buffer:
                pool.append(record)
                continue
            i = rng.randrange(len(pool))
            pool[i], record = record, pool[i]
            yield self._item(record)
        rng.shuffle(pool)
        for record in pool:
            yield self._item(record)

    def _item(self, record: tuple[str, bytes, int]) -> tuple[torch.Tensor, int]:
        _, data, label = record
        return self.transform(load_image(data)), self.label_map[label]


class EpochStream:
    """An epoch's batches from a :class:`ShardDataset`: exactly ``steps`` of them on every rank (see the module docstring)."""

    def __init__(self, loader: DataLoader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        for step, batch in enumerate(self.loader):
            if step == self.steps:
                return
            yield batch


def shard_loader(dataset: ShardDataset, batch_size: int, sampler: str, epoch: int, *, workers: int, pin_memory: bool) -> EpochStream:
    """The batches of ``epoch`` for this rank; refuses the balanced sampler and a batch no rank can fill."""
    if sampler == "balanced":
        raise BadInput("--sampler balanced needs random access, which shards streamed for training do not give",
                       hint="use --sampler random with shards (docs/data.md), or train from the folder or list")
    dataset.set_epoch(epoch)
    steps = dataset.steps(batch_size, workers)
    if steps < 1:
        raise BadInput(f"--batch-size {batch_size} is more than a rank's or a worker's shards hold",
                       hint="lower --batch-size or --workers, or write smaller shards (--shard-size)")
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=workers, pin_memory=pin_memory)
    return EpochStream(loader, steps)
