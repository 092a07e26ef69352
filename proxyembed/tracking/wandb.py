"""Weights & Biases: one W&B run per run dir, files under ``RUN/wandb``.

Not part of any extra (``pip install wandb``; ``WANDB_MODE=offline`` needs no account). W&B wants one step
axis that only grows, so per-epoch values are logged at the training step where the epoch ended.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from proxyembed.runtime.errors import BadInput


class WandbTracker:
    """Params, metrics, the curves and the best checkpoint of one run dir in one W&B run."""

    name = "wandb"

    def __init__(self) -> None:
        try:
            import wandb
        except ImportError:
            raise BadInput("--log wandb: the wandb package is not installed", hint="pip install wandb") from None
        self.wandb = wandb
        self.run: Any = None
        self.last_step = 0

    def start(self, run_dir: Path, params: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "proxyembed"), dir=str(run_dir), name=Path(run_dir).name,
            id=None if previous is None else str(previous["run_id"]), resume="allow", config=dict(params),
        )
        return {"run_id": self.run.id}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.last_step = max(self.last_step, step)
        self.run.log(dict(metrics), step=self.last_step)

    def flush(self) -> None:
        """W&B sends from its own background process."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path)), "epoch": step}, step=self.last_step)

    def log_artifact(self, path: Path, folder: str) -> None:
        artifact = self.wandb.Artifact(f"{self.run.id}-{folder}", type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        self.run.log({name: self.wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])}, step=self.last_step)

    def log_tags(self, tags: Mapping[str, str]) -> None:
        self.run.summary.update(dict(tags))

    def close(self, status: Literal["finished", "failed"]) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
