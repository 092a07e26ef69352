"""Test helpers for ``proxyembed serve``: a small gallery on disk, and a real uvicorn server on 127.0.0.1.

Servers only ever listen on the loopback address, on a free port picked by the OS, and stop when the
``with`` block ends; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from helpers.bundles import write_class_images
from proxyembed.runtime import Encoder, Index, Retriever


def make_gallery(bundle: Path, images: Path, out: Path, colours: Sequence[str] = ("red", "green", "blue", "yellow"), per_class: int = 3) -> Path:
    """Index ``per_class`` pattern images of each colour (ids ``colour/colour_i.png``, metadata label and path) into ``out``."""
    paths = write_class_images(images, colours, per_class)
    retriever = Retriever(Encoder(bundle), Index(16))
    ids = [p.relative_to(images).as_posix() for p in paths]
    retriever.add(paths, ids, [{"label": p.parent.name, "path": str(p.resolve())} for p in paths])
    return retriever.save(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, timeout: float = 60.0, alive: Any = None) -> None:
    """Poll ``url``/healthz until it answers 200; raise after ``timeout`` s or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server at {url} exited before it came up")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"no server at {url} after {timeout} s")


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread at http://127.0.0.1:PORT for the ``with`` block; yields the URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, alive=thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_process(gallery: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``proxyembed serve GALLERY`` as its own process on 127.0.0.1:``port`` (``env`` added to this one's environment)."""
    cmd = [sys.executable, "-m", "proxyembed", "serve", str(gallery), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
