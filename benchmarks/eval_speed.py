"""Evaluation at Stanford Online Products size: time and peak memory of every metric a run reports.

The floor is one blocked float32 matrix product of all embeddings against all (N x N x dim), measured
in the same process just before: every neighbour metric needs each pairwise similarity once, so no
evaluation can beat it. Measured: Recall@K (SOP's K = 1, 10, 100, 1000), MAP@R and R-Precision in one
pass (``retrieval_metrics``), then NMI (``nmi_kmeans``, k = number of classes) where a run computes it by
default (``--nmi auto``: up to ``NMI_AUTO_MAX_ITEMS`` items), each size in a fresh process so its peak RSS
is its own. ``--nmi-always`` also times NMI above that size (what ``proxyembed train --nmi always`` costs).
Embeddings are synthetic, shaped like SOP's test split: 512-d unit vectors, ~5.3 images per class
(60,502 images of 11,316 classes), each class a cloud around a centre.

    python benchmarks/eval_speed.py                      # 10k, 60k, 120k
    python benchmarks/eval_speed.py --sizes 10000        # one size
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from _common import RESULTS, machine, machine_line, rss_mib, write_results

from proxyembed.runtime.metrics import NMI_AUTO_MAX_ITEMS, _block_rows, nmi_kmeans, nmi_wanted, retrieval_metrics

SOP_KS = (1, 10, 100, 1000)
PER_CLASS = 60502 / 11316


def sop_like(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in ``dim`` dimensions and their labels, ~5.3 per class like SOP."""
    rng = np.random.default_rng(seed)
    n_classes = max(2, round(n / PER_CLASS))
    labels = np.sort(np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)]))
    centres = rng.normal(size=(n_classes, dim)).astype(np.float32)
    x = centres[labels] + rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.6, 1.5, (n, 1)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def floor_seconds(x: np.ndarray, block: int) -> float:
    """One blocked float32 product of ``x`` with itself, the block size ``retrieval_metrics`` uses."""
    t = time.perf_counter()
    for start in range(0, len(x), block):
        x[start : start + block] @ x.T
    return time.perf_counter() - t


def child(n: int, dim: int, nmi_always: bool) -> dict:
    x, labels = sop_like(n, dim)
    rss_data = rss_mib()
    floor = floor_seconds(x, _block_rows(n))
    t = time.perf_counter()
    metrics = retrieval_metrics(x, labels, ks=SOP_KS)
    neighbours_s = time.perf_counter() - t
    reported = nmi_wanted(n, "auto")  # what a run computes by default
    nmi_s = None
    if reported or nmi_always:
        t = time.perf_counter()
        metrics["nmi"] = nmi_kmeans(x, labels)
        nmi_s = time.perf_counter() - t
    total = neighbours_s + (nmi_s if reported else 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n, "dim": dim, "classes": int(len(np.unique(labels))), "floor_s": floor, "neighbours_s": neighbours_s,
        "nmi_s": nmi_s, "nmi_reported": reported, "total_s": total, "ratio": total / floor,
        "peak_rss_mib": peak, "data_rss_mib": rss_data, "metrics": metrics,
    }  # fmt: skip


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# Evaluation speed at SOP size: all metrics vs one matrix product",
        "",
        f"Machine: {machine_line(info)}",
        "Data: synthetic SOP-shaped embeddings (512-d unit vectors, ~5.3 per class). Metrics: Recall@1/10/100/1000,",
        "MAP@R, R-Precision (one blocked pass) and NMI (k-means, k = classes), which a run reports by default up to",
        f"{NMI_AUTO_MAX_ITEMS:,} items (`--nmi auto`); above that, NMI s is what `--nmi always` adds and is not in the total.",
        "Floor: one blocked float32 N x N x 512 product in the same process. Peak RSS of the whole process (a fresh one per size).",
        "",
        "| n | classes | floor s | neighbour metrics s | NMI s | total s | total / floor | peak RSS MiB | R@1 | NMI |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nmi_s = "not run" if r["nmi_s"] is None else f"{r['nmi_s']:.1f}" + ("" if r.get("nmi_reported", True) else " (not in total)")
        nmi = f"{r['metrics']['nmi']:.4f}" if "nmi" in r["metrics"] else "-"
        lines.append(
            f"| {r['n']:,} | {r['classes']:,} | {r['floor_s']:.1f} | {r['neighbours_s']:.1f} | {nmi_s} | "
            f"{r['total_s']:.1f} | {r['ratio']:.2f} | {r['peak_rss_mib']:,.0f} | {r['metrics']['recall@1']:.4f} | {nmi} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,60000,120000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--nmi-always", action="store_true", help="also time NMI where a run skips it by default")
    ap.add_argument("--merge", action="store_true", help="keep rows of other sizes from the existing results file")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="eval_speed", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.nmi_always)))
        return
    info = machine()
    print(machine_line(info))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim)] + ["--nmi-always"] * args.nmi_always
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        r = rows[-1]
        print(f"n={n}: floor {r['floor_s']:.1f} s, total {r['total_s']:.1f} s ({r['ratio']:.2f}x), peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    previous = RESULTS / f"{args.name}.json"
    if args.merge and previous.is_file():  # keep the other sizes of an earlier run (sizes run separately)
        rows += [r for r in json.loads(previous.read_text())["rows"] if r["n"] not in {r["n"] for r in rows}]
        rows.sort(key=lambda r: r["n"])
    md = markdown(rows, info)
    paths = write_results(args.name, {"machine": info, "ks": SOP_KS, "rows": rows}, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
