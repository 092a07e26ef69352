"""The training augmentation presets (``--augment``), torch-free: the registry the config's ``Augment`` choice is derived from.

:func:`proxyembed.data.torch_dataset.train_transform` turns a preset into torchvision transforms; the
CLI reads only the names, so it lists them without importing torch. docs/defaults.md has the measurements.
"""

from __future__ import annotations

from typing import NamedTuple


class AugmentPreset(NamedTuple):
    """One preset: the random-resized-crop area range (None: the evaluation geometry, no crop), flips, colour jitter."""

    crop_scale: tuple[float, float] | None
    hflip: bool
    jitter: bool


# "standard" is the Proxy-Anchor / ImageNet recipe. "light", the default, crops 70-100% of the area (50-100% until
# round 16, when the lighter crops measured better at batch 32: docs/defaults.md).
AUGMENT_PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(None, hflip=False, jitter=False),
    "light": AugmentPreset((0.7, 1.0), hflip=True, jitter=False),
    "standard": AugmentPreset((0.08, 1.0), hflip=True, jitter=False),
    "strong": AugmentPreset((0.08, 1.0), hflip=True, jitter=True),
}
