"""How far a recall@10 read on a calibration sample can sit from the recall of all new queries.

``Index.calibrate`` raises ef until recall@10 on CALIBRATION_QUERIES held-out items reaches the target. That
reading is a sample mean; this benchmark builds one gallery, searches many queries never in it at a few ef,
and reports the per-query spread of recall@10 and the spread of the mean over random samples of the
calibration's size (the bootstrap beside the formula std / sqrt(n)). If that spread is a sizeable part of
the distance to the target, a calibration that stops on the mean passes galleries that fall short on
other queries.

    python benchmarks/calibration_noise.py --size 100000 --dim 512 --vectors i8 --efs 24,32,48
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, machine_line, write_results  # noqa: E402
from index_speed import clustered  # noqa: E402

from proxyembed.runtime.index import Index  # noqa: E402
from proxyembed.runtime.index.recall import CALIBRATION_QUERIES, RECALL_K, _hits  # noqa: E402
from proxyembed.runtime.metrics import knn  # noqa: E402


def measure(size: int, dim: int, vectors: str, M: int, ef_construction: int, efs: list[int], queries: int, draws: int) -> dict:
    """Per-query recall@K of fresh queries at each ef, and the spread of CALIBRATION_QUERIES-sized sample means."""
    gallery, probe = clustered(size, dim, queries)
    start = time.perf_counter()
    index = Index(dim, vectors=vectors, M=M, ef_construction=ef_construction, exact_below=0)  # type: ignore[arg-type]
    index._hnsw.set_num_threads(1)
    index.add(gallery, list(range(size)))
    build_s = time.perf_counter() - start
    truth = knn(probe, gallery, RECALL_K)[0]
    rng = np.random.default_rng(0)
    rows = []
    for ef in efs:
        index._hnsw.set_ef(ef)
        found, _ = index._hnsw.knn_query(probe, k=RECALL_K)
        per = _hits(found.astype(np.int64), truth).mean(axis=1)  # per-query recall, as the calibration counts it
        means = np.array([per[rng.choice(len(per), CALIBRATION_QUERIES, replace=False)].mean() for _ in range(draws)])
        rows.append(
            {
                "ef": ef,
                "recall": float(per.mean()),
                "per_query_std": float(per.std()),
                "share_below_1": float(np.mean(per < 1)),
                "share_at_most_0.8": float(np.mean(per <= 0.8)),
                "sample_mean_sd": float(means.std()),
                "sample_mean_p5": float(np.percentile(means, 5)),
                "sample_mean_p95": float(np.percentile(means, 95)),
                "formula_se": float(per.std() / np.sqrt(CALIBRATION_QUERIES)),
            }
        )
    return {"build_s": build_s, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vectors", default="i8", choices=["f32", "f16", "i8"])
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--efs", default="24,32,48")
    p.add_argument("--queries", type=int, default=10_000, help="fresh queries, never in the gallery")
    p.add_argument("--draws", type=int, default=2000, help="random calibration-sized samples of them")
    p.add_argument("--name", default="calibration_noise")
    a = p.parse_args()
    efs = [int(e) for e in a.efs.split(",")]
    result = measure(a.size, a.dim, a.vectors, a.M, a.ef_construction, efs, a.queries, a.draws)
    command = "python benchmarks/calibration_noise.py " + " ".join(sys.argv[1:])
    info = machine()
    lines = [
        "# Calibration noise: recall@10 of a calibration-sized sample against all new queries",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}",
        f"Gallery: {a.size:,} clustered unit vectors, dim {a.dim}, {a.vectors}, M={a.M}, ef_construction={a.ef_construction}, "
        f"built on one thread in {result['build_s']:.0f} s; {a.queries:,} queries never in the gallery; recall@{RECALL_K} against exact "
        f"float32 search; {a.draws} random samples of {CALIBRATION_QUERIES} queries (the calibration's size).",
        "",
        "| ef | recall@10, all queries | per-query std | queries missing any | queries missing >= 2 | "
        "sample mean: sd | 5th / 95th percentile | std / sqrt(n) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['ef']} | {r['recall']:.4f} | {r['per_query_std']:.3f} | {r['share_below_1']:.3f} | {r['share_at_most_0.8']:.4f} | "
            f"{r['sample_mean_sd']:.4f} | {r['sample_mean_p5']:.4f} / {r['sample_mean_p95']:.4f} | {r['formula_se']:.4f} |"
        )
    data = {"command": command, "machine": info, "args": vars(a), **result}
    for path in write_results(a.name, data, "\n".join(lines) + "\n"):
        print("written:", path)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
