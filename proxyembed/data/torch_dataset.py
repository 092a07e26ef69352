"""Torch views of the plain sample lists: the training Dataset, its transforms and the samplers.

Both samplers reseed per epoch and, for data-parallel training, give each of ``num_replicas`` ranks its
own share of one epoch: the ranks draw the same sequence from the same seed and take disjoint parts of it.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchvision import transforms as T

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import PreprocessSpec, load_image

from .spec import Sample


def train_transform(spec: PreprocessSpec, size: int | None = None) -> T.Compose:
    """Proxy-Anchor's augmentation: random resized crop and horizontal flip, then the spec's normalisation."""
    return T.Compose(
        [
            T.RandomResizedCrop(size or spec.crop, interpolation=T.InterpolationMode.BILINEAR),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


class TrainDataset(Dataset):
    """Training images with labels remapped to ``0 .. n_classes-1``.

    An image that fails to decode mid-epoch (truncated after the up-front scan, removed, ...) is replaced
    by another image of the same class and counted in ``failures``, so one bad file never stops a run.
    """

    def __init__(self, samples: Sequence[Sample], transform: T.Compose) -> None:
        if not samples:
            raise BadInput("no training images", hint="check --data: the training split is empty")
        self.samples = list(samples)
        classes = sorted({s.label for s in self.samples})
        self.label_map = {c: i for i, c in enumerate(classes)}
        self.labels = [self.label_map[s.label] for s in self.samples]
        self.transform = transform
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._by_class: dict[int, list[int]] = defaultdict(list)
        for i, y in enumerate(self.labels):
            self._by_class[y].append(i)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        for attempt in range(5):
            try:
                return self.transform(load_image(self.samples[idx].source)), self.labels[idx]
            except BadInput as exc:
                with self._lock:
                    self.failures.append(str(exc))
                idx = random.Random(idx * 31 + attempt).choice(self._by_class[self.labels[idx]])
        raise BadInput(f"class of '{self.samples[idx].key}' has no readable image", hint="remove the broken files and rerun")


class BalancedSampler(Sampler[list[int]]):
    """Batches of P classes x K images each (with replacement within a class when it has fewer than K).

    With ``num_replicas`` > 1 every rank draws the same sequence of ``num_replicas`` x ``len(self)``
    batches and keeps every ``num_replicas``-th one from position ``rank``, so all ranks take the same
    number of steps and an epoch still sees about ``len(labels)`` images in all.
    """

    def __init__(
        self, labels: Sequence[int], batch_size: int, samples_per_class: int, seed: int = 0, *, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.by_class: dict[int, list[int]] = defaultdict(list)
        for i, y in enumerate(labels):
            self.by_class[y].append(i)
        self.k = samples_per_class
        self.p = batch_size // samples_per_class
        if self.p > len(self.by_class):
            raise BadInput(
                f"a balanced batch needs {self.p} classes but the training data has {len(self.by_class)}",
                hint="lower --batch-size or raise --samples-per-class",
            )
        self.n_batches = max(1, len(labels) // (batch_size * num_replicas))
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed per epoch, so runs are reproducible and resumes see the same batches."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 100003 + self.epoch)
        classes = list(self.by_class)
        for i in range(self.n_batches * self.num_replicas):
            batch: list[int] = []
            for c in rng.sample(classes, self.p):
                idx = self.by_class[c]
                batch.extend(rng.sample(idx, self.k) if len(idx) >= self.k else rng.choices(idx, k=self.k))
            if i % self.num_replicas == self.rank:
                yield batch


def sharded_shuffle(n: int, seed: int, epoch: int, num_replicas: int, rank: int) -> DistributedSampler:
    """Rank ``rank``'s share of a shuffled epoch over ``n`` items, for the random sampler in data-parallel runs.

    Every rank draws the permutation the single-process shuffle of this ``seed`` and ``epoch`` draws and
    takes every ``num_replicas``-th item of it from position ``rank``; the last ``n % num_replicas`` items
    are dropped so all ranks hold the same count.
    """
    sampler = DistributedSampler(
        range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed * 100003, drop_last=True  # type: ignore[arg-type]
    )
    sampler.set_epoch(epoch)
    return sampler
