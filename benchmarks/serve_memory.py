"""Peak memory of a real ``proxyembed serve`` under hostile requests, and how far it comes back down after them.

The server runs as its own process with its defaults (``--max-upload-mb 20``, 8 worker threads, the
decode pixel budget of one image at Pillow's pixel limit), started and stopped by this script. After the
gallery is loaded and one search has run, its resident memory is the baseline. Then ``--clients``
threads send, for ``--seconds``, a mix of hostile uploads: the largest legal image (a PNG just under
Pillow's limit, ~89 Mpx, a few hundred kB on the wire), headers claiming 1.5x the limit and 100000x100000,
1x200000 and 200000x1 images, JPEG and GIF headers claiming 65000 px sides, deeply nested and huge JSON,
and 20 MiB bodies. Reported: the server's peak RSS above the baseline (``VmHWM``, from /proc) and its RSS
once the load has stopped, with each response status counted. A tiny bundle is used: the bound is about
decoding, not the model, so the gallery's own memory is the baseline.

    python benchmarks/serve_memory.py --seconds 60 --clients 8 --name serve_memory
"""

from __future__ import annotations

import argparse
import io
import shlex
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
from _common import machine, machine_line, write_results
from PIL import Image


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def header_patched(data: bytes, at: int, packed: bytes) -> bytes:
    return data[:at] + packed + data[at + len(packed) :]


def hostile_requests() -> dict[str, dict[str, object]]:
    """Name -> httpx.post keyword arguments for /search or /items (the ``path`` key says which)."""
    limit = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    side = int(limit**0.5) - 8
    largest = encoded(Image.new("RGB", (side, side), (180, 40, 40)), "PNG")  # ~89 Mpx, legal: it decodes
    jpeg = encoded(Image.new("RGB", (16, 16), "gray"), "JPEG")
    sof = jpeg.index(b"\xff\xc0")
    gif = encoded(Image.new("P", (8, 8)), "GIF")
    image = {
        "largest legal PNG": largest,
        "PNG header 1.5x the limit": png_header(int((1.5 * limit) ** 0.5), int((1.5 * limit) ** 0.5)),
        "PNG header 100000x100000": png_header(100_000, 100_000),
        "PNG 1x200000": encoded(Image.new("L", (1, 200_000)), "PNG"),
        "PNG 200000x1": encoded(Image.new("L", (200_000, 1)), "PNG"),
        "JPEG header 65000x65000": header_patched(jpeg, sof + 5, struct.pack(">HH", 65000, 65000)),
        "GIF header 65535x1": header_patched(gif, 6, struct.pack("<HH", 65535, 1)),
        "20 MiB of noise": bytes(20 * 2**20 - 4096),
    }
    requests: dict[str, dict[str, object]] = {
        name: {"path": "/search", "files": {"image": ("q", data)}, "data": {"k": "5"}} for name, data in image.items()
    }
    requests["filter nested 100000 deep"] = {
        "path": "/search", "files": {"image": ("q", encoded(Image.new("RGB", (48, 48), "red"), "PNG"))},
        "data": {"filter": "[" * 100_000 + "]" * 100_000},
    }
    requests["metadata of 5000-digit ints"] = {
        "path": "/items", "files": {"images": ("q", largest)}, "data": {"ids": "x", "metadata": "[{" + '"n": ' + "9" * 5000 + "}]"},
    }
    requests["add the largest legal PNG"] = {"path": "/items", "files": {"images": ("q", largest)}, "data": {"ids": "big", "replace": "true"}}
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--name", default="serve_memory")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.bundles import make_tiny_bundle
    from helpers.servers import free_port, make_gallery, wait_until_up

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = make_tiny_bundle(root / "bundle", with_int8=False)
        gallery = make_gallery(bundle, root / "images", root / "gallery")
        requests = hostile_requests()
        port = free_port()
        cmd = [sys.executable, "-m", "proxyembed", "serve", str(gallery), "--port", str(port), "--log-level", "error"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, alive=lambda: proc.poll() is None)
            with httpx.Client(base_url=url, timeout=120) as http:
                http.post("/search", files={"image": ("q", encoded(Image.new("RGB", (48, 48), "red"), "PNG"))})
            base = status_kib(proc.pid, "VmRSS")
            statuses: Counter[str] = Counter()
            seconds: dict[str, list[float]] = {name: [] for name in requests}
            stop = time.monotonic() + args.seconds
            names = list(requests)

            def client(offset: int) -> None:
                with httpx.Client(base_url=url, timeout=120) as http:
                    i = offset
                    while time.monotonic() < stop:
                        name = names[i % len(names)]
                        kwargs = dict(requests[name])
                        path = str(kwargs.pop("path"))
                        start = time.monotonic()
                        response = http.post(path, **kwargs)  # type: ignore[arg-type]
                        seconds[name].append(time.monotonic() - start)
                        statuses[f"{name}: {response.status_code}"] += 1
                        i += 1

            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(2)
            peak, after = status_kib(proc.pid, "VmHWM"), status_kib(proc.pid, "VmRSS")
        finally:
            proc.kill()
            proc.wait(timeout=30)

    command = "python benchmarks/" + Path(__file__).name + " " + shlex.join(sys.argv[1:])
    result = {
        "command": command,
        "machine": machine(),
        "seconds": args.seconds,
        "clients": args.clients,
        "baseline_rss_mib": round(base / 1024, 1),
        "peak_above_baseline_mib": round((peak - base) / 1024, 1),
        "after_load_above_baseline_mib": round((after - base) / 1024, 1),
        "responses": dict(sorted(statuses.items())),
        "slowest_s": {name: round(max(t), 2) for name, t in seconds.items() if t},
    }
    rows = "\n".join(f"| {k} | {v} |" for k, v in result["responses"].items())
    slow = "\n".join(f"| {k} | {v} |" for k, v in result["slowest_s"].items())
    markdown = f"""# `proxyembed serve`: memory under hostile requests

Command: `{command}`

Machine: {machine_line(result["machine"])} (shared with other jobs while measured).
Server defaults (`--max-upload-mb 20`, 8 worker threads, decode budget = Pillow's pixel limit); tiny bundle;
{args.clients} clients for {args.seconds:g} s, each cycling through the requests below.

| | MiB |
|---|---:|
| server RSS with the gallery loaded (baseline) | {result["baseline_rss_mib"]} |
| peak RSS above the baseline (VmHWM) | {result["peak_above_baseline_mib"]} |
| RSS above the baseline 2 s after the load | {result["after_load_above_baseline_mib"]} |

| request: status | count |
|---|---:|
{rows}

| request | slowest answer, s |
|---|---:|
{slow}
"""
    write_results(args.name, result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
