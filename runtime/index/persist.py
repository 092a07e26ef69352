"""An :class:`~.core.Index` on disk: ``index.bin`` (the graph) and the sealed ``index.json`` sidecar beside it.

hnswlib's file holds neither space, dim nor a checksum, so the sidecar records the parameters, the live
items (label, id, metadata), the recall measured and the sha256 of ``index.bin``; it is written last, so
a crash in between is detected at load, and the graph file is hashed before any library reads it. An
int8 gallery also writes its residual bits (``index.residual.npy``, :mod:`.usearch`), named by its own
hash in the sidecar and checked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, IntegrityError
from ..files import atomic_write, read_json_object, sha256_file, write_sealed_json
from ..schema import Field, validate
from .items import ItemTable
from .storage import Space, VectorStorage

if TYPE_CHECKING:
    from .core import Index

INDEX_FILE = "index.bin"
SIDECAR_FILE = "index.json"
RESIDUAL_FILE = "index.residual.npy"
FORMAT_VERSION = 2  # 2: sealed sidecar, live items only with their labels, recorded recall

SIDECAR_SCHEMA: dict[str, Any] = {
    "format_version": int,
    "dim": int,
    "space": Space,
    "vectors": Field(VectorStorage, required=False),  # galleries from before quantized storage hold float32
    "M": int,
    "ef_construction": int,
    "ef": int,
    "count": int,
    "capacity": int,
    "index_sha256": str,
    "residual_sha256": Field(str, required=False),  # int8 galleries only
    "recall": dict,
    "next_label": int,
    "labels": list,
    "ids": list,
    "metadata": list,
}
"""What ``index.json`` must hold (see :func:`write`)."""


def write(index: Index, folder: Path) -> None:
    """Write the graph and then the sidecar naming its hash into ``folder`` (the caller holds the index's read lock)."""
    digest = ""

    def write_graph(tmp: Path) -> None:
        nonlocal digest
        index._hnsw.save_index(str(tmp))
        digest = sha256_file(tmp)

    atomic_write(folder / INDEX_FILE, write_graph)
    residual: dict[str, str] = {}
    if index.vectors == "i8":

        def write_residual(tmp: Path) -> None:
            index._hnsw.save_residual(str(tmp))
            residual.update(residual_file=RESIDUAL_FILE, residual_sha256=sha256_file(tmp))

        atomic_write(folder / RESIDUAL_FILE, write_residual)
    sidecar = {
        "format_version": FORMAT_VERSION,
        **index.params(),
        "count": len(index),
        "capacity": index._hnsw.get_max_elements(),
        "index_file": INDEX_FILE,
        "index_sha256": digest,
        **residual,
        "recall": index._recall,
        **index._items.to_json(),
    }
    write_sealed_json(folder / SIDECAR_FILE, sidecar, indent=1)


def read(cls: type[Index], folder: Path, *, exact_below: int) -> Index:
    """The index saved in ``folder``: sidecar and graph checked against each other before anything is trusted."""
    side = _read_sidecar(folder / SIDECAR_FILE)
    index_file = folder / INDEX_FILE
    if not index_file.is_file():
        raise IntegrityError(f"index file missing: {index_file}")
    if sha256_file(index_file) != side["index_sha256"]:
        raise IntegrityError(
            f"index file altered or truncated: {index_file} does not match {SIDECAR_FILE}",
            hint="rebuild the gallery",
        )
    index = cls(
        side["dim"],
        side["space"],
        M=side["M"],
        ef_construction=side["ef_construction"],
        ef=side["ef"],
        exact_below=exact_below,
        capacity=side["capacity"],
        vectors=side.get("vectors", "f32"),
        _load_from=index_file,
    )
    if index.vectors == "i8":
        _read_residual(index, folder, side)
    ids, where = side["ids"], folder / SIDECAR_FILE
    if not (len(side["labels"]) == len(ids) == len(side["metadata"]) == side["count"]) or index._hnsw.element_count < len(ids):
        raise IntegrityError(f"{where} lists {len(ids)} items, {index_file} holds {index._hnsw.element_count}")
    index._items, index._recall = ItemTable.from_json(side, where), side["recall"]
    return index


def _read_residual(index: Index, folder: Path, side: dict[str, Any]) -> None:
    """Give an int8 index the residual bits its sidecar names, checked against the recorded sha256 first."""
    path = folder / RESIDUAL_FILE
    if "residual_sha256" not in side:
        raise IntegrityError(
            f"{folder / SIDECAR_FILE} records int8 vectors but no residual bits (a gallery from before they were kept)",
            hint="rebuild the gallery",
        )
    if not path.is_file():
        raise IntegrityError(f"residual bits missing: {path}", hint="rebuild the gallery")
    if sha256_file(path) != side["residual_sha256"]:
        raise IntegrityError(f"residual bits altered or truncated: {path} does not match {SIDECAR_FILE}", hint="rebuild the gallery")
    index._hnsw.load_residual(str(path))


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = read_json_object(
        path,
        missing=f"index sidecar missing: {path}",
        hint="is this a folder written by Index.save or `proxyembed index`?",
        broken_hint="rebuild the gallery",
        fields={"format_version": int},
        sealed=True,
    )
    if side["format_version"] != FORMAT_VERSION:
        raise BadInput(
            f"{path}: index format_version {side['format_version']} is not supported (expected {FORMAT_VERSION})"
        )
    validate(side, SIDECAR_SCHEMA, where=str(path), error=IntegrityError, hint="rebuild the gallery")
    return side
