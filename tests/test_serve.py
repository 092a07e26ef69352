"""``proxyembed serve``: every endpoint and error through FastAPI's TestClient, then real servers on 127.0.0.1.

The TestClient runs the app's lifespan, so the gallery loads exactly as under uvicorn. Changes are
checked on disk by opening the gallery again (a restart), and a server killed with SIGKILL while adding
must leave a gallery that loads.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")

import httpx  # noqa: E402  (after the skip: installed with the serve extra's fastapi)
from fastapi.testclient import TestClient  # noqa: E402

from helpers.bundles import pattern_image  # noqa: E402
from helpers.servers import free_port, live_server, make_gallery, serve_process, wait_until_up  # noqa: E402
from proxyembed.runtime import Retriever  # noqa: E402
from proxyembed.runtime.files import restore_interrupted_swap  # noqa: E402
from proxyembed.serve import ServeOptions, create_app  # noqa: E402


def client(gallery: Path, **options: object) -> TestClient:
    return TestClient(create_app(ServeOptions(gallery=gallery, **options)))  # type: ignore[arg-type]


@pytest.fixture
def api(gallery: Path) -> Iterator[TestClient]:
    with client(gallery) as c:
        yield c


def png(colour: str, variant: int) -> bytes:
    buf = io.BytesIO()
    pattern_image(colour, variant).save(buf, format="PNG")
    return buf.getvalue()


def search(api: TestClient, data: bytes, k: int = 3, **form: str) -> httpx.Response:
    return api.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": str(k), **form})


# -- reading -------------------------------------------------------------------------------------------


def test_health_ready_and_info(api: TestClient, gallery: Path, bundle: Path) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"ready": True, "count": 12}
    info = api.get("/info").json()
    assert info["count"] == 12 and info["dim"] == 16 and info["encoder"]["precision"] == "fp32"
    assert info["bundle"]["name"] == bundle.name and info["gallery"] == gallery.name and info["preprocess"]["crop"] == 32
    assert str(gallery.parent) not in api.get("/info").text  # names only: no path of the server's leaves it
    assert info["index"]["ef"] >= 1 and info["recall"]["recall@10"] == 1.0 and info["read_only"] is False
    assert "/search" in api.get("/openapi.json").json()["paths"]  # the documented API


def test_an_indexed_image_comes_back_as_its_own_top1(api: TestClient, gallery: Path) -> None:
    image = gallery.parent / "images" / "green" / "green_1.png"
    body = search(api, image.read_bytes(), k=4).json()
    top = body["results"][0]
    assert top["id"] == "green/green_1.png" and top["rank"] == 1 and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert [r["metadata"]["label"] for r in body["results"][:3]] == ["green"] * 3
    assert set(body["timing_ms"]) == {"decode", "preprocess", "encode", "search"}
    assert top["image_url"] == "/items/green%2Fgreen_1.png/image"


def test_search_with_a_metadata_filter(api: TestClient) -> None:
    body = search(api, png("red", 9), k=5, filter=json.dumps({"label": "blue"})).json()
    assert [r["metadata"]["label"] for r in body["results"]] == ["blue"] * 3  # only 3 blue items exist


def test_search_by_vector(api: TestClient, gallery: Path) -> None:
    vector = api.get("/items/yellow%2Fyellow_0.png/neighbors?k=1")  # any stored item works as a query source
    assert vector.status_code == 200
    q = Retriever.load(gallery).encoder.encode(pattern_image("yellow", 0))[0]
    body = api.post("/search/vector", json={"vector": (3 * q).tolist(), "k": 2}).json()  # scale does not matter
    assert body["results"][0]["id"] == "yellow/yellow_0.png" and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert set(body["timing_ms"]) == {"search"}


def test_items_neighbors_and_images(api: TestClient, gallery: Path) -> None:
    item = api.get("/items/red/red_2.png").json()  # an unencoded slash works too
    assert item["id"] == "red/red_2.png" and item["metadata"]["label"] == "red"
    hits = api.get("/items/red%2Fred_2.png/neighbors", params={"k": 3}).json()["results"]
    assert len(hits) == 3 and "red/red_2.png" not in [h["id"] for h in hits]
    assert [h["metadata"]["label"] for h in hits[:2]] == ["red", "red"]
    image = api.get("/items/red%2Fred_2.png/image")
    assert image.status_code == 200 and image.content == (gallery.parent / "images" / "red" / "red_2.png").read_bytes()


def test_page_is_served_offline(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="drop"' in page.text and "/search" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: the page works offline


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "words"),
    [
        (lambda a: search(a, b"not an image at all"), 400, "cannot read image upload"),
        (lambda a: search(a, png("red", 0), k=0), 422, "k"),
        (lambda a: search(a, png("red", 0), k=100000), 422, "k"),
        (lambda a: search(a, png("red", 0), filter="{label"), 400, "filter is not valid JSON"),
        (lambda a: search(a, png("red", 0), filter="[1]"), 400, "JSON object"),
        (lambda a: a.post("/search", data={"k": "3"}), 422, "image"),
        (lambda a: a.post("/search/vector", json={"vector": [1.0, 2.0], "k": 3}), 400, "dim 16"),
        (lambda a: a.post("/search/vector", json={"vector": [0.0] * 16}), 400, "not all zero"),
        (lambda a: a.post("/search/vector", json={"vector": [1.0] * 16, "k": -1}), 422, "k"),
        (lambda a: a.post("/search/vector", content=b"{", headers={"content-type": "application/json"}), 422, "JSON"),
        (lambda a: a.get("/items/nope"), 404, "no item with id 'nope'"),
        (lambda a: a.get("/items/nope/neighbors"), 404, "no item"),
        (lambda a: a.get("/items/nope/image"), 404, "no item"),
        (lambda a: a.delete("/items/nope"), 404, "no item"),
        (lambda a: a.get("/no/such/route"), 404, "Not Found"),
    ],
)
def test_bad_requests_get_one_line_json_errors(api: TestClient, call: object, status: int, words: str) -> None:
    response = call(api)  # type: ignore[operator]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error and "\n" not in error
    assert api.get("/readyz").status_code == 200  # the server is still fine


def test_oversized_uploads_are_refused(gallery: Path) -> None:
    with client(gallery, max_upload_bytes=16384) as api:
        big = pattern_image("red", 0, size=200).tobytes()  # raw pixels: 120 kB
        response = search(api, big)
        assert response.status_code == 413 and "--max-upload-mb" in response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
            yield b"x" * 9000
            yield b"x" * 9000

        streamed = api.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert streamed.status_code == 413
        assert search(api, png("red", 0)).status_code == 200  # small ones still pass


def test_a_decompression_bomb_is_a_bad_request(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48x48 is then over twice the limit
    response = search(api, png("red", 0))
    assert response.status_code == 400 and "too large to decode" in response.json()["error"]


def test_image_files_outside_the_shared_folders_are_not_sent(bundle: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    gallery = make_gallery(bundle, images, tmp_path / "gallery")
    with client(gallery) as api:  # no --image-root: the files `proxyembed index` recorded are sent
        assert api.get("/items/red%2Fred_0.png/image").status_code == 200
    with client(gallery, image_roots=(images / "red",)) as api:  # with roots: only the recorded files inside them
        assert api.get("/items/red%2Fred_0.png/image").status_code == 200
        response = api.get("/items/blue%2Fblue_0.png/image")
        assert response.status_code == 404 and "--image-root" in response.json()["error"]


# -- changing ------------------------------------------------------------------------------------------


def test_add_search_delete_then_restart_keeps_the_changes(gallery: Path) -> None:
    with client(gallery) as api:
        new = png("purple", 4)
        meta = json.dumps([{"label": "purple", "sku": 17}, {"label": "cyan"}])
        added = api.post(
            "/items", files=[("images", ("p.png", new)), ("images", ("c.png", png("cyan", 1)))], data={"ids": ["p1", "c1"], "metadata": meta}
        )
        assert added.status_code == 200 and added.json()["added"] == 2 and added.json()["count"] == 14
        top = search(api, new, k=1).json()["results"][0]
        assert top["id"] == "p1" and top["metadata"] == {"label": "purple", "sku": 17}
        deleted = api.delete("/items/red%2Fred_0.png").json()
        assert deleted["deleted"] == "red/red_0.png" and deleted["count"] == 13 and set(deleted["timing_ms"]) == {"save"}
        duplicate = api.post("/items", files={"images": ("p.png", new)}, data={"ids": "p1"})
        assert duplicate.status_code == 409 and "replace=true" in duplicate.json()["error"]
        replaced = api.post("/items", files={"images": ("p.png", new)}, data={"ids": "p1", "replace": "true", "metadata": '[{"sku": 18}]'})
        assert replaced.json()["replaced"] == 1
    reopened = Retriever.load(gallery)  # what a restarted server loads
    assert len(reopened) == 13 and "red/red_0.png" not in reopened.index
    assert {k: v for k, v in reopened.index.metadata("p1").items() if k != "path"} == {"sku": 18}  # path: the image the gallery keeps
    with client(gallery) as api:  # a restart: the change is still there
        assert api.get("/info").json()["count"] == 13
        assert api.get("/items/c1").json()["metadata"] == {"label": "cyan"}
        assert search(api, new, k=1).json()["results"][0]["id"] == "p1"


def test_bad_adds_change_nothing(api: TestClient, gallery: Path) -> None:
    cases = [
        ({"images": ("x.png", b"garbage")}, {"ids": "x"}, 400, "cannot read image upload"),
        ({"images": ("x.png", png("red", 1))}, {"ids": ["x", "y"]}, 400, "1 images but 2 ids"),
        ({"images": ("x.png", png("red", 1))}, {"ids": "x", "metadata": "{}"}, 400, "JSON list"),
        ({"images": ("x.png", png("red", 1))}, {"ids": "x", "metadata": '[{"a": 1}, {"b": 2}]'}, 400, "2 metadata"),
        ({"images": ("x.png", png("red", 1))}, {}, 422, "ids"),
    ]
    for files, data, status, words in cases:
        response = api.post("/items", files=files, data=data)
        assert response.status_code == status and words in response.json()["error"], response.text
    assert api.get("/info").json()["count"] == 12 and len(Retriever.load(gallery)) == 12


def test_read_only_refuses_changes(gallery: Path) -> None:
    with client(gallery, read_only=True) as api:
        add = api.post("/items", files={"images": ("x.png", png("red", 1))}, data={"ids": "x"})
        assert add.status_code == 403 and "--read-only" in add.json()["error"]
        assert api.delete("/items/red%2Fred_0.png").status_code == 403
        assert api.get("/info").json()["read_only"] is True and search(api, png("red", 0)).status_code == 200
    assert len(Retriever.load(gallery)) == 12


def test_metrics_report_stages_and_requests(api: TestClient) -> None:
    search(api, png("red", 0))
    api.get("/items/nope")
    text = api.get("/metrics").text
    for stage in ("decode", "preprocess", "encode", "search"):
        assert f'proxyembed_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'proxyembed_requests_total{method="POST",route="/search",status="200"} 1.0' in text
    assert 'proxyembed_requests_total{method="GET",route="/items/{item_id:path}",status="404"} 1.0' in text
    assert "proxyembed_gallery_items 12.0" in text


def test_concurrent_searches_and_adds_stay_consistent(gallery: Path) -> None:
    errors: list[str] = []
    with client(gallery) as api:

        def searcher(colour: str) -> None:
            for _ in range(15):
                r = search(api, png(colour, 0), k=2)
                if r.status_code != 200 or r.json()["results"][0]["metadata"]["label"] != colour:
                    errors.append(r.text)

        def adder() -> None:
            for i in range(6):
                r = api.post("/items", files={"images": ("n.png", png("cyan", i))}, data={"ids": f"n{i}"})
                if r.status_code != 200:
                    errors.append(r.text)

        threads = [threading.Thread(target=searcher, args=(c,)) for c in ("red", "green", "blue")] + [threading.Thread(target=adder)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors
    assert len(Retriever.load(gallery)) == 18


# -- real servers --------------------------------------------------------------------------------------


def test_a_real_server_on_loopback(gallery: Path) -> None:
    with live_server(create_app(ServeOptions(gallery=gallery))) as url:
        image = (gallery.parent / "images" / "blue" / "blue_2.png").read_bytes()
        response = httpx.post(f"{url}/search", files={"image": ("b.png", image)}, data={"k": "1"}, timeout=30)
        assert response.json()["results"][0]["id"] == "blue/blue_2.png"


def test_kill_9_during_adds_leaves_a_gallery_that_loads(gallery: Path) -> None:
    """SIGKILL the server at several moments while a client adds; each time the gallery must load, with every acknowledged add."""
    acknowledged: set[str] = set()
    for round_ in range(3):
        port = free_port()
        proc = serve_process(gallery, port)
        try:
            wait_until_up(f"http://127.0.0.1:{port}", alive=lambda p=proc: p.poll() is None)
            stop = time.monotonic() + 0.4 + 0.5 * round_  # kill at a different point of the add / save cycle each round
            i = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                while time.monotonic() < stop:
                    item_id = f"k{round_}-{i}"
                    if http.post("/items", files={"images": ("k.png", png("cyan", i))}, data={"ids": item_id}).status_code == 200:
                        acknowledged.add(item_id)
                    i += 1
                # one more add in flight while the process is killed
                pending = threading.Thread(target=_quietly, args=(http, round_), daemon=True)
                pending.start()
                time.sleep(0.01 * round_)
                os.kill(proc.pid, signal.SIGKILL)
                pending.join(timeout=30)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        reopened = Retriever.load(gallery)  # verifies every checksum
        ids = set(reopened.index.ids())
        assert acknowledged <= ids and len(ids) >= 12
    assert len(acknowledged) >= 3


def _quietly(http: httpx.Client, round_: int) -> None:
    try:
        http.post("/items", files={"images": ("k.png", png("cyan", 99))}, data={"ids": f"inflight-{round_}"})
    except httpx.TransportError:
        pass


def test_serve_command_refuses_a_missing_gallery(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "proxyembed", "serve", str(tmp_path / "none"), "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no gallery at" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_swap_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "gal"
    older, newer = tmp_path / ".gal.a.old", tmp_path / ".gal.b.old"
    for holder, text in ((older, "partly deleted"), (newer, "last committed")):
        (holder / "gal").mkdir(parents=True)
        (holder / "gal" / "f").write_text(text)
        time.sleep(0.01)
        os.utime(holder)  # the holder's mtime is that of the rename into it
    assert restore_interrupted_swap(target) and (target / "f").read_text() == "last committed"
    assert not list(tmp_path.glob(".gal.*.old"))
    assert not restore_interrupted_swap(target)  # a present target is left alone


# -- batching ------------------------------------------------------------------------------------------


def test_concurrent_encodes_share_batches_and_match_single_calls(bundle: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from proxyembed.runtime import Encoder
    from proxyembed.serve.batching import EncodeBatcher

    encoder = Encoder(bundle)
    sizes: list[int] = []
    busy, gate = threading.Event(), threading.Event()

    def encode_batch(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        busy.set()
        gate.wait(timeout=30)  # hold the encoder thread in its first call while the others queue up
        return encoder.encode_batch(batch)

    arrays = [encoder.preprocessor(pattern_image(c, v))[0] for c in ("red", "green", "blue") for v in range(4)]
    batcher = EncodeBatcher(encode_batch, max_batch=8)
    try:
        with ThreadPoolExecutor(13) as pool:
            first = pool.submit(batcher.encode, arrays[0][None])
            assert busy.wait(timeout=30)  # the thread has dequeued the first request alone and is held in its call
            futures = [pool.submit(batcher.encode, a[None]) for a in arrays]
            deadline = time.monotonic() + 30
            while batcher._queue.qsize() < 12 and time.monotonic() < deadline:  # all queued before the next dequeue
                time.sleep(0.005)
            gate.set()
            got = np.concatenate([f.result(timeout=60) for f in futures])
            first.result(timeout=60)
    finally:
        batcher.close()
    assert np.allclose(got, encoder.encode_batch(np.stack(arrays)), atol=1e-6)
    assert sizes == [1, 8, 4]  # the held call, then the 12 queued behind it in batches capped at max_batch


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    import numpy as np

    from proxyembed.serve.batching import EncodeBatcher

    calls = iter([RuntimeError("boom"), None])

    def encode_batch(batch: np.ndarray) -> np.ndarray:
        error = next(calls)
        if error:
            raise error
        return batch.reshape(len(batch), -1)

    batcher = EncodeBatcher(encode_batch)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.encode(np.zeros((1, 3, 2, 2), np.float32))
        assert batcher.encode(np.ones((1, 3, 2, 2), np.float32)).shape == (1, 12)
    finally:
        batcher.close()


def test_a_failed_save_rolls_the_change_back(gallery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with client(gallery) as api:
        def disk_full(self: Retriever, folder: object, **kwargs: object) -> Path:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Retriever, "save", disk_full)
        response = api.post("/items", files={"images": ("x.png", png("cyan", 1))}, data={"ids": "x"})
        assert response.status_code == 500 and "rolled back" in response.json()["error"]
        assert api.delete("/items/red%2Fred_0.png").status_code == 500
        monkeypatch.undo()
        assert api.get("/info").json()["count"] == 12 and api.get("/items/x").status_code == 404  # memory matches disk
        assert api.get("/items/red%2Fred_0.png").status_code == 200
        assert search(api, png("red", 0)).status_code == 200


def test_emptying_the_gallery_and_filling_it_again(gallery: Path) -> None:
    with client(gallery) as api:
        for item_id in Retriever.load(gallery).index.ids():
            assert api.delete(f"/items/{item_id}").status_code == 200
        assert search(api, png("red", 0)).json()["results"] == []
    with client(gallery) as api:  # an empty gallery loads and takes new items
        assert api.get("/info").json()["count"] == 0
        assert api.post("/items", files={"images": ("r.png", png("red", 0))}, data={"ids": "r"}).status_code == 200
        assert api.get("/items/r/neighbors").json()["results"] == []
        assert search(api, png("red", 0)).json()["results"][0]["id"] == "r"
