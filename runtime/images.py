"""Which image files to read: one listing for training data, ``index``, ``embed`` and ``search``.

A folder's images are the files below it with an image extension, in sorted order (path parts
compared first, as ``sorted(Path.rglob(...))``), leaving out hidden files and everything inside hidden
folders (``.DS_Store``-style ``._photo.jpg`` companions, ``.thumbnails/`` caches): they are not images
of the class their folder names. Symlinked files are listed; symlinked folders are not walked into. A
CSV/TSV file list names images one per row, with ids, labels and other metadata. Torch-free, so the
runtime commands can list images without the training stack.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from .errors import BadInput

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(root: Path) -> list[str]:
    """POSIX paths, relative to ``root``, of the image files below it (recursively), sorted, hidden ones left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        found += [prefix + f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    found.sort(key=lambda rel: rel.replace("/", "\0"))  # the order of sorted(Path.rglob(...)): parts first
    return found


class FolderImages(Sequence[dict[str, Any]]):
    """The image files below a folder, sorted, as ``{"path", "id", "metadata"}`` dicts built on access.

    Only the relative paths are held (about 100 bytes an image, against 1.2 KB for Path objects and
    dicts, measured with tracemalloc), so listing a million-image folder for ``proxyembed embed`` costs
    about 100 MB rather than over a gigabyte. Slicing gives another ``FolderImages`` (a shard).
    """

    def __init__(self, root: Path, relative: list[str]) -> None:
        self.root, self._relative = root, relative
        self._resolved = root.resolve()  # metadata paths are absolute (the folder's symlinks resolved, once)

    @classmethod
    def scan(cls, root: Path) -> FolderImages:
        """The images below ``root`` (:func:`image_files`)."""
        return cls(root, image_files(root))

    def __len__(self) -> int:
        return len(self._relative)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> FolderImages: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | FolderImages:
        if isinstance(index, slice):
            return FolderImages(self.root, self._relative[index])
        rel = self._relative[index]
        path = self.root / rel
        meta: dict[str, Any] = {"path": str(self._resolved / rel)}
        if "/" in rel:
            meta["label"] = rel.split("/", 1)[0]
        return {"path": path, "id": rel, "metadata": meta}


def list_images(source: Path) -> Sequence[dict[str, Any]]:
    """The images to index as ``{"path", "id", "metadata"}`` dicts, from a folder or a CSV/TSV file list.

    Folder: every image file below it; ids are paths relative to it; an image inside a subfolder gets the
    top-level subfolder's name as its label (the usual class-folder layout). File list: a header with a
    ``path`` column and optional ``id`` and ``label`` (other columns become metadata); relative paths are
    relative to the list file.
    """
    items: Sequence[dict[str, Any]]
    if source.is_dir():
        items = FolderImages.scan(source)
    elif source.is_file():
        items = read_file_list(source)
    else:
        raise BadInput(f"images not found: {source}", hint="pass a folder of images or a CSV/TSV file list")
    if not items:
        raise BadInput(f"no images found in {source}", hint=f"expected files ending in {sorted(IMAGE_EXTENSIONS)}")
    return items


def read_file_list(source: Path) -> list[dict[str, Any]]:
    """The items of a CSV/TSV file list (see :func:`list_images`); a bad line is a :class:`BadInput` naming it."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{source} is not a UTF-8 text file list", hint="pass a folder, or a CSV/TSV with a 'path' column"
        ) from exc
    delimiter = "\t" if source.suffix.lower() == ".tsv" or "\t" in text.partition("\n")[0] else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if rows and "path" not in rows[0]:
        raise BadInput(
            f"{source} has no 'path' column (columns: {list(rows[0])})", hint="add a header line: path,id,label"
        )
    items, seen = [], set()
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise BadInput(f"{source}:{line}: empty path")
        path = Path(row["path"])
        path = path if path.is_absolute() else source.parent / path
        item_id = row.get("id") or row["path"]
        if item_id in seen:
            raise BadInput(f"{source}:{line}: id {item_id!r} appears twice")
        seen.add(item_id)
        meta = {k: v for k, v in row.items() if k not in ("path", "id") and k is not None and v not in (None, "")}
        meta["path"] = str(path.resolve())
        items.append({"path": path, "id": item_id, "metadata": meta})
    return items
