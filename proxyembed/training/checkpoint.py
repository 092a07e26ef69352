"""Checkpoint files: tensors and plain data only, written atomically.

What a checkpoint holds (:class:`~.run_dir.CheckpointPayload`) and where it sits in a run dir are
:mod:`.run_dir`'s; this module writes and loads the files, and so imports torch. A checkpoint loads
with ``torch.load(weights_only=True)``: nothing is unpickled but tensors, numbers, strings, lists and
dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxyembed.models import Embedder, ModelConfig, build_embedder
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.files import atomic_write, sha256_file
from proxyembed.runtime.preprocess import PreprocessSpec

from .run_dir import BEST, CheckpointPayload, find_checkpoint
from .whitening import Whitening, fold_whitening

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format version) to ``path`` via a temp file and ``os.replace``."""
    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def checkpoint_payload(
    model_config: ModelConfig,
    model: nn.Module,
    loss_name: str,
    loss: nn.Module,
    preprocess: PreprocessSpec,
    config: dict[str, Any],
    *,
    epoch: int,
    metrics: dict[str, float],
    best_value: float,
    train_classes: int,
    whitening: Whitening | None,
) -> CheckpointPayload:
    """What best.pt holds, read from the live modules: ``model`` is the network evaluation saw (the weight
    average when there is one), ``whitening`` the map fitted to it at this ``epoch`` (None: off, or this epoch
    was not evaluated)."""
    return CheckpointPayload(
        model_config=model_config.to_dict(),
        model=model.state_dict(),
        loss_name=loss_name,
        loss=loss.state_dict(),
        preprocess=preprocess.to_dict(),
        config=config,
        epoch=epoch,
        metrics=metrics,
        best_value=best_value,
        train_classes=train_classes,
        whitening=whitening.to_dict() if whitening is not None else None,
    )


def add_resume_states(
    payload: CheckpointPayload,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    *,
    training_model: nn.Module | None = None,
    ema_updates: int | None = None,
) -> CheckpointPayload:
    """``payload`` (changed in place) with what ``--resume`` needs besides it, as last.pt holds: the optimizer,
    schedule and gradient-scaler states and, with weight averaging, the weights the optimizer steps and the
    number of averaging updates."""
    payload.optimizer, payload.scheduler, payload.scaler = optimizer.state_dict(), scheduler.state_dict(), scaler.state_dict()
    if training_model is not None:
        payload.training_model, payload.ema_updates = training_model.state_dict(), ema_updates
    return payload


@dataclass
class Checkpoint:
    """A loaded checkpoint and the facts consumers need from it."""

    path: Path
    data: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.data["model_config"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.data["preprocess"], where=f"{self.path}: preprocess")

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def metrics(self) -> dict[str, float]:
        return self.data.get("metrics", {})

    @property
    def epoch(self) -> int:
        return int(self.data["epoch"])

    def sha256(self) -> str:
        """Hex digest of the checkpoint file (recorded in bundles to trace them to their source)."""
        return sha256_file(self.path)

    def build_model(self) -> Embedder:
        """The embedding network with this checkpoint's weights, in eval mode, on the CPU; a run trained with
        ``--whiten`` has its map folded into the head, so this is the network training evaluated."""
        model = build_embedder(self.model_config)
        model.load_state_dict(self.data["model"])
        if self.data.get("whitening") is not None:
            w = Whitening.from_dict(self.data["whitening"], model, str(self.path))
            fold_whitening(model, w)
        return model.eval()


def load_checkpoint(run_or_file: str | os.PathLike, prefer: str = BEST) -> Checkpoint:
    """Load and validate a checkpoint (run dir or file), refusing unknown formats and pickled code."""
    path = find_checkpoint(run_or_file, prefer)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, or a pickle with code in it
        raise BadInput(
            f"cannot load checkpoint '{path}': {exc.__class__.__name__}",
            hint="is it a proxyembed checkpoint? re-run training if it was cut short",
        ) from exc
    if not isinstance(data, dict) or "format_version" not in data:
        raise BadInput(f"'{path}' is not a proxyembed checkpoint (no format_version)")
    if data["format_version"] != CHECKPOINT_FORMAT:
        raise BadInput(
            f"checkpoint '{path}' has format_version {data['format_version']}; this proxyembed reads {CHECKPOINT_FORMAT}",
            hint="use the proxyembed version that trained it, or retrain",
        )
    missing = [k for k in ("model_config", "model", "preprocess", "config", "epoch") if k not in data]
    if missing:
        raise BadInput(f"checkpoint '{path}' lacks {missing}", hint="it was not written by `proxyembed train`")
    return Checkpoint(path=path, data=data)
