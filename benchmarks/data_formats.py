"""Caltech-101 from a folder, a CSV list and WebDataset shards: the same accuracy? Shard epoch time, and what --log costs.

One data set, three forms: a folder of class folders (the first ``--per-class`` images of each of the 100
classes, as symlinks), a CSV of the same files (path, label; no split column, so classes split as the folder's
do: the README's suggested split, first 50 classes train, last 50 evaluated) and shards written from the
folder by ``proxyembed data --to-shards``. Each form trains the same short run per seed; the folder run is
repeated with ``--log tensorboard`` and, given ``--mlflow-uri``, ``--log mlflow``, to time the trackers.
Training seconds per epoch exclude evaluation (a Reporter clock), one torch thread.

    python benchmarks/data_formats.py --seeds 0,1,2 --epochs 4 --mlflow-uri http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, machine_line, write_results  # noqa: E402
from convergence import CALTECH, _PhaseClock  # noqa: E402

from proxyembed.api import run_training  # noqa: E402
from proxyembed.data import resolve_data  # noqa: E402
from proxyembed.data.shards import write_shards  # noqa: E402
from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.run_dir import read_history  # noqa: E402


def build_forms(root: Path, tmp: Path, per_class: int, shard_size: int) -> dict[str, str]:
    """The ``--data`` value of each form of the same images."""
    folder = tmp / "folder"
    rows = []
    for name in sorted(p.name for p in (root / "images").iterdir() if p.is_dir()):
        (folder / name).mkdir(parents=True)
        for image in sorted((root / "images" / name).glob("*.jpg"))[:per_class]:
            (folder / name / image.name).symlink_to(image)
            rows.append({"path": f"{name}/{image.name}", "label": name})
    with open(folder / "list.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    manifest = write_shards(resolve_data(str(folder)), tmp / "shards", shard_size)
    last = len(manifest["splits"]["train"]["shards"]) - 1
    return {"folder": str(folder), "csv": str(folder / "list.csv"), "shards": f"{tmp / 'shards'}/train-{{000000..{last:06d}}}.tar"}


def run(data: str, common: dict[str, Any], seed: int, log: list[str], mlflow_uri: str | None) -> dict[str, Any]:
    cfg = resolve_config({**common, "data": data, "seed": seed, "eval_untrained": True})  # the untrained column
    clock = _PhaseClock()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_training(cfg, Path(tmp) / "run", reporter=clock, log=log, mlflow_uri=mlflow_uri)
        wall = time.perf_counter() - t0
        history = read_history(Path(tmp) / "run")
    final = history[-1]
    return {"recall@1": final["recall@1"], "map@r": final["map@r"], "untrained_recall@1": history[0]["recall@1"],
            "train_s_per_epoch": statistics.mean(clock.train_s.values()), "epoch_train_s": list(clock.train_s.values()), "wall_s": wall}


def _ms(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{100 * values[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=40)
    ap.add_argument("--caltech-root", type=Path, default=CALTECH)
    ap.add_argument("--mlflow-uri", default=None, help="an MLflow server for the --log mlflow timing (left out without it)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"backbone": "resnet18", "pretrained": "none", "epochs": args.epochs, "batch_size": 64, "image_size": args.image_size,
              "embedding_dim": 64, "device": "cpu", "channels_last": False}
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        forms = build_forms(args.caltech_root, Path(tmp), args.per_class, args.shard_size)
        trackers = [["tensorboard"]] + ([["mlflow"]] if args.mlflow_uri else [])
        plan = [(form, seeds[0], []) for form in forms] + [("folder", seeds[0], log) for log in trackers]
        plan += [(form, seed, []) for seed in seeds[1:] for form in forms]
        for form, seed, log in plan:  # the results file is rewritten after every run, so a cut-short benchmark keeps what it measured
            result = run(forms[form], common, seed, log, args.mlflow_uri)
            runs.append({"form": form, "seed": seed, "log": log, **result})
            print(f"{form:7s} seed {seed} log {log or '-'}: R@1 {result['recall@1']:.4f}, {result['train_s_per_epoch']:.2f} s/epoch", flush=True)
            report(args, runs, seeds, common, started)


def report(args: argparse.Namespace, runs: list[dict[str, Any]], seeds: list[int], common: dict[str, Any], started: float) -> None:
    """Write benchmarks/results/data_formats.{json,md} from the runs so far."""
    info = machine()
    command = "python benchmarks/data_formats.py " + " ".join(sys.argv[1:])
    plain = [r for r in runs if not r["log"]]
    done = sorted({r["seed"] for r in plain if sum(p["seed"] == r["seed"] for p in plain) == 3})
    if not done:  # no seed has all three forms yet
        return
    lines = [
        f"# Data formats and trackers: Caltech-101, {args.per_class} images per class, resnet18 from scratch, {args.image_size} px, "
        f"{args.epochs} epochs, seeds {', '.join(map(str, done))}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line(info)}. One torch thread; the machine was shared with other jobs while this ran, so seconds are noisy. "
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min.",
        "",
        "| form | R@1 untrained | R@1 final | MAP@R final | train s / epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for form in ("folder", "csv", "shards"):
        sel = [r for r in plain if r["form"] == form and r["seed"] in done]
        lines.append(f"| {form} | {_ms([r['untrained_recall@1'] for r in sel])} | {_ms([r['recall@1'] for r in sel])} | "
                     f"{_ms([r['map@r'] for r in sel])} | {statistics.mean(r['train_s_per_epoch'] for r in sel):.2f} |")
    folder_s = statistics.mean(r["train_s_per_epoch"] for r in plain if r["form"] == "folder" and r["seed"] in done)
    shard_s = statistics.mean(r["train_s_per_epoch"] for r in plain if r["form"] == "shards" and r["seed"] in done)
    lines += ["", f"Shards / folder training time per epoch (whole steps, network included): {shard_s / folder_s:.3f}; "
              "benchmarks/results/shard_loading.md times the loading alone.", "",
              f"Trackers (folder, seed {seeds[0]}; training seconds per epoch against the untracked run of the same seed):", "",
              "| --log | train s / epoch | vs none |", "|---|---:|---:|"]
    base = next((r for r in plain if r["form"] == "folder" and r["seed"] == seeds[0]), None)
    for r in [base] + [r for r in runs if r["log"]] if base else []:
        lines.append(f"| {', '.join(r['log']) or 'none'} | {r['train_s_per_epoch']:.2f} | {r['train_s_per_epoch'] / base['train_s_per_epoch']:.3f} |")
    write_results("data_formats", {"command": command, "machine": info, "settings": common, "runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
