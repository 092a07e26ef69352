"""CLI commands for the runtime stage: ``proxyembed index`` builds a gallery, ``proxyembed search`` queries it.

Both run without torch: this module imports only typer and the CLI helpers at import time, and the
runtime inside each command. The commands parse options and delegate: listing images is
:mod:`proxyembed.runtime.images`, merging ``proxyembed embed`` output is
:meth:`~proxyembed.runtime.Retriever.add_embeddings`, the result grid is :mod:`proxyembed.runtime.grid`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from proxyembed.runtime.encoder import PrecisionChoice

from ._common import console, err_console, print_json, stdout_to_stderr, user_errors

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
        typer.Option("--from-embeddings", help="Index `proxyembed embed` output(s), not IMAGES (repeatable, merges shards; or a folder of them)."),
    ] = None,
    append: Annotated[
        bool, typer.Option(help="Add to the existing gallery at --out (same ids are re-embedded).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing gallery at --out.")] = False,
    vectors: Annotated[
        Literal["f32", "f16", "i8"] | None,
        typer.Option(
            help="How the index stores vectors: f32 (hnswlib, the default for a new gallery), f16 or i8 (usearch, "
            'pip install "proxyembed\\[quantized]"; refused below the recall target). --append keeps the gallery\'s.'
        ),
    ] = None,
    precision: Annotated[PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Embed a folder or list of images with BUNDLE (or take --from-embeddings) and write a searchable gallery.

    The index calibrates on a random sample of the items held out of the graph (unseen queries), raising
    ef and then M until recall@10 against exact float32 search reaches the target; a gallery with f16 or
    i8 vectors that misses it is not written (exit 1).
    """
    from proxyembed.runtime import BadInput, CheckFailed
    from proxyembed.runtime.images import list_images
    from proxyembed.runtime.retriever import HELD_OUT_QUERIES, open_gallery

    if (images is None) == (not from_embeddings):
        raise BadInput("give either IMAGES or --from-embeddings FILE...", hint="e.g. proxyembed index BUNDLE photos/ --out galleries/NAME")
    items = list_images(images) if images is not None else []
    with stdout_to_stderr(as_json):
        retriever = open_gallery(
            out, bundle, append=append, overwrite=overwrite, expected=len(items), vectors=vectors, precision=precision, threads=threads
        )
    err_console.print(f"encoder: {retriever.encoder.describe()}", highlight=False)
    if images is not None:
        report = _embed_images(retriever, items, batch_size, append, HELD_OUT_QUERIES)
        source = f"the {len(items)} images under {images}"
    else:
        report = retriever.add_embeddings(from_embeddings or [], replace=append, hold_out=HELD_OUT_QUERIES)
        source = f"the rows of {', '.join(map(str, from_embeddings or []))}"
    if report.added == 0:
        raise BadInput(f"none of {source} could be read; no gallery written")
    from proxyembed.runtime.progress import progress_bar

    with progress_bar("calibrating the index (recall@10 against exact search)", None, console=err_console):
        rec = retriever.calibrate()
    store = retriever.storage()
    storage = _storage_line(store)
    if store["vectors"] != "f32" and rec["recall@10"] < rec["target"]:
        raise CheckFailed(
            f"{storage}, but recall@10 {rec['recall@10']:.4f} against exact float32 search is below the target {rec['target']} "
            f"(exact search on the stored vectors reaches {rec['ceiling@10']:.4f}); no gallery written",
            hint="use --vectors f16 (or f32)" if store["vectors"] == "i8" else "use --vectors f32",
        )
    retriever.save(out, calibrate=False)
    M = store["M"]
    if as_json:
        skipped = [{"id": item_id, "reason": why} for item_id, why in report.skipped]
        summary = {"gallery": str(out), "added": report.added, "replaced": report.replaced, "skipped": skipped, "count": len(retriever)}
        print_json({**summary, "index": {**rec, "vectors": store["vectors"], "memory_saved_bytes": store["saved_bytes"]}})
        return
    replaced = f", {report.replaced} replaced" if report.replaced else ""
    console.print(
        f"indexed {report.added} image(s){replaced}, skipped {len(report.skipped)} → {out} ({len(retriever)} items)",
        highlight=False,
    )
    low = rec["recall@10"] < rec["target"]
    queries = f"{rec['queries']} {'held-out' if rec['method'] == 'held-out' else 'stored'} items as queries"
    console.print(
        f"{'[yellow]' if low else ''}recall@10 {rec['recall@10']:.4f} against exact search "
        + (f"({queries})" if rec["queries"] else "(every item is in every answer)")
        + f", ef={rec['ef']}, M={M}"
        + (f"; below {rec['target']} even at M={M}" if low else ""),
        highlight=False,
    )
    console.print(storage, highlight=False)


def _storage_line(store: dict[str, Any]) -> str:
    """What the vector storage costs and saves (:meth:`Retriever.storage`), e.g. 'i8 vectors: 128 B per item instead of 512 B
    (float32), 12.2 MiB saved'."""
    full, now = store["float32_bytes_per_item"], store["bytes_per_item"]
    if now == full:
        return f"f32 vectors: {full} B per item"
    return f"{store['vectors']} vectors: {now} B per item instead of {full} B (float32), {store['saved_bytes'] / 2**20:.1f} MiB saved"


def _embed_images(retriever: Any, items: Sequence[dict[str, Any]], batch_size: int, append: bool, hold_out: int) -> Any:
    """Embed and add ``items`` with a progress bar; list what could not be read."""
    from proxyembed.runtime.progress import progress_bar

    with progress_bar("embedding", len(items), console=err_console) as advance:
        report = retriever.add(
            [it["path"] for it in items],
            [it["id"] for it in items],
            [it["metadata"] for it in items],
            batch_size=batch_size,
            replace=append,
            skip_unreadable=True,
            progress=advance,
            hold_out=hold_out,
        )
    if report.skipped:
        err_console.print(f"[yellow]skipped {len(report.skipped)} unreadable file(s):[/]", highlight=False)
        for item_id, why in report.skipped[:_MAX_LISTED]:
            err_console.print(f"  {item_id}: {why}", highlight=False, soft_wrap=True)
        if len(report.skipped) > _MAX_LISTED:
            err_console.print(f"  … and {len(report.skipped) - _MAX_LISTED} more", highlight=False)
    return report


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
    from proxyembed.runtime.images import list_images

    paths = [p for q in queries for p in ([it["path"] for it in list_images(q)] if q.is_dir() else [q])]
    with stdout_to_stderr(as_json):
        retriever = Retriever.load(gallery, bundle=bundle, precision=precision)
        hits = retriever.search_batch(paths, k, ef=ef)
    if as_json:
        payload = [
            {"query": str(p), "results": [{"rank": r, **h.to_dict()} for r, h in enumerate(row, 1)]}
            for p, row in zip(paths, hits, strict=True)
        ]
        print_json(payload)
    else:
        _print_tables(paths, hits)
    if grid is not None:
        from proxyembed.runtime.grid import draw_grid

        draw_grid(paths, hits, grid, image_of=retriever.image_path)
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
