"""A picture of search results: each query beside its hits, framed by whether the labels agree."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .errors import BadInput
from .index import Hit
from .preprocess import load_image


def draw_grid(
    paths: Sequence[Path],
    hits: Sequence[Sequence[Hit]],
    out: Path,
    thumb: int = 128,
    *,
    image_of: Callable[[Mapping[str, Any]], Path | None] | None = None,
) -> None:
    """Write a PNG to ``out``, one row per query: the query (blue frame), then its hits with label and score underneath.

    A hit whose label equals the query's parent folder name (the class-folder convention) gets a green
    frame, any other labelled hit a red one; unlabelled hits are framed grey. ``image_of`` finds a hit's image
    from its metadata (:meth:`Retriever.image_path`, which knows the gallery's own images); by default its
    ``path``. A hit without a readable image is a grey tile.
    """
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
            src = image_of(hit.metadata) if image_of is not None else hit.metadata.get("path")
            cell(c, r, src or "", frame, f"{label if label is not None else hit.id}\n{hit.score:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
