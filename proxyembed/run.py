"""A training run dir as a Python object: its config, history and best metrics, its model, its embeddings.

``Run(path)`` reads ``config.json`` and ``metrics.jsonl`` without torch; :meth:`Run.load_model`,
:meth:`Run.embed` and :meth:`Run.export` need the ``train`` (and ``export``) extras and say so. Images
go through the checkpoint's preprocessing with the runtime :class:`Preprocessor`, so ``run.embed(x)``
gives what the exported bundle's :class:`~proxyembed.runtime.Encoder` gives, up to export precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.files import read_json_object
from proxyembed.runtime.preprocess import ImageLike
from proxyembed.training.config import TrainConfig
from proxyembed.training.run_dir import (
    CONFIG_NAME,
    Which,
    checkpoint_name,
    chosen_record,
    config_settings,
    metrics_of,
    read_history,
    selection_key,
)

if TYPE_CHECKING:
    from proxyembed.models import Embedder
    from proxyembed.runtime.bundle import Bundle
    from proxyembed.training.inference import CheckpointModel


class Run:
    """A run dir written by ``proxyembed train`` / :func:`proxyembed.train`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / CONFIG_NAME).is_file():
            raise BadInput(f"'{self.path}' is not a run dir: {CONFIG_NAME} is missing", hint="give a folder written by `proxyembed train`")
        self._model: tuple[str, CheckpointModel] | None = None  # (device, model) kept for repeated embed() calls

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self) -> TrainConfig:
        """The resolved training config, as written by the run."""
        path = self.path / CONFIG_NAME
        raw = read_json_object(path, missing=f"{path} is missing", hint="give a run dir", broken_hint="re-run training", fields={})
        return TrainConfig.from_dict(config_settings(raw), source=str(self.path / CONFIG_NAME))

    @property
    def history(self) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` records, one per epoch (epoch 0, the untrained network, when the run set ``eval_untrained``)."""
        return read_history(self.path)

    @property
    def best_metrics(self) -> dict[str, float]:
        """Metrics of the epoch ``best.pt`` holds: the best ``select_metric`` on the validation classes when the run held
        some out (``val_fraction``), else the last evaluated epoch (:func:`~proxyembed.training.run_dir.selection_key`)."""
        cfg = self.config
        best = chosen_record(self.history, selection_key(cfg.val_fraction, cfg.select_metric))
        if best is None:
            raise BadInput(f"run {self.path} has no evaluated epoch yet", hint="train for at least one epoch")
        return metrics_of(best) | {"epoch": best["epoch"]}

    def load_model(self, which: Which = "best") -> Embedder:
        """The trained network (``best.pt`` or ``last.pt``), in eval mode on the CPU."""
        from proxyembed.extras import require_extras

        require_extras("Run.load_model", "train")
        from proxyembed.training.checkpoint import load_checkpoint

        return load_checkpoint(self.path, prefer=checkpoint_name(which)).build_model()

    def embed(
        self,
        images: Sequence[ImageLike] | ImageLike,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool | Callable[[int], None] = False,
    ) -> np.ndarray:
        """float32 (N, D) L2-normalised embeddings of images (paths, PIL images or uint8 HxWxC arrays) with ``best.pt``."""
        from proxyembed.extras import require_extras

        require_extras("Run.embed", "train")
        from proxyembed.runtime.encoder import is_single_image
        from proxyembed.runtime.evaluation import embed_sources
        from proxyembed.runtime.preprocess import Preprocessor
        from proxyembed.runtime.progress import progress_callback
        from proxyembed.training.inference import checkpoint_model

        items = [images] if is_single_image(images) else list(images)  # type: ignore[list-item]
        if self._model is None or self._model[0] != device:
            self._model = (device, checkpoint_model(self.path, device=device))
        model = self._model[1]
        with progress_callback(progress, len(items), "embedding") as on_batch:
            out = embed_sources(items, Preprocessor(model.spec), {"model": model.encode}, batch_size=batch_size, on_batch=on_batch)["model"]
        return out if len(items) else np.zeros((0, model.dim), np.float32)

    def export(self, out: str | Path, **options: Any) -> Bundle:
        """Export this run to a validated bundle at ``out``: :func:`proxyembed.export` with ``run=self``."""
        from proxyembed.export.api import export

        return export(self, out, **options)
