"""Encoder + Index = image search, and the gallery folder that persists it (docs/architecture.md, "Gallery").

A gallery folder holds ``gallery.json`` (format version, the bundle's signature — manifest sha256 and
dim — and where the bundle was, the index parameters with the vector storage (f32, f16 or i8) and
measured recall, the item count, the sha256 of the item table), ``index.bin`` (hnswlib, or usearch
for f16 / i8), for i8 ``index.residual.npy`` (the codes' residual bits) and ``index.json`` (the item
table: id and metadata such as label and path, per label, and the sha256 of each index file). Both
JSON files are sealed (their own checksum is their last field), so every byte of a gallery is checked
before it answers a search.
A gallery only makes sense with the model that embedded it, so loading it with another bundle is
refused. Saves are built in a temporary sibling folder, fsynced, and renamed into place.

A gallery may also hold image files of its own in ``images/`` (the service keeps the images clients
upload there): an item whose metadata ``path`` is relative names such a file, while an absolute
``path`` is where ``proxyembed index`` read the image on this machine. Each save carries the held
files that items still name into the new folder (hard links), so they share the save's atomicity.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .corpus import embed_stream
from .embeddings import embedding_files, read_embeddings
from .encoder import Encoder, is_single_image
from .errors import BadInput, IntegrityError
from .files import (
    read_json_object,
    remove_abandoned_staging,
    restore_interrupted_swap,
    sha256_file,
    staged_dir,
    write_sealed_json,
)
from .index import CALIBRATION_QUERIES, SIDECAR_FILE, Filter, Hit, Index, ItemId, VectorStorage
from .preprocess import ImageLike

GALLERY_FILE = "gallery.json"
GALLERY_VERSION = 2  # 2: sealed gallery.json and index.json, recorded recall
HELD_IMAGES = "images"  # the gallery's own image files; a relative metadata path is one of them
# `proxyembed index` holds this many new items out of the graph so the calibration has unseen queries.
HELD_OUT_QUERIES = CALIBRATION_QUERIES


@dataclass
class AddReport:
    """What :meth:`Retriever.add` did: how many items went in, and which inputs were skipped and why."""

    added: int = 0
    replaced: int = 0
    skipped: list[tuple[ItemId, str]] = field(default_factory=list)


class Retriever:
    """Embeds images with an :class:`Encoder` and searches them in an :class:`Index`."""

    def __init__(self, encoder: Encoder, index: Index | None = None) -> None:
        self.encoder = encoder
        self.index = index if index is not None else Index(encoder.dim)
        self.folder: Path | None = None  # the gallery folder it was loaded from or last saved to (its held images are there)
        if self.index.dim != encoder.dim:
            raise BadInput(f"index dim {self.index.dim} does not match the encoder's dim {encoder.dim}")

    def __len__(self) -> int:
        return len(self.index)

    def add(
        self,
        images: Sequence[ImageLike],
        ids: Sequence[ItemId] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 32,
        replace: bool = False,
        skip_unreadable: bool = False,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
        hold_out: int = 0,
    ) -> AddReport:
        """Embed and index ``images``; ``ids`` default to the image paths (so then all must be paths).

        With ``skip_unreadable`` an image that cannot be decoded is recorded in the report instead of
        raising. ``progress(n)`` is called after each batch with the number of images it processed.
        Images are decoded on ``workers`` threads (default up to 4) while the previous batch is encoded.
        ``hold_out`` items, picked at random, are added as held out (:meth:`Index.add`): the next save
        calibrates on them as queries the graph has not seen, then inserts them.
        """
        images = list(images)
        if ids is None:
            if not all(isinstance(im, (str, os.PathLike)) for im in images):
                raise BadInput("ids are required unless every image is given as a path")
            ids = [str(im) for im in images]
        ids = list(ids)
        metas = [dict(m) if m else {} for m in metadata] if metadata is not None else [{} for _ in images]
        if not (len(images) == len(ids) == len(metas)):
            raise BadInput(f"got {len(images)} images, {len(ids)} ids and {len(metas)} metadata entries")
        report = AddReport()
        out = _pick_held_out(len(images), hold_out)
        encoder = self.encoder
        batches = embed_stream(encoder.encode_batch, encoder.dim, encoder.preprocessor, images, batch_size, workers=workers)
        for start, (rows, unreadable) in zip(range(0, len(images), batch_size), batches, strict=True):
            if unreadable and not skip_unreadable:
                raise unreadable[0][1]
            report.skipped += [(ids[start + j], exc.message) for j, exc in unreadable]
            keep = sorted(set(range(len(rows))) - {j for j, _ in unreadable})
            if keep:
                batch_ids = [ids[start + j] for j in keep]
                report.replaced += sum(1 for i in batch_ids if i in self.index)
                self._add_rows(rows[keep], batch_ids, [metas[start + j] for j in keep], out[[start + j for j in keep]], replace)
                report.added += len(keep)
            if progress is not None:
                progress(len(rows))
        return report

    def _add_rows(
        self, vectors: Any, ids: list[ItemId], metas: list[dict[str, Any]], held_out: Any, replace: bool
    ) -> None:
        """Add one batch to the index, the rows flagged in ``held_out`` kept out of the graph for the next calibration."""
        for flag in (False, True):
            rows = [j for j in range(len(ids)) if bool(held_out[j]) == flag]
            if rows:
                self.index.add(vectors[rows], [ids[j] for j in rows], [metas[j] for j in rows], replace=replace, held_out=flag)

    def add_embeddings(self, files: Sequence[str | Path], *, replace: bool = False, hold_out: int = 0) -> AddReport:
        """Add the rows of ``proxyembed embed`` outputs (shards) to the index, in file order, without re-embedding.

        A folder stands for the ``*.npy`` files in it (the shards of ``proxyembed embed --engine ray``).

        Each file must come from this retriever's bundle (same manifest sha256 and dim) and be complete;
        rows of unreadable images are reported as skipped. Ids must be unique across the files.
        ``hold_out`` rows are held out for the next calibration, as in :meth:`add`.
        """
        want = self.encoder.bundle.signature
        parts = [read_embeddings(f) for f in embedding_files(files)]  # all checked before any row is added
        for part in parts:
            got = {k: part.info["source"].get(k) for k in want}
            if got != want:
                raise BadInput(
                    f"{part.path} was embedded by another model ({got}), not bundle {self.encoder.bundle.path} ({want})",
                    hint="index it with the bundle that embedded it, or re-embed with this bundle",
                )
        report = AddReport()
        total = sum(len(part.items) - len(part.info["skipped"]) for part in parts)
        out, done = _pick_held_out(total, hold_out), 0
        for part in parts:
            for vectors, items in part.readable_chunks():
                ids = [it["id"] for it in items]
                report.replaced += sum(1 for i in ids if i in self.index)
                self._add_rows(vectors, ids, [it["metadata"] for it in items], out[done : done + len(ids)], replace)
                done += len(ids)
                report.added += len(ids)
            skipped_items = [part.items[i]["id"] for i in part.info["skipped"]]
            report.skipped += [(item_id, f"unreadable when embedded into {part.path}") for item_id in skipped_items]
        return report

    def search(self, image: ImageLike, k: int = 5, *, ef: int | None = None, filter: Filter | None = None) -> list[Hit]:
        """Top-``k`` hits for one image, best first (fewer when fewer items qualify)."""
        if not is_single_image(image):
            raise BadInput(f"search takes one image, got {type(image).__name__}", hint="use search_batch for several")
        return self.search_batch([image], k, ef=ef, filter=filter)[0]

    def search_batch(
        self, images: Sequence[ImageLike], k: int = 5, *, ef: int | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each of ``images``: one list per image, in order, embedded in batches."""
        if is_single_image(images):
            raise BadInput("search_batch takes a sequence of images", hint="use search for one")
        return self.index.search(self.encoder.encode(list(images)), k, ef=ef, filter=filter)

    def search_vector(
        self, vector: Sequence[float] | np.ndarray, k: int = 5, *, ef: int | None = None, filter: Filter | None = None
    ) -> list[Hit]:
        """Top-``k`` hits for one query embedding of the gallery's dim, best first: a vector that ``embed``
        wrote, a client sent, or an item's own (:meth:`Index.vector`). It need not be normalised."""
        v = np.asarray(vector, dtype=np.float32)
        if v.ndim != 1:
            raise BadInput(f"search_vector takes one vector of {self.index.dim} values, got shape {v.shape}", hint="pass one row at a time")
        return self.index.search(v, k, ef=ef, filter=filter)[0]

    def calibrate(self) -> dict[str, Any]:
        """Measure the index's recall and raise ef, then M, until it reaches the target (:meth:`Index.calibrate`)."""
        return self.index.calibrate()

    def storage(self) -> dict[str, Any]:
        """How the gallery stores its vectors: the storage, bytes per item against float32, and bytes saved in all."""
        per_item, full = self.index.vector_bytes(), 4 * self.index.dim
        return {"vectors": self.index.vectors, "bytes_per_item": per_item, "float32_bytes_per_item": full,
                "saved_bytes": len(self.index) * (full - per_item), "M": self.index.M}  # fmt: skip

    # -- gallery persistence -------------------------------------------------------------------------

    def image_path(self, metadata: Mapping[str, Any]) -> Path | None:
        """Where an item's image is on this machine, for showing it (a result grid): a held ``images/NAME`` in
        the gallery folder, else the path ``index`` recorded; None when neither is known."""
        held = held_image(metadata)
        if held is not None:
            return self.folder / held if self.folder is not None else None
        raw = metadata.get("path")
        return Path(raw) if isinstance(raw, str) and raw else None

    def save(self, folder: str | Path, *, calibrate: bool = True, new_images: Mapping[str, bytes] | None = None) -> Path:
        """Write the gallery to ``folder`` atomically: a temp sibling folder, then a rename.

        An existing gallery at ``folder`` is replaced only once the new one is complete; a folder that
        exists but is not a gallery is refused rather than deleted. ``calibrate=False`` keeps the last
        recall measurement and ``ef`` (a service saving after every small change; see :meth:`Index.calibrate`).
        ``new_images`` maps held-image paths (``images/NAME``, as item metadata names them) to the bytes
        to store; held images that items still name are carried over from the gallery at ``folder``.
        """
        folder = Path(folder).resolve()
        if folder.exists() and not (folder / GALLERY_FILE).is_file() and (not folder.is_dir() or any(folder.iterdir())):
            raise BadInput(
                f"{folder} exists and is not a gallery", hint="choose a new --out folder; it is not overwritten"
            )
        with staged_dir(folder) as tmp:
            self.index.save(tmp, calibrate=calibrate)
            self._carry_held_images(self.folder or folder, tmp, new_images or {})
            info = {
                "format_version": GALLERY_VERSION,
                "bundle": {**self.encoder.bundle.signature, "path": str(self.encoder.bundle.path)},
                "encoder": {"precision": self.encoder.precision, "artifact": self.encoder.artifact.file},
                "index": self.index.params(),
                "recall": self.index.recall(),
                "count": len(self.index),
                "items_file": SIDECAR_FILE,
                "items_sha256": sha256_file(tmp / SIDECAR_FILE),
            }
            write_sealed_json(tmp / GALLERY_FILE, info)
        self.folder = folder
        return folder

    def _carry_held_images(self, folder: Path, tmp: Path, new_images: Mapping[str, bytes]) -> None:
        """Put every held image an item names into the staged folder: new ones written, those in ``folder`` hard-linked."""
        if not new_images and not (folder / HELD_IMAGES).is_dir():
            return  # a gallery that holds no images (every one `index` builds): no need to read each item's metadata
        index = self.index
        wanted = {p for p in (held_image(index.metadata(i)) for i in index.ids()) if p is not None}
        for rel in sorted(wanted):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in new_images:
                dest.write_bytes(new_images[rel])
            elif (folder / rel).is_file():
                try:
                    os.link(folder / rel, dest)  # held files never change (named by content), so a link is a copy
                except OSError:
                    shutil.copyfile(folder / rel, dest)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        bundle: str | Path | Bundle | None = None,
        **encoder_options: Any,
    ) -> Retriever:
        """Open a gallery with ``bundle`` (default: the bundle path it records).

        Raises :class:`BadInput` when the bundle is not the one the gallery was built with (manifest
        sha256 or dim differ) and :class:`IntegrityError` when a gallery file was altered or truncated.
        ``encoder_options`` go to :class:`Encoder` (precision, device, threads).
        """
        folder = Path(folder)
        info = open_gallery_info(folder)
        if bundle is None:
            bundle = info["bundle"].get("path")
            if not bundle:
                raise BadInput(
                    f"{folder / GALLERY_FILE} does not record its bundle", hint="pass the bundle explicitly (--bundle)"
                )
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        want = {key: info["bundle"].get(key) for key in ("manifest_sha256", "dim")}
        if bundle.signature != want:
            raise BadInput(
                f"gallery {folder} was built with another model (manifest sha256 "
                f"{str(want['manifest_sha256'])[:12]}…, dim {want['dim']}) than bundle {bundle.path} "
                f"(sha256 {bundle.manifest_sha256[:12]}…, dim {bundle.dim})",
                hint="search with the bundle that built it, or rebuild the gallery with `proxyembed index`",
            )
        if not (folder / SIDECAR_FILE).is_file() or sha256_file(folder / SIDECAR_FILE) != info["items_sha256"]:
            raise IntegrityError(
                f"{folder / SIDECAR_FILE} was altered or truncated (sha256 differs from {GALLERY_FILE})",
                hint="rebuild the gallery",
            )
        retriever = cls(Encoder(bundle, **encoder_options), Index.load(folder))
        retriever.folder = folder.resolve()
        return retriever


def _pick_held_out(n: int, count: int, seed: int = 0) -> np.ndarray:
    """A boolean mask of ``count`` (at most half of ``n``) items picked at random: the calibration's unseen queries."""
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).choice(n, min(count, n // 2), replace=False)] = True
    return mask


def open_gallery(
    folder: str | Path,
    bundle: str | Path | Bundle,
    *,
    append: bool = False,
    overwrite: bool = False,
    expected: int = 1,
    vectors: VectorStorage | None = None,
    **encoder_options: Any,
) -> Retriever:
    """The retriever ``proxyembed index`` fills before saving it to ``folder``: the gallery there, or a new one.

    ``append`` adds to an existing gallery (loaded with ``bundle``, which must be the one that built it);
    otherwise a new empty gallery is made for ``expected`` items (the size picks the index's ``M``) storing
    ``vectors`` as f32 (the default), f16 or i8; an appended gallery keeps the storage it was built with. An
    existing gallery is only replaced with ``overwrite``, and ``append`` needs one to exist, so a typo in
    a folder name never silently starts or replaces a gallery.
    """
    exists = (Path(folder) / GALLERY_FILE).is_file()
    if append and not exists:
        raise BadInput(f"--append: no gallery at {folder}", hint="drop --append to create it")
    if exists and not (append or overwrite):
        raise BadInput(f"a gallery already exists at {folder}", hint="pass --append to add to it or --overwrite to replace it")
    if append:
        retriever = Retriever.load(folder, bundle=bundle, **encoder_options)
        if vectors is not None and retriever.index.vectors != vectors:
            raise BadInput(
                f"--append: the gallery at {folder} stores {retriever.index.vectors} vectors, not {vectors}",
                hint=f"pass --vectors {retriever.index.vectors}, or rebuild it with --overwrite",
            )
        return retriever
    encoder = Encoder(bundle, **encoder_options)
    return Retriever(encoder, Index(encoder.dim, capacity=max(expected, 1), vectors=vectors or "f32"))


def held_image(metadata: Mapping[str, Any]) -> str | None:
    """The ``images/NAME`` file a gallery holds for an item (its metadata ``path`` is relative), or None.

    Only a plain name directly inside ``images/`` counts, so no metadata can name a file elsewhere.
    """
    raw = metadata.get("path")
    if not isinstance(raw, str):
        return None
    head, _, name = raw.partition("/")
    if head != HELD_IMAGES or not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        return None
    return raw


def open_gallery_info(folder: str | Path) -> dict[str, Any]:
    """What opening a gallery does first: repair an interrupted save, drop abandoned staging folders, read ``gallery.json``.

    A save killed between its two renames leaves the previous version aside (:func:`restore_interrupted_swap`
    puts it back); each kill during a save leaves a staging folder (:func:`remove_abandoned_staging` removes
    those whose writer is gone). :meth:`Retriever.load` and ``proxyembed serve`` both start here.
    """
    restore_interrupted_swap(folder)
    remove_abandoned_staging(folder)
    return read_gallery_info(folder)


def read_gallery_info(folder: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``gallery.json`` (no model is loaded)."""
    path = Path(folder) / GALLERY_FILE
    info = read_json_object(
        path,
        missing=f"no gallery at {Path(folder)}: {GALLERY_FILE} is missing",
        hint="build one with `proxyembed index`",
        broken_hint="rebuild the gallery",
        fields={"format_version": int, "bundle": dict, "items_sha256": str},
        sealed=True,
    )
    if info["format_version"] != GALLERY_VERSION:
        raise BadInput(
            f"{path}: gallery format_version {info['format_version']} is not supported (expected {GALLERY_VERSION})"
        )
    return info
