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
    python benchmarks/index_memory.py --rows f32,i8,faiss                # faiss's int8 HNSW beside ours (pip install faiss-cpu)
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, machine_line, write_results
from index_speed import clustered, real_embeddings

from proxyembed.runtime import Index
from proxyembed.runtime.index import CALIBRATION_QUERIES, INDEX_FILE, RESIDUAL_FILE, SIDECAR_FILE
from proxyembed.runtime.index.recall import EF_STEP, MAX_M
from proxyembed.runtime.metrics import knn

K = 10
ROWS = ("f32", "f16", "i8", "hnswlib", "usearch")
# Rows run only when named: faiss-cpu is not a dependency of proxyembed, only the engine it was measured against.
OPTIONAL_ROWS = ("faiss",)
CHUNK = 50_000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).sum() / truth.size)


def latency_ms(search: Any, queries: np.ndarray) -> float:
    """Median milliseconds of CPU time of one single-query search (all searches run on one thread).

    CPU time rather than wall time: on a shared machine a low-priority process waits for the processor far
    longer than a query takes (wall-clock medians of 100 ms were seen for a 1 ms search at load average 7),
    so wall time measured the scheduler; one thread's CPU time is what the search costs on an idle core.
    """
    times = []
    for q in queries:
        t = time.process_time()
        search(q[None])
        times.append(time.process_time() - t)
    return float(np.median(times) * 1e3)


def item_table(n: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Ids and metadata shaped like ``proxyembed index`` writes them (relative path as id; label and path), so the id table's memory is realistic."""
    ids = [f"class_{i // 50:05d}/image_{i:07d}.jpg" for i in range(n)]
    return ids, [{"label": i.split("/")[0], "path": f"/data/images/{i}"} for i in ids]


# Run in a fresh interpreter: resident memory after importing the libraries, then after loading (graph file
# alone with its library, or the whole gallery with Index.load); prints the growth in bytes.
_RESIDENT = """
import gc, json, sys
sys.path.insert(0, sys.argv[3])
from _common import rss_mib
import numpy as np, hnswlib
from proxyembed.runtime import Index
from proxyembed.runtime.index import RESIDUAL_FILE
from proxyembed.runtime.index.usearch import _import_usearch
folder, what = sys.argv[1], sys.argv[2]
params = json.load(open(folder + "/index.json"))
if params["vectors"] != "f32":
    usearch = _import_usearch()
gc.collect()
before = rss_mib()
if what == "index":
    kept = Index.load(folder)
elif params["vectors"] == "f32":
    kept = hnswlib.Index(space=params["space"], dim=params["dim"])
    kept.load_index(folder + "/index.bin")
else:
    kept = usearch.Index.restore(folder + "/index.bin")
    if params["vectors"] == "i8":  # the graph needs its residual bits to re-rank
        bits = np.load(folder + "/" + RESIDUAL_FILE)
gc.collect()
print(int((rss_mib() - before) * 2**20))
"""


def graph_bytes(folder: str) -> int:
    """Bytes of the saved graph: ``index.bin``, plus an int8 gallery's residual bits."""
    return sum((Path(folder) / name).stat().st_size for name in (INDEX_FILE, RESIDUAL_FILE) if (Path(folder) / name).is_file())


def resident_bytes(folder: str, what: str) -> int:
    """Resident-memory growth (bytes) of loading the gallery in ``folder`` in a fresh process: ``what`` is "graph" or "index"."""
    out = subprocess.run([sys.executable, "-c", _RESIDENT, folder, what, str(Path(__file__).parent)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def ef_curve(
    index: Index, queries: np.ndarray, truth: np.ndarray, position: dict[str, int], efs: list[int], latency_queries: int
) -> list[dict[str, Any]]:
    """Held-out recall@10 and batch-1 latency at each ef: where the storage's recall flattens (its ceiling) and what each step costs."""
    out = []
    for ef in efs:
        found = np.array([[position[h.id] for h in row] for row in index.search(queries, K, ef=ef)])
        out.append(
            {
                "ef": ef,
                "recall@10": recall(found, truth),
                "latency_ms": latency_ms(lambda q, ef=ef: index.search(q, K, ef=ef), queries[:latency_queries]),
            }
        )
    return out


def proxyembed_row(storage: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    n, dim = gallery.shape
    index = Index(dim, vectors=storage, exact_below=0, capacity=n, M=args.M, ef_construction=args.ef_construction)  # type: ignore[arg-type]
    index._hnsw.set_num_threads(args.build_threads)  # both graphs take hnswlib's call; the Index has no threads option
    held = np.random.default_rng(1).choice(n, CALIBRATION_QUERIES, replace=False)
    keep = np.setdiff1d(np.arange(n), held)
    ids, metas = item_table(n)
    t = time.perf_counter()
    for i in range(0, len(keep), CHUNK):
        rows = keep[i : i + CHUNK]
        index.add(gallery[rows], [ids[r] for r in rows], [metas[r] for r in rows])
    add_s = time.perf_counter() - t
    index.add(gallery[held], [ids[r] for r in held], [metas[r] for r in held], held_out=True)
    t = time.perf_counter()
    cal = index.calibrate(max_M=args.max_M or MAX_M)
    calibrate_s = time.perf_counter() - t
    index._hnsw.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp, calibrate=False)
        size = graph_bytes(tmp)
        sidecar = (Path(tmp) / SIDECAR_FILE).stat().st_size
        memory = {"graph_resident": resident_bytes(tmp, "graph") / n, "index_resident": resident_bytes(tmp, "index") / n} if args.resident else {}
    position = {gid: r for r, gid in enumerate(ids)}
    found = np.array([[position[h.id] for h in row] for row in index.search(queries, K)])
    lat = latency_ms(lambda q: index.search(q, K), queries[: args.latency_queries])
    curve = ef_curve(index, queries, truth, position, args.curve, args.latency_queries) if args.curve else []
    return {"row": f"proxyembed {storage}", "n": n, "dim": dim, "M": index.M, "ef": index.ef, "bytes_per_item": size / n,
            "sidecar_bytes_per_item": sidecar / n, **memory, "add_s": add_s, "calibrate_s": calibrate_s, "latency_ms": lat,
            "recall@10": recall(found, truth), "calibration": cal, "curve": curve}  # fmt: skip


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


def faiss_sq8(gallery: np.ndarray, M: int, ef_construction: int, threads: int) -> tuple[Any, float]:
    """faiss's int8 HNSW (``IndexHNSWSQ``, 8 bits over each dimension's trained range) built on ``gallery``, and the seconds it took.

    The vectors are unit length, so faiss's inner product ranks as cosine does. Search runs on one thread afterwards.
    """
    try:
        import faiss
    except ImportError as exc:
        raise SystemExit("the faiss rows need faiss-cpu (pip install faiss-cpu); leave them out otherwise") from exc

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWSQ(gallery.shape[1], faiss.ScalarQuantizer.QT_8bit, M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    index.train(gallery)
    index.add(gallery)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    return index, build_s


def faiss_row(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, M: int, ef: int, args: argparse.Namespace) -> dict[str, Any]:
    """faiss's own int8 HNSW (``IndexHNSWSQ``, 8 bits over each dimension's range) at the M and ef the proxyembed i8 row used.

    The other well-kept library with a quantized HNSW: its ceiling (exact search on the vectors it stores) and
    its latency at the same M and ef show whether it would have served the int8 gallery better than usearch.
    """
    import faiss

    n, dim = gallery.shape
    index, add_s = faiss_sq8(gallery, M, args.ef_construction, args.build_threads)
    size = faiss.serialize_index(index).size

    def at(e: int) -> tuple[float, float]:
        index.hnsw.efSearch = e
        found = index.search(queries, K)[1].astype(np.int64)
        return recall(found, truth), latency_ms(lambda q: index.search(q, K), queries[: args.latency_queries])

    curve = [dict(zip(("ef", "recall@10", "latency_ms"), (e, *at(e)), strict=True)) for e in args.curve]
    rec, lat = at(ef)
    ceiling = recall(knn(queries, index.storage.reconstruct_n(0, n), K)[0], truth)
    return {"row": "bare faiss i8 (HNSW SQ8)", "n": n, "dim": dim, "M": M, "ef": ef, "bytes_per_item": size / n, "add_s": add_s,
            "calibrate_s": None, "latency_ms": lat, "recall@10": rec, "ceiling@10": ceiling, "curve": curve}  # fmt: skip


def bytes_grid(n: int, dims: list[int], ms: list[int], resident: bool) -> list[dict[str, Any]]:
    """Bytes per item for each dim, M and storage on ``n`` random unit vectors: the layout, not the data, sets them.

    ``file``: the saved graph (links + vectors); ``sidecar``: index.json (ids, metadata, params); with
    ``resident``, the memory a fresh process grows by loading the graph file alone with its library and the
    whole gallery with ``Index.load`` (graph + id table), each over the item count.
    """
    rows = []
    ids, metas = item_table(n)
    for dim in dims:
        x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
        for M in ms:
            sizes: dict[str, dict[str, float]] = {}
            for storage in ("f32", "f16", "i8"):
                index = Index(dim, vectors=storage, M=M, ef_construction=40, capacity=n)  # type: ignore[arg-type]
                index.add(x, ids, metas)
                with tempfile.TemporaryDirectory() as tmp:
                    index.save(tmp, calibrate=False)
                    sizes[storage] = {"file": graph_bytes(tmp) / n, "sidecar": (Path(tmp) / SIDECAR_FILE).stat().st_size / n}
                    if resident:
                        sizes[storage] |= {"graph_resident": resident_bytes(tmp, "graph") / n, "index_resident": resident_bytes(tmp, "index") / n}
            rows.append({"dim": dim, "M": M, "n": n, "bytes_per_item": sizes})
            print(rows[-1], flush=True)
    return rows


def code_ceilings(gallery: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """Exact recall@10 against float32 of each way to store the gallery (the ceiling no graph can beat), and why int8 stops where it does.

    int8 rounding moves each score by about step/sqrt(12) (step: the code's peak over 127); a query whose
    10th and 11th neighbours are closer than that can swap them whatever the graph does.
    """
    from proxyembed.runtime.index.usearch import decode_i8, encode_i8, quantize_i8

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def ceiling(stored: np.ndarray, q: np.ndarray = queries) -> float:
        return recall(knn(q, unit(stored.astype(np.float32)), K)[0], truth)

    truth = knn(queries, gallery, K)[0]
    peak = np.abs(gallery).max(axis=1, keepdims=True)
    lo, hi = gallery.min(axis=0), gallery.max(axis=0)
    step = (hi - lo) / 255
    coded_queries = unit(quantize_i8(queries).astype(np.float32))
    codings = {
        "f16": lambda: ceiling(gallery.astype(np.float16)),
        "i8 + a residual bit per value (proxyembed: code +- 1/4), float query": lambda: ceiling(decode_i8(*encode_i8(gallery))),
        "i8, per-vector peak = 127, float query (no residual bit)": lambda: ceiling(quantize_i8(gallery)),
        "i8, per-vector peak, query coded too (usearch's own distances)": lambda: ceiling(quantize_i8(gallery), coded_queries),
        "i8, per-vector, 90% of the peak = 127 (clipped)": lambda: ceiling(np.clip(np.rint(gallery * (127 / (0.9 * peak))), -127, 127)),
        "i8, per-dimension range (affine, faiss SQ8-like)": lambda: ceiling(np.rint((gallery - lo) / step) * step + lo),
        "i8, unit vector x 127 (usearch's own cast)": lambda: ceiling(np.clip(np.rint(gallery * 127), -127, 127)),
    }  # fmt: skip
    sims = knn(queries, gallery, K + 1)[1]
    gap = sims[:, K - 1] - sims[:, K]
    sample = queries[: min(200, len(queries))]

    def score_noise(stored: np.ndarray) -> float:
        return float((sample @ unit(stored).T - sample @ gallery.T).std())

    noise = score_noise(quantize_i8(gallery).astype(np.float32))
    return {
        "ceilings": {name: fn() for name, fn in codings.items()},
        "i8_score_noise_std": noise,
        "i8_residual_score_noise_std": score_noise(decode_i8(*encode_i8(gallery))),
        "median_gap_10_11": float(np.median(gap)),
        "share_gap_below_noise": float((gap < noise).mean()),
    }


def codes_markdown(result: dict[str, Any], command: str, data: str) -> str:
    lines = [
        "# What each vector storage can reach: exact search on the stored vectors against exact float32",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {data}; recall@10 of exact search over the whole gallery as stored (no graph), against exact float32 search.",
        "No timings (the machine was shared with other jobs; nothing here depends on it).",
        "",
        "| storage | recall@10 ceiling |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in result["ceilings"].items()]
    lines += [
        "",
        f"int8 (per-vector peak) moves a query's scores by {result['i8_score_noise_std']:.2e} (std), "
        f"{result['i8_residual_score_noise_std']:.2e} with the residual bit; the median gap between the 10th and 11th",
        f"neighbour is {result['median_gap_10_11']:.2e}, and {100 * result['share_gap_below_noise']:.1f}% of queries have a gap smaller",
        "than the noise without the bit.",
    ]
    return "\n".join(lines) + "\n"


def grid_markdown(rows: list[dict[str, Any]], command: str) -> str:
    resident = "graph_resident" in rows[0]["bytes_per_item"]["f32"]
    lines = [
        "# Gallery bytes per item by dim, M and vector storage",
        "",
        f"Command: `{command}`",
        "",
        f"{rows[0]['n']:,} random unit vectors per gallery; per-item bytes are set by the layout (dim, M, storage), not by the data.",
        "f32 is hnswlib, f16 / i8 usearch. file: the saved graph (index.bin: links + vectors + the library's per-item header);",
        "graph RAM: a fresh process's resident growth loading index.bin with its library alone; gallery RAM: the same for",
        "`Index.load` (graph + the id table with ids and metadata shaped like `proxyembed index` writes them:",
        "a relative path as id, label and path as metadata). Resident memory was read on a machine shared with other jobs.",
        "",
    ]
    if resident:
        lines += [
            "| dim | M | f32 file / graph RAM / gallery RAM | f16 (same) | i8 (same) | f16/f32 file, gallery | i8/f32 file, gallery |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            b = r["bytes_per_item"]
            cell = {s: f"{b[s]['file']:.0f} / {b[s]['graph_resident']:.0f} / {b[s]['index_resident']:.0f}" for s in b}
            ratio = {s: f"{b[s]['file'] / b['f32']['file']:.3f}, {b[s]['index_resident'] / b['f32']['index_resident']:.3f}" for s in b}
            lines.append(f"| {r['dim']} | {r['M']} | {cell['f32']} | {cell['f16']} | {cell['i8']} | {ratio['f16']} | {ratio['i8']} |")
    else:
        lines += ["| dim | M | f32 B | f16 B | i8 B | f16 / f32 | i8 / f32 |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            b = {s: v["file"] for s, v in r["bytes_per_item"].items()}
            lines.append(
                f"| {r['dim']} | {r['M']} | {b['f32']:.0f} | {b['f16']:.0f} | {b['i8']:.0f} | {b['f16'] / b['f32']:.3f} | {b['i8'] / b['f32']:.3f} |"
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
        f"latency: median CPU time of {args.latency_queries} single-query searches on 1 thread; builds on {args.build_threads} thread(s), "
        f"ef_construction={args.ef_construction}.",
        "Bytes per item: the saved graph file (links + vectors) over the item count; graph RAM / gallery RAM (where measured): a fresh",
        "process's resident growth loading the graph file alone / the whole gallery with `Index.load` (graph + id table), over the item count.",
        "ceiling: recall@10 of exact search on the stored vectors (what no ef or M can beat), from the calibration's queries.",
        f"proxyembed rows: built as `proxyembed index` builds ({CALIBRATION_QUERIES} items held out, calibration on them, then added); "
        f"add s is adding the rest, calibrate s the calibration (ef raised {EF_STEP}x a step, M raised if needed).",
        "Bare rows: the library alone with the M and ef the proxyembed f32 row calibrated to (faiss: the i8 row's).",
        "",
        "| n | row | M | ef | bytes/item | x f32 | graph RAM B | gallery RAM B | x f32 | add s | calibrate s | latency ms | x f32 "
        "| recall@10 | ceiling |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next((b for b in rows if b["n"] == r["n"] and b["row"] == "proxyembed f32"), None)
        ratio_b = f"{r['bytes_per_item'] / base['bytes_per_item']:.3f}" if base else ""
        ratio_l = f"{r['latency_ms'] / base['latency_ms']:.2f}" if base else ""
        cal = f"{r['calibrate_s']:.1f}" if r["calibrate_s"] is not None else ""
        graph_ram = f"{r['graph_resident']:.0f}" if "graph_resident" in r else ""
        gallery_ram = f"{r['index_resident']:.0f}" if "index_resident" in r else ""
        ratio_ram = f"{r['index_resident'] / base['index_resident']:.3f}" if base and "index_resident" in r and "index_resident" in base else ""
        ceiling = f"{r['calibration']['ceiling@10']:.4f}" if r.get("calibration") else f"{r['ceiling@10']:.4f}" if "ceiling@10" in r else ""
        lines.append(
            f"| {r['n']:,} | {r['row']} | {r['M']} | {r['ef']} | {r['bytes_per_item']:.0f} | {ratio_b} | {graph_ram} | {gallery_ram} | {ratio_ram} | "
            f"{r['add_s']:.1f} | {cal} | {r['latency_ms']:.3f} | {ratio_l} | {r['recall@10']:.4f} | {ceiling} |"
        )
    curves = [r for r in rows if r.get("curve")]
    if curves:
        efs = [p["ef"] for p in curves[0]["curve"]]
        lines += ["", "Held-out recall@10 / batch-1 latency (ms) at each ef (the calibrated ef is the row's own):", "",
                  "| n | row | M | " + " | ".join(f"ef={e}" for e in efs) + " |", "|---:|---|---:|" + "---:|" * len(efs)]  # fmt: skip
        for r in curves:
            cells = " | ".join(f"{p['recall@10']:.4f} / {p['latency_ms']:.3f}" for p in r["curve"])
            lines.append(f"| {r['n']:,} | {r['row']} | {r['M']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="100000", help="comma-separated gallery sizes")
    ap.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"which of {','.join(ROWS + OPTIONAL_ROWS)} (the bare rows need f32 first, faiss needs i8 and faiss-cpu installed)",
    )
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--latency-queries", type=int, default=500)
    ap.add_argument("--build-threads", type=int, default=1)
    ap.add_argument("--ef-construction", type=int, default=200, help="for every row (the Index's default is 200)")
    ap.add_argument("--M", type=int, default=None, help="default: the Index's choice from the size (16, or 32 from 250k items)")
    ap.add_argument(
        "--max-M",
        type=int,
        default=None,
        help=f"the largest M calibration may rebuild with (default {MAX_M}); at 1M each rebuild takes as long as the build",
    )
    ap.add_argument("--name", default="index_memory", help="results file stem under benchmarks/results/")
    ap.add_argument("--curve", default="", help="comma-separated ef values: held-out recall and latency of each proxyembed row at each")
    ap.add_argument("--resident", action="store_true", help="also the resident memory of loading each saved gallery (a fresh process each)")
    ap.add_argument("--bundle", help="with --images: real embeddings of these images by this bundle instead of clustered vectors (--sizes ignored)")
    ap.add_argument("--images", help="folder of images to embed with --bundle; a tenth of them (at most --queries) are the held-out queries")
    ap.add_argument("--bytes-grid", action="store_true", help="only the bytes per item for dims 128,512 and M 8,16,32 (galleries of --grid-size)")
    ap.add_argument("--grid-size", type=int, default=20_000)
    ap.add_argument(
        "--codes", action="store_true", help="only the recall ceiling of each storage / int8 coding (exact search, no graph) at the first size"
    )
    args = ap.parse_args()
    args.curve = [int(e) for e in args.curve.split(",") if e]
    if args.bytes_grid:
        command = "python benchmarks/index_memory.py " + " ".join(sys.argv[1:])
        grid = bytes_grid(args.grid_size, [128, 512], [8, 16, 32], args.resident)
        md = grid_markdown(grid, command)
        print(md, "written:", *write_results(args.name, {"command": command, "rows": grid}, md))
        return
    if args.codes:
        command = "python benchmarks/index_memory.py " + " ".join(sys.argv[1:])
        if args.bundle and args.images:
            gallery, queries = real_embeddings(args.bundle, args.images, args.queries, threads=args.build_threads)
            total = len(gallery) + len(queries)
            data = f"embeddings of the {total:,} images under {args.images} by the bundle {args.bundle}, {len(queries)} of them the queries"
        else:
            n = int(args.sizes.split(",")[0])
            gallery, queries = clustered(n, args.dim, args.queries)
            data = f"{n:,} clustered unit vectors, dim {args.dim}, ~50 per class, {args.queries} queries from the same classes"
        result = code_ceilings(gallery, queries)
        md = codes_markdown(result, command, data)
        print(md, "written:", *write_results(args.name, {"command": command, "data": data, **result}, md))
        return
    wanted = args.rows.split(",")
    info = machine()
    print(machine_line(info), flush=True)
    if args.bundle and args.images:
        data = f"embeddings of the images under {args.images} by the bundle {args.bundle}"
    else:
        data = f"clustered unit vectors, dim {args.dim}, ~50 per class, queries from the same classes"
    rows: list[dict[str, Any]] = []
    command = "python benchmarks/index_memory.py " + " ".join(sys.argv[1:])

    def save() -> None:  # after every row: a long run stopped early keeps what it measured
        md = markdown(rows, info, command, data, args)
        paths = write_results(args.name, {"command": command, "machine": info, "data": data, "k": K, "rows": rows}, md)
        print(md, "written:", *paths, flush=True)

    for n in [0] if args.bundle and args.images else [int(s) for s in args.sizes.split(",")]:
        if args.bundle and args.images:
            gallery, queries = real_embeddings(args.bundle, args.images, args.queries, threads=args.build_threads)
            n, args.queries = len(gallery), len(queries)  # a tenth of the photos, fewer than asked
        else:
            gallery, queries = clustered(n, args.dim, args.queries)
        truth = knn(queries, gallery, K)[0]
        for storage in ("f32", "i8", "f16"):  # i8 before f16: the row the goals are about
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
        quantized = next((r for r in rows if r["n"] == n and r["row"] == "proxyembed i8"), None)
        if "faiss" in wanted and quantized is not None:
            rows.append(faiss_row(gallery, queries, truth, quantized["M"], quantized["ef"], args))
            save()
            gc.collect()
        del gallery
        gc.collect()


if __name__ == "__main__":
    main()
