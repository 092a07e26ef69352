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
from typing import Annotated, Any

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
    precision: Annotated[PrecisionChoice, typer.Option(help="Which artifact: auto picks the best validated one for this machine.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads (default: all cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Embed a folder or list of images with BUNDLE (or take --from-embeddings) and write a searchable gallery."""
    from proxyembed.runtime import BadInput
    from proxyembed.runtime.images import list_images
    from proxyembed.runtime.retriever import open_gallery

    if (images is None) == (not from_embeddings):
        raise BadInput("give either IMAGES or --from-embeddings FILE...", hint="e.g. proxyembed index BUNDLE photos/ --out galleries/NAME")
    items = list_images(images) if images is not None else []
    with stdout_to_stderr(as_json):
        retriever = open_gallery(out, bundle, append=append, overwrite=overwrite, expected=len(items), precision=precision, threads=threads)
    err_console.print(f"encoder: {retriever.encoder.describe()}", highlight=False)
    if images is not None:
        report = _embed_images(retriever, items, batch_size, append)
        source = f"the {len(items)} images under {images}"
    else:
        report = retriever.add_embeddings(from_embeddings or [], replace=append)
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
        from proxyembed.runtime.grid import draw_grid

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
