"""Compare the losses on the built-in synthetic data: same backbone, data, epochs and seed, one run each.

For each loss: Recall@1/2/4/8, MAP@R and NMI on the unseen classes at the best epoch selected on
held-out *training* classes (``--val-fraction``), the best epoch selected on the test classes (the
optimistic figure many papers report), and wall time. Results go to benchmarks/results/loss_comparison.*.

    python benchmarks/loss_comparison.py [--epochs 6] [--losses proxy_anchor,nir,...] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, machine_line, write_results  # noqa: E402

from proxyembed.training.config import resolve_config  # noqa: E402
from proxyembed.training.trainer import train  # noqa: E402

# The pair-based baseline needs positives in every batch: P classes x K images.
OVERRIDES = {"triplet": {"sampler": "balanced", "samples_per_class": 4}}


def run(loss: str, seed: int, epochs: int, data: str) -> dict:
    cfg = resolve_config({"loss": loss, "seed": seed, "epochs": epochs, "data": data, "val_fraction": 0.2, **OVERRIDES.get(loss, {})})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(x) for x in lines]
    oracle = max(history[1:], key=lambda h: h["recall@1"])
    return {
        "loss": loss,
        "seed": seed,
        "initial_recall@1": result.initial["recall@1"],
        "val_selected": {k: v for k, v in result.best.items() if not k.startswith("val/")},
        "val_selected_epoch": result.best_epoch,
        "test_selected_recall@1": oracle["recall@1"],
        "wall_s": wall,
    }


def _table_row(loss: str, runs: list[dict]) -> str:
    """Mean over seeds of each column, in percent."""
    def pct(get) -> str:
        return f"{100 * statistics.mean(get(r) for r in runs):.1f}"

    val = [pct(lambda r, k=k: r["val_selected"][k]) for k in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")]
    wall = statistics.mean(r["wall_s"] for r in runs)
    return (
        f"| {loss} | {pct(lambda r: r['initial_recall@1'])} | {' | '.join(val)} "
        f"| {pct(lambda r: r['test_selected_recall@1'])} | {wall:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--losses", default="proxy_anchor,proxy_nca,proxy_nca++,nir,triplet")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--data", default="synthetic")
    args = ap.parse_args()
    info = machine()
    rows = [run(loss, int(seed), args.epochs, args.data) for loss in args.losses.split(",") for seed in args.seeds.split(",")]
    lines = [
        f"# Loss comparison on {args.data}, {args.epochs} epochs, resnet18 from scratch, seeds {args.seeds}",
        "",
        f"Machine: {machine_line(info)}",
        "",
        "best.pt chosen on held-out training classes (val 20%); test-selected = best test epoch (optimistic).",
        "",
        "| loss | R@1 untrained | R@1 | R@2 | R@4 | R@8 | MAP@R | NMI | R@1 test-selected | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loss in dict.fromkeys(r["loss"] for r in rows):
        lines.append(_table_row(loss, [r for r in rows if r["loss"] == loss]))
    md = "\n".join(lines) + "\n"
    write_results("loss_comparison", {"machine": info, "args": vars(args), "runs": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
