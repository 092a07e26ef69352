"""``proxyembed serve`` on a gallery of each vector storage (f32 hnswlib, f16 and i8 usearch): the same answers.

Adds, searches, deletes and a restart through the app (TestClient runs its lifespan, as uvicorn does),
the recalibration a save makes once the gallery has grown by ``RECALIBRATE_CHANGE``, and a real
``proxyembed serve`` on 127.0.0.1 killed with SIGKILL with an add in flight, after which the gallery loads.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from helpers.bundles import pattern_image  # noqa: E402
from helpers.servers import free_port, make_gallery, wait_until_up  # noqa: E402
from proxyembed.runtime import Retriever  # noqa: E402
from proxyembed.runtime.retriever import read_gallery_info  # noqa: E402
from proxyembed.serve import ServeOptions, create_app  # noqa: E402


@pytest.fixture(params=["f32", "f16", "i8"])
def gallery(bundle: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return make_gallery(bundle, tmp_path / "images", tmp_path / "gallery", vectors=request.param)


def png(colour: str, variant: int) -> bytes:
    buf = io.BytesIO()
    pattern_image(colour, variant).save(buf, format="PNG")
    return buf.getvalue()


def test_add_search_delete_recalibrate_restart(gallery: Path) -> None:
    vectors = read_gallery_info(gallery)["index"]["vectors"]
    with TestClient(create_app(ServeOptions(gallery=gallery))) as api:
        assert api.get("/info").json()["index"]["vectors"] == vectors
        files = [("images", (f"p{i}.png", png("purple", i))) for i in range(2)]
        added = api.post("/items", files=files, data={"ids": ["p0", "p1"], "metadata": json.dumps([{"label": "purple"}] * 2)})
        assert added.status_code == 200 and added.json()["count"] == 14
        # 12 -> 14 items is more than RECALIBRATE_CHANGE: that save measured recall again
        assert read_gallery_info(gallery)["recall"]["count"] == 14
        top = api.post("/search", files={"image": ("q.png", png("purple", 0), "image/png")}, data={"k": "1"}).json()["results"][0]
        assert top["id"] == "p0" and top["metadata"] == {"label": "purple"}
        assert api.delete("/items/red%2Fred_0.png").json()["count"] == 13
    reopened = Retriever.load(gallery)  # what a restarted server loads
    assert len(reopened) == 13 and reopened.index.vectors == vectors and "red/red_0.png" not in reopened.index


def test_kill_9_after_acknowledged_adds_leaves_a_gallery_that_loads(gallery: Path) -> None:
    """A real server on 127.0.0.1, killed with SIGKILL with an add in flight: every acknowledged add loads back."""
    port = free_port()
    cmd = [sys.executable, "-m", "proxyembed", "serve", str(gallery), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    acknowledged = []
    try:
        wait_until_up(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for i in range(3):
                if http.post("/items", files={"images": ("k.png", png("cyan", i))}, data={"ids": f"k{i}"}).status_code == 200:
                    acknowledged.append(f"k{i}")
            try:  # one more add in flight when the process dies
                http.post("/items", files={"images": ("k.png", png("cyan", 9))}, data={"ids": "k9"}, timeout=0.02)
            except httpx.TransportError:
                pass
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    ids = set(Retriever.load(gallery).index.ids())  # verifies every checksum
    assert len(acknowledged) == 3 and set(acknowledged) <= ids and len(ids) >= 15
