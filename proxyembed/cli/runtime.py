"""CLI commands for the runtime stage: ``proxyembed index`` builds a gallery, ``proxyembed search`` queries it.

Both run without torch: this module imports only typer and the CLI helpers at import time, and the
runtime inside each command. Listing images and drawing result grids live in small plain functions
here, so the commands stay thin.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, overload

import typer

from proxyembed.runtime.encoder import PrecisionChoice

from ._common import console, err_console, print_json, stdout_to_stderr, user_errors

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_MAX_LISTED = 20


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
    app.command("index", rich_help_panel="Runtime")(index_command)
    app.command("search", rich_help_panel="Runtime")(search_command)


# -- index -------------------------------------------------------------------------------------------


@user_errors
def index_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `proxyembed export`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Gallery folder to write.")],
    images: Annotated[
        Path | None,
        typer.Argument(help="Folder of images (class subfolders give labels), or a CSV/TSV list: path[,id][,label]."),
    ] = None,
    from_embeddings: Annotated[
        list[Path] | None,
        typer.Option("--from-embeddings", help="Index `proxyembed embed` output(s) instead of IMAGES (repeatable: merges shards)."),
    ] = None,
    append: Annotated[
        bool, typer.Option(help="Add to the existing gallery at --out (same ids are re-embedded).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing gallery at --out.")] = False,
    precision: Annotated[PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Embed a folder or list of images with BUNDLE (or take --from-embeddings) and write a searchable gallery."""
    from proxyembed.runtime import BadInput, Encoder, Index, Retriever
    from proxyembed.runtime.retriever import GALLERY_FILE

    if (images is None) == (not from_embeddings):
        raise BadInput("give either IMAGES or --from-embeddings FILE...", hint="e.g. proxyembed index BUNDLE photos/ --out galleries/NAME")
    exists = (out / GALLERY_FILE).is_file()
    if append and not exists:
        raise BadInput(f"--append: no gallery at {out}", hint="drop --append to create it")
    if exists and not (append or overwrite):
        raise BadInput(
            f"a gallery already exists at {out}", hint="pass --append to add to it or --overwrite to replace it"
        )
    items = list_images(images) if images is not None else []
    with stdout_to_stderr(as_json):
        if append:
            retriever = Retriever.load(out, bundle=bundle, precision=precision, threads=threads)
        else:
            encoder = Encoder(bundle, precision=precision, threads=threads)
            retriever = Retriever(encoder, Index(encoder.dim, capacity=max(len(items), 1)))  # the expected size picks M
    err_console.print(f"encoder: {retriever.encoder.describe()}", highlight=False)
    if images is not None:
        report = _embed_images(retriever, items, batch_size, append)
        source = f"the {len(items)} images under {images}"
    else:
        report = add_embeddings(retriever, from_embeddings or [], replace=append)
        source = f"the rows of {', '.join(map(str, from_embeddings or []))}"
    if report.added == 0:
        raise BadInput(f"none of {source} could be read; no gallery written")
    retriever.save(out)
    rec, M = retriever.index.recall(), retriever.index.M
    if as_json:
        skipped = [{"id": item_id, "reason": why} for item_id, why in report.skipped]
        summary = {"gallery": str(out), "added": report.added, "replaced": report.replaced, "skipped": skipped, "count": len(retriever)}
        print_json({**summary, "index": {**rec, "M": M}})
        return
    replaced = f", {report.replaced} replaced" if report.replaced else ""
    console.print(
        f"indexed {report.added} image(s){replaced}, skipped {len(report.skipped)} → {out} ({len(retriever)} items)",
        highlight=False,
    )
    low = rec["recall@10"] < rec["target"]
    console.print(
        f"{'[yellow]' if low else ''}recall@10 {rec['recall@10']:.4f} against exact search "
        + (f"({rec['queries']} stored items as queries)" if rec["queries"] else "(every item is in every answer)")
        + f", ef={rec['ef']}, M={M}"
        + (f"; below {rec['target']}: rebuild with --overwrite for a larger M" if low else ""),
        highlight=False,
    )


def _embed_images(retriever: Any, items: Sequence[dict[str, Any]], batch_size: int, append: bool) -> Any:
    """Embed and add ``items`` with a progress bar; list what could not be read."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("embedding", total=len(items))
        report = retriever.add(
            [it["path"] for it in items],
            [it["id"] for it in items],
            [it["metadata"] for it in items],
            batch_size=batch_size,
            replace=append,
            skip_unreadable=True,
            progress=lambda done: progress.update(task, completed=done),
        )
    if report.skipped:
        err_console.print(f"[yellow]skipped {len(report.skipped)} unreadable file(s):[/]", highlight=False)
        for item_id, why in report.skipped[:_MAX_LISTED]:
            err_console.print(f"  {item_id}: {why}", highlight=False, soft_wrap=True)
        if len(report.skipped) > _MAX_LISTED:
            err_console.print(f"  … and {len(report.skipped) - _MAX_LISTED} more", highlight=False)
    return report


def add_embeddings(retriever: Any, files: list[Path], *, replace: bool) -> Any:
    """Add the rows of ``proxyembed embed`` outputs (shards) to the retriever's index, in file order.

    Each file must come from the retriever's bundle (same manifest sha256 and dim) and be complete;
    rows of unreadable images are reported as skipped. Ids must be unique across the files.
    """
    from proxyembed.runtime import BadInput
    from proxyembed.runtime.embeddings import read_embeddings
    from proxyembed.runtime.retriever import AddReport

    want = retriever.encoder.bundle.signature
    parts = [read_embeddings(f) for f in files]  # all checked before any row is added
    for part in parts:
        got = {k: part.info["source"].get(k) for k in want}
        if got != want:
            raise BadInput(
                f"{part.path} was embedded by another model ({got}), not bundle {retriever.encoder.bundle.path} ({want})",
                hint="index it with the bundle that embedded it, or re-embed with this bundle",
            )
    report = AddReport()
    for part in parts:
        for vectors, items in part.readable_chunks():
            ids = [it["id"] for it in items]
            report.replaced += sum(1 for i in ids if i in retriever.index)
            retriever.index.add(vectors, ids, [it["metadata"] for it in items], replace=replace)
            report.added += len(ids)
        skipped_items = [part.items[i]["id"] for i in part.info["skipped"]]
        report.skipped += [(item_id, f"unreadable when embedded into {part.path}") for item_id in skipped_items]
    return report


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
        found = []
        for folder, _, files in os.walk(root):
            base = Path(folder).relative_to(root).as_posix()
            prefix = "" if base == "." else base + "/"
            found += [prefix + f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        found.sort(key=lambda rel: rel.replace("/", "\0"))  # the order of sorted(Path.rglob(...)): parts first
        return cls(root, found)

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
    from proxyembed.runtime import BadInput

    items: Sequence[dict[str, Any]]
    if source.is_dir():
        items = FolderImages.scan(source)
    elif source.is_file():
        items = _read_file_list(source)
    else:
        raise BadInput(f"images not found: {source}", hint="pass a folder of images or a CSV/TSV file list")
    if not items:
        raise BadInput(f"no images found in {source}", hint=f"expected files ending in {sorted(IMAGE_EXTENSIONS)}")
    return items


def _read_file_list(source: Path) -> list[dict[str, Any]]:
    from proxyembed.runtime import BadInput

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


# -- search ------------------------------------------------------------------------------------------


@user_errors
def search_command(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder written by `proxyembed index`.")],
    queries: Annotated[list[Path], typer.Argument(help="Query image(s), or folders of them.")],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Results per query.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts).")] = False,
    grid: Annotated[Path | None, typer.Option(help="Write a PNG of each query beside its results.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle to use instead of the one the gallery records.")] = None,
    precision: Annotated[PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")] = "auto",
    ef: Annotated[int | None, typer.Option(min=1, help="hnswlib search breadth (default: the gallery's).")] = None,
) -> None:
    """Find the K gallery images most similar to each QUERY image."""
    from proxyembed.runtime import Retriever

    paths = [p for q in queries for p in ([it["path"] for it in list_images(q)] if q.is_dir() else [q])]
    with stdout_to_stderr(as_json):
        retriever = Retriever.load(gallery, bundle=bundle, precision=precision)
        hits = retriever.index.search(retriever.encoder.encode(paths), k, ef=ef)
    if as_json:
        payload = [
            {"query": str(p), "results": [{"rank": r, **h.to_dict()} for r, h in enumerate(row, 1)]}
            for p, row in zip(paths, hits, strict=True)
        ]
        print_json(payload)
    else:
        _print_tables(paths, hits)
    if grid is not None:
        draw_grid(paths, hits, grid)
        err_console.print(f"grid written to {grid}", highlight=False)


def _print_tables(paths: list[Path], hits: list[list[Any]]) -> None:
    from rich.table import Table

    for path, row in zip(paths, hits, strict=True):
        table = Table(title=str(path), title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("id")
        table.add_column("score", justify="right")
        table.add_column("label")
        table.add_column("metadata")
        for rank, hit in enumerate(row, 1):
            extra = {key: v for key, v in hit.metadata.items() if key not in ("label", "path")}
            table.add_row(
                str(rank),
                str(hit.id),
                f"{hit.score:.4f}",
                str(hit.metadata.get("label", "")),
                json.dumps(extra) if extra else "",
            )
        console.print(table)


def draw_grid(paths: list[Path], hits: list[list[Any]], out: Path, thumb: int = 128) -> None:
    """One row per query: the query (blue frame), then its hits with label and score underneath.

    A hit whose label equals the query's parent folder name (the class-folder convention) gets a green
    frame, any other labelled hit a red one; unlabelled hits are framed grey.
    """
    from PIL import Image, ImageDraw

    from proxyembed.runtime import BadInput, load_image

    pad, text_h = 6, 30
    cols = 1 + max((len(row) for row in hits), default=0)
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + text_h
    canvas = Image.new("RGB", (cols * cell_w, len(paths) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)

    def cell(col: int, row: int, src: Any, frame: str, caption: str) -> None:
        x, y = col * cell_w + pad, row * cell_h + pad
        try:
            img = load_image(src)
            img.thumbnail((thumb, thumb))
        except BadInput:
            img = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        canvas.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        draw.rectangle((x - 3, y - 3, x + thumb + 2, y + thumb + 2), outline=frame, width=3)
        for i, line in enumerate(caption.split("\n")[:2]):
            draw.text((x, y + thumb + 4 + 12 * i), line[:22], fill="black")

    for r, (query, row) in enumerate(zip(paths, hits, strict=True)):
        truth = Path(query).parent.name
        cell(0, r, query, "blue", f"query\n{Path(query).name}")
        for c, hit in enumerate(row, 1):
            label = hit.metadata.get("label")
            frame = "grey" if label is None else ("green" if str(label) == truth else "red")
            cell(
                c, r, hit.metadata.get("path", ""), frame, f"{label if label is not None else hit.id}\n{hit.score:.3f}"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
