"""The run dir (docs/architecture.md, "Run dir"): its layout, the checkpoint payload and the history, torch-free.

A run dir holds the resolved ``config.json``, ``metrics.jsonl`` (one JSON record per epoch; epoch 0, the
untrained network, with ``eval_untrained``), ``best.pt`` / ``last.pt`` and ``training_curves.png``. The trainer writes it
(rank 0 only) and :class:`proxyembed.Run`, ``eval``, ``export`` and ``--resume`` read it, all through the
names and readers here, the way ``export/bundle_writer.py`` and ``runtime/retriever.py`` own the bundle and
the gallery. Nothing here imports torch, so a run dir can be inspected where only the runtime is
installed; writing and loading the checkpoint files themselves is :mod:`.checkpoint`'s job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from proxyembed.runtime.errors import BadInput, IntegrityError
from proxyembed.runtime.files import atomic_write_text

CONFIG_NAME, METRICS_NAME, CURVES_NAME = "config.json", "metrics.jsonl", "training_curves.png"
BEST, LAST = "best.pt", "last.pt"
DEFAULT_RUN_DIR = Path("runs/default")
"""Where ``proxyembed train`` and ``proxyembed.train()`` write when no ``--out`` / ``out`` is given."""
Which = Literal["best", "last"]
"""Which checkpoint of a run to read: ``best.pt`` (see :func:`selection_key`) or ``last.pt``."""
VAL_PREFIX = "val/"
"""metrics.jsonl's prefix for the metrics on the validation classes (``--val-fraction``)."""
BOOKKEEPING = ("epoch", "loss", "lr", "images_per_s", "time_s")
"""The keys of a metrics.jsonl record that are not retrieval metrics."""


_OPTIONAL = ("optimizer", "scheduler", "scaler", "training_model", "ema_updates", "whitening")


@dataclass
class CheckpointPayload:
    """What a checkpoint holds: tensors and plain data only, so it loads with ``torch.load(weights_only=True)``.

    The model config, weights, preprocessing spec and the proxies (inside the loss state) let export and
    eval rebuild the network without the run's config file; ``last.pt`` also holds the optimizer,
    scheduler and gradient-scaler states that ``--resume`` needs (``None`` in ``best.pt``).
    """

    model_config: dict[str, Any]
    model: dict[str, Any]
    loss_name: str
    loss: dict[str, Any]
    preprocess: dict[str, Any]
    config: dict[str, Any]
    epoch: int
    metrics: dict[str, float]
    best_value: float
    train_classes: int
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    # With --ema-decay, ``model`` holds the averaged weights (what eval and export use) and a full checkpoint
    # also holds the weights the optimizer steps and the number of averaging updates, for --resume.
    training_model: dict[str, Any] | None = None
    ema_updates: int | None = None
    # With --whiten, the map fitted to ``model`` on the training images at this epoch; ``model`` itself stays
    # unwhitened (resume trains on), and Checkpoint.build_model folds the map into the head.
    whitening: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The payload as the dict a checkpoint file stores (resume and averaging states only when present)."""
        return {k: v for k, v in vars(self).items() if v is not None or k not in _OPTIONAL}


def holds_run(path: Path) -> bool:
    """Whether ``path`` already holds (part of) a run: a checkpoint or a metrics history."""
    return path.exists() and any((path / name).exists() for name in (BEST, LAST, METRICS_NAME))


def find_checkpoint(run_or_file: str | os.PathLike, prefer: str = BEST) -> Path:
    """The checkpoint file for a run dir (``prefer``, else the other one) or the file itself.

    ``prefer`` is a file name, ``best.pt`` or ``last.pt``; anything else is refused rather than read as
    "no preference" (``prefer="last"`` once fell back to best.pt without a word).
    """
    if prefer not in (BEST, LAST):
        raise BadInput(f"prefer='{prefer}' names no checkpoint", hint=f"use '{BEST}' or '{LAST}' (or checkpoint_name('best' / 'last'))")
    p = Path(run_or_file)
    if p.is_file():
        return p
    if not p.exists():
        raise BadInput(f"'{p}' does not exist", hint="give a run dir written by `proxyembed train` or a .pt checkpoint")
    for name in (prefer, LAST if prefer == BEST else BEST):
        if (p / name).is_file():
            return p / name
    raise BadInput(f"run dir '{p}' holds no checkpoint ({BEST} or {LAST})", hint="did training finish its first epoch? re-run `proxyembed train`")


def checkpoint_name(which: Which) -> str:
    """The file name of checkpoint ``which``, refusing anything but "best" or "last"."""
    if which not in get_args(Which):
        raise BadInput(f"which='{which}' is not 'best' or 'last'")
    return BEST if which == "best" else LAST


PIPELINE_KEY = "input_pipeline"
"""config.json's record of how this run read its images (DataLoader settings, image caches): a report, not a setting."""


def write_config(run_dir: Path, config: dict[str, Any], pipeline: dict[str, Any] | None = None) -> None:
    """Write the resolved training config to ``config.json`` atomically, with the input pipeline it ran with."""
    payload = {**config, PIPELINE_KEY: pipeline} if pipeline is not None else config
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(payload, indent=2) + "\n")


def config_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config.json object (what :meth:`TrainConfig.from_dict` takes): without the pipeline report."""
    return {k: v for k, v in raw.items() if k != PIPELINE_KEY}


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` with ``history`` atomically (one JSON record a line)."""
    atomic_write_text(run_dir / METRICS_NAME, "".join(json.dumps(h) + "\n" for h in history))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` records, one per epoch; none when the run has not recorded any yet.

    A line that is not JSON is an :class:`IntegrityError` naming the file and line.
    """
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise IntegrityError(f"{path}:{n} is not JSON ({exc.msg})", hint="the run was cut off mid-write; re-run with --resume") from exc
    return records


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """The retrieval metrics of a metrics.jsonl record, without its bookkeeping (epoch, loss, lr, speed, time)."""
    return {k: v for k, v in record.items() if k not in BOOKKEEPING}


def selection_key(val_fraction: float, select_metric: str) -> str | None:
    """The metrics.jsonl key whose best epoch ``best.pt`` holds: ``select_metric`` on the validation classes when the
    run holds some of its training classes out (``val_fraction`` > 0); otherwise None, and ``best.pt`` is the last
    evaluated epoch. The evaluation classes never choose: a checkpoint picked on them makes their numbers optimistic,
    and the default (no validation classes) trains on every class, since a constant learning rate over a short run
    keeps improving to its end (docs/defaults.md, "Choosing best.pt")."""
    return VAL_PREFIX + select_metric if val_fraction > 0 else None


def chosen_record(history: list[dict[str, Any]], key: str | None) -> dict[str, Any] | None:
    """The metrics.jsonl record of the epoch ``best.pt`` holds (see :func:`selection_key`): among the trained,
    evaluated epochs, the one with the highest ``key`` (of tied ones the latest, which trained longest), or the last
    one when ``key`` is None; None before any."""
    evaluated = [h for h in history if h.get("epoch", 0) > 0 and (key in h if key else metrics_of(h))]
    if not evaluated:
        return None
    return max(reversed(evaluated), key=lambda h: h[key]) if key else evaluated[-1]
