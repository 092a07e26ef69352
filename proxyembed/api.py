"""The Python API's verbs that need torch: :func:`train` and :func:`evaluate` (``proxyembed.train(...)``).

Each takes the same typed settings as its CLI command, not a second copy: ``train`` resolves
:class:`~proxyembed.training.config.TrainConfig` (defaults < recipe < your keywords) exactly as
``proxyembed train`` does. Each checks its extras first, so a runtime-only install gets a
:class:`~proxyembed.runtime.errors.MissingDependency` naming what to install. Exporting is
:mod:`proxyembed.export.api` (the export stage's own verb, so nothing here imports that stage).
``proxyembed train`` and ``proxyembed eval`` are :func:`run_training` and :func:`evaluate` with
options parsed and results printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyembed.extras import require_extras
from proxyembed.runtime.errors import BadInput
from proxyembed.tracking import TrackerName
from proxyembed.training.config import Device, TrainConfig, resolve_config
from proxyembed.training.run_dir import DEFAULT_RUN_DIR, Which, checkpoint_name

if TYPE_CHECKING:
    from proxyembed.run import Run
    from proxyembed.training.reporting import TrainingReporter
    from proxyembed.training.trainer import TrainResult


def train(
    config: TrainConfig | str | None = None,
    *,
    out: str | Path = DEFAULT_RUN_DIR,
    resume: bool = False,
    progress: bool = False,
    log: Sequence[TrackerName] = (),
    mlflow_uri: str | None = None,
    **overrides: Any,
) -> Run:
    """Train a model and return its :class:`~proxyembed.run.Run`.

    ``config`` is a :class:`TrainConfig`, a recipe name or JSON path (``"cub200"``), or None for the
    defaults; ``overrides`` are TrainConfig fields (``epochs=2, loss="proxy_nca"``) and win over both.
    ``progress=True`` shows the CLI's progress bar and per-epoch lines; ``log`` names experiment trackers
    to mirror the run into (as ``--log``), ``mlflow_uri`` MLflow's tracking server.
    """
    require_extras("proxyembed.train", "train")
    from proxyembed.run import Run
    from proxyembed.training.reporting import TrainingReporter

    if isinstance(config, TrainConfig):
        cfg = resolve_config({**config.to_dict(), **overrides})
    elif config is None or isinstance(config, str):
        cfg = resolve_config(overrides, config)
    else:
        raise BadInput(f"config must be a TrainConfig, a recipe name or a JSON path, got {type(config).__name__}")
    if progress:
        from rich.console import Console

        from proxyembed.runtime.progress import RichReporter

        with RichReporter(Console(stderr=True)) as shown:
            result = run_training(cfg, Path(out), resume=resume, reporter=TrainingReporter(shown), log=log, mlflow_uri=mlflow_uri)
    else:
        result = run_training(cfg, Path(out), resume=resume, reporter=TrainingReporter(), log=log, mlflow_uri=mlflow_uri)
    return Run(result.run_dir)


def run_training(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    reporter: TrainingReporter | None = None,
    log: Sequence[TrackerName] = (),
    mlflow_uri: str | None = None,
) -> TrainResult:
    """Train with a resolved config, showing progress through ``reporter``; return the metrics summary.

    What :func:`train` and ``proxyembed train`` share. It returns the
    :class:`~proxyembed.training.trainer.TrainResult` rather than a :class:`Run`, so every ``torchrun``
    process gets it without reading the run dir, which only rank 0 writes. The trackers of ``log`` are
    connected first (missing or unreachable: :class:`BadInput` before any work) on rank 0 only.
    """
    require_extras("proxyembed.train", "train")
    from proxyembed.tracking import tracking
    from proxyembed.training.distributed import is_main_process
    from proxyembed.training.reporting import TrainingReporter
    from proxyembed.training.trainer import train as train_run

    shown = reporter or TrainingReporter()
    names = ([log] if isinstance(log, str) else list(log)) if is_main_process() else []
    with tracking(names, warn=lambda msg: shown.log(msg, kind="warning"), mlflow_uri=mlflow_uri) as session:
        return train_run(cfg, out, resume=resume, reporter=reporter, tracking=session)


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured: the checkpoint (file and epoch), the data (name and fingerprint) and the metrics."""

    checkpoint: Path
    epoch: int
    data_name: str
    data_fingerprint: dict[str, Any]
    metrics: dict[str, float]


def evaluate(
    run: str | Path | Run,
    *,
    data: str | None = None,
    eval_data: str | None = None,
    which: Which = "best",
    device: Device = "auto",
) -> EvalResult:
    """Evaluate a run's checkpoint (``which``: best.pt or last.pt; or a checkpoint file) on held-out classes.

    ``data`` defaults to the run's own data and split, with its own ``eval_data`` unless ``eval_data`` is
    given; with ``data`` given, only the ``eval_data`` given here applies. Recall@K, MAP@R, R-Precision and
    NMI, in fp32: the numbers training recorded for the checkpoint's epoch, on the same data.
    """
    require_extras("proxyembed.evaluate", "train")
    from proxyembed.run import Run
    from proxyembed.training.checkpoint import load_checkpoint
    from proxyembed.training.device import select_device
    from proxyembed.training.inference import checkpoint_data
    from proxyembed.training.model_eval import evaluate_model

    ckpt = load_checkpoint(run.path if isinstance(run, Run) else Path(run), prefer=checkpoint_name(which))
    split = checkpoint_data(ckpt, data, eval_data)
    dev = select_device(device)
    metrics = evaluate_model(ckpt.build_model().to(dev), split, ckpt.preprocess, device=dev)
    return EvalResult(ckpt.path, ckpt.epoch, split.name, split.fingerprint(), metrics)
