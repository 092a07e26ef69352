"""Peak memory of ``proxyembed embed`` as the corpus grows, beside the naive ``Encoder.encode(all)`` + ``np.save``.

Each measurement runs in its own process and reports that process's peak RSS (``ru_maxrss``), so
import cost is included and nothing leaks between runs. A 512-d tiny bundle (tests/bundles.py) keeps
inference cheap so the corpus, not the model, dominates: ``embed`` writes each batch into a
memory-mapped ``.npy`` while the naive loop holds every embedding until the end.

    python benchmarks/embed_memory.py [--sizes 2000 8000 32000] [--dim 512]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import machine, machine_line, write_results
from PIL import Image

_EMBED = """
import resource, sys
from proxyembed.cli import main
try:
    main(["embed", {bundle!r}, {images!r}, "--out", {out!r}, "--batch-size", "64", "--threads", "1"])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_NAIVE = """
import resource
from pathlib import Path
import numpy as np
from proxyembed.runtime import Encoder
paths = sorted(Path({images!r}).rglob("*.png"))
np.save({out!r}, Encoder({bundle!r}, threads=1).encode(paths, batch_size=64))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_mib(code: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - t0


def _write_images(root: Path, n: int, start: int) -> None:
    for i in range(start, n):
        folder = root / f"c{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(folder / f"{i:07d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bundles import make_tiny_bundle

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = str(make_tiny_bundle(root / "bundle", dim=args.dim, with_int8=False))
        images, written = root / "images", 0
        for n in sorted(args.sizes):
            _write_images(images, n, written)
            written = n
            fmt = dict(bundle=bundle, images=str(images))
            embed_mib, embed_s = _peak_mib(_EMBED.format(out=str(root / f"embed{n}.npy"), **fmt))
            naive_mib, naive_s = _peak_mib(_NAIVE.format(out=str(root / f"naive{n}.npy"), **fmt))
            rows.append({"images": n, "embed_peak_mib": round(embed_mib, 1), "naive_peak_mib": round(naive_mib, 1),
                         "embed_s": round(embed_s, 1), "naive_s": round(naive_s, 1), "embeddings_mib": round(n * args.dim * 4 / 2**20, 1)})
            print(rows[-1], flush=True)
    info = machine()
    lines = [
        "# `proxyembed embed`: peak memory vs corpus size",
        "",
        f"Machine: {machine_line(info)}",
        f"Tiny bundle (tests/bundles.py), dim {args.dim}, 40 px PNGs, batch 64, 1 ORT thread; peak RSS of each process (ru_maxrss).",
        "",
        "| images | embeddings size MiB | embed peak MiB | naive encode+save peak MiB | embed s | naive s |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['images']:,} | {r['embeddings_mib']} | {r['embed_peak_mib']} | {r['naive_peak_mib']} | {r['embed_s']} | {r['naive_s']} |"
          for r in rows],
        "",
        "Command: `python benchmarks/embed_memory.py " + " ".join(["--sizes", *map(str, args.sizes), "--dim", str(args.dim)]) + "`",
        "",
    ]
    write_results("embed_memory", {"machine": info, "dim": args.dim, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
