"""End-to-end latency of one query, stage by stage, through proxyembed.runtime versus bare library calls.

Stages: decode (file -> RGB image), preprocess (resize, crop, normalise), encode (ONNX Runtime), search
(hnswlib, k=10, over a 10k-item gallery). The "bare" column does the same work with direct PIL / numpy /
onnxruntime / hnswlib calls and none of the library's checks; the difference is the library's overhead.
Run for the bundle's fp32 and int8 artifacts. Without ``--bundle`` a tiny synthetic bundle is built
(the test helper's model at 224 px): its model is far cheaper than a real backbone, so the overhead
percentage it shows is an upper bound.

    python benchmarks/runtime_latency.py --bundle bundles/cub-r50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import machine, machine_line, write_results
from PIL import Image

from proxyembed.runtime import Bundle, Encoder, Index, Retriever, load_image

K = 10
STAGES = ("decode", "preprocess", "encode", "search")


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def query_image(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    arr = (rng.random((480, 640, 3)) * 40 + np.linspace(0, 200, 640)[None, :, None]).astype(np.uint8)
    path = folder / "query.jpg"
    Image.fromarray(arr).save(path, quality=90)
    return path


def gallery_vectors(n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(max(1, n // 50), dim))
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def library_stages(enc: Encoder, index: Index, path: Path, repeat: int) -> dict[str, float]:
    pre = enc.preprocessor
    img = load_image(path)
    x = pre.image(img)[None]
    vec = enc.encode_batch(x)
    retriever = Retriever(enc, index)
    return {
        "decode": median_ms(lambda: load_image(path), repeat),
        "preprocess": median_ms(lambda: pre.image(img), repeat),
        "encode": median_ms(lambda: enc.encode_batch(x), repeat),
        "search": median_ms(lambda: index.search(vec, K), repeat),
        "end_to_end": median_ms(lambda: retriever.search(path, K), repeat),
    }


def bare_stages(
    bundle: Bundle, model: Path, threads: int | None, vectors: np.ndarray, ef: int, path: Path, repeat: int
):
    import hnswlib
    import onnxruntime as ort

    spec = bundle.manifest.preprocess
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)

    def decode() -> Image.Image:
        return Image.open(path).convert("RGB")

    def preprocess(img: Image.Image) -> np.ndarray:
        w, h = img.size
        s = spec.resize / min(w, h)
        nw, nh = round(w * s), round(h * s)
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - spec.crop) // 2, (nh - spec.crop) // 2
        img = img.crop((left, top, left + spec.crop, top + spec.crop))
        return ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std)[None]

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    in_name, out_name = bundle.manifest.input_name, bundle.manifest.output_name
    hnsw = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    hnsw.init_index(max_elements=len(vectors), ef_construction=200, M=16)
    hnsw.add_items(vectors, np.arange(len(vectors)))
    hnsw.set_ef(ef)

    img = decode()
    x = preprocess(img)
    vec = sess.run([out_name], {in_name: x})[0]

    def end_to_end() -> object:
        v = sess.run([out_name], {in_name: preprocess(decode())})[0]
        return hnsw.knn_query(v, k=K)

    return {
        "decode": median_ms(decode, repeat),
        "preprocess": median_ms(lambda: preprocess(img), repeat),
        "encode": median_ms(lambda: sess.run([out_name], {in_name: x}), repeat),
        "search": median_ms(lambda: hnsw.knn_query(vec, k=K), repeat),
        "end_to_end": median_ms(end_to_end, repeat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="bundle folder (default: a tiny synthetic one at 224 px)")
    ap.add_argument("--gallery-size", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="alternating library/bare rounds; best median kept")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads for both sides")
    args = ap.parse_args()

    info = machine()
    print(machine_line(info))
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle_path = Path(args.bundle)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from bundles import make_tiny_bundle

            bundle_path = make_tiny_bundle(Path(tmp) / "bundle", dim=128, crop=224, resize=256)
        bundle = Bundle.load(bundle_path)
        path = query_image(Path(tmp))
        vectors = gallery_vectors(args.gallery_size, bundle.dim)
        index = Index(bundle.dim, exact_below=0, capacity=len(vectors))
        index.add(vectors, list(range(len(vectors))))
        results = []
        for precision in ("fp32", "int8"):
            if bundle.manifest.artifact(precision) is None:
                print(f"bundle has no {precision} ONNX artifact; skipped")
                continue
            enc = Encoder(bundle, precision=precision, device="cpu", threads=args.threads)
            lib = library_stages(enc, index, path, args.repeat)
            bare = bare_stages(
                bundle, bundle.artifact_path(enc.artifact), args.threads, vectors, index.ef, path, args.repeat
            )
            results.append({"precision": precision, "encoder": enc.describe(), "library": lib, "bare": bare})
            print(f"{precision}: library {lib['end_to_end']:.2f} ms, bare {bare['end_to_end']:.2f} ms", flush=True)

    lines = [
        "# Runtime latency: one query, stage by stage (median ms)",
        "",
        f"Machine: {machine_line(info)}",
        f"Bundle: {args.bundle or 'tiny synthetic (tests/bundles.py), 224 px, dim 128'}; gallery {args.gallery_size:,} "
        f"items, k={K}; best of {args.rounds} medians of {args.repeat} runs; threads {args.threads or 'default'}.",
        "",
        "| precision | stage | library ms | bare ms | overhead |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        for stage in (*STAGES, "end_to_end"):
            lib, bare = r["library"][stage], r["bare"][stage]
            lines.append(f"| {r['precision']} | {stage} | {lib:.3f} | {bare:.3f} | {100 * (lib - bare) / bare:+.1f}% |")
    md = "\n".join(lines) + "\n"
    paths = write_results("runtime_latency", {"machine": info, "k": K, "results": results}, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
