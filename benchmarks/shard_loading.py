"""One training epoch's data loading alone (read, decode, augment, batch; no model) from a folder, a CSV list and
WebDataset shards of the same Caltech-101 images, repeated in turns so that a busy machine slows each form alike.

The training runs of data_formats.py time the whole step, where the network's compute dominates and the noise
of a shared machine hides the loader; this isolates what the format changes. One thread, no DataLoader workers
(the trainer's default), the trainer's own loaders and transform (``light`` augmentation, 40 px).

    python benchmarks/shard_loading.py --per-class 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, machine_line, write_results  # noqa: E402
from convergence import CALTECH  # noqa: E402
from data_formats import build_forms  # noqa: E402

from proxyembed.data import resolve_data  # noqa: E402
from proxyembed.data.shard_dataset import ShardDataset, shard_loader  # noqa: E402
from proxyembed.data.torch_dataset import TrainDataset, train_transform  # noqa: E402
from proxyembed.runtime.preprocess import PreprocessSpec  # noqa: E402
from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.distributed import World  # noqa: E402
from proxyembed.training.loaders import train_loader  # noqa: E402


def epoch_seconds(data: str, epoch: int, batch_size: int, image_size: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of this process to draw every batch of one epoch of ``data``'s training split, and the images drawn.

    CPU seconds count this process's own work only (one thread, no workers), so other jobs on the machine
    disturb them far less than the wall clock."""
    cfg = resolve_config({"data": data, "batch_size": batch_size, "image_size": image_size})
    split = resolve_data(data)
    transform = train_transform(PreprocessSpec(crop=image_size, resize=image_size), cfg.augment)
    t0, c0 = time.perf_counter(), time.process_time()
    if split.stream is not None:
        loader = shard_loader(ShardDataset(split.stream, transform, seed=0), batch_size, "random", epoch, workers=0, pin_memory=False)
    else:
        loader = train_loader(TrainDataset(split.train, transform), cfg, World(), epoch, pin_memory=False)
    n = sum(len(y) for _, y in loader)
    return time.perf_counter() - t0, time.process_time() - c0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=40)
    ap.add_argument("--caltech-root", type=Path, default=CALTECH)
    args = ap.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    images: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        forms = build_forms(args.caltech_root, Path(tmp), args.per_class, args.shard_size)
        for r in range(args.repeats):
            for form, data in forms.items():
                seconds, cpu_s, images[form] = epoch_seconds(data, r + 1, args.batch_size, args.image_size)
                times.setdefault(form, []).append(seconds)
                cpu.setdefault(form, []).append(cpu_s)
                print(f"{form:7s} repeat {r}: {seconds:.2f} s ({cpu_s:.2f} s CPU) for {images[form]} images", flush=True)
    info = machine()
    command = "python benchmarks/shard_loading.py " + " ".join(sys.argv[1:])
    base, cpu_base = statistics.median(times["folder"]), statistics.median(cpu["folder"])
    lines = [f"# One epoch of data loading (no model): Caltech-101, {args.per_class} images per class, {args.image_size} px, batch {args.batch_size}",
             "", f"Command: `{command}`", "",
             f"Machine: {machine_line(info)}. One thread, no workers; the machine was shared with other jobs, so the forms ran in turns, "
             f"{args.repeats} times each; medians.", "",
             "| form | images per epoch | wall s per epoch (median) | min | max | vs folder | CPU s (median) | CPU vs folder |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for form, ts in times.items():
        mid, cpu_mid = statistics.median(ts), statistics.median(cpu[form])
        lines.append(f"| {form} | {images[form]} | {mid:.2f} | {min(ts):.2f} | {max(ts):.2f} | {mid / base:.3f} | "
                     f"{cpu_mid:.2f} | {cpu_mid / cpu_base:.3f} |")
    payload = {"command": command, "machine": info, "seconds": times, "cpu_seconds": cpu, "images": images}
    write_results("shard_loading", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
