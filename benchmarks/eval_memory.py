"""Peak memory and time of a full evaluation with NMI at Stanford Online Products size.

``retrieval_metrics(x, labels, ks=(1, 10, 100, 1000), nmi=True)`` on SOP-shaped embeddings (60,502 x 512,
11,316 classes; benchmarks/eval_speed.py ``sop_like``), each run in a fresh process whose peak RSS
(``resource.getrusage``) is its own. Beside it the same call with NMI's contingency table built dense,
as it was before (classes x clusters float64: 1 GiB at SOP's size, and three such arrays while the terms
are formed), so the two rows compare like with like on the same machine in the same run.

    python benchmarks/eval_memory.py                 # SOP size
    python benchmarks/eval_memory.py --n 10000       # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np
from _common import machine, machine_line, rss_mib, write_results
from eval_speed import SOP_KS, sop_like

from proxyembed.runtime import metrics


def dense_normalized_mutual_info(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """The former NMI: the full classes x clusters contingency table (the reference for memory and value)."""
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    cont = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(cont, (ai, bi), 1)
    pij = cont / len(ai)
    pi, pj = pij.sum(1), pij.sum(0)
    nz = pij > 0
    mi = float((pij[nz] * np.log(pij[nz] / (pi[:, None] * pj[None, :])[nz])).sum())
    hi = -float((pi[pi > 0] * np.log(pi[pi > 0])).sum())
    hj = -float((pj[pj > 0] * np.log(pj[pj > 0])).sum())
    return mi / ((hi + hj) / 2)


def child(n: int, dim: int, dense: bool) -> dict:
    x, labels = sop_like(n, dim)
    data_mib = rss_mib()
    if dense:
        metrics.normalized_mutual_info = dense_normalized_mutual_info  # nmi_kmeans looks it up at call time
    t = time.perf_counter()
    out = metrics.retrieval_metrics(x, labels, ks=SOP_KS, nmi=True)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "dim": dim, "classes": int(len(np.unique(labels))), "nmi_table": "dense" if dense else "non-empty cells",
            "seconds": seconds, "peak_rss_mib": peak, "data_rss_mib": data_mib, "metrics": out}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60502)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--child", choices=["sparse", "dense"], help=argparse.SUPPRESS)
    ap.add_argument("--name", default="eval_memory", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.n, args.dim, args.child == "dense")))
        return
    info = machine()
    print(machine_line(info), flush=True)
    rows = []
    for kind in ("sparse", "dense"):
        cmd = [sys.executable, __file__, "--child", kind, "--n", str(args.n), "--dim", str(args.dim)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(rows[-1], flush=True)
    command = "python benchmarks/eval_memory.py " + " ".join(sys.argv[1:])
    lines = [
        "# Evaluation memory at SOP size: retrieval_metrics(..., nmi=True)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}; shared with other jobs while these timings were taken.",
        f"Data: synthetic SOP-shaped embeddings ({args.n:,} x {args.dim}, ~5.3 per class); Recall@1/10/100/1000, MAP@R, "
        "R-Precision and NMI (k-means, k = classes) in one call, each row in a fresh process (peak RSS from getrusage).",
        "Rows: NMI's contingency table from its non-empty cells (now) and dense (before), the rest of the code the same.",
        "",
        "| n | classes | NMI table | seconds | peak RSS MiB | data RSS MiB | R@1 | MAP@R | NMI |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['n']:,} | {r['classes']:,} | {r['nmi_table']} | {r['seconds']:.1f} | {r['peak_rss_mib']:,.0f} | "
            f"{r['data_rss_mib']:,.0f} | {m['recall@1']:.4f} | {m['map@r']:.4f} | {m['nmi']:.12f} |"
        )
    md = "\n".join(lines) + "\n"
    paths = write_results(args.name, {"command": command, "machine": info, "rows": rows}, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
