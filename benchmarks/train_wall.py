"""Wall time of ``proxyembed train`` against the hand-written reference loop, on Caltech-101 or a camera-size copy of it.

The reference (``benchmarks/reference_pml.py``'s PML + timm loop, imported unchanged) decodes every image
once into a tensor and trains from memory; proxyembed runs its defaults, decoded-image cache included,
with a fresh cache folder, so its one-time decode counts as the reference's one-time load does. Both
wall times include loading; both are scored on the unseen classes with the same metric code.

    python benchmarks/train_wall.py --size 64 --per-class 60 --seeds 0                  # Caltech-101 as stored
    python benchmarks/train_wall.py --size 64 --classes 10 --per-class 20 --megapixels 2   # 10 + 10 classes, upscaled to ~2 MP
    python benchmarks/train_wall.py --size 64 --amp none      # proxyembed in fp32, as on a CPU without AMX

``--megapixels`` writes the upscaled copy once under ``--work`` (as ``decode_speed.py`` upscales: Lanczos,
JPEG quality 90) and reuses it. Results: ``benchmarks/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_pml  # noqa: E402
from _common import machine, machine_line, write_results  # noqa: E402
from decode_speed import camera_jpeg  # noqa: E402
from reference_pml import REFERENCE_BATCH, batch_line, caltech_subset, loop_batch, proxyembed_run, reference_run  # noqa: E402

from proxyembed.data import resolve_data  # noqa: E402


def upscaled(src: Path, dst: Path, megapixels: float) -> Path:
    """A copy of the class-folder tree ``src`` with every photo upscaled to about ``megapixels`` (kept if already there)."""
    done = dst / ".complete"
    if done.is_file():
        return dst
    for photo in sorted(src.rglob("*.jpg")):
        out = dst / photo.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(camera_jpeg(photo.resolve(), megapixels))
    done.write_text("")
    return dst


def record_histories(into: list[list[dict[str, Any]]]) -> None:
    """Keep each proxyembed run's metrics.jsonl (per-epoch seconds) before ``proxyembed_run``'s temp folder goes."""
    real_train = reference_pml.train

    def train(cfg: Any, out: Path, **kw: Any) -> Any:
        result = real_train(cfg, out, **kw)
        into.append([json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()])
        return result

    reference_pml.train = train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--classes", type=int, default=None, help="only the first N training and N unseen classes")
    ap.add_argument("--megapixels", type=float, default=None, help="upscale every photo to about this many megapixels first")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument(
        "--batch", type=int, default=None, help=f"pin both sides' batch (default: the loop {REFERENCE_BATCH}, proxyembed its own default)"
    )
    ap.add_argument("--loss", default="proxy_anchor", choices=["proxy_anchor", "proxy_nca"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--amp", default=None, choices=["auto", "bf16", "none"], help="proxyembed's --amp (default: its own default, auto)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "proxyembed-train-wall")
    ap.add_argument("--reference-only", action="store_true", help="time the reference loop alone (to pair with an earlier proxyembed run)")
    ap.add_argument("--note", default="")
    ap.add_argument("--name", default="train_wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = caltech_subset(Path(tempfile.mkdtemp(prefix="caltech-")), args.per_class, args.classes)
    if args.megapixels:
        root = upscaled(root, args.work / f"caltech-{args.classes or 'all'}x{args.per_class}-{args.megapixels}mp", args.megapixels)
    split = resolve_data(str(root))
    rows: list[dict[str, Any]] = []
    histories: list[list[dict[str, Any]]] = []
    record_histories(histories)
    for seed in args.seeds:
        ref = reference_run(split, args.size, args.loss, seed, args.epochs, loop_batch(args.batch), 128, "resnet18")
        if args.reference_only:
            print(f"seed {seed}: reference {ref['wall_s']:.0f} s R@1 {ref['metrics']['recall@1']:.4f}", flush=True)
            rows.append({"seed": seed, "reference": ref})
            continue
        with tempfile.TemporaryDirectory(prefix="proxyembed-cache-") as cache:
            os.environ["PROXYEMBED_CACHE"] = cache  # cold: the one-time decode is part of the wall time
            t0 = time.perf_counter()
            overrides = {"amp": args.amp} if args.amp else {}
            ours = proxyembed_run(str(root), args.size, args.loss, seed, args.epochs, args.batch, 128, "resnet18", overrides, val=False)
            ours["outer_wall_s"] = time.perf_counter() - t0
        ours["epoch_s"] = {h["epoch"]: h["time_s"] for h in histories[-1]}  # the last: training and the final evaluation
        rows.append({"seed": seed, "reference": ref, "proxyembed": ours, "ratio": ours["wall_s"] / ref["wall_s"]})
        print(f"seed {seed}: reference {ref['wall_s']:.0f} s R@1 {ref['metrics']['recall@1']:.4f}; "
              f"proxyembed {ours['wall_s']:.0f} s R@1 {ours['metrics']['recall@1']:.4f}; ratio {rows[-1]['ratio']:.2f}", flush=True)
    info = machine()
    command = "python benchmarks/train_wall.py " + " ".join(sys.argv[1:])
    data = f"Caltech-101 ({len(split.train)} training / {len(split.eval)} unseen images" + (
        f", upscaled to ~{args.megapixels} MP)" if args.megapixels else ", as stored)")
    batches = batch_line([{"runs": {side: [r[side] for r in rows if side in r] for side in ("reference", "proxyembed")}}])
    lines = [
        "# proxyembed train vs the reference loop: wall time, load included",
        "",
        f"`{command}`",
        "",
        f"{data}; resnet18 from scratch, {args.size} px, {args.epochs} epochs, {batches}, 128-d, {args.loss}, "
        f"{args.threads} torch thread(s); proxyembed with a cold image cache"
        + (f" and --amp {args.amp}" if args.amp else "") + f". Machine: {machine_line(info)}.",
        "",
        "| seed | reference s | proxyembed s | proxyembed / reference | reference R@1 | proxyembed R@1 | reference MAP@R | proxyembed MAP@R |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows if not args.reference_only else []:
        a, b = r["reference"], r["proxyembed"]
        lines.append(f"| {r['seed']} | {a['wall_s']:.0f} | {b['wall_s']:.0f} | {r['ratio']:.2f} | {100 * a['metrics']['recall@1']:.1f} | "
                     f"{100 * b['metrics']['recall@1']:.1f} | {100 * a['metrics']['map@r']:.2f} | {100 * b['metrics']['map@r']:.2f} |")
    lines += ["", "proxyembed's seconds per epoch (epoch: seconds; 0 is the untrained evaluation, run only with --eval-untrained; "
              "the last epoch holds the final evaluation and the whitening's pass over the training images):", ""]
    lines += [f"- seed {r['seed']}: " + ", ".join(f"{e}: {t:.0f}" for e, t in r["proxyembed"]["epoch_s"].items()) for r in rows if "proxyembed" in r]
    lines += [f"- reference alone, seed {r['seed']}: {r['reference']['wall_s']:.0f} s, R@1 {100 * r['reference']['metrics']['recall@1']:.1f}, "
              f"MAP@R {100 * r['reference']['metrics']['map@r']:.2f}" for r in rows if "proxyembed" not in r]
    if args.note:
        lines += ["", args.note]
    payload = {"machine": info, "command": command, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    write_results(args.name, json.loads(json.dumps(payload, default=str)), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
