"""Images/s of ``proxyembed embed`` in one process against ``--engine ray`` on a local Ray, same corpus and bundle.

The corpus is ``--count`` real photos taken evenly from the sorted listing of ``--images`` (a CSV file
list, so both engines see the same ids). Rows: the single process with its defaults (ONNX Runtime on all
cores, decoding on a thread pool); the single process on one thread (``--threads 1 --workers 0``, what
one actor gets); and Ray Data on ``--cpus`` CPUs with the actors ``embed_ray`` sizes (one CPU left over).
Each is run ``--rounds`` times, alternating, and the best kept (the machine is shared); the Ray time
includes starting the actors, not starting Ray itself, which is reported apart. The Ray vectors are
compared with the single process's.

    python benchmarks/ray_embed.py --bundle bundles/caltech64 [--images /work/shared/data/caltech101/images] [--count 2000]

The bundle of the recorded results: ``proxyembed train --data FOLDER --epochs 1 --image-size 64 --whiten 0
--out runs/caltech64`` on 20 Caltech-101 classes of 20 images (the model's accuracy does not matter here,
only its cost), then ``proxyembed export runs/caltech64 --out bundles/caltech64``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, machine_line, write_results

from proxyembed.cli import main as cli_main
from proxyembed.runtime import Bundle
from proxyembed.runtime.embeddings import embedding_files, read_embeddings
from proxyembed.runtime.images import list_images


def corpus_list(images: Path, count: int, out: Path) -> Path:
    """A CSV file list of ``count`` images spread evenly over the sorted listing of ``images``."""
    items = list_images(images)
    picked = [items[i] for i in np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "id", "label"])
        for item in picked:
            writer.writerow([item["metadata"]["path"], item["id"], item["metadata"].get("label", "")])
    return out


def timed_cli(args: list[str]) -> float:
    start = time.perf_counter()
    try:
        cli_main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"proxyembed {' '.join(args)} exited {exc.code}") from None
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="bundle folder (proxyembed export)")
    ap.add_argument("--images", default="/work/shared/data/caltech101/images")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    import ray

    from proxyembed.scale import embed_ray

    info = machine()
    print(machine_line(info))
    manifest = Bundle.load(args.bundle).manifest
    model = (f"{manifest.source.get('backbone', 'unknown backbone')}, {manifest.preprocess.crop} px, dim {manifest.embedding_dim}, "
             f"{'/'.join(a.precision for a in manifest.artifacts)} artifacts (auto picks the validated CPU one)")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        corpus = corpus_list(Path(args.images), args.count, tmp / "corpus.csv")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start_s = time.perf_counter() - start
        base = ["embed", args.bundle, str(corpus), "--batch-size", str(args.batch_size)]
        runs = {
            "single process, defaults": lambda r: timed_cli([*base, "--out", str(tmp / f"local{r}.npy")]),
            "single process, 1 thread": lambda r: timed_cli([*base, "--out", str(tmp / f"one{r}.npy"), "--threads", "1", "--workers", "0"]),
        }
        reports = []

        def ray_run(r: int) -> float:
            start = time.perf_counter()
            reports.append(embed_ray(args.bundle, corpus, tmp / f"ray{r}", batch_size=args.batch_size))
            return time.perf_counter() - start

        runs["Ray Data, local"] = ray_run
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            for name, run in runs.items():
                seconds[name].append(run(r))
                print(f"round {r}: {name}: {seconds[name][-1]:.1f} s", flush=True)
        ray.shutdown()
        local = read_embeddings(tmp / "local0.npy")
        shards = [read_embeddings(p) for p in embedding_files([tmp / "ray0"])]
        max_diff = float(np.abs(np.concatenate([s.vectors for s in shards]) - local.vectors).max())
        rows = len(local.items)
        report = reports[0]

    results = [{"engine": name, "seconds": min(s), "all_seconds": s, "images_per_s": rows / min(s)} for name, s in seconds.items()]
    command = "python benchmarks/ray_embed.py " + " ".join(sys.argv[1:])
    data = {
        "machine": info, "command": command, "images": rows, "bundle": args.bundle, "cpus": args.cpus, "batch_size": args.batch_size,
        "model": model, "ray_start_s": ray_start_s, "ray_actors": report.actors, "ray_threads_per_worker": report.threads_per_worker,
        "unreadable": len(report.unreadable), "max_abs_diff_vs_single_process": max_diff, "results": results,
    }
    lines = [
        "# proxyembed embed: one process vs Ray Data (local)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}; Ray {ray.__version__} with {args.cpus} CPUs ({report.actors} actor(s) x "
        f"{report.threads_per_worker} thread(s)); {rows} images, batch {args.batch_size}; best of {args.rounds} alternating rounds.",
        f"Bundle: {model}.",
        "",
        "| engine | seconds | images/s |",
        "|---|---:|---:|",
        *[f"| {r['engine']} | {r['seconds']:.1f} | {r['images_per_s']:.0f} |" for r in results],
        "",
        f"Starting Ray itself (not in the times above): {ray_start_s:.1f} s. Largest difference between the Ray and the "
        f"single-process vectors: {max_diff:.1e}. Unreadable images: {len(report.unreadable)}.",
    ]
    md = "\n".join(lines) + "\n"
    paths = write_results("ray_embed", data, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
