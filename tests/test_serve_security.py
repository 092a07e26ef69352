"""``proxyembed serve`` tried as an attacker would: each finding of issue 32 and the class it comes from.

The classes: path tricks in ids and metadata (symlinks under ``--image-root`` included), image bombs of
every shape (tall and wide thin images, huge dimensions in a PNG, JPEG or GIF header, multi-frame GIF,
TIFF and WebP, between one and two times Pillow's pixel limit), hostile JSON, oversized and slow bodies,
tokens right, wrong, missing and timed, and ``--read-only``. Most run both through FastAPI's TestClient
and against a real uvicorn server on 127.0.0.1 (the ``http`` fixture); the command-line checks and the
``kill -9`` loop run ``proxyembed serve`` itself. Every loop and wait is bounded.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install -e '.[serve]'")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from helpers.bundles import pattern_image  # noqa: E402
from helpers.servers import free_port, live_server, make_gallery, serve_process, wait_until_up  # noqa: E402
from proxyembed.runtime import Retriever  # noqa: E402
from proxyembed.serve import ServeOptions, create_app  # noqa: E402
from proxyembed.serve.guard import Guard  # noqa: E402
from proxyembed.serve.service import PixelBudget, ServiceError  # noqa: E402
from proxyembed.serve.web import id_segment  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # refused right after Pillow warns

TOKEN = "s3cret-token-for-the-tests-0123456789"
FAST_S = 3.0  # a hostile upload is answered within this (on a busy 2-core machine); a bomb took 13-16 s before


@pytest.fixture(params=["testclient", "uvicorn"])
def serve(request: pytest.FixtureRequest, gallery: Path) -> Iterator[Any]:
    """A function that starts the app with some options and gives a client: TestClient or httpx against real uvicorn."""
    opened: list[Any] = []

    def start(**options: Any) -> Any:
        app = create_app(ServeOptions(gallery=gallery, **options))
        if request.param == "testclient":
            client = TestClient(app)
            client.__enter__()
            opened.append(client.__exit__)
            return client
        cm = live_server(app)
        url = cm.__enter__()
        http = httpx.Client(base_url=url, timeout=30)
        opened.append(lambda *a: (http.close(), cm.__exit__(None, None, None)))
        return http

    yield start
    for close in reversed(opened):
        close(None, None, None)


@pytest.fixture
def http(serve: Any) -> Any:
    return serve()


def png(colour: str = "red", variant: int = 0, size: int = 48) -> bytes:
    buf = io.BytesIO()
    pattern_image(colour, variant, size).save(buf, format="PNG")
    return buf.getvalue()


def encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit grey), with one tiny compressed row: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG with the size in its frame header rewritten to ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), "gray"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int, frame: bool = False) -> bytes:
    """An 8x8 GIF whose logical screen (or, with ``frame``, its first frame's descriptor) claims ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("P", (8, 8)), "GIF"))
    at = data.index(b"\x2c") + 5 if frame else 6
    data[at : at + 4] = struct.pack("<HH", width, height)
    return bytes(data)


def search(http: Any, data: bytes, **form: str) -> httpx.Response:
    return http.post("/search", files={"image": ("q", data)}, data={"k": "3", **form})


def add(http: Any, item_id: str, data: bytes | None = None, headers: dict[str, str] | None = None, **form: str) -> httpx.Response:
    return http.post("/items", files={"images": ("x.png", data or png("cyan", 1))}, data={"ids": item_id, **form}, headers=headers or {})


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- finding 1 and 2: files leaked through client metadata --------------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/hostname", "images/red/../red/credentials.txt", "images/x.png"])
def test_clients_cannot_set_a_metadata_path(http: Any, path: str) -> None:
    for replace in ("false", "true"):
        item_id = "evil" if replace == "false" else "red/red_0.png"  # replace=true on an existing item too
        response = add(http, item_id, metadata=json.dumps([{"path": path}]), replace=replace)
        assert response.status_code == 400 and "'path'" in response.json()["error"], response.text
    assert http.get("/items/evil").status_code == 404


def test_paths_written_by_an_older_server_are_never_sent(bundle: Path, tmp_path: Path) -> None:
    """A gallery poisoned before the fix (client paths stored in metadata) sends none of them, even after a restart."""
    images = tmp_path / "images"
    gallery = make_gallery(bundle, images, tmp_path / "gallery")
    (images / "red" / "credentials.txt").write_text("password")
    outside = tmp_path / "outside.png"
    pattern_image("red", 3).save(outside)
    (images / "red" / "link.png").symlink_to(outside)  # a symlink under the root pointing out of it
    (images / "red" / "passwd.png").symlink_to("/etc/passwd")
    tricks = {
        "abs": "/etc/passwd",
        "rel": "../../etc/hostname",
        "sibling": str(images / "red" / ".." / "red" / "credentials.txt"),
        "held-escape": "images/../gallery.json",
        "held-deep": "images/a/../../index.json",
        "held-hidden": "images/.x.png",
        "nul": "/etc/passwd\0.png",
        "link-out": str(images / "red" / "link.png"),
        "link-passwd": str(images / "red" / "passwd.png"),
    }
    retriever = Retriever.load(gallery)
    vector = retriever.encoder.encode(pattern_image("red", 0))
    for name, path in tricks.items():
        retriever.index.add(vector, [name], [{"path": path}])
    retriever.save(gallery)
    for roots in ((), (images,)):
        with TestClient(create_app(ServeOptions(gallery=gallery, image_roots=roots, read_only=True))) as api:
            for name in tricks:
                if name == "link-out" and not roots:
                    continue  # with no --image-root, a file `index` recorded is sent wherever its link points
                response = api.get(f"/items/{name}/image")
                assert response.status_code == 404, (name, roots, response.content[:80])
            assert api.get("/items/red%2Fred_0.png/image").status_code == 200  # the gallery's own images still are


def test_images_added_over_http_are_kept_by_the_gallery(serve: Any, gallery: Path) -> None:
    http = serve()
    data = encoded(pattern_image("purple", 2), "JPEG")
    assert add(http, "dir/image", data, metadata='[{"label": "purple"}]').status_code == 200
    got = http.get("/items/dir%2Fimage/image")
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/jpeg"
    assert got.headers["x-content-type-options"] == "nosniff"
    held = list((gallery / "images").iterdir())
    assert len(held) == 1 and held[0].read_bytes() == data  # inside the gallery, written by its staged save
    assert http.delete("/items/dir%2Fimage").status_code == 200
    assert not (gallery / "images").exists() or not list((gallery / "images").iterdir())  # the next save drops it
    assert add(http, "again", data).status_code == 200
    reopened = serve(read_only=True)  # a restart
    assert reopened.get("/items/again/image").content == data
    copy = Retriever.load(gallery).save(gallery.parent / "copy")  # a gallery saved elsewhere takes its images along
    assert [p.read_bytes() for p in (copy / "images").iterdir()] == [data]


def test_responses_show_no_server_paths(http: Any, gallery: Path) -> None:
    root = str(gallery.parent)
    add(http, "mine")
    bodies = [
        http.get("/info").text,
        search(http, png("red", 0)).text,
        http.get("/items/red%2Fred_0.png").text,
        http.get("/items/mine").text,
        http.get("/items/red%2Fred_0.png/neighbors", params={"k": 20}).text,
    ]
    for body in bodies:
        assert root not in body and '"path"' not in body, body[:300]


def test_a_failed_save_names_no_server_path(gallery: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(create_app(ServeOptions(gallery=gallery))) as api:
        def disk_full(self: Retriever, folder: object, **kwargs: object) -> Path:
            raise OSError(28, "No space left on device", str(folder))

        monkeypatch.setattr(Retriever, "save", disk_full)
        error = add(api, "x").json()["error"]
        assert "No space left" in error and str(gallery) not in error


# -- finding 3 and 9: bombs of every shape -------------------------------------------------------------


def bombs() -> dict[str, bytes]:
    grey = Image.new("L", (1, 200000))
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = int((1.5 * limit) ** 0.5)  # between one and two times the limit: Pillow only warns there
    return {
        "tall thin PNG 1x200000": encoded(grey, "PNG"),
        "wide thin PNG 200000x1": encoded(grey.transpose(Image.Transpose.ROTATE_90), "PNG"),
        "tall thin PNG 1x2000000": png_header_only(1, 2_000_000),
        "PNG header 100000x100000": png_header_only(100_000, 100_000),
        f"PNG header {side}x{side} (1.5x the pixel limit)": png_header_only(side, side),
        "PNG header 0x0": png_header_only(0, 0),
        "JPEG header 65000x65000": jpeg_claiming(65000, 65000),
        "JPEG header 65000x16": jpeg_claiming(65000, 16),
        "GIF screen 65535x65535": gif_claiming(65535, 65535),
        "GIF screen 65535x1": gif_claiming(65535, 1),
        "GIF frame 60000x60000 on an 8x8 screen": gif_claiming(60000, 60000, frame=True),
        "GIF frame 60000x1 on an 8x8 screen": gif_claiming(60000, 1, frame=True),
        "thin multi-frame TIFF": encoded(Image.new("L", (4000, 1)), "TIFF", save_all=True, append_images=[Image.new("L", (4000, 1))] * 3),
        "thin WebP": encoded(Image.new("RGB", (16000, 2)), "WEBP"),
    } | {"animated GIF": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
         "animated WebP": encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
         "multi-page TIFF": encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])}


@pytest.mark.parametrize("name", list(bombs()))
def test_bombs_are_fast_bad_requests(http: Any, name: str) -> None:
    data = bombs()[name]
    start = time.monotonic()
    response = search(http, data)
    elapsed = time.monotonic() - start
    if name.startswith(("animated", "multi-page")):  # ordinary multi-frame images: the first frame is searched
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "upload 'q'" in error and ("too large" in error or "apart" in error or "no pixels" in error or "cannot read" in error)
    assert elapsed < FAST_S, f"{name}: {elapsed:.1f} s"
    assert add(http, "bomb", data).status_code == response.status_code  # adds are bounded the same way
    assert http.get("/readyz").status_code == 200


def test_between_one_and_two_times_the_pixel_limit_is_refused_not_warned(http: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow only warns there (an upload under the size limit decoded to ~450 MB); here the limit is 1000 pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    response = search(http, encoded(Image.new("RGB", (40, 40), "red"), "PNG"))  # 1600 pixels: 1.6 times the limit
    assert response.status_code == 400 and "too large to decode" in response.json()["error"]


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "ICO", "TGA", "PCX"])
def test_only_the_usual_image_formats_are_read(http: Any, fmt: str) -> None:
    """Pillow opens many formats, EPS through Ghostscript; an upload is read only as JPEG, PNG, GIF, WebP, TIFF or BMP."""
    response = search(http, encoded(Image.new("RGB", (32, 32), "red"), fmt))
    assert response.status_code == 400 and "cannot read image upload" in response.json()["error"]


def test_an_image_just_inside_the_aspect_limit_is_searched(http: Any) -> None:
    from proxyembed.runtime.preprocess import MAX_ASPECT_RATIO

    assert search(http, encoded(Image.new("RGB", (MAX_ASPECT_RATIO * 2, 2), "red"), "PNG")).status_code == 200
    assert search(http, encoded(Image.new("RGB", (MAX_ASPECT_RATIO * 2 + 1, 2), "red"), "PNG")).status_code == 400


def test_the_pixel_budget_holds_decodes_back_and_times_out() -> None:
    budget = PixelBudget(100)
    with budget.hold(80, wait_s=1):
        with pytest.raises(ServiceError) as busy:
            with budget.hold(30, wait_s=0.05):
                pass
        assert busy.value.status == 503
        with budget.hold(20, wait_s=0.05):  # fits beside the first
            assert budget.used == 100
    with budget.hold(1000, wait_s=0.05):  # larger than the whole budget: decodes, alone
        assert budget.used == 1000
    assert budget.used == 0


# -- finding 4: hostile JSON ---------------------------------------------------------------------------

HOSTILE_JSON = {
    "nested 100000 deep": "[" * 100_000 + "]" * 100_000,
    "nested 40 deep": '{"a":' * 40 + "1" + "}" * 40,
    "5000-digit integer": '{"n": ' + "9" * 5000 + "}",
    "NaN": '{"n": NaN}',
    "1e999": '{"n": 1e999}',
    "300 KB string": json.dumps({"s": "x" * 300_000}),
    "syntax error": '{"a": ',
    "lone surrogate": '{"a": "\\ud800"}',
}


@pytest.mark.parametrize("name", list(HOSTILE_JSON))
def test_hostile_json_fields_are_bad_requests(http: Any, name: str) -> None:
    text = HOSTILE_JSON[name]
    as_list = text if text.startswith("[") else f"[{text}]"
    for response in (search(http, png(), filter=text), add(http, "j", metadata=as_list)):
        assert response.status_code == 400 and "\n" not in response.json()["error"], (name, response.text[:200])
    assert http.get("/readyz").status_code == 200


def test_hostile_json_bodies_are_client_errors(http: Any) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for body in (deep, '{"vector": ' + "9" * 5000 + "}", '{"vector": [NaN], "k": 1}', '{"vector": [1e999]}'):
        response = http.post("/search/vector", content=body.encode(), headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:30], response.text[:200])
    big = json.dumps({"vector": [0.0] * 400_000})  # 2 MB of JSON: over the 1 MiB limit for bodies that are not uploads
    assert http.post("/search/vector", content=big.encode(), headers={"content-type": "application/json"}).status_code == 413


def test_read_only_refuses_writes_before_reading_them(serve: Any) -> None:
    http = serve(read_only=True)
    deep = "[" * 100_000 + "]" * 100_000
    assert add(http, "x", metadata=deep).status_code == 403
    assert add(http, "x", b"not an image").status_code == 403
    assert http.delete("/items/red%2Fred_0.png").status_code == 403
    assert http.delete("/items/nope").status_code == 403
    assert search(http, png()).status_code == 200


# -- finding 5: ids that hold slashes and other path syntax --------------------------------------------

TRICKY_IDS = [
    "dir/image", "a/neighbors", "..", ".", "%2F", "a%2Fb", "x/../y", "/lead", "trail/",
    "sp ace", "ü/ñ", "q?x=1", "h#f", "back\\slash", "image", "neighbors",
]


def test_any_id_that_can_be_added_can_be_used(http: Any) -> None:
    data = png("purple", 3)
    for item_id in TRICKY_IDS:
        assert add(http, item_id, data).status_code == 200, item_id
        seg = id_segment(item_id)
        item = http.get(f"/items/{seg}")
        assert item.status_code == 200 and item.json()["id"] == item_id, (item_id, item.text)
        image = http.get(item.json()["image_url"])
        assert image.status_code == 200 and image.content == data, item_id
        hits = http.get(f"/items/{seg}/neighbors", params={"k": 3})
        assert hits.status_code == 200 and item_id not in [h["id"] for h in hits.json()["results"]], item_id
        assert http.delete(f"/items/{seg}").status_code == 200, item_id
        assert http.get(f"/items/{seg}").status_code == 404, item_id
    assert http.get("/items/red/red_2.png").json()["id"] == "red/red_2.png"  # bare slashes still work where unambiguous


def test_overlong_ids_are_refused(http: Any) -> None:
    assert add(http, "x" * 1025).status_code == 400


def test_the_page_encodes_ids_as_the_server_does() -> None:
    from importlib import resources

    page = resources.files("proxyembed.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    assert "encodeURIComponent(id)" not in page and "idSegment(" in page


# -- oversized and slow bodies -------------------------------------------------------------------------


def test_oversized_bodies_are_refused(serve: Any) -> None:
    http = serve(max_upload_bytes=64 * 1024)
    assert search(http, b"x" * 100_000).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives (a well-formed start, then a long file)
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n\r\n'
        for _ in range(10):
            yield b"x" * 10_000

    assert http.post("/items", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}).status_code == 413
    assert search(http, png()).status_code == 200


def test_a_slow_body_times_out_and_others_are_served(gallery: Path) -> None:
    with live_server(create_app(ServeOptions(gallery=gallery, body_timeout_s=1.0))) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(
                b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
            )
            start = time.monotonic()
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200  # the server is not held up
            reply = b""
            while b"\r\n\r\n" not in reply and time.monotonic() - start < 10:
                reply += slow.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5, reply[:200]


# -- tokens --------------------------------------------------------------------------------------------


def test_writes_need_the_token(serve: Any) -> None:
    http = serve(token=TOKEN)
    for headers, words in (({}, "needs the server's token"), (bearer("wrong-token-of-some-length"), "wrong"), ({"authorization": TOKEN}, "Bearer")):
        for response in (add(http, "t", headers=headers), http.delete("/items/red%2Fred_0.png", headers=headers)):
            assert response.status_code == 401 and words in response.json()["error"], response.text
            assert response.headers["www-authenticate"] == "Bearer"
    assert search(http, png()).status_code == 200 and http.get("/items/red%2Fred_0.png").status_code == 200  # reads stay open
    assert add(http, "t", headers=bearer()).status_code == 200
    assert http.delete("/items/t", headers={"authorization": f"bearer  {TOKEN}"}).status_code == 200
    assert http.get("/info").json()["writes_need_token"] is True


def test_protected_reads_need_the_token(serve: Any) -> None:
    http = serve(token=TOKEN, protect_reads=True)
    for path in ("/info", "/items/red%2Fred_0.png", "/items/red%2Fred_0.png/image", "/items/red%2Fred_0.png/neighbors", "/metrics"):
        assert http.get(path).status_code == 401, path
        assert http.get(path, headers=bearer()).status_code == 200, path
    assert search(http, png()).status_code == 401 and http.post("/search/vector", json={"vector": [1.0] * 16}).status_code == 401
    assert http.post("/search", files={"image": ("q", png())}, headers=bearer()).status_code == 200
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json"):
        assert http.get(path).status_code == 200, path


def test_a_wrong_token_takes_as_long_whatever_it_shares_with_the_right_one() -> None:
    guard = Guard(app=None, options=ServeOptions(gallery=Path("."), token=TOKEN), metrics=None)  # type: ignore[arg-type]

    def median_ns(given: bytes) -> float:
        times = []
        for _ in range(3000):
            start = time.perf_counter_ns()
            guard._token_problem(b"Bearer " + given)
            times.append(time.perf_counter_ns() - start)
        return statistics.median(times)

    close, far, short = TOKEN[:-1].encode() + b"!", b"!" * len(TOKEN), b"!"
    assert guard._token_problem(b"Bearer " + TOKEN.encode()) is None
    timings = [median_ns(g) for g in (close, far, short, close, far, short)]
    assert max(timings) < 3 * min(timings)  # hashed, then compared in constant time: no prefix or length signal


def test_the_command_refuses_an_open_network_server_and_tokens_on_the_command_line(gallery: Path, tmp_path: Path) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "proxyembed", "serve", str(gallery), "--port", str(free_port()), *args]
        environment = {k: v for k, v in os.environ.items() if k != "PROXYEMBED_TOKEN"} | (env or {})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environment)

    exposed = run("--host", "0.0.0.0")
    assert exposed.returncode == 2 and "--read-only" in exposed.stderr and "--token-file" in exposed.stderr
    assert len(exposed.stderr.strip().splitlines()) == 1 and "Traceback" not in exposed.stderr
    assert run("--host", "::").returncode == 2
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert run("--token-file", str(short)).returncode == 2
    assert run("--token", TOKEN).returncode == 2  # no such option: a token never goes on the command line
    assert run("--protect-reads").returncode == 2
    both = tmp_path / "token"
    both.write_text(TOKEN)
    assert run("--token-file", str(both), env={"PROXYEMBED_TOKEN": TOKEN}).returncode == 2


# -- finding 6 and 7: interrupted saves and their leftovers --------------------------------------------


KILLED_MID_SWAP = """
import os, sys
from pathlib import Path
from proxyembed.runtime import files

rename = os.replace

def replace_then_die(src, dst):  # the swap's first rename (the old version moved aside), then SIGKILL
    rename(src, dst)
    os.kill(os.getpid(), 9)

files.os.replace = replace_then_die
with files.staged_dir(Path(sys.argv[1])) as tmp:
    (tmp / "half-written").write_text("new version")
"""


def test_serve_repairs_a_save_killed_between_its_renames(gallery: Path) -> None:
    import fcntl

    killed = subprocess.run([sys.executable, "-c", KILLED_MID_SWAP, str(gallery)], timeout=120)
    assert killed.returncode == -signal.SIGKILL and not gallery.exists()  # what `search` repaired and `serve` refused
    assert len(list(gallery.parent.glob(".gallery.*.old"))) == 1 and len(list(gallery.parent.glob(".gallery.*.tmp"))) == 1
    live = gallery.parent / ".gallery.live.tmp"  # a running writer's: its lock is held (here, by this process)
    live.mkdir()
    held = os.open(gallery.parent / ".gallery.live.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    legacy = gallery.parent / ".gallery.mnop.tmp"  # no lock file (an older proxyembed): not proven abandoned
    legacy.mkdir()
    port = free_port()
    proc = serve_process(gallery, port, "--read-only")
    try:
        wait_until_up(f"http://127.0.0.1:{port}", alive=lambda: proc.poll() is None)
        assert httpx.get(f"http://127.0.0.1:{port}/info", timeout=30).json()["count"] == 12
    finally:
        proc.kill()
        proc.wait(timeout=30)
        os.close(held)
    left = sorted(p.name for p in gallery.parent.iterdir() if p.name.startswith(".gallery."))
    assert left == [".gallery.live.lock", ".gallery.live.tmp", ".gallery.mnop.tmp"]


def test_kill_9_during_http_adds_and_deletes_keeps_every_acknowledged_change(gallery: Path) -> None:
    """SIGKILL the server (with a token) while a client adds and deletes; each next open has every acknowledged change and no staging folder."""
    present: set[str] = set(Retriever.load(gallery).index.ids())
    gone: set[str] = set()
    for round_ in range(3):
        port = free_port()
        proc = serve_process(gallery, port, env={"PROXYEMBED_TOKEN": TOKEN})
        try:
            wait_until_up(f"http://127.0.0.1:{port}", alive=lambda p=proc: p.poll() is None)
            stop = time.monotonic() + 0.5 + 0.4 * round_
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer()) as http:
                i = 0
                while time.monotonic() < stop:
                    item_id = f"k{round_}/{i}"
                    if add(http, item_id, png("cyan", i), headers=bearer()).status_code == 200:
                        present.add(item_id)
                    victim = sorted(present)[0]
                    if http.delete(f"/items/{id_segment(victim)}").status_code == 200:
                        present.discard(victim)
                        gone.add(victim)
                    i += 1
                # one more change in flight (its outcome unknown to the client) while the process is killed
                pending = threading.Thread(target=_quietly, args=(http, f"inflight{round_}"), daemon=True)
                pending.start()
                time.sleep(0.02 * round_)
                os.kill(proc.pid, signal.SIGKILL)
                pending.join(timeout=30)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        ids = set(Retriever.load(gallery).index.ids())  # the next open: checks every checksum, repairs, cleans up
        assert present <= ids and not (gone & ids)
        assert not [p.name for p in gallery.parent.iterdir() if p.name.startswith(".gallery.")]
    assert len(gone) >= 3


def _quietly(http: httpx.Client, item_id: str) -> None:
    try:
        add(http, item_id, png("cyan", 99), headers=bearer())
    except httpx.TransportError:
        pass


# -- findings 8 and 10: /docs offline, memory back down ------------------------------------------------


def test_docs_work_offline(http: Any) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "/items/{item_id}" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "<script" not in page.text


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc (Linux)")
def test_memory_goes_back_down_after_large_uploads(gallery: Path) -> None:
    big = encoded(Image.new("RGB", (6000, 6000), (200, 30, 30)), "PNG")  # 36 Mpx: 108 MB decoded, 100 kB sent
    port = free_port()
    proc = serve_process(gallery, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, alive=lambda: proc.poll() is None)
        with httpx.Client(base_url=url, timeout=60) as http:
            search(http, png())
            base = _rss_kib(proc.pid, "VmRSS")
            for _ in range(3):
                assert search(http, big).status_code == 200
        after, peak = _rss_kib(proc.pid, "VmRSS"), _rss_kib(proc.pid, "VmHWM")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (after - base) < 150 * 1024, f"RSS stayed {(after - base) / 1024:.0f} MiB above the loaded gallery"
    assert (peak - base) < 1024 * 1024, f"peak {(peak - base) / 1024:.0f} MiB above the loaded gallery"


def test_a_search_filter_on_path_is_refused(http: Any, gallery: Path) -> None:
    """Filtering on ``path`` would answer whether a guessed server path is in the gallery: the key is the server's."""
    known = next(p for p in (gallery.parent / "images").rglob("*.png")).resolve()
    response = search(http, png(), filter=json.dumps({"path": str(known)}))
    assert response.status_code == 400 and "'path'" in response.json()["error"]
    assert search(http, png(), filter=json.dumps({"label": "red"})).status_code == 200


def test_a_camera_mpo_upload_is_kept_as_a_jpeg(serve: Any, gallery: Path) -> None:
    """Pillow reports a camera's MPO file as MPO; the gallery keeps it as .jpg so it is served as an image."""
    buf = io.BytesIO()
    pattern_image("red", 2).convert("RGB").save(buf, format="MPO", save_all=True, append_images=[pattern_image("red", 3).convert("RGB")])
    http = serve()
    response = add(http, "camera", buf.getvalue())
    assert response.status_code == 200, response.text
    image = http.get("/items/camera/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
