"""Image-folder datasets: one subfolder per class.

Problems are found before training starts, never mid-epoch: empty class folders and unreadable files
are skipped with a counted warning, evaluation classes with a single image (no positive to retrieve)
are dropped with a warning, and a folder with nothing usable is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.images import IMAGE_EXTENSIONS, image_files

from .types import DataSplit, Sample

T = TypeVar("T")


def readable(path: Path) -> bool:
    """Whether PIL can identify the file as an image (reads the header only, so it is fast)."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - touching the size makes PIL parse the header
        return True
    except (UnidentifiedImageError, OSError, SyntaxError):  # PIL raises SyntaxError on some bad headers
        return False


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Map class name -> readable images, with warnings collected by the caller."""
    if not root.is_dir():
        raise BadInput(f"data folder '{root}' does not exist or is not a folder", hint="give a folder with one subfolder per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(f"data folder '{root}' has no class subfolders", hint="put each class's images in a subfolder named after the class")
    return {c.name: [c / rel for rel in image_files(c)] for c in classes}


def _scan(root: Path, warnings: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    unreadable: list[Path] = []
    empty: list[str] = []
    for name, files in class_folders(root).items():
        good = []
        for f in files:
            (good if readable(f) else unreadable).append(f)
        if good:
            out[name] = good
        else:
            empty.append(name)
    if unreadable:
        shown = ", ".join(str(p) for p in unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")
        warnings.append(f"skipped {len(unreadable)} unreadable image(s) in {root}: {shown}")
    if empty:
        warnings.append(f"skipped {len(empty)} class folder(s) with no readable image in {root}: {', '.join(empty[:5])}")
    if not out:
        raise BadInput(f"data folder '{root}' holds no readable images", hint=f"supported: {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return out


def _samples(classes: dict[str, list[Path]], root: Path, first_label: int) -> tuple[list[Sample], dict[int, str]]:
    samples, names = [], {}
    for i, (name, files) in enumerate(sorted(classes.items())):
        label = first_label + i
        names[label] = name
        samples.extend(Sample(str(f), label, str(f.relative_to(root))) for f in files)
    return samples, names


def drop_singletons(classes: dict[str, list[T]], root: Path | str, warnings: list[str]) -> dict[str, list[T]]:
    """The evaluation classes with two or more images (a single image has nothing to retrieve), the others named in ``warnings``."""
    single = [n for n, f in classes.items() if len(f) < 2]
    if single:
        warnings.append(f"dropped {len(single)} evaluation class(es) with a single image in {root} (nothing to retrieve): {', '.join(single[:5])}")
    kept = {n: f for n, f in classes.items() if len(f) >= 2}
    if len(kept) < 2:
        raise BadInput(f"evaluation data in '{root}' needs at least two classes with two or more images each")
    return kept


def split_by_class(classes: dict[str, list[T]], eval_fraction: float, where: str) -> tuple[dict[str, list[T]], dict[str, list[T]]]:
    """The zero-shot split of ``classes``: the last ``eval_fraction`` of the sorted class names (at least 2) are
    evaluation classes, the rest training classes; ``where`` names the data in the error when too few are left."""
    ordered = sorted(classes)
    n_eval = max(2, round(len(ordered) * eval_fraction))
    if len(ordered) - n_eval < 2:
        raise BadInput(f"{where} has {len(ordered)} usable classes; a zero-shot split needs at least 4", hint="add classes or pass --eval-data")
    held = set(ordered[-n_eval:])
    return {n: v for n, v in classes.items() if n not in held}, {n: v for n, v in classes.items() if n in held}


def folder_split(root: Path, *, eval_root: Path | None = None, eval_fraction: float = 0.5, eval_only: bool = False) -> DataSplit:
    """Split ``root``'s classes into training and evaluation classes (or read them from ``eval_root``)."""
    warnings: list[str] = []
    if not 0 < eval_fraction < 1:
        raise BadInput(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    if eval_only:
        ev = drop_singletons(_scan(root, warnings), root, warnings)
        samples, names = _samples(ev, root, 0)
        return DataSplit(name=str(root), train=[], eval=samples, class_names=names, warnings=warnings)
    train_classes = _scan(root, warnings)
    if eval_root is None:
        train_classes, eval_classes = split_by_class(train_classes, eval_fraction, f"data folder '{root}'")
        eval_dir = root
    else:
        eval_classes = _scan(eval_root, warnings)
        both = sorted(set(train_classes) & set(eval_classes))
        if both:
            raise BadInput(
                f"classes {both[:5]} are in both '{root}' and '{eval_root}'",
                hint="evaluation classes must be unseen in training (zero-shot)",
            )
        eval_dir = eval_root
    eval_classes = drop_singletons(eval_classes, eval_dir, warnings)
    train, names = _samples(train_classes, root, 0)
    ev, ev_names = _samples(eval_classes, eval_dir, len(names))
    return DataSplit(name=str(root), train=train, eval=ev, class_names={**names, **ev_names}, warnings=warnings)
