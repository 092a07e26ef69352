"""The page at ``/`` (``static/index.html``: search, browse, add and delete from a browser) and ``/docs``.

``/docs`` lists every route with its summary from the app's own OpenAPI schema; no script, nothing
fetched from a CDN, so it works where the server has no internet.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()


@router.get("/", include_in_schema=False)
def index_page() -> HTMLResponse:
    return HTMLResponse(_page_html())


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(_docs_page(request.app.openapi()))


@cache
def _page_html() -> str:
    """The page, read from the package once."""
    return resources.files("proxyembed.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _docs_page(schema: dict[str, Any]) -> str:
    """``/docs``: every route with its summary, and a link to the OpenAPI schema; no script, nothing fetched."""
    rows = "".join(
        f"<tr><td><code>{escape(method.upper())}</code></td><td><code>{escape(path)}</code></td><td>{escape(op.get('summary', ''))}</td></tr>"
        for path, ops in schema.get("paths", {}).items()
        for method, op in ops.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>proxyembed API</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px}td{padding:4px 10px;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>proxyembed {escape(schema.get('info', {}).get('version', ''))} API</h1>"
        "<p>The machine-readable schema is <a href='/openapi.json'>/openapi.json</a> (load it into any OpenAPI viewer). "
        "Item ids go in the path percent-encoded as one segment (<code>/</code> as <code>%2F</code>). Writes, and with "
        "<code>--protect-reads</code> reads, need <code>Authorization: Bearer TOKEN</code>.</p>"
        f"<table>{rows}</table></body></html>"
    )
