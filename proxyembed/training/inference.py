"""What the stages after training take from a trained network: a PyTorch model as an encoder, and its data.

Training-time evaluation, export validation (the PyTorch reference every artifact is judged against),
``Run.embed`` and ``proxyembed embed RUN`` all run a PyTorch model the same way, through
:func:`torch_encode_batch`: a preprocessed batch in, embeddings out, the
:data:`~proxyembed.runtime.evaluation.EncodeBatch` contract that served artifacts and the runtime's
``Encoder`` keep too. :func:`checkpoint_data` is the one policy for "the data this checkpoint was trained on".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from proxyembed.data.types import DataSplit
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.evaluation import EncodeBatch
from proxyembed.runtime.preprocess import PreprocessSpec

from .checkpoint import Checkpoint, load_checkpoint
from .run_dir import BEST


def torch_encode_batch(
    model: torch.nn.Module,
    *,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    normalize: bool = True,
) -> EncodeBatch:
    """``model`` as an :data:`EncodeBatch`: float32 (N, D) embeddings, L2-normalised, gradients off.

    The model is run in the mode it is in (the caller puts it in eval mode, and restores it if it trains).
    ``autocast_dtype`` runs it in mixed precision (the output is float32 all the same); ``normalize=False``
    asks an :class:`~proxyembed.models.Embedder` for its output before the L2 normalisation, as fitting the
    whitening needs, and returns it as is.
    """
    dev = torch.device(device)

    def encode(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            y = (model(x) if normalize else model(x, normalize=False)).float()
            if normalize:
                y = torch.nn.functional.normalize(y, dim=1)
        return y.cpu().numpy()

    return encode


@dataclass(frozen=True)
class CheckpointModel:
    """A checkpoint's network ready to embed: its dim, an identity for the files it writes, its preprocessing, its encoder."""

    dim: int
    source: dict[str, Any]
    spec: PreprocessSpec
    encode: EncodeBatch
    checkpoint: Checkpoint


def checkpoint_model(run_or_file: str | os.PathLike[str], *, prefer: str = BEST, device: torch.device | str = "cpu") -> CheckpointModel:
    """Load ``best.pt`` (or ``prefer``) of a run dir, or a checkpoint file, as a :class:`CheckpointModel` on ``device``."""
    ckpt = load_checkpoint(run_or_file, prefer)
    model = ckpt.build_model().to(device)
    source = {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256()}
    return CheckpointModel(ckpt.model_config.embedding_dim, source, ckpt.preprocess, torch_encode_batch(model, device=device), ckpt)


def checkpoint_data(ckpt: Checkpoint, data: str | None = None, eval_data: str | None = None) -> DataSplit:
    """The evaluation split for ``ckpt``: ``data`` if given, else the data and split it was trained on.

    With ``data`` given, only the ``eval_data`` given here applies; without, the run's own ``eval_data``
    unless ``eval_data`` replaces it. A checkpoint that records no data is refused rather than judged on
    other (e.g. synthetic) images: its numbers would not be the ones training recorded.
    """
    from proxyembed.data import resolve_data

    spec = data or ckpt.config.get("data")
    if not spec:
        raise BadInput(f"checkpoint '{ckpt.path}' records no training data", hint="pass --data SPEC (data=... in Python)")
    return resolve_data(spec, eval_data=eval_data if data else (eval_data or ckpt.config.get("eval_data")))
