"""Gallery memory: float32 / float16 / int8 vector storage in proxyembed's Index, beside bare hnswlib and bare usearch.

For each gallery size and storage choice: bytes per item (the saved graph file over the item count: the
graph's links plus its vectors, what a device holds in memory; the id table is the same for every choice
and left out), build time (adding the items, then the calibration on held-out items), batch-1 query
latency on one thread, and recall@10 of held-out queries (never in the gallery) against exact float32
search. The proxyembed rows build the way ``proxyembed index`` does: CALIBRATION_QUERIES items held out
of the build, the calibration raising ef (and M) on them, then the held-out items added. The bare rows
use the library directly with the M and ef the float32 Index calibrated to, so they show what the
Index's checks and bookkeeping cost. Vectors are clustered unit vectors like metric-learning embeddings
(benchmarks/index_speed.py ``clustered``).

    python benchmarks/index_memory.py --sizes 100000                     # all five rows at 100k
    python benchmarks/index_memory.py --sizes 1000000 --rows f32,i8,f16  # a subset at 1M
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, machine_line, write_results
from index_speed import clustered

from proxyembed.runtime import Index
from proxyembed.runtime.index import CALIBRATION_QUERIES, INDEX_FILE
from proxyembed.runtime.metrics import knn

K = 10
ROWS = ("f32", "f16", "i8", "hnswlib", "usearch")
CHUNK = 50_000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).sum() / truth.size)


def latency_ms(search: Any, queries: np.ndarray) -> float:
    """Median milliseconds of one single-query search."""
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def proxyembed_row(storage: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    n, dim = gallery.shape
    index = Index(dim, vectors=storage, exact_below=0, capacity=n, M=args.M, ef_construction=args.ef_construction)  # type: ignore[arg-type]
    index._hnsw.set_num_threads(args.build_threads)  # both graphs take hnswlib's call; the Index has no threads option
    held = np.random.default_rng(1).choice(n, CALIBRATION_QUERIES, replace=False)
    keep = np.setdiff1d(np.arange(n), held)
    t = time.perf_counter()
    for i in range(0, len(keep), CHUNK):
        rows = keep[i : i + CHUNK]
        index.add(gallery[rows], rows.tolist())
    add_s = time.perf_counter() - t
    index.add(gallery[held], held.tolist(), held_out=True)
    t = time.perf_counter()
    cal = index.calibrate()
    calibrate_s = time.perf_counter() - t
    index._hnsw.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp, calibrate=False)
        size = (Path(tmp) / INDEX_FILE).stat().st_size
    found = np.array([[h.id for h in row] for row in index.search(queries, K)])
    lat = latency_ms(lambda q: index.search(q, K), queries[: args.latency_queries])
    return {"row": f"proxyembed {storage}", "n": n, "dim": dim, "M": index.M, "ef": index.ef, "bytes_per_item": size / n,
            "add_s": add_s, "calibrate_s": calibrate_s, "latency_ms": lat, "recall@10": recall(found, truth),
            "calibration": cal}  # fmt: skip


def hnswlib_row(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, M: int, ef: int, args: argparse.Namespace) -> dict[str, Any]:
    import hnswlib

    n, dim = gallery.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, ef_construction=args.ef_construction, M=M)
    index.set_num_threads(args.build_threads)
    t = time.perf_counter()
    index.add_items(gallery, np.arange(n))
    add_s = time.perf_counter() - t
    index.set_ef(ef)
    index.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        index.save_index(f"{tmp}/g.bin")
        size = Path(f"{tmp}/g.bin").stat().st_size
    found = index.knn_query(queries, k=K)[0].astype(np.int64)
    lat = latency_ms(lambda q: index.knn_query(q, k=K), queries[: args.latency_queries])
    return {"row": "bare hnswlib", "n": n, "dim": dim, "M": M, "ef": ef, "bytes_per_item": size / n, "add_s": add_s,
            "calibrate_s": None, "latency_ms": lat, "recall@10": recall(found, truth)}  # fmt: skip


def usearch_row(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, M: int, ef: int, args: argparse.Namespace) -> dict[str, Any]:
    from usearch.index import Index as UIndex

    n, dim = gallery.shape
    index = UIndex(ndim=dim, metric="cos", dtype="f32", connectivity=M, expansion_add=args.ef_construction, expansion_search=ef)
    t = time.perf_counter()
    index.add(np.arange(n, dtype=np.uint64), gallery, threads=args.build_threads)
    add_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/g.usearch")
        size = Path(f"{tmp}/g.usearch").stat().st_size
    found = np.asarray(index.search(queries, K, threads=1).keys, dtype=np.int64)
    lat = latency_ms(lambda q: index.search(q, K, threads=1), queries[: args.latency_queries])
    return {"row": "bare usearch f32", "n": n, "dim": dim, "M": M, "ef": ef, "bytes_per_item": size / n, "add_s": add_s,
            "calibrate_s": None, "latency_ms": lat, "recall@10": recall(found, truth)}  # fmt: skip


def bytes_grid(n: int, dims: list[int], ms: list[int]) -> list[dict[str, Any]]:
    """Saved graph bytes per item for each dim, M and storage on ``n`` random unit vectors: the layout, not the data, sets them."""
    rows = []
    for dim in dims:
        x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
        for M in ms:
            sizes = {}
            for storage in ("f32", "f16", "i8"):
                index = Index(dim, vectors=storage, M=M, ef_construction=40, capacity=n)  # type: ignore[arg-type]
                index.add(x, list(range(n)))
                with tempfile.TemporaryDirectory() as tmp:
                    index.save(tmp, calibrate=False)
                    sizes[storage] = (Path(tmp) / INDEX_FILE).stat().st_size / n
            rows.append({"dim": dim, "M": M, "n": n, "bytes_per_item": sizes})
            print(rows[-1], flush=True)
    return rows


def grid_markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Gallery bytes per item by dim, M and vector storage",
        "",
        f"Command: `{command}`",
        "",
        "The saved graph file (links + vectors; index.bin) over the item count, for galleries of random unit vectors:",
        "per-item bytes are set by the layout (dim, M, storage), not by the data or the gallery size.",
        "f32 is hnswlib, f16 / i8 usearch.",
        "",
        "| dim | M | f32 B | f16 B | i8 B | f16 / f32 | i8 / f32 | i8 at M / f32 at 2M |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["bytes_per_item"]
        wider = next((w for w in rows if w["dim"] == r["dim"] and w["M"] == 2 * r["M"]), None)
        cross = f"{b['i8'] / wider['bytes_per_item']['f32']:.3f}" if wider else ""
        lines.append(
            f"| {r['dim']} | {r['M']} | {b['f32']:.0f} | {b['f16']:.0f} | {b['i8']:.0f} | {b['f16'] / b['f32']:.3f} | "
            f"{b['i8'] / b['f32']:.3f} | {cross} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], command: str, data: str, args: argparse.Namespace) -> str:
    lines = [
        "# Gallery memory: float32, float16 and int8 vector storage",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}; shared with other jobs while these timings were taken.",
        f"Data: {data}; k={K}; {args.queries} held-out queries (never in the gallery) for recall@10 against exact float32 search;",
        f"latency: median of {args.latency_queries} single-query searches on 1 thread; builds on {args.build_threads} thread(s), "
        f"ef_construction={args.ef_construction}.",
        "Bytes per item: the saved graph file (links + vectors) over the item count; the id table is the same for every row.",
        "proxyembed rows: built as `proxyembed index` builds (1000 items held out, calibration on them, then added); "
        "add s is adding the rest, calibrate s the calibration (ef doubling, M raised if needed).",
        "Bare rows: the library alone with the M and ef the proxyembed f32 row calibrated to.",
        "",
        "| n | row | M | ef | bytes/item | x f32 | add s | calibrate s | latency ms | x f32 | recall@10 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next((b for b in rows if b["n"] == r["n"] and b["row"] == "proxyembed f32"), None)
        ratio_b = f"{r['bytes_per_item'] / base['bytes_per_item']:.3f}" if base else ""
        ratio_l = f"{r['latency_ms'] / base['latency_ms']:.2f}" if base else ""
        cal = f"{r['calibrate_s']:.1f}" if r["calibrate_s"] is not None else ""
        lines.append(
            f"| {r['n']:,} | {r['row']} | {r['M']} | {r['ef']} | {r['bytes_per_item']:.0f} | {ratio_b} | {r['add_s']:.1f} | {cal} | "
            f"{r['latency_ms']:.3f} | {ratio_l} | {r['recall@10']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="100000", help="comma-separated gallery sizes")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"which of {','.join(ROWS)} (the bare rows need f32 first)")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--ef-construction", type=int, default=200, help="for every row (the Index's default is 200)")
    ap.add_argument("--M", type=int, default=None, help="default: the Index's choice from the size (16, or 32 from 250k items)")
    ap.add_argument("--name", default="index_memory", help="results file stem under benchmarks/results/")
    ap.add_argument("--bytes-grid", action="store_true", help="only the bytes per item for dims 128,256,512 and M 16,32 (small galleries)")
    args = ap.parse_args()
    if args.bytes_grid:
        command = "python benchmarks/index_memory.py " + " ".join(sys.argv[1:])
        grid = bytes_grid(5000, [128, 256, 512], [8, 16, 32])
        md = grid_markdown(grid, command)
        print(md, "written:", *write_results(args.name, {"command": command, "rows": grid}, md))
        return
    wanted = args.rows.split(",")
    info = machine()
    print(machine_line(info), flush=True)
    data = f"clustered unit vectors, dim {args.dim}, ~50 per class, queries from the same classes"
    rows: list[dict[str, Any]] = []
    command = "python benchmarks/index_memory.py " + " ".join(sys.argv[1:])

    def save() -> None:  # after every row: a long run stopped early keeps what it measured
        md = markdown(rows, info, command, data, args)
        paths = write_results(args.name, {"command": command, "machine": info, "data": data, "k": K, "rows": rows}, md)
        print(md, "written:", *paths, flush=True)

    for n in (int(s) for s in args.sizes.split(",")):
        gallery, queries = clustered(n, args.dim, args.queries)
        truth = knn(queries, gallery, K)[0]
        for storage in ("f32", "f16", "i8"):
            if storage in wanted:
                rows.append(proxyembed_row(storage, gallery, queries, truth, args))
                save()
                gc.collect()
        base = next((r for r in rows if r["n"] == n and r["row"] == "proxyembed f32"), None)
        for name, fn in (("hnswlib", hnswlib_row), ("usearch", usearch_row)):
            if name in wanted and base is not None:
                rows.append(fn(gallery, queries, truth, base["M"], base["ef"], args))
                save()
                gc.collect()
        del gallery
        gc.collect()


if __name__ == "__main__":
    main()
