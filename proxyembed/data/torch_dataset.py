"""Torch views of the plain sample lists: the training Dataset, its transforms and the samplers.

Both samplers reseed per epoch and, for data-parallel training, give each of ``num_replicas`` ranks its
own share of one epoch: the ranks draw the same sequence from the same seed and take disjoint parts of it.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler
from torchvision.transforms import RandomResizedCrop, v2

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec, load_image

from .augment import AUGMENT_PRESETS
from .image_cache import ImageCache, as_image
from .types import Sample


class _EvalGeometry:
    """The evaluation transform's squaring (centre crop, squash or letterbox) as a training transform."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.pre = Preprocessor(spec)

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.pre.square(img)


class _ResizedCrop:
    """A random-resized crop drawn as torchvision draws it (same random numbers, same boxes), cut and resized
    bilinearly by PIL: the pixels of ``v2.RandomResizedCrop`` on a PIL image without its per-call dispatch, which
    cost more than the crop itself at small sizes (docs/benchmarks.md). (PIL's ``resize(box=...)`` is not the
    same: its filter reads pixels beyond the box.)"""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.size = size
        self.scale = [float(scale[0]), float(scale[1])]
        self.ratio = [3 / 4, 4 / 3]

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, h, w = RandomResizedCrop.get_params(img, self.scale, self.ratio)
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.Resampling.BILINEAR)


class _Flip:
    """A horizontal flip with probability 1/2, drawing its coin as ``v2.RandomHorizontalFlip`` does."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if torch.rand(1) >= 0.5 else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def augment_crop_scale(augment: str, crop_scale: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """The random-resized-crop area range training draws from (None: the evaluation geometry, no crop)."""
    if augment not in AUGMENT_PRESETS:
        raise BadInput(f"--augment '{augment}' is not one of {list(AUGMENT_PRESETS)}")
    return crop_scale if crop_scale is not None else AUGMENT_PRESETS[augment][0]


def train_transform(
    spec: PreprocessSpec,
    augment: str = "standard",
    *,
    crop_scale: tuple[float, float] | None = None,
    hflip: bool | None = None,
    squared: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The training transform: an augmentation preset (see ``AUGMENT_PRESETS``) from a PIL image to a uint8
    (3, crop, crop) tensor; :func:`normalize_batch` turns a batch of them into model input on the device.

    ``none`` gives the evaluation geometry itself, so training sees exactly the pixels evaluation and the
    runtime will; the crop presets draw a random-resized crop of ``crop_scale`` of the image area.
    ``crop_scale`` and ``hflip`` override the preset's values. ``squared`` says the images arrive already
    squared by the evaluation geometry (the image cache's square view), so ``none`` does not square again.
    Batches stay uint8 until the device: a quarter of the float bytes to collate and to copy to a GPU.
    """
    scale = augment_crop_scale(augment, crop_scale)
    _, preset_flip, jitter = AUGMENT_PRESETS[augment]
    steps: list[Callable[[Image.Image], Image.Image]] = []
    if scale is None:
        if not squared:
            steps.append(_EvalGeometry(spec))
    else:
        steps.append(_ResizedCrop(spec.crop, scale))
    if preset_flip if hflip is None else hflip:
        steps.append(_Flip())
    if jitter:
        steps += [v2.ColorJitter(0.4, 0.4, 0.4, 0.05), v2.RandomGrayscale(0.1)]
    return v2.Compose([*steps, _to_uint8_tensor])


def normalize_batch(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """A uint8 (N, 3, H, W) batch of :func:`train_transform` as float32 model input: scaled to [0, 1], then the
    spec's mean and std, on ``x``'s device (the evaluation preprocessing's numbers)."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.to(torch.float32).mul_(1.0 / 255) - mean) / std  # torchvision's ToDtype + Normalize, to the last bit


class TrainDataset(Dataset):
    """Training images with labels remapped to ``0 .. n_classes-1``.

    An image that fails to decode mid-epoch (truncated after the up-front scan, removed, ...) is replaced
    by another image of the same class and counted in ``failures``, so one bad file never stops a run.
    With ``pixels`` (an :class:`~.image_cache.ImageCache` of ``samples``, in order) the transform runs on the
    cached pixels instead of a fresh decode; an image the cache could not decode fails the same way.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor], pixels: ImageCache | None = None) -> None:
        if not samples:
            raise BadInput("no training images", hint="check --data: the training split is empty")
        self.samples = list(samples)
        classes = sorted({s.label for s in self.samples})
        self.label_map = {c: i for i, c in enumerate(classes)}
        self.labels = [self.label_map[s.label] for s in self.samples]
        self.transform = transform
        self.pixels = pixels
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
                img = as_image(self.pixels[idx]) if self.pixels is not None else load_image(self.samples[idx].source)
                return self.transform(img), self.labels[idx]
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
