"""Load on a real ``proxyembed serve`` on 127.0.0.1, next to ``Retriever.search`` called in-process on the same images.

The server runs as its own process (``proxyembed serve GALLERY --port P``), started and stopped by this
script. Client threads send searches (real JPEG files as uploads) for a bounded time, one of them also
adding a new image every ``--add-every`` requests, so searches run while the gallery is saved. Reported
per concurrency level: requests/s, p50 / p99 latency, errors (must be 0), and the ratio of the server's
search throughput to the in-process one. The in-process side is the best of one thread and as many
threads as clients, each with one and with all ONNX Runtime threads (the stricter comparison). Clients and server share this machine's cores, as
they would not in production, so the ratio is a lower bound.

    python benchmarks/serve_load.py --bundle bundles/caltech --images ../shared/data/caltech101/images --name serve_load
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import machine, machine_line, write_results
from PIL import Image

from proxyembed.runtime import Encoder, Index, Retriever
from proxyembed.runtime.images import list_images

K = 10


def build_gallery(bundle: Path, images: Path, size: int, out: Path) -> tuple[Path, list[bytes]]:
    """Index ``size`` images spread over ``images`` into ``out``; return it and the query files' bytes (other images)."""
    items = list(list_images(images))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(items))
    indexed, queries = [items[i] for i in order[:size]], [items[i] for i in order[size : size + 200]]
    retriever = Retriever(Encoder(bundle), Index(Encoder(bundle).dim, capacity=size))
    retriever.add([it["path"] for it in indexed], [it["id"] for it in indexed], [it["metadata"] for it in indexed])
    retriever.save(out)
    return out, [Path(it["path"]).read_bytes() for it in queries]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(gallery: Path, queries: list[bytes], threads: int, seconds: float, ort_threads: int | None) -> tuple[float, float]:
    """Searches per second of ``Retriever.search`` on ``threads`` threads for ``seconds``, and CPU ms per search."""
    retriever = Retriever.load(gallery, threads=ort_threads)
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def work(t: int) -> None:
        i = t
        while time.monotonic() < stop:
            retriever.search(queries[i % len(queries)], K)
            counts[t] += 1
            i += threads

    start, cpu = time.monotonic(), time.process_time()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    return sum(counts) / (time.monotonic() - start), 1e3 * (time.process_time() - cpu) / max(sum(counts), 1)


def start_server(gallery: Path, port: int, ort_threads: int | None, worker_threads: int, max_batch: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "proxyembed", "serve", str(gallery), "--host", "127.0.0.1", "--port", str(port),
        "--worker-threads", str(worker_threads), "--max-batch", str(max_batch), "--log-level", "warning",
        *(["--threads", str(ort_threads)] if ort_threads else []),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not come up in 120 s")


def load(
    url: str, server_pid: int, queries: list[bytes], adds: list[bytes], clients: int, seconds: float, add_every: int, tag: str
) -> dict[str, Any]:
    """``clients`` threads for ``seconds``: searches, and on client 0 an add every ``add_every`` requests; CPU per request on both sides."""
    latencies: dict[str, list[float]] = {"search": [], "add": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = 0
            while time.monotonic() < stop:
                n += 1
                if c == 0 and add_every and n % add_every == 0:
                    image, item_id = adds[n % len(adds)], f"{tag}-{c}-{n}"
                    kind, call = "add", lambda image=image, item_id=item_id: http.post(
                        "/items", files={"images": ("a.jpg", image)}, data={"ids": item_id}
                    )
                else:
                    q = queries[(c * 7919 + n) % len(queries)]
                    kind, call = "search", lambda q=q: http.post("/search", files={"image": ("q.jpg", q)}, data={"k": str(K)})
                t = time.perf_counter()
                try:
                    r = call()
                    ok, why = r.status_code == 200, r.text[:200]
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                with lock:
                    latencies[kind].append(time.perf_counter() - t)
                    if not ok:
                        errors.append(why)

    start, client_cpu, server_cpu = time.monotonic(), time.process_time(), proc_cpu_seconds(server_pid)
    pool = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    elapsed = time.monotonic() - start
    n = max(sum(len(v) for v in latencies.values()), 1)
    out: dict[str, Any] = {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "errors": len(errors),
        "error_samples": errors[:3],
        "server_cpu_ms_per_request": round(1e3 * (proc_cpu_seconds(server_pid) - server_cpu) / n, 2),
        "client_cpu_ms_per_request": round(1e3 * (time.process_time() - client_cpu) / n, 2),
    }
    for kind, lat in latencies.items():
        if lat:
            ms = sorted(x * 1e3 for x in lat)
            out[kind] = {
                "requests": len(ms),
                "per_s": round(len(ms) / elapsed, 1),
                "p50_ms": round(statistics.median(ms), 1),
                "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            }
    return out


def shrink(data: bytes, side: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="bundle to serve (proxyembed export output)")
    ap.add_argument("--images", type=Path, required=True, help="folder of real images: some indexed, others as queries")
    ap.add_argument("--gallery-size", type=int, default=3000)
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=20.0, help="per level, and per in-process measurement")
    ap.add_argument("--add-every", type=int, default=10, help="client 0 adds an image every N requests (0: searches only)")
    ap.add_argument("--ort-threads", type=int, default=None, help="server: ONNX Runtime threads per inference call (--threads; default 1)")
    ap.add_argument("--worker-threads", type=int, default=8, help="server: requests handled at once")
    ap.add_argument("--max-batch", type=int, default=32, help="server: most images per batched inference call")
    ap.add_argument("--skip-in-process", action="store_true", help="measure the server only (the ratio is then left out)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--name", default="serve_load")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        gallery, queries = build_gallery(args.bundle, args.images, args.gallery_size, Path(tmp) / "gallery")
        adds = [shrink(q, 300) for q in queries[:50]]
        print(f"gallery: {args.gallery_size} images; {len(queries)} query images", file=sys.stderr)
        base, base_cpu = {}, {}
        for threads in [] if args.skip_in_process else sorted({1, *levels}):
            for ort in (1, None):
                key = f"{threads} thread(s), ORT threads {ort or 'default'}"
                rate, cpu_ms = in_process(gallery, queries, threads, args.seconds, ort)
                base[key], base_cpu[key] = round(rate, 1), round(cpu_ms, 2)
                print(f"in-process {key}: {base[key]} searches/s, {base_cpu[key]} CPU ms each", file=sys.stderr)
        best_in_process = max(base.values(), default=float("nan"))
        proc = start_server(gallery, args.port, args.ort_threads, args.worker_threads, args.max_batch)
        try:
            url = f"http://127.0.0.1:{args.port}"
            rows = []
            for clients in levels:
                row = load(url, proc.pid, queries, adds, clients, args.seconds, args.add_every, f"c{clients}")
                row["ratio_to_in_process"] = round(row["search"]["per_s"] / best_in_process, 2)
                rows.append(row)
                print(row, file=sys.stderr)
            stages = httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    stage_ms = {}
    for line in stages.splitlines():
        for stage in ("decode", "preprocess", "encode", "search", "save"):
            if line.startswith(f'proxyembed_stage_seconds_sum{{stage="{stage}"}}'):
                total = float(line.split()[-1])
                count_line = next(x for x in stages.splitlines() if x.startswith(f'proxyembed_stage_seconds_count{{stage="{stage}"}}'))
                stage_ms[stage] = round(1e3 * total / max(float(count_line.split()[-1]), 1), 2)
    info = machine()
    command = "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = {"command": command, "machine": info, "settings": vars(args) | {"bundle": str(args.bundle), "images": str(args.images)},
            "in_process_searches_per_s": base, "in_process_cpu_ms_per_search": base_cpu, "server": rows, "server_stage_mean_ms": stage_ms}
    lines = [
        "# proxyembed serve under load, beside Retriever.search in-process",
        "",
        f"`{command}`",
        "",
        f"Machine: {machine_line(info)}. Gallery of {args.gallery_size} real images; queries are other images of the same folder,",
        f"k={K}; the server runs its defaults: {args.ort_threads or 1} ONNX Runtime thread(s) per call, one batching encoder per core,",
        f"{args.worker_threads} worker threads;",
        f"client 0 adds an image every {args.add_every} requests (each add saves the gallery before its reply).",
        "",
        "In-process `Retriever.search`, searches/s (CPU ms per search): "
        + ", ".join(f"{k}: {v} ({base_cpu[k]})" for k, v in base.items()) + ".",
        "",
        "| clients | searches/s | p50 ms | p99 ms | adds | add p50 ms | add p99 ms | errors | server / best in-process "
        "| server CPU ms/req | client CPU ms/req |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        s, a = r["search"], r.get("add", {})
        lines.append(
            f"| {r['clients']} | {s['per_s']} | {s['p50_ms']} | {s['p99_ms']} | {a.get('requests', 0)} | {a.get('p50_ms', '-')} | "
            f"{a.get('p99_ms', '-')} | {r['errors']} | {r['ratio_to_in_process']} | {r['server_cpu_ms_per_request']} "
            f"| {r['client_cpu_ms_per_request']} |"
        )
    lines += ["", "Mean server time per stage (ms, from /metrics): " + ", ".join(f"{k} {v}" for k, v in stage_ms.items()) + ".", ""]
    json_path, md_path = write_results(args.name, data, "\n".join(lines))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
