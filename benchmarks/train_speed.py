"""Training speed: proxyembed's trainer next to a plain torch loop on preloaded tensors, same model and batch.

Usage: ``python benchmarks/train_speed.py [--data FOLDER|synthetic] [--classes 20 --per-class 16]
[--backbone resnet18] [--batch 32] [--size 112] [--workers 0,2] [--cache off,auto] [--epochs 3] [--device auto]
[--threads 2]``

For each device (the CPU; CUDA too when present, with AMP and channels-last), each ``--cache`` mode and each
DataLoader worker count, the real :class:`~proxyembed.training.trainer.Trainer` sets up (building its image
caches), then trains ``--epochs`` timed epochs; its DataLoader is wrapped so the time spent waiting for the
next batch is measured per epoch apart from the compute. One more epoch's DataLoader is drained with no
model: the img/s of the input pipeline alone, which says whether the pipeline or the model is the limit on
a faster device. Two evaluations are timed (the first of a run and a later one). The plain loop then trains
the same network, loss, optimizer, gradient clipping and batch on tensors that were decoded and augmented
beforehand, right after each trainer row (the same machine load), so ``epoch / preloaded`` isolates what the
input pipeline and the trainer's bookkeeping cost. Decode + augmentation is also timed alone, per image, in
this process. ``--classes / --per-class`` take a subset of a class-folder dataset (symlinks in a temp
folder). Results go to ``benchmarks/results/train_speed.{json,md}`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under python -P (benchmarks/gpu_check.sh)

from _common import RESULTS, machine, machine_line, write_results  # noqa: E402

from proxyembed.data.torch_dataset import normalize_batch  # noqa: E402
from proxyembed.losses import build_loss  # noqa: E402
from proxyembed.models import ModelConfig, build_embedder  # noqa: E402
from proxyembed.runtime.images import image_files  # noqa: E402
from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.optim import build_optimizer  # noqa: E402
from proxyembed.training.trainer import Trainer  # noqa: E402


class TimedLoader:
    """A DataLoader whose iteration records the seconds spent waiting for batches (worker start-up included)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.wait_s = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        t0 = time.perf_counter()
        it = iter(self.loader)
        self.wait_s += time.perf_counter() - t0
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.wait_s += time.perf_counter() - t0
            yield batch


def subset(root: Path, classes: int, per_class: int, dst: Path) -> Path:
    """The first ``classes`` class folders of ``root`` with ``per_class`` images each, as symlinks under ``dst``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and len(image_files(p)) >= per_class)[:classes]
    for folder in folders:
        (dst / folder.name).mkdir(parents=True)
        for rel in image_files(folder)[:per_class]:
            img = folder / rel
            (dst / folder.name / img.name).symlink_to(img.resolve())
    return dst


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_images_per_s(trainer: Trainer, epoch: int) -> float:
    """Images/s of the input pipeline alone: one epoch's DataLoader drained with no model (read, augment, collate)."""
    loader = trainer._loader(epoch)
    n, t0 = 0, time.perf_counter()
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def trainer_run(cfg_dict: dict[str, Any], out: Path, epochs: int) -> tuple[Trainer, dict[str, Any]]:
    """Set-up (image caches built here), ``epochs`` timed epochs (waiting on data vs compute), the input pipeline
    alone and a timed evaluation, with the real trainer."""
    trainer = Trainer(resolve_config(cfg_dict), out)
    t0 = time.perf_counter()
    trainer._setup()
    setup_s = time.perf_counter() - t0
    timed: list[TimedLoader] = []
    make_loader = trainer._loader
    trainer._loader = lambda epoch: timed.append(TimedLoader(make_loader(epoch))) or timed[-1]  # type: ignore[method-assign]
    per_epoch = []
    for epoch in range(1, epochs + 1):
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer._train_epoch(epoch)
        sync(trainer.device)
        epoch_s = time.perf_counter() - t0
        images = len(timed[-1]) * trainer.cfg.batch_size
        per_epoch.append({"epoch": epoch, "epoch_s": epoch_s, "train_images_per_s": images / epoch_s, "data_wait_s": timed[-1].wait_s,
                          "data_wait_share": timed[-1].wait_s / epoch_s})
    trainer._loader = make_loader  # type: ignore[method-assign]
    pipeline = pipeline_images_per_s(trainer, epochs + 1)
    evals = []
    for epoch in (1, 2):  # the first evaluation of a run, then one with whatever it kept
        t0 = time.perf_counter()
        trainer._evaluate(epoch)
        sync(trainer.device)
        evals.append(time.perf_counter() - t0)
    eval_images = len(trainer.data.eval) + len(trainer.data.gallery or [])
    later = per_epoch[1:] or per_epoch
    return trainer, {
        "setup_s": setup_s,
        "cache": trainer.caches.info,
        "loader": trainer.loader_settings,
        "epochs": per_epoch,
        "epoch_s": sum(e["epoch_s"] for e in later) / len(later),  # from the second epoch on
        "train_images_per_s": sum(e["train_images_per_s"] for e in later) / len(later),
        "data_wait_share": sum(e["data_wait_share"] for e in later) / len(later),
        "steps": len(timed[-1]),
        "pipeline_images_per_s": pipeline,
        "eval_s": evals,
        "eval_images_per_s": eval_images / evals[-1],
        "eval_images": eval_images,
    }


def pipeline_row(cfg_dict: dict[str, Any], out: Path) -> dict[str, Any]:
    """Set-up and the input pipeline alone (no training step): what one process can feed a faster device."""
    trainer = Trainer(resolve_config(cfg_dict), out)
    t0 = time.perf_counter()
    trainer._setup()
    setup_s = time.perf_counter() - t0
    return {"device": cfg_dict["device"], "cache": cfg_dict["cache"], "workers": cfg_dict["workers"], "setup_s": setup_s,
            "pipeline_images_per_s": pipeline_images_per_s(trainer, 1), "decode_augment_ms_per_image": decode_augment_ms(trainer),
            "loader": trainer.loader_settings, "cache_info": trainer.caches.info}


def plain_loop(trainer: Trainer, steps: int) -> dict[str, float]:
    """The same network, loss, optimizer and clipping trained on preloaded, already augmented tensors."""
    cfg, device = trainer.cfg, trainer.device
    torch.manual_seed(0)
    model = build_embedder(ModelConfig(cfg.backbone, cfg.embedding_dim, cfg.pool)).to(device).train()
    loss_fn = build_loss(cfg.loss, trainer.dataset.num_classes, cfg.embedding_dim, **cfg.loss_params).to(device)
    optimizer = build_optimizer(cfg, model, loss_fn)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = min(len(trainer.dataset), steps * cfg.batch_size)
    items = [trainer.dataset[i % len(trainer.dataset)] for i in range(n)]
    xs = normalize_batch(torch.stack([x for x, _ in items]).to(device), trainer.spec)
    ys = torch.tensor([y for _, y in items]).to(device)
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    amp = trainer.amp_dtype

    def step(i: int) -> None:
        lo = (i * cfg.batch_size) % (n - cfg.batch_size + 1)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            emb = model(xs[lo : lo + cfg.batch_size])
        loss = loss_fn(emb.float(), ys[lo : lo + cfg.batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        loss.item()

    step(0)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return {"train_images_per_s": steps * cfg.batch_size / (time.perf_counter() - t0), "steps": steps}


def decode_augment_ms(trainer: Trainer, n: int = 64) -> float:
    """Milliseconds per image to decode and augment one training sample in this process (no workers)."""
    n = min(n, len(trainer.dataset))
    t0 = time.perf_counter()
    for i in range(n):
        trainer.dataset[i]
    return 1000 * (time.perf_counter() - t0) / n


def devices(choice: str) -> list[str]:
    if choice != "auto":
        return [choice]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def measure(args: argparse.Namespace, data: str, work: Path) -> list[dict[str, Any]]:
    rows = []
    for device in devices(args.device):
        for cache in args.cache.split(","):
            for workers in [int(w) for w in args.workers.split(",")]:
                cfg = {"data": data, "backbone": args.backbone, "batch_size": args.batch, "image_size": args.size,
                       "resize": args.resize or round(args.size * 8 / 7), "embedding_dim": 128, "device": device,
                       "amp": args.amp, "channels_last": True, "workers": workers, "epochs": args.epochs, "schedule": "none",
                       "cache": cache, "cache_dir": str(work / f"cache-{device}-{cache}-{workers}")}
                if args.pipeline_only:
                    rows.append(pipeline_row(cfg, work / f"run-{device}-{cache}-{workers}"))
                    print(f"  {device} cache={cache} workers={workers}: set-up {rows[-1]['setup_s']:.1f} s, "
                          f"pipeline alone {rows[-1]['pipeline_images_per_s']:.0f} img/s", flush=True)
                    continue
                trainer, row = trainer_run(cfg, work / f"run-{device}-{cache}-{workers}", args.epochs)
                plain = plain_loop(trainer, row["steps"])  # right after, so both see the same machine load
                decode_ms = decode_augment_ms(trainer)
                row.update(device=device, workers=workers, cache=cache,
                           amp=str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "none",
                           plain_images_per_s=plain["train_images_per_s"], ratio_vs_plain=row["train_images_per_s"] / plain["train_images_per_s"],
                           decode_augment_ms_per_image=decode_ms,
                           decode_augment_share_if_serial=decode_ms * row["steps"] * args.batch / 1000 / row["epoch_s"])
                rows.append(row)
                print(f"  {device} cache={cache} workers={workers}: set-up {row['setup_s']:.1f} s; epochs "
                      + ", ".join(f"{e['epoch_s']:.1f} s ({100 * e['data_wait_share']:.1f}% waiting)" for e in row["epochs"])
                      + f"; train {row['train_images_per_s']:.1f} img/s (plain loop {row['plain_images_per_s']:.1f}, "
                      f"epoch / preloaded {1 / row['ratio_vs_plain']:.2f}); pipeline alone {row['pipeline_images_per_s']:.0f} img/s; "
                      f"evaluations {', '.join(f'{t:.1f}' for t in row['eval_s'])} s", flush=True)
    return rows


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Training speed",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {machine_line(meta['machine'])}; torch {meta['torch']} with {meta['threads']} thread(s); {meta['gpu'] or 'no CUDA GPU'}.",
        f"Data: {meta['data']}. Model: {meta['backbone']} (128-d, Proxy-Anchor), batch {meta['batch']}, "
        f"{meta['size']} px training crop. Set-up (image caches built there), {meta['epochs']} timed epochs, the input pipeline "
        "alone for one more epoch, then two timed evaluations.",
        "",
        "| device | AMP | cache | workers | set-up s | epoch s (each) | waiting on data (each) | train img/s | preloaded img/s | "
        "epoch / preloaded | pipeline alone img/s | evaluations s | decode+augment ms/img |",
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    if meta.get("pipeline_only"):
        lines[-4] = lines[-4].split(" Set-up")[0] + " Set-up (image caches built there), then one epoch of the input pipeline alone."
        lines[-2:] = ["| cache | workers | set-up s (caches built) | pipeline alone img/s | decode+augment ms/img |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['cache']} | {r['workers']} | {r['setup_s']:.1f} | {r['pipeline_images_per_s']:.0f} | "
                  f"{r['decode_augment_ms_per_image']:.2f} |" for r in rows]
        rows = []
    for r in rows:
        epochs = ", ".join(f"{e['epoch_s']:.1f}" for e in r["epochs"])
        waits = ", ".join(f"{100 * e['data_wait_share']:.1f}%" for e in r["epochs"])
        lines.append(
            f"| {r['device']} | {r['amp']} | {r['cache']} | {r['workers']} | {r['setup_s']:.1f} | {epochs} | {waits} | "
            f"{r['train_images_per_s']:.1f} | {r['plain_images_per_s']:.1f} | {1 / r['ratio_vs_plain']:.2f} | "
            f"{r['pipeline_images_per_s']:.0f} | {', '.join(f'{t:.1f}' for t in r['eval_s'])} | {r['decode_augment_ms_per_image']:.2f} |"
        )
    lines += [
        "",
        "*Waiting on data* is the share of each epoch spent in the DataLoader's `next()`. *train img/s* and *epoch / "
        "preloaded* are from the second epoch on: the epoch's time over the same forward and backward passes of a plain "
        "loop on preloaded, already augmented tensors (same network, loss, AdamW, gradient clipping and batch), run right "
        "after. *pipeline alone* drains one epoch's DataLoader with no model: what the input side can deliver (with 0 "
        "workers, on one core). *decode+augment ms/img* is one sample read and augmented in this process.",
    ]
    if meta.get("note"):
        lines += ["", meta["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="'synthetic[:opts]' or a folder with one subfolder per class")
    p.add_argument("--classes", type=int, default=None, help="use only this many class folders of --data")
    p.add_argument("--per-class", type=int, default=16, help="images per class with --classes")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--cache", default="off,auto", help="comma-separated --cache modes (auto, ram, disk, off)")
    p.add_argument("--pipeline-only", action="store_true", help="measure set-up and the input pipeline alone, no training")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per row (the first includes worker and allocator warm-up)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="", help="a sentence for the results file (e.g. how contended the machine was)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    meta = {
        "machine": machine(), "torch": torch.__version__, "threads": args.threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backbone": args.backbone, "batch": args.batch, "size": args.size, "note": args.note, "epochs": args.epochs,
        "pipeline_only": args.pipeline_only,
        "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:]),
    }
    print(f"{machine_line(meta['machine'])} | torch {torch.__version__}, {args.threads} thread(s) | {meta['gpu'] or 'no CUDA GPU'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="proxyembed-train-speed-") as tmp:
        work = Path(tmp)
        data = args.data
        if args.classes:
            data = str(subset(Path(args.data), args.classes, args.per_class, work / "data"))
        meta["data"] = (f"{args.data} ({args.classes} classes x {args.per_class} images, half of the classes for training)"
                        if args.classes else args.data)
        rows = measure(args, data, work)
    md = markdown(meta, rows)
    write_results("train_speed", {"meta": meta, "rows": rows}, md, args.out)
    print(md)


if __name__ == "__main__":
    main()
