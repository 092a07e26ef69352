"""Which int8 HNSW engine walks cheapest: usearch (the i8 gallery's engine), faiss's SQ8 graph, and hnswlib f32.

The i8 gallery's latency goal (<= 1.2x the f32 gallery's CPU per query at held-out recall@10 >= 0.99) missed at
1M with usearch (docs/benchmarks.md, "Gallery memory"). This benchmark asks whether the engine is the reason:
it builds the same clustered vectors into

- ``usearch``: proxyembed's ``QuantizedGraph`` as the i8 gallery uses it (per-vector int8 codes, candidates
  re-ranked on the codes refined by one residual bit per value);
- ``faiss``: faiss's ``IndexHNSWSQ`` (8 bits over each dimension's trained range) with the same re-ranking
  idea on top: one residual bit per value against faiss's decoded value, the 2k candidates re-ranked on the
  value +- a quarter step. faiss alone cannot pass the gate at 512-d (its ceiling is below 0.99), and
  faiss's graph has no removal, so this row is a measurement, not a gallery;
- ``hnswlib``: the f32 gallery's engine (at ``--f32-M``), the reference for the latency ratio;

and reports, at each ef, held-out recall@10 against exact float32 search and the median CPU time of one
single-query search (re-ranking included), plus bytes per item and each int8 engine's ceiling (exact search
on what it stores, refined by the bits). faiss-cpu is not a proxyembed dependency: ``pip install faiss-cpu``.

    python benchmarks/quantized_engines.py --size 100000 --M 16 --efs 48,64,80,96,128
    python benchmarks/quantized_engines.py --size 1000000 --M 24 --engines faiss --efs 64,96,128,192,256
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, machine_line, write_results  # noqa: E402
from index_memory import K, faiss_sq8, latency_ms, recall  # noqa: E402
from index_speed import clustered  # noqa: E402

from proxyembed.runtime.index.usearch import _I8_RERANK, QuantizedGraph  # noqa: E402  (onnxruntime before usearch)
from proxyembed.runtime.metrics import knn  # noqa: E402

ENGINES = ("usearch", "faiss", "hnswlib")
BLOCK = 100_000  # rows decoded at a time: 1M float32 rows of 512 values at once would be another 2 GB


def _curve(search: Any, queries: np.ndarray, truth: np.ndarray, efs: list[int], latency_queries: int) -> list[dict[str, float]]:
    """Held-out recall@10 and batch-1 latency of ``search(queries, ef)`` at each ef."""
    return [
        {
            "ef": ef,
            "recall@10": recall(search(queries, ef), truth),
            "latency_ms": latency_ms(lambda q, ef=ef: search(q, ef), queries[:latency_queries]),
        }
        for ef in efs
    ]


def _build(index: Any, gallery: np.ndarray) -> tuple[float, int]:
    """Add ``gallery`` on one thread to a graph with hnswlib's calls (hnswlib's or ``QuantizedGraph``): seconds taken, saved file bytes."""
    index.set_num_threads(1)
    start = time.perf_counter()
    index.add_items(gallery, np.arange(len(gallery)))
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        index.save_index(f"{tmp}/graph")
        return build_s, Path(f"{tmp}/graph").stat().st_size


def usearch_engine(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, a: argparse.Namespace) -> dict[str, Any]:
    n, dim = gallery.shape
    graph = QuantizedGraph("cosine", dim, "i8")
    graph.init_index(n, a.ef_construction, a.M)
    build_s, size = _build(graph, gallery)
    size += graph._bits[:n].nbytes

    def search(q: np.ndarray, ef: int) -> np.ndarray:
        graph.set_ef(ef)
        return graph.knn_query(q, K)[0]

    ceiling = recall(knn(queries, graph.get_items(np.arange(n)), K)[0], truth)  # refined codes, unit length
    return {"engine": "usearch i8 + residual bits (proxyembed)", "M": a.M, "bytes_per_item": size / n, "build_s": build_s,
            "ceiling@10": ceiling, "curve": _curve(search, queries, truth, a.efs, a.latency_queries)}  # fmt: skip


def faiss_engine(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, a: argparse.Namespace) -> dict[str, Any]:
    index, build_s = faiss_sq8(gallery, a.M, a.ef_construction, threads=1)
    import faiss  # faiss_sq8 has checked it is installed

    n, dim = gallery.shape
    storage = faiss.downcast_index(index.storage)
    # QT_8bit stores each dimension's minimum and range; a code's value is min + (code + 0.5) / 255 * range
    quarter = (faiss.vector_to_array(storage.sq.trained)[dim:] / 255 / 4).astype(np.float32)
    bits = np.empty((n, dim // 8), np.uint8)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        bits[lo:hi] = np.packbits(gallery[lo:hi] > storage.reconstruct_n(lo, hi - lo), axis=1)
    size = faiss.serialize_index(index).size + bits.nbytes

    def refined(labels: np.ndarray) -> np.ndarray:
        up = np.unpackbits(bits[labels], axis=-1, count=dim).astype(np.float32)
        return storage.reconstruct_batch(labels) + (2 * up - 1) * quarter

    def search(q: np.ndarray, ef: int) -> np.ndarray:
        index.hnsw.efSearch = ef
        labels = index.search(q, K * _I8_RERANK)[1]
        if (labels < 0).any():  # faiss pads a short answer with -1, which would index the last item's bits
            raise SystemExit(f"faiss found fewer than {K * _I8_RERANK} candidates at ef={ef}; raise --efs")
        cands = refined(labels.reshape(-1)).reshape(*labels.shape, dim)
        sims = np.einsum("nd,ncd->nc", q, cands) / np.sqrt(np.einsum("ncd,ncd->nc", cands, cands))
        return np.take_along_axis(labels, np.argsort(-sims, axis=1, kind="stable")[:, :K], axis=1)

    unit = np.concatenate([refined(np.arange(lo, min(lo + BLOCK, n))) for lo in range(0, n, BLOCK)])
    ceiling = recall(knn(queries, unit / np.linalg.norm(unit, axis=1, keepdims=True), K)[0], truth)
    del unit
    return {"engine": "faiss HNSW SQ8 + residual bits", "M": a.M, "bytes_per_item": size / n, "build_s": build_s,
            "ceiling@10": ceiling, "curve": _curve(search, queries, truth, a.efs, a.latency_queries)}  # fmt: skip


def hnswlib_engine(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, a: argparse.Namespace) -> dict[str, Any]:
    import hnswlib

    n, dim = gallery.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, ef_construction=a.ef_construction, M=a.f32_M)
    build_s, size = _build(index, gallery)

    def search(q: np.ndarray, ef: int) -> np.ndarray:
        index.set_ef(ef)
        return index.knn_query(q, k=K)[0].astype(np.int64)

    return {"engine": "hnswlib f32 (the f32 gallery)", "M": a.f32_M, "bytes_per_item": size / n, "build_s": build_s,
            "ceiling@10": 1.0, "curve": _curve(search, queries, truth, a.efs, a.latency_queries)}  # fmt: skip


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def markdown(result: dict[str, Any], command: str) -> str:
    rows = result["engines"]
    efs = [p["ef"] for p in rows[0]["curve"]] if rows else []
    lines = [
        "# int8 HNSW engines at equal bytes: usearch, faiss SQ8, and hnswlib f32",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(result['machine'])}; shared with other jobs while these timings were taken.",
        f"Data: {result['size']:,} clustered unit vectors, dim {result['dim']}, ~50 per class; "
        f"{result['queries']} held-out queries from the same classes;",
        f"recall@10 against exact float32 search; latency: median CPU time of {result['latency_queries']} single-query searches on one thread,",
        f"re-ranking of {K * _I8_RERANK} candidates included; builds on one thread, ef_construction={result['ef_construction']}.",
        "bytes/item: the saved graph plus the residual bits; ceiling: exact search on the stored values refined by the bits.",
        "",
        "| engine | M | bytes/item | build s | ceiling | " + " | ".join(f"ef={e}" for e in efs) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(efs),
    ]
    for r in rows:
        cells = " | ".join(f"{p['recall@10']:.4f} / {p['latency_ms']:.3f}" for p in r["curve"])
        lines.append(f"| {r['engine']} | {r['M']} | {r['bytes_per_item']:.0f} | {r['build_s']:.0f} | {r['ceiling@10']:.4f} | {cells} |")
    lines += ["", "Each ef cell: held-out recall@10 / batch-1 latency in ms."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--M", type=int, default=16, help="links of the int8 graphs")
    ap.add_argument("--f32-M", type=int, default=None, help="links of the hnswlib f32 graph (default: --M)")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default="48,64,80,96,128")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {','.join(ENGINES)}")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--name", default="quantized_engines")
    a = ap.parse_args()
    a.efs = [int(e) for e in a.efs.split(",") if e]
    a.f32_M = a.f32_M or a.M
    command = "python benchmarks/quantized_engines.py " + " ".join(sys.argv[1:])
    gallery, queries = clustered(a.size, a.dim, a.queries)
    gallery, queries = gallery.astype(np.float32), queries.astype(np.float32)
    truth = knn(queries, gallery, K)[0]
    info = machine()
    info["versions"].update({lib: _version(lib) for lib in ("usearch", "faiss-cpu", "hnswlib", "chroma-hnswlib")})
    result: dict[str, Any] = {"command": command, "machine": info, "size": a.size, "dim": a.dim, "queries": a.queries,
                              "latency_queries": a.latency_queries, "ef_construction": a.ef_construction, "engines": []}  # fmt: skip
    builders = {"usearch": usearch_engine, "faiss": faiss_engine, "hnswlib": hnswlib_engine}
    for name in a.engines.split(","):
        if name not in builders:
            raise SystemExit(f"--engines: unknown engine {name!r}; choose from {','.join(ENGINES)}")
        result["engines"].append(builders[name](gallery, queries, truth, a))
        gc.collect()
        md = markdown(result, command)
        print(md, "written:", *write_results(a.name, result, md), flush=True)  # after every engine: a long run keeps what it measured


if __name__ == "__main__":
    main()
