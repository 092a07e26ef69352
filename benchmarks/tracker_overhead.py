"""What ``--log`` adds to an epoch: the time spent inside the tracker calls the trainer makes, measured directly.

A whole training epoch on this shared machine varies by tens of percent from one run to the next, far more than
the trackers cost, so comparing epoch times cannot resolve a 2% effect. This times the calls themselves: per epoch
the trainer makes one ``log_step`` per step and one ``log_epoch`` (the metrics.jsonl record, stage times and the
curves PNG, which MLflow uploads). It replays ``--steps`` steps and one epoch end ``--epochs`` times into
TensorBoard and into an MLflow server (``--mlflow-uri``), with a real run's curves PNG, and reports the seconds
per epoch; benchmarks/results/data_formats.md has the epoch they are a share of.

    python benchmarks/tracker_overhead.py --mlflow-uri http://127.0.0.1:5000 --steps 15 --epochs 10
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

from _common import RESULTS, machine, machine_line, write_results  # noqa: E402

from proxyembed.tracking import tracking  # noqa: E402
from proxyembed.training.plots import plot_curves  # noqa: E402

RECORD = {"loss": 6.1, "lr": 1e-3, "images_per_s": 40.0, "recall@1": 0.21, "recall@2": 0.3, "recall@4": 0.42, "recall@8": 0.55,
          "map@r": 0.07, "r_precision": 0.12, "nmi": 0.4, "time_s": 30.0}


def replay(names: list[str], run_dir: Path, steps: int, epochs: int, mlflow_uri: str | None) -> list[float]:
    """Seconds spent in the tracker calls of each replayed epoch."""
    history = [{"epoch": 0, **RECORD, "loss": None}]
    per_epoch = []
    with tracking(names, warn=print, mlflow_uri=mlflow_uri) as session:
        session.start(run_dir, {"epochs": epochs, "data": "replay"})
        for epoch in range(1, epochs + 1):
            history.append({"epoch": epoch, **RECORD})
            plot_curves(history, run_dir / "training_curves.png", title="replay")  # the trainer draws it either way
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                session.log_step((epoch - 1) * steps + step, 6.0 - 0.01 * step, {"backbone": 1e-3, "head": 1e-3, "proxies": 0.1})
            session.log_epoch(history[-1], {"train_s": 30.0, "eval_s": 10.0}, run_dir / "training_curves.png")
            per_epoch.append(time.perf_counter() - t0)
    return per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15, help="steps per epoch (Caltech-101 in data_formats.py: 1,000 images / batch 64)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--mlflow-uri", default=None)
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for names in [["tensorboard"]] + ([["mlflow"]] if args.mlflow_uri else []):
            run_dir = Path(tmp) / "-".join(names)
            run_dir.mkdir()
            results["+".join(names)] = replay(names, run_dir, args.steps, args.epochs, args.mlflow_uri)
    info = machine()
    command = "python benchmarks/tracker_overhead.py " + " ".join(sys.argv[1:])
    measured = RESULTS / "data_formats.json"  # the epochs these calls are a share of
    epochs_s = [r["train_s_per_epoch"] for r in json.loads(measured.read_text())["runs"] if not r["log"]] if measured.is_file() else []
    fast, slow = (min(epochs_s), max(epochs_s)) if epochs_s else (None, None)
    shares = f" | share of a {fast:.1f} s epoch | share of a {slow:.1f} s epoch" if epochs_s else ""
    lines = [f"# Time inside the tracker calls per epoch ({args.steps} steps + one epoch end, {args.epochs} epochs)", "",
             f"Command: `{command}`", "", f"Machine: {machine_line(info)}; shared with other jobs. MLflow: a local `mlflow server` "
             "(sqlite store) on 127.0.0.1. TensorBoard's writer writes the file from its own thread: the calls only queue events.", "",
             f"| --log | s per epoch (median) | max{shares} |", "|---|---:|---:|" + ("---:|---:|" if epochs_s else "")]
    for name, secs in results.items():
        mid = statistics.median(secs)
        share = f" | {100 * mid / fast:.2f}% | {100 * mid / slow:.2f}%" if fast and slow else ""
        lines.append(f"| {name} | {mid:.3f} | {max(secs):.3f}{share} |")
    if epochs_s:
        lines += ["", f"{fast:.1f} s and {slow:.1f} s: the fastest and slowest training phase of an untracked epoch in data_formats.json."]
    write_results("tracker_overhead", {"command": command, "machine": info, "seconds_per_epoch": results}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
