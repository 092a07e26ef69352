"""Writing a dataset split to disk as class folders, so file-based tools can use the built-in data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .types import DataSplit


def write_split(split: DataSplit, out: Path) -> int:
    """Write ``out/train/<class>/*.png`` and ``out/eval/<class>/*.png``; returns the image count."""
    n = 0
    for part, samples in (("train", split.train), ("eval", split.eval)):
        for s in samples:
            folder = out / part / split.class_names.get(s.label, str(s.label))
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{Path(s.key).name}.png"
            if isinstance(s.source, np.ndarray):
                Image.fromarray(s.source).save(target)
            else:
                shutil.copyfile(s.source, target.with_suffix(Path(str(s.source)).suffix))
            n += 1
    return n
