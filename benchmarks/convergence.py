"""How fast does each loss converge? Triplet (semi-hard) vs Proxy-NCA (static, dynamic) vs ProxyNCA++ vs
Proxy-Anchor vs NIR, with the same backbone, batch, epochs and data, over several seeds.

The Proxy-NCA paper (Movshovitz-Attias 2017) claims proxy losses reach the triplet loss's final Recall@1
about 3x faster; this measures it. Per loss, seed and epoch: Recall@1 and MAP@R on the unseen classes,
the mean training loss, training seconds. The speed-up of a loss is, per seed, the epochs (and training
seconds) triplet needs to first reach its own final Recall@1 divided by those the loss needs to reach
the same value; mean +- std over the seeds where the loss got there. Results:
benchmarks/results/convergence.{md,json,png}.

Every run uses the balanced sampler (P classes x K=4 images: the triplet loss needs positives in every
batch) and the same optimizer: AdamW, lr 1e-3, proxies x100, constant. ProxyNCA++ keeps its loss (scale 3,
the positive in the denominator) but not its official optimizer (Adam with eps 1.0, lr 4e-3, proxies at
x1e5, made for fine-tuning an ImageNet backbone): from scratch that optimizer barely moves the backbone
(synthetic, seed 0: Recall@1 0.043 -> 0.045 in 10 epochs, where AdamW's Proxy-NCA reached 0.50).

Runs train ``--jobs`` at a time (default 2), each with cores / jobs torch threads: on 2 cores two
one-thread runs finish sooner than one two-thread run after another, and keep doing so on a busy
machine, where torch's two threads stall on each other. Every run's seconds are then one thread's.

    python benchmarks/convergence.py                    # synthetic + caltech101, 3 seeds
    python benchmarks/convergence.py --smoke            # a few minutes: 1 seed, 2 epochs, tiny data
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import RESULTS, machine, machine_line, write_results  # noqa: E402

from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.reporting import TrainingReporter  # noqa: E402
from proxyembed.training.trainer import train  # noqa: E402

CALTECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "caltech101"
LOSSES: dict[str, dict[str, Any]] = {
    "triplet": {"loss": "triplet"},
    "proxy_nca": {"loss": "proxy_nca"},
    "proxy_nca dynamic": {"loss": "proxy_nca"},  # loss_params added per dataset
    "proxy_nca++": {"loss": "proxy_nca++", "optimizer": "adamw", "lr": 1e-3, "proxy_lr_mult": 100.0, "adam_eps": 1e-8},
    "proxy_anchor": {"loss": "proxy_anchor"},
    "nir": {"loss": "nir"},
}


class _PhaseClock(TrainingReporter):
    """Collects the seconds each epoch spends in its training phase (evaluation excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_s: dict[int, float] = {}
        self._started: tuple[int, float] | None = None

    def epoch_start(self, epoch: int, steps: int, phase: str) -> None:
        now = time.perf_counter()
        if phase == "train":
            self._started = (epoch, now)
        elif self._started is not None and phase == "eval":
            self.train_s[self._started[0]] = now - self._started[1]
            self._started = None


def caltech_folders(root: Path, out: Path, per_class: int) -> tuple[str, str]:
    """Train/eval folders of symlinks following the dataset's suggested class split, capped per class.

    The cap (the first ``per_class`` images of each class by name) keeps the budget and evens out the
    classes (airplanes has 800 images, most classes about 60).
    """
    for split in ("train", "eval"):
        for name in (root / f"{split}_classes.txt").read_text().split():
            target = out / split / name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted((root / "images" / name).glob("*.jpg"))[:per_class]:
                (target / image.name).symlink_to(image)
    return str(out / "train"), str(out / "eval")


def run_one(label: str, data: dict[str, Any], common: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one loss on one dataset with one seed; its per-epoch history."""
    settings = {**common, **data["config"], **LOSSES[label], "seed": seed}
    if label == "proxy_nca dynamic":
        settings["loss_params"] = {"assignment": "dynamic", "num_proxies": 2 * data["train_classes"]}
    cfg = resolve_config({**settings, "eval_untrained": True})  # the table's untrained column
    clock = _PhaseClock()
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", reporter=clock)
        history = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "loss": label,
        "seed": seed,
        "settings": {k: v for k, v in cfg.to_dict().items() if k in ("loss", "loss_params", "lr", "proxy_lr_mult", "optimizer", "adam_eps")},
        "epochs": [
            {"epoch": h["epoch"], "recall@1": h["recall@1"], "map@r": h["map@r"], "loss": h["loss"], "train_s": clock.train_s.get(h["epoch"], 0.0)}
            for h in history
        ],
    }


def _worker_threads(threads: int) -> None:
    """Runs in each worker process before its first run: its share of the cores."""
    torch.set_num_threads(threads)


def _first_reaching(run: dict[str, Any], target: float) -> tuple[int, float] | None:
    """The first epoch whose Recall@1 is >= ``target`` and the training seconds spent up to it."""
    seconds = 0.0
    for e in run["epochs"]:
        seconds += e["train_s"]
        if e["epoch"] > 0 and e["recall@1"] >= target - 1e-12:
            return e["epoch"], seconds
    return None


def speedups(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per loss: epochs and seconds triplet needs for its final Recall@1, divided by the loss's, per seed."""
    out: dict[str, dict[str, Any]] = {}
    triplet = {r["seed"]: r for r in runs if r["loss"] == "triplet"}
    for label in dict.fromkeys(r["loss"] for r in runs):
        ratios_e, ratios_s, reached = [], [], 0
        for r in (r for r in runs if r["loss"] == label and r["seed"] in triplet):
            base = triplet[r["seed"]]
            target = base["epochs"][-1]["recall@1"]
            mine, theirs = _first_reaching(r, target), _first_reaching(base, target)
            if mine is None or theirs is None:
                continue
            reached += 1
            ratios_e.append(theirs[0] / mine[0])
            ratios_s.append(theirs[1] / mine[1])
        seeds = sum(r["loss"] == label for r in runs)
        out[label] = {"reached": reached, "seeds": seeds, "epochs": _mean_std(ratios_e), "seconds": _mean_std(ratios_s)}
    return out


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _fmt(ms: tuple[float, float] | None) -> str:
    return "not reached" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def table(name: str, runs: list[dict[str, Any]]) -> list[str]:
    """Markdown rows for one dataset: final metrics (mean ± std over seeds) and the speed-ups."""
    ups = speedups(runs)
    lines = [
        f"### {name}",
        "",
        "| loss | R@1 untrained | R@1 final | MAP@R final | best R@1 | train s / epoch "
        "| speed-up (epochs) | speed-up (seconds) | seeds reaching triplet's R@1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, up in ups.items():
        mine = [r for r in runs if r["loss"] == label]

        def pct(get: Any, mine: list[dict[str, Any]] = mine) -> str:
            values = [100 * get(r) for r in mine]
            return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"

        per_epoch = statistics.mean(e["train_s"] for r in mine for e in r["epochs"][1:])
        lines.append(
            f"| {label} | {pct(lambda r: r['epochs'][0]['recall@1'])} | {pct(lambda r: r['epochs'][-1]['recall@1'])} "
            f"| {pct(lambda r: r['epochs'][-1]['map@r'])} | {pct(lambda r: max(e['recall@1'] for e in r['epochs'][1:]))} "
            f"| {per_epoch:.1f} | {_fmt(up['epochs'])} | {_fmt(up['seconds'])} | {up['reached']}/{up['seeds']} |"
        )
    return lines + [""]


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Recall@1 against epochs, one line per loss (mean over seeds) and a band from the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
    for ax, (name, runs) in zip(axes[0], results.items(), strict=True):
        for label in dict.fromkeys(r["loss"] for r in runs):
            curves = [[e["recall@1"] for e in r["epochs"]] for r in runs if r["loss"] == label]
            epochs = range(len(curves[0]))
            ax.plot(epochs, [statistics.mean(c) for c in zip(*curves, strict=True)], label=label)
            ax.fill_between(epochs, [min(c) for c in zip(*curves, strict=True)], [max(c) for c in zip(*curves, strict=True)], alpha=0.2)
        ax.set(title=name, xlabel="epoch", ylabel="Recall@1 on unseen classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def datasets(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """The data of each requested name: its training config and its number of training classes."""
    out: dict[str, dict[str, Any]] = {}
    for name in args.data.split(","):
        if name == "synthetic":
            classes = 12 if args.smoke else 50
            per_class = 8 if args.smoke else args.per_class
            spec = f"synthetic:train_classes={classes},eval_classes={classes},per_class={per_class},size=48"
            out[name] = {"config": {"data": spec}, "train_classes": classes}
        elif name == "caltech101":
            train_dir, eval_dir = caltech_folders(args.caltech_root, tmp / "caltech101", 8 if args.smoke else args.per_class)
            out[name] = {"config": {"data": train_dir, "eval_data": eval_dir}, "train_classes": 50}
        else:
            raise SystemExit(f"unknown --data '{name}': choose from synthetic, caltech101")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic,caltech101")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=20, help="images per class, train and eval (Caltech-101: the first N of each)")
    ap.add_argument("--caltech-root", type=Path, default=CALTECH, help="the caltech101 folder (its README describes it)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once, each with cores / jobs torch threads")
    ap.add_argument("--smoke", action="store_true", help="1 seed, 2 epochs, tiny data: checks the script in minutes")
    ap.add_argument("--name", default="convergence", help="results file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.epochs, args.batch_size = "0", 2, 32
    losses = args.losses.split(",")
    if "triplet" not in losses or set(losses) - set(LOSSES):
        raise SystemExit(f"--losses must include triplet (the speed-up's baseline) and name only {list(LOSSES)}")
    args.losses = ",".join(["triplet"] + [x for x in losses if x != "triplet"])  # triplet first: partial seeds stay usable
    common = {
        "backbone": args.backbone, "epochs": args.epochs, "batch_size": args.batch_size, "sampler": "balanced",
        "samples_per_class": 4, "image_size": args.image_size, "resize": round(args.image_size * 8 / 7),
        "embedding_dim": 64, "schedule": "none", "channels_last": False,
        "lr": 1e-3, "crop_scale": [0.5, 1.0],  # the recorded runs' (the defaults until round 16)
    }
    info, t0 = machine(), time.perf_counter()
    order = args.losses.split(",")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        data = datasets(args, Path(tmp))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in data}
        # seed-major, triplet first: a cut-short run keeps whole seeds, each with its speed-up baseline
        units = [(name, seed, label) for seed in (int(s) for s in args.seeds.split(",")) for name in data for label in order]
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn, initializer=_worker_threads, initargs=(threads,)) as pool:
            pending = {pool.submit(run_one, label, data[name], common, seed): (name, seed, label) for name, seed, label in units}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    name, seed, label = pending.pop(future)
                    run = future.result()
                    results[name] = sorted([*results[name], run], key=lambda r: (r["seed"], order.index(r["loss"])))
                    final = run["epochs"][-1]["recall@1"]
                    print(f"{name} {label} seed {seed}: R@1 {final:.4f} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
                report(args, info, common, results, len(units), time.perf_counter() - t0, threads)


def report(args: argparse.Namespace, info: dict[str, Any], common: dict[str, Any], results: dict[str, list[dict[str, Any]]],
           planned: int, total: float, threads: int) -> None:
    """Write the Markdown table, JSON and plot for the runs done so far (rewritten after every seed)."""
    done = sum(len(r) for r in results.values())
    lines = [
        f"# Convergence: {args.backbone} from scratch, {args.image_size} px, batch {args.batch_size} (P x 4), "
        f"{args.epochs} epochs, seeds {args.seeds}",
        "",
        f"Machine: {machine_line(info)}. Wall time {total / 60:.1f} min for {done} of {planned} runs, {args.jobs} at a time "
        f"with {threads} torch thread(s) each" + ("." if done == planned else " (incomplete: the run was cut short)."),
        "",
        "Mean ± std over seeds. Speed-up = (epochs or training seconds triplet needs to first reach its own final "
        "Recall@1) / (those the loss needs to reach it), per seed; 'not reached' when no seed got there.",
        "",
    ]
    for name, runs in results.items():
        lines += table(name, runs)
    md = "\n".join(lines)
    write_results(args.name, {"machine": info, "args": {**vars(args), "caltech_root": str(args.caltech_root)}, "common": common,
                              "total_s": total, "runs_done": done, "runs_planned": planned, "results": results}, md)
    plot(results, RESULTS / f"{args.name}.png")
    print(md, flush=True)

if __name__ == "__main__":
    main()
