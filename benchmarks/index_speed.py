"""hnswlib (through proxyembed's Index) versus exact numpy search, side by side in one run.

For each gallery size: build time, memory, queries/s at batch 1 and 64, and recall@10 against exact
search, for several ``ef`` values and for the ``ef`` the index calibrates itself to on save (its default:
recall@10 >= 0.99 measured on stored vectors; the row shows that self-measured recall beside the
held-out one, and how long the calibration took). Vectors are clustered on the unit sphere like real metric-learning
embeddings (many classes, each a cloud of varying spread around its centre); queries are held-out
members of the same classes. With ``--bundle`` and ``--images`` the gallery is real embeddings instead.
``M`` defaults to what the Index picks from the expected size (16, or 32 from 250k items).

    python benchmarks/index_speed.py                      # 10k and 100k, dim 128
    python benchmarks/index_speed.py --max-n 1000000      # adds 1M when memory allows
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, machine_line, rss_mib, write_results

from proxyembed.runtime import Index
from proxyembed.runtime.metrics import knn

K = 10


def clustered(n: int, dim: int, n_queries: int, *, per_class: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gallery (n, dim) and queries, unit-norm, from ~n/per_class classes.

    Each point is its class centre plus Gaussian noise of a per-class spread, normalised: cosine to
    the centre is ~0.55-0.85, so neighbours are mostly but not only same-class, as in a trained model.
    """
    rng = np.random.default_rng(seed)
    n_classes = max(1, n // per_class)
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.6, 1.5, n_classes).astype(np.float32) / np.sqrt(dim)

    def draw(m: int) -> np.ndarray:
        cls = rng.integers(0, n_classes, m)
        x = centres[cls] + rng.normal(size=(m, dim)).astype(np.float32) * spread[cls, None]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(n_queries)


def real_embeddings(bundle: str, images: str, n_queries: int, seed: int = 0, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from proxyembed.runtime import Encoder

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in exts)
    enc = Encoder(bundle, threads=threads)
    print(f"embedding {len(paths)} images with {enc.describe()}")
    x = enc.encode(paths, batch_size=64)
    order = np.random.default_rng(seed).permutation(len(x))
    nq = min(n_queries, len(x) // 10)
    return x[order[nq:]], x[order[:nq]]


def recall_at_k(found: list[list[Any]], truth: np.ndarray) -> float:
    hits = sum(len({h.id for h in row} & set(t.tolist())) for row, t in zip(found, truth, strict=True))
    return hits / truth.size


def qps(index: Index, queries: np.ndarray, batch: int, **kw: Any) -> tuple[float, list[list[Any]]]:
    results: list[list[Any]] = []
    t = time.perf_counter()
    for i in range(0, len(queries), batch):
        results.extend(index.search(queries[i : i + batch], K, **kw))
    return len(queries) / (time.perf_counter() - t), results


def bench_size(gallery: np.ndarray, queries: np.ndarray, efs: list[int], args: argparse.Namespace) -> list[dict]:
    n, dim = gallery.shape
    rows: list[dict] = []
    truth, _ = knn(queries, gallery, K)
    q1 = queries[: args.batch1_queries]

    rss0 = rss_mib()
    index = Index(dim, M=args.M, ef_construction=args.ef_construction, exact_below=0, capacity=n)
    t = time.perf_counter()
    for i in range(0, n, 50_000):
        index.add(gallery[i : i + 50_000], list(range(i, min(i + 50_000, n))))
    build_s = time.perf_counter() - t
    mem_mib = rss_mib() - rss0
    file_mib = index._hnsw.index_file_size() / 2**20
    t = time.perf_counter()
    calibration = index.calibrate()
    calibrate_s = time.perf_counter() - t
    print(f"  n={n:>8} calibrated: {calibration} in {calibrate_s:.1f} s", flush=True)
    for ef in [calibration["ef"], *(e for e in efs if e != calibration["ef"])]:
        index.ef = ef
        qps1, _ = qps(index, q1, 1)
        qps64, found = qps(index, queries, 64)
        rec = recall_at_k(found, truth)
        calibrated = ef == calibration["ef"]
        rows.append(
            {"n": n, "dim": dim, "M": index.M, "method": f"hnsw {'calibrated ' if calibrated else ''}ef={ef}", "ef": ef,
             "build_s": build_s, "memory_mib": mem_mib, "index_mib": file_mib, "qps_b1": qps1, "qps_b64": qps64, "recall@10": rec,
             "self_recall@10": calibration["recall@10"] if calibrated else None, "calibrate_s": calibrate_s if calibrated else None}
        )  # fmt: skip
        print(f"  n={n:>8} hnsw ef={ef:<4} recall@10={rec:.4f} qps b1={qps1:8.0f} b64={qps64:8.0f}", flush=True)
    # Exact search through the same Index (exact=True): the float32 matrix it caches is its only set-up.
    t = time.perf_counter()
    index.search(queries[:1], K, exact=True)
    build_s = time.perf_counter() - t
    qps1, _ = qps(index, q1[: max(20, args.batch1_queries // 10)], 1, exact=True)
    qps64, found = qps(index, queries, 64, exact=True)
    rec = recall_at_k(found, truth)
    rows.append(
        {"n": n, "dim": dim, "M": None, "method": "exact numpy", "ef": None, "self_recall@10": None, "calibrate_s": None,
         "build_s": build_s, "memory_mib": n * dim * 4 / 2**20,
         "index_mib": n * dim * 4 / 2**20, "qps_b1": qps1, "qps_b64": qps64, "recall@10": rec}
    )  # fmt: skip
    print(f"  n={n:>8} exact           recall@10={rec:.4f} qps b1={qps1:8.0f} b64={qps64:8.0f}", flush=True)
    return rows


def markdown(rows: list[dict], info: dict, args: argparse.Namespace, data: str) -> str:
    lines = [
        "# Index speed: hnswlib vs exact numpy search",
        "",
        f"Machine: {machine_line(info)}",
        f"Data: {data}; k={K}; M per row (default: chosen by the Index from the size), ef_construction={args.ef_construction}; "
        f"{args.queries} queries (batch-1 timing on {args.batch1_queries}).",
        "Memory: for hnswlib, the RSS growth while building (and the saved index size); for exact, the float32 matrix.",
        "Build for exact: copying the vectors into the matrix it searches. Timings through proxyembed's Index.",
        "",
        "Calibrated: the ef the Index chose on its own (save), with its self-measured recall@10 on 1000 stored",
        "vectors and the seconds that took; recall@10 is always measured on held-out queries.",
        "",
        "| n | M | method | build s | memory MiB | index MiB | q/s batch 1 | q/s batch 64 | recall@10 | self recall (s) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        own = f"{r['self_recall@10']:.4f} ({r['calibrate_s']:.1f} s)" if r.get("self_recall@10") is not None else ""
        lines.append(
            f"| {r['n']:,} | {r['M'] or ''} | {r['method']} | {r['build_s']:.1f} | {r['memory_mib']:.0f} | {r['index_mib']:.0f} | "
            f"{r['qps_b1']:,.0f} | {r['qps_b64']:,.0f} | {r['recall@10']:.4f} | {own} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated gallery sizes")
    ap.add_argument("--max-n", type=int, default=100_000, help="skip sizes above this (1M needs ~2 GiB and minutes)")
    ap.add_argument("--efs", default="16,32,64,128,256")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--batch1-queries", type=int, default=500)
    ap.add_argument("--M", type=int, default=None, help="default: the Index's choice from the size")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--bundle", help="use this bundle's dim, and with --images its real embeddings")
    ap.add_argument("--images", help="folder of images to embed with --bundle")
    ap.add_argument("--name", default="index_speed", help="results file stem under benchmarks/results/")
    args = ap.parse_args()

    info = machine()
    print(machine_line(info))
    efs = [int(e) for e in args.efs.split(",")]
    rows: list[dict] = []
    if args.bundle and args.images:
        gallery, queries = real_embeddings(args.bundle, args.images, args.queries)
        data = f"real embeddings from {args.bundle} of {args.images}, dim {gallery.shape[1]}"
        rows += bench_size(gallery, queries, efs, args)
    else:
        if args.bundle:
            from proxyembed.runtime import Bundle

            args.dim = Bundle.load(args.bundle).dim
        data = f"clustered unit vectors, dim {args.dim}, ~50 per class, held-out queries from the same classes"
        for n in (int(s) for s in args.sizes.split(",")):
            if n > args.max_n:
                print(f"skipping n={n} (above --max-n {args.max_n})")
                continue
            gallery, queries = clustered(n, args.dim, args.queries)
            rows += bench_size(gallery, queries, efs, args)
            del gallery
            gc.collect()
    md = markdown(rows, info, args, data)
    paths = write_results(args.name, {"machine": info, "data": data, "k": K, "rows": rows}, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
