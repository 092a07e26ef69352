"""Embeddings on disk for corpora of any size: ``FILE.npy`` filled in place, plus two sidecars.

``proxyembed embed`` streams images through the encoder and writes each finished batch straight into
its rows of a preallocated float32 ``.npy`` (so memory stays flat however many images there are), and
every two seconds (and on exit, Ctrl-C included) fsyncs them and records progress in ``FILE.json``
atomically. A killed job resumes from the last recorded row; rows written but not recorded are redone.
``FILE.items.jsonl`` holds one ``{"id", "metadata"}`` line per row, written before any embedding.

Why ``.npy`` and not parquet: numpy is already a runtime dependency (pyarrow would add ~100 MB to edge
installs), a fixed-layout ``.npy`` takes O(1) in-place writes for resuming and gives memory-mapped
random access for merging, and the JSON sidecar follows the other artifacts' self-describing convention.

Shards (``--shard i/n``) are contiguous slices of the image list, so n machines write n files that
:func:`read_embeddings` loads back for ``proxyembed index --from-embeddings`` to merge into one gallery.
Rows of unreadable images are left as zeros and listed under ``skipped`` (never indexed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput, IntegrityError
from .files import atomic_write, read_json_object, write_json_atomic

FORMAT_VERSION = 1
KIND = "proxyembed-embeddings"
RECORD_EVERY_S = 2.0


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """``(FILE.json, FILE.items.jsonl)`` for ``FILE.npy``."""
    stem = out.with_suffix("")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".items.jsonl")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise BadInput(f"--shard '{text}' is not i/n with 0 <= i < n", hint="e.g. --shard 0/4 ... --shard 3/4 for four machines")
    return i, n


def shard_slice(total: int, shard: tuple[int, int]) -> slice:
    """The contiguous rows of ``shard`` among ``total`` items (sizes differ by at most one)."""
    i, n = shard
    return slice(total * i // n, total * (i + 1) // n)


def items_digest(items: Sequence[dict[str, Any]]) -> str:
    """sha256 of the item ids in order: a resume must see the same list."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item["id"]).encode() + b"\n")
    return h.hexdigest()


class EmbeddingWriter:
    """Writes rows into ``out`` (a new file, or the resumed one) and records progress after each batch.

    ``source`` identifies the model (a bundle's signature, or a run's checkpoint sha256); resuming with
    another model, other items or another shard is refused, since the rows would not belong together.
    """

    def __init__(
        self, out: Path, items: Sequence[dict[str, Any]], dim: int, source: dict[str, Any], shard: tuple[int, int], *, overwrite: bool = False
    ) -> None:
        self.out = out
        self.sidecar, self.items_file = sidecar_paths(out)
        header = _header(items, dim, source, shard)
        existing = self._existing(overwrite)
        if existing is not None:
            _refuse_other_job(out, existing, header)
            self.info = existing
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.items_file, lambda tmp: _write_items(tmp, items))
            atomic_write(out, lambda tmp: np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(items), dim)).flush())
            self.info = {**header, "done": 0, "skipped": []}
            write_json_atomic(self.sidecar, self.info)
        self._file = open(out, "r+b")  # held for the writer's life: close() or the with block closes it
        major, _ = np.lib.format.read_magic(self._file)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(self._file)
        self._data_offset, self._row_bytes = self._file.tell(), dim * 4
        self._written, self._skipped, self._recorded_at = self.done, list(self.info["skipped"]), time.monotonic()

    def _existing(self, overwrite: bool) -> dict[str, Any] | None:
        if not self.sidecar.exists():
            if self.out.exists() and not overwrite:
                raise BadInput(f"{self.out} exists and is not a proxyembed embeddings file", hint="choose another --out or pass --overwrite")
            return None
        if overwrite:
            return None
        return _read_info(self.out)

    @property
    def done(self) -> int:
        """Rows recorded as written in the sidecar (where a resumed run starts)."""
        return int(self.info["done"])

    def write(self, vectors: np.ndarray, skipped: Sequence[int] = ()) -> None:
        """Store the next ``len(vectors)`` rows (rows at ``skipped`` offsets are unreadable images, left zero).

        Plain positioned writes, not a memory map: mapped pages would count in the process's resident
        memory and grow with the file. Progress is recorded (rows fsynced first, then the sidecar) every
        ``RECORD_EVERY_S`` seconds and on close, so a kill loses at most that much work, not per-batch fsyncs.
        """
        start = self._written
        self._file.seek(self._data_offset + start * self._row_bytes)
        self._file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._written = start + len(vectors)
        self._skipped += [start + i for i in skipped]
        if time.monotonic() - self._recorded_at >= RECORD_EVERY_S:
            self._record()

    def _record(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self.info["done"], self.info["skipped"] = self._written, list(self._skipped)
        write_json_atomic(self.sidecar, self.info)
        self._recorded_at = time.monotonic()

    def close(self) -> None:
        """Record the rows written so far and close the file (also on an interrupt: the work is kept)."""
        if not self._file.closed:
            self._record()
            self._file.close()

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header(items: Sequence[dict[str, Any]], dim: int, source: dict[str, Any], shard: tuple[int, int]) -> dict[str, Any]:
    """The sidecar fields that say which job a file belongs to: a resume must match every one."""
    return {"kind": KIND, "format_version": FORMAT_VERSION, "source": source, "dim": dim, "count": len(items),
            "shard": list(shard), "items_sha256": items_digest(items)}


def _refuse_other_job(out: Path, existing: dict[str, Any], header: dict[str, Any]) -> None:
    differs = [k for k in header if existing.get(k) != header[k]]
    if differs:
        raise BadInput(
            f"{out} was started with other {', '.join(differs)}: cannot resume it",
            hint="use another --out, or --overwrite to start again",
        )


def recorded_progress(
    out: Path, items: Sequence[dict[str, Any]], dim: int, source: dict[str, Any], shard: tuple[int, int]
) -> dict[str, Any] | None:
    """The sidecar of ``out`` if it belongs to exactly this job (its ``done`` and ``skipped`` say how far it got), else None if absent.

    Lets a scheduler that writes many shard files (``proxyembed embed --engine ray``) tell finished
    shards from pending ones without opening a writer; a file of another job is refused, as on resume.
    """
    if not sidecar_paths(out)[0].exists():
        return None
    existing = _read_info(out)
    _refuse_other_job(out, existing, _header(items, dim, source, shard))
    return existing


def _write_items(path: Path, items: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps({"id": item["id"], "metadata": item["metadata"]}) + "\n")


def _read_info(out: Path) -> dict[str, Any]:
    sidecar, _ = sidecar_paths(out)
    info = read_json_object(
        sidecar,
        missing=f"{sidecar} is missing: {out} is not a proxyembed embeddings file",
        hint="write it with `proxyembed embed`",
        broken_hint="re-run `proxyembed embed` with --overwrite",
        fields={"kind": str, "format_version": int, "dim": int, "count": int, "done": int, "source": dict, "skipped": list},
    )
    if info["kind"] != KIND or info["format_version"] != FORMAT_VERSION:
        raise BadInput(f"{sidecar} is not a version-{FORMAT_VERSION} {KIND} sidecar")
    return info


@dataclass
class Embeddings:
    """A finished embeddings file: rows (memory-mapped), their items, and the sidecar's facts."""

    path: Path
    info: dict[str, Any]
    vectors: np.ndarray
    items: list[dict[str, Any]]

    def readable_chunks(self, size: int = 8192) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """(vectors, items) in chunks of up to ``size`` rows, without the rows of unreadable images."""
        skipped = set(self.info["skipped"])
        for start in range(0, len(self.items), size):
            keep = [i for i in range(start, min(start + size, len(self.items))) if i not in skipped]
            if keep:
                yield np.asarray(self.vectors[keep]), [self.items[i] for i in keep]


def embedding_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files to merge: each path as given, a folder standing for its ``*.npy`` files in name order.

    ``proxyembed embed --engine ray --out DIR`` writes ``DIR/shard-00000.npy`` and so on, so
    ``--from-embeddings DIR`` merges them all without a shell glob.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(path.glob("*.npy"))
        if not found:
            raise BadInput(f"{path} holds no .npy embeddings files", hint="write them with `proxyembed embed`")
        files += found
    return files


def read_embeddings(path: str | Path) -> Embeddings:
    """Load a complete ``proxyembed embed`` output; an unfinished or damaged one is refused, naming it."""
    path = Path(path)
    info = _read_info(path)
    if info["done"] != info["count"]:
        raise BadInput(
            f"{path} is unfinished ({info['done']} of {info['count']} rows)", hint="re-run the same `proxyembed embed` command to resume it"
        )
    _, items_file = sidecar_paths(path)
    try:
        vectors = np.load(path, mmap_mode="r")
        items = [json.loads(line) for line in items_file.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read {path} or its items: {exc}", hint="re-run `proxyembed embed` with --overwrite") from exc
    if vectors.shape != (info["count"], info["dim"]) or len(items) != info["count"] or items_digest(items) != info["items_sha256"]:
        raise IntegrityError(f"{path}: rows, items and sidecar disagree", hint="re-run `proxyembed embed` with --overwrite")
    return Embeddings(path, info, vectors, items)
