"""Standard benchmark layouts (CUB-200-2011, Cars196, SOP, In-Shop), recognised by their files.

Each loader reads the benchmark's own annotation files and returns the zero-shot split that papers
report on: the first half of the classes trains, the second half is evaluated (all-vs-all), except
In-Shop, whose evaluation is query -> gallery. Labels are contiguous (training classes first) and
``class_names`` keeps each label's original class id, so results can be traced back to the files.

Images are only checked for existence, never opened (SOP alone lists 120k): a listed image missing on
disk is skipped with a counted warning, and when more than half are missing the layout is refused,
since that means the images were not extracted rather than a few were lost. Every problem with an
annotation file is a one-line :class:`BadInput` naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxyembed.runtime.errors import BadInput, require

from .types import DataSplit, Sample

# A listed image is one of these parts; "eval" is all-vs-all, "query"/"gallery" is In-Shop's protocol.
_PARTS = ("train", "eval", "query", "gallery")


@dataclass(frozen=True)
class _Entry:
    """One image listed by an annotation file: its path relative to the benchmark root (``/``-separated),
    its original class id and its part. Kept as a string: pathlib costs seconds over SOP's 120k images."""

    key: str
    cls: str
    part: str


def _class_order(cls: str) -> tuple[int, int, str]:
    """Sort numeric class ids numerically ("2" before "10"), anything else by name after them."""
    return (0, int(cls), "") if cls.isdigit() else (1, 0, cls)


def _shown(items: Iterable[str], n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def _require_file(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise BadInput(f"benchmark annotation file '{path}' is missing", hint=fix)
    return path


def _read_lines(path: Path, fix: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a text annotation file, as (line number, whitespace-separated fields)."""
    _require_file(path, fix)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read '{path}': {exc}", hint=fix) from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _malformed(path: Path, lineno: int, expected: str, fix: str) -> BadInput:
    return BadInput(f"'{path}' line {lineno}: expected {expected}", hint=fix)


def _class_id(value: str, path: Path, lineno: int, n_classes: int, fix: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= n_classes:
        raise _malformed(path, lineno, f"a class id between 1 and {n_classes}, got '{value}'", fix)
    return int(value)


def _dir_ci(parent: Path, name: str) -> Path | None:
    """The subfolder of ``parent`` called ``name``, ignoring case (``img`` vs ``Img``), or None."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    return next((p for p in sorted(parent.iterdir()) if p.name.lower() == name.lower() and p.is_dir()), None)


def _build(
    name: str,
    root: Path,
    entries: list[_Entry],
    listed_in: str,
    ks: tuple[int, ...],
    fix: str,
    *,
    query_gallery: bool = False,
) -> DataSplit:
    """Check the listed images exist, drop evaluation images nothing can retrieve, assign labels.

    ``listed_in`` names the annotation file(s) for messages. Keys are paths relative to ``root``; in
    ``query_gallery`` mode the evaluation set is the queries.
    """
    warnings: list[str] = []
    if not entries:
        raise BadInput(f"{listed_in} lists no images", hint=fix)
    base = os.path.join(str(root), "")  # with a trailing separator: keys are appended, not joined, for speed
    present: list[_Entry] = []
    missing: list[_Entry] = []
    for e in entries:
        (present if os.path.isfile(base + e.key) else missing).append(e)
    if 2 * len(missing) > len(entries):
        raise BadInput(
            f"{len(missing)} of {len(entries)} images listed in {listed_in} are missing under '{root}'"
            f" (e.g. {missing[0].key})",
            hint=fix,
        )
    if missing:
        warnings.append(
            f"skipped {len(missing)} image(s) listed in {listed_in} but missing on disk: "
            + _shown(e.key for e in missing)
        )
    present = _drop_unretrievable(present, root, warnings)
    train_classes = sorted({e.cls for e in present if e.part == "train"}, key=_class_order)
    eval_classes = sorted({e.cls for e in present if e.part != "train"}, key=_class_order)
    query_part = "query" if query_gallery else "eval"
    if len({e.cls for e in present if e.part == query_part}) < 2:
        raise BadInput(f"{listed_in} leaves fewer than two evaluation classes with images to retrieve", hint=fix)
    labels = {cls: i for i, cls in enumerate(train_classes + eval_classes)}
    parts: dict[str, list[Sample]] = {p: [] for p in _PARTS}
    for e in present:
        parts[e.part].append(Sample(base + e.key, labels[e.cls], e.key))
    return DataSplit(
        name=name,
        train=parts["train"],
        eval=parts[query_part],
        gallery=parts["gallery"] if query_gallery else None,
        class_names={i: cls for cls, i in labels.items()},
        ks=ks,
        warnings=warnings,
    )


def _drop_unretrievable(entries: list[_Entry], root: Path, warnings: list[str]) -> list[_Entry]:
    """Drop evaluation images that have no positive to retrieve (possible once missing images are skipped).

    All-vs-all: a class with a single image. Query -> gallery: a query whose class has no gallery image.
    """
    counts: dict[str, int] = {}
    in_gallery: set[str] = set()
    for e in entries:
        if e.part == "eval":
            counts[e.cls] = counts.get(e.cls, 0) + 1
        elif e.part == "gallery":
            in_gallery.add(e.cls)
    single = sorted((c for c, n in counts.items() if n < 2), key=_class_order)
    orphans = sorted({e.cls for e in entries if e.part == "query" and e.cls not in in_gallery}, key=_class_order)
    if single:
        warnings.append(
            f"dropped {len(single)} evaluation class(es) with a single image in {root} (nothing to retrieve): "
            + _shown(single, 5)
        )
    if orphans:
        warnings.append(
            f"dropped the queries of {len(orphans)} item(s) with no gallery image in {root}: " + _shown(orphans, 5)
        )
    dropped = set(single) | set(orphans)
    return [e for e in entries if not (e.cls in dropped and e.part in ("eval", "query"))]


# --- CUB-200-2011 -------------------------------------------------------------------------------------

_CUB_MARKERS = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
_CUB_FIX = "extract CUB_200_2011.tgz unchanged: images/, images.txt and image_class_labels.txt side by side"


def _cub_dir(root: Path) -> Path | None:
    """The ``CUB_200_2011`` folder: ``root`` itself or its child of that name."""
    for d in (root, root / "CUB_200_2011"):
        if any((d / m).is_file() for m in _CUB_MARKERS):
            return d
    return None


def cub200(root: Path) -> DataSplit:
    """CUB-200-2011: classes 1-100 train, 101-200 evaluate (``train_test_split.txt`` is a different protocol).

    ``root`` may be the ``CUB_200_2011`` folder or its parent; keys are relative to ``CUB_200_2011``
    so both spellings give the same fingerprint.
    """
    base = (_cub_dir(root) or root).absolute()
    images_txt, labels_txt = base / "images.txt", base / "image_class_labels.txt"
    paths: dict[str, str] = {}
    for n, fields in _read_lines(images_txt, _CUB_FIX):
        if len(fields) != 2:
            raise _malformed(images_txt, n, "'<image id> <path under images/>'", _CUB_FIX)
        paths[fields[0]] = fields[1]
    classes: dict[str, int] = {}
    for n, fields in _read_lines(labels_txt, _CUB_FIX):
        if len(fields) != 2:
            raise _malformed(labels_txt, n, "'<image id> <class id>'", _CUB_FIX)
        classes[fields[0]] = _class_id(fields[1], labels_txt, n, 200, _CUB_FIX)
    unlabelled = [i for i in paths if i not in classes]
    if unlabelled:
        raise BadInput(
            f"'{labels_txt}' has no class for {len(unlabelled)} image id(s) of images.txt: {_shown(unlabelled)}",
            hint=_CUB_FIX,
        )
    entries = [
        _Entry(f"images/{rel}", str(classes[i]), "train" if classes[i] <= 100 else "eval")
        for i, rel in paths.items()
    ]
    return _build("cub200", base, entries, f"'{images_txt}'", (1, 2, 4, 8), _CUB_FIX)


# --- Cars196 ------------------------------------------------------------------------------------------

_CARS_FIX = "extract car_ims.tgz next to cars_annos.mat, both unchanged"


def _unwrap(value: Any) -> Any:
    """A MATLAB scalar or string, whichever ``squeeze_me`` convention loaded it (1x1 arrays or bare values)."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a single value, got shape {value.shape}")
        value = value.reshape(-1)[0]
    return value.item() if hasattr(value, "item") else value


def cars_annotations(mat: dict[str, Any], where: Path) -> list[tuple[str, int]]:
    """(relative image path, class id) for each record of a loaded ``cars_annos.mat``.

    Accepts ``scipy.io.loadmat`` output with or without ``squeeze_me`` (a 1xN struct array of 1x1 cells,
    or an N / 0-d array of bare values), so the file's exact MATLAB shape does not matter.
    """
    ann = mat.get("annotations")
    names = getattr(getattr(ann, "dtype", None), "names", None) or ()
    if "relative_im_path" not in names or "class" not in names:
        raise BadInput(
            f"'{where}' has no 'annotations' struct array with fields relative_im_path and class", hint=_CARS_FIX
        )
    rows: list[tuple[str, int]] = []
    for i, rec in enumerate(ann.reshape(-1), 1):
        try:
            path, cls = _unwrap(rec["relative_im_path"]), _unwrap(rec["class"])
        except ValueError as exc:
            raise BadInput(f"'{where}' annotation {i}: {exc}", hint=_CARS_FIX) from None
        whole = isinstance(cls, (int, float)) and not isinstance(cls, bool) and float(cls).is_integer()
        if not isinstance(path, str) or not whole or not 1 <= cls <= 196:
            raise BadInput(
                f"'{where}' annotation {i}: expected a path and a class id between 1 and 196, got {path!r}, {cls!r}",
                hint=_CARS_FIX,
            )
        rows.append((path, int(cls)))
    return rows


def cars196(root: Path) -> DataSplit:
    """Cars196 (``car_ims/`` + ``cars_annos.mat``): classes 1-98 train, 99-196 evaluate; the test flag is unused."""
    root = root.absolute()
    mat_path = _require_file(root / "cars_annos.mat", _CARS_FIX)
    sio = require("scipy.io", "train")
    try:
        mat = sio.loadmat(str(mat_path), squeeze_me=True)
    except Exception as exc:  # scipy raises many unrelated exception types for a corrupt file
        raise BadInput(f"cannot read '{mat_path}' as a MATLAB file: {exc}", hint=_CARS_FIX) from None
    entries = [
        _Entry(rel, str(cls), "train" if cls <= 98 else "eval") for rel, cls in cars_annotations(mat, mat_path)
    ]
    return _build("cars196", root, entries, f"'{mat_path}'", (1, 2, 4, 8), _CARS_FIX)


# --- Stanford Online Products -------------------------------------------------------------------------

_SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]
_SOP_FIX = "use Ebay_train.txt and Ebay_test.txt from Stanford_Online_Products.zip, unchanged, beside the image folders"


def _sop_list(path: Path, part: str) -> list[_Entry]:
    lines = _read_lines(path, _SOP_FIX)
    if not lines or lines[0][1] != _SOP_HEADER:
        raise BadInput(f"'{path}' does not start with the header '{' '.join(_SOP_HEADER)}'", hint=_SOP_FIX)
    entries = []
    for n, fields in lines[1:]:
        if len(fields) != 4 or not fields[1].isdigit():
            raise _malformed(path, n, "'<image_id> <class_id> <super_class_id> <path>'", _SOP_FIX)
        entries.append(_Entry(fields[3], fields[1], part))
    return entries


def sop(root: Path) -> DataSplit:
    """Stanford Online Products: the classes of ``Ebay_train.txt`` train, those of ``Ebay_test.txt`` evaluate."""
    root = root.absolute()
    train = _sop_list(root / "Ebay_train.txt", "train")
    test = _sop_list(root / "Ebay_test.txt", "eval")
    shared = sorted({e.cls for e in train} & {e.cls for e in test}, key=_class_order)
    if shared:
        raise BadInput(
            f"'{root / 'Ebay_test.txt'}' reuses {len(shared)} class id(s) of Ebay_train.txt: {_shown(shared)}",
            hint=_SOP_FIX,
        )
    listed_in = f"'{root / 'Ebay_train.txt'}' and Ebay_test.txt"
    return _build("sop", root, train + test, listed_in, (1, 10, 100, 1000), _SOP_FIX)


# --- In-Shop Clothes Retrieval ------------------------------------------------------------------------

_INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
_INSHOP_FIX = "keep Eval/list_eval_partition.txt unchanged and extract img.zip into Img/"


def _inshop_resolver(root: Path) -> Callable[[str], str]:
    """Map a listed path (``img/MEN/...``) to the file's key, looking under ``root`` and ``Img/``, ignoring case.

    The official zip gives ``Img/img/MEN/...``; ``img/`` extracted into ``root`` or renamed ``Img/`` works too.
    A path found nowhere maps to ``Img/<listed path>``, which is then counted as missing.
    """
    img = _dir_ci(root, "Img")
    bases = [root] + ([img] if img is not None else [])
    img_key = img.name if img is not None else "Img"
    heads: dict[str, list[str]] = {}  # first listed component -> candidate folders, relative to root

    def resolve(rel: str) -> str:
        head, _, rest = rel.partition("/")
        if head not in heads:
            found = (_dir_ci(b, head) for b in bases)
            heads[head] = [d.relative_to(root).as_posix() for d in found if d is not None]
        for prefix in heads[head]:
            if os.path.isfile(os.path.join(root, prefix, rest)):
                return f"{prefix}/{rest}"
        return f"{img_key}/{rel}"

    return resolve


def inshop(root: Path) -> DataSplit:
    """In-Shop Clothes Retrieval: train items train; query images are searched among gallery images."""
    root = root.absolute()
    part_txt = root / "Eval" / "list_eval_partition.txt"
    lines = _read_lines(part_txt, _INSHOP_FIX)
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit() or lines[1][1] != _INSHOP_HEADER:
        raise BadInput(
            f"'{part_txt}' should start with an image count, then the header '{' '.join(_INSHOP_HEADER)}'",
            hint=_INSHOP_FIX,
        )
    declared, rows = int(lines[0][1][0]), lines[2:]
    if declared != len(rows):
        raise BadInput(f"'{part_txt}' declares {declared} images but lists {len(rows)} (truncated?)", hint=_INSHOP_FIX)
    resolve = _inshop_resolver(root)
    entries = []
    for n, fields in rows:
        if len(fields) != 3 or fields[2] not in ("train", "query", "gallery"):
            raise _malformed(part_txt, n, "'<image_name> <item_id> <train|query|gallery>'", _INSHOP_FIX)
        entries.append(_Entry(resolve(fields[0]), fields[1], fields[2]))
    shared = sorted({e.cls for e in entries if e.part == "train"} & {e.cls for e in entries if e.part != "train"})
    if shared:
        raise BadInput(
            f"'{part_txt}' lists {len(shared)} item(s) both as train and query/gallery: {_shown(shared)}",
            hint=_INSHOP_FIX,
        )
    return _build("inshop", root, entries, f"'{part_txt}'", (1, 10, 20, 30, 40), _INSHOP_FIX, query_gallery=True)


def detect_benchmark(root: Path) -> Callable[[Path], DataSplit] | None:
    """The loader for the benchmark stored at ``root``, or None for a plain class-folder layout.

    Recognition needs only one of a benchmark's distinctive files or folders, so a layout with a missing
    or broken annotation file is still recognised and then refused with a message naming that file,
    rather than being misread as class folders.
    """
    if _cub_dir(root) is not None:
        return cub200
    if (root / "cars_annos.mat").is_file() or (root / "car_ims").is_dir():
        return cars196
    if any((root / f).is_file() for f in ("Ebay_train.txt", "Ebay_test.txt", "Ebay_info.txt")):
        return sop
    if (root / "Eval" / "list_eval_partition.txt").is_file() or (
        (root / "Eval").is_dir() and _dir_ci(root, "Img") is not None
    ):
        return inshop
    return None
