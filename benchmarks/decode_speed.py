"""Camera-size JPEGs: one query stage by stage with full and with reduced decoding, and what reduced costs in Recall@1.

Part 1 times decode, preprocess, encode and search for one JPEG at 0.5, 2 and 12 megapixels (a real
Caltech-101 photo upscaled with Lanczos and saved at quality 90, so the file has a camera file's size
and entropy), median of ``--repeat`` runs, with ``decode="full"`` and ``"reduced"``; the search is over a
10,000-item index. Part 2 embeds the held-out classes' photos, upscaled the same way to ``--recall-mp``
megapixels, with both decodes through the same model, and reports Recall@1 and MAP@R of each (the
all-vs-all protocol of training and export validation).

    python benchmarks/decode_speed.py --bundle bundles/caltech --data ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import io
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import machine, machine_line, write_results
from PIL import Image

from proxyembed.runtime import Encoder, Index
from proxyembed.runtime.metrics import retrieval_metrics
from proxyembed.runtime.preprocess import Preprocessor

SIZES_MP = (0.5, 2.0, 12.0)
STAGES = ("decode", "preprocess", "encode", "search")


def camera_jpeg(photo: Path, megapixels: float, quality: int = 90) -> bytes:
    """``photo`` upscaled (Lanczos) to about ``megapixels`` with its aspect ratio, as JPEG bytes."""
    img = Image.open(photo).convert("RGB")
    scale = math.sqrt(megapixels * 1e6 / (img.width * img.height))
    big = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def stage_times(encoder: Encoder, index: Index, data: bytes, decode: str, repeat: int) -> dict[str, float]:
    pre = Preprocessor(replace(encoder.bundle.manifest.preprocess, decode=decode))
    img = pre.decode(data)
    batch = pre.normalise(pre.square(img))[None]
    vector = encoder.encode_batch(batch)
    return {
        "decode": median_ms(lambda: pre.decode(data), repeat),
        "preprocess": median_ms(lambda: pre.normalise(pre.square(img)), repeat),
        "encode": median_ms(lambda: encoder.encode_batch(batch), repeat),
        "search": median_ms(lambda: index.search(vector, 10), repeat),
        "decoded_size": list(img.size),
    }


def recall(encoder: Encoder, files: list[bytes], labels: np.ndarray, decode: str) -> dict[str, float]:
    pre = Preprocessor(replace(encoder.bundle.manifest.preprocess, decode=decode))
    vectors = np.concatenate([encoder.encode_batch(np.stack([pre.image(f) for f in files[i : i + 32]])) for i in range(0, len(files), 32)])
    m = retrieval_metrics(vectors, labels, ks=(1,))
    return {"recall@1": round(100 * m["recall@1"], 2), "map@r": round(100 * m["map@r"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="Caltech-101 folder: images/<class>/*.jpg and eval_classes.txt")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--recall-mp", type=float, default=2.0, help="megapixels of the upscaled photos in part 2")
    ap.add_argument("--per-class", type=int, default=30, help="photos per held-out class in part 2")
    ap.add_argument("--name", default="decode_speed")
    args = ap.parse_args()

    encoder = Encoder(args.bundle, threads=1)
    spec = encoder.bundle.manifest.preprocess
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(10_000, encoder.dim)).astype(np.float32)
    index = Index(encoder.dim, capacity=10_000)
    index.add(gallery, list(range(10_000)))
    classes = (args.data / "eval_classes.txt").read_text().split()
    probe = sorted((args.data / "images" / classes[0]).glob("*.jpg"))[0]

    latency = []
    for mp in SIZES_MP:
        data = camera_jpeg(probe, mp)
        row = {"megapixels": mp, "file_kb": round(len(data) / 1024)}
        for decode in ("full", "reduced"):
            row[decode] = stage_times(encoder, index, data, decode, args.repeat)
        full_dp = row["full"]["decode"] + row["full"]["preprocess"]
        red_dp = row["reduced"]["decode"] + row["reduced"]["preprocess"]
        row["decode_preprocess_speedup"] = round(full_dp / red_dp, 2)
        row["query_speedup"] = round(sum(row["full"][s] for s in STAGES) / sum(row["reduced"][s] for s in STAGES), 2)
        latency.append(row)
        print(f"{mp} MP: decode+preprocess {full_dp:.1f} -> {red_dp:.1f} ms ({row['decode_preprocess_speedup']}x)", file=sys.stderr)

    files, labels = [], []
    for label, cls in enumerate(classes):
        for photo in sorted((args.data / "images" / cls).glob("*.jpg"))[: args.per_class]:
            files.append(camera_jpeg(photo, args.recall_mp))
            labels.append(label)
    y = np.asarray(labels)
    accuracy = {decode: recall(encoder, files, y, decode) for decode in ("full", "reduced")}
    drop = round(accuracy["full"]["recall@1"] - accuracy["reduced"]["recall@1"], 2)
    print(f"Recall@1 full {accuracy['full']['recall@1']} reduced {accuracy['reduced']['recall@1']} (drop {drop})", file=sys.stderr)

    info = machine()
    command = "python benchmarks/decode_speed.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = {"command": command, "machine": info, "bundle": str(args.bundle), "preprocess": spec.to_dict(), "latency": latency,
            "recall": {"megapixels": args.recall_mp, "images": len(files), "classes": len(classes), **accuracy, "recall@1_drop": drop}}
    lines = [
        "# Camera-size JPEGs: full vs reduced decoding",
        "",
        f"`{command}`",
        "",
        f"Machine: {machine_line(info)}. Model input {spec.crop} px ({spec.fit}); encoder {encoder.describe()};",
        f"median of {args.repeat} runs per stage; search over 10,000 items, k=10.",
        "",
        "| photo | file | decode | decoded to | decode ms | preprocess ms | encode ms | search ms | query ms |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in latency:
        for decode in ("full", "reduced"):
            r = row[decode]
            total = sum(r[s] for s in STAGES)
            lines.append(
                f"| {row['megapixels']} MP | {row['file_kb']} KB | {decode} | {r['decoded_size'][0]}x{r['decoded_size'][1]} | {r['decode']:.2f} | "
                f"{r['preprocess']:.2f} | {r['encode']:.2f} | {r['search']:.3f} | {total:.2f} |"
            )
    lines += ["", "Decode + preprocess speed-up of reduced decoding: "
              + ", ".join(f"{r['megapixels']} MP {r['decode_preprocess_speedup']}x" for r in latency)
              + "; whole query: " + ", ".join(f"{r['megapixels']} MP {r['query_speedup']}x" for r in latency) + ".", ""]
    lines += [
        f"Accuracy: {len(files)} photos of the {len(classes)} held-out classes (at most {args.per_class} a class), upscaled to "
        f"{args.recall_mp} MP, embedded by the same model with each decode:",
        "",
        "| decode | Recall@1 | MAP@R |",
        "| --- | ---: | ---: |",
        *[f"| {d} | {accuracy[d]['recall@1']} | {accuracy[d]['map@r']} |" for d in ("full", "reduced")],
        "",
        f"Recall@1 drop of reduced decoding: {drop} points.",
        "",
    ]
    json_path, md_path = write_results(args.name, data, "\n".join(lines))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
