"""MLflow: one MLflow run per run dir, through :class:`mlflow.MlflowClient` (no global active run).

The tracking URI is ``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default; the experiment
is ``MLFLOW_EXPERIMENT_NAME`` or ``proxyembed``. A server URI is asked for ``/health`` with a short timeout
before training starts, so an unreachable server is a one-line error then, not a stall mid-run. Per-step
values are buffered and sent once an epoch (one request, not one per step). MLflow names allow neither
``@`` nor most punctuation, so ``recall@1`` is logged as ``recall_at_1``.
"""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from proxyembed.runtime.errors import BadInput

DEFAULT_EXPERIMENT = "proxyembed"
REACH_TIMEOUT_S = 5.0
_BATCH = 1000  # MLflow's limit of metrics per log_batch request


def metric_name(key: str) -> str:
    """``key`` in the characters MLflow accepts: ``recall@1`` -> ``recall_at_1``, anything else odd -> ``_``."""
    return re.sub(r"[^\w\-. /:]", "_", key.replace("@", "_at_"))


def _check_reachable(uri: str) -> None:
    """Raise :class:`BadInput` unless the server at ``uri`` answers ``/health`` within the timeout."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S) as reply:
            reply.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BadInput(
            f"--log mlflow: the tracking server {uri} is not reachable ({reason})", hint="start it, or fix --mlflow-uri / MLFLOW_TRACKING_URI"
        ) from None


class MlflowTracker:
    """Params, metrics, the curves and the best checkpoint of one run dir in one MLflow run."""

    name = "mlflow"

    def __init__(self, uri: str | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise BadInput("--log mlflow: the mlflow package is not installed", hint='pip install "proxyembed[mlflow]"') from None
        # A server that dies mid-run costs one short wait, not MLflow's minutes of retries (the tracker is then off).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is --json's; the run dir records the run
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
        if self.uri.startswith(("http://", "https://")):
            _check_reachable(self.uri)
        self.client = mlflow.MlflowClient(self.uri)
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.run_id = ""
        self.pending: list[Any] = []

    def start(self, run_dir: Path, params: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
        from mlflow.entities import Param

        if previous is not None:
            self.run_id = str(previous["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            run = self.client.create_run(experiment_id, run_name=Path(run_dir).name, tags={"proxyembed.run_dir": str(Path(run_dir).resolve())})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        """Send the buffered values (called at each epoch's end and on close)."""
        while self.pending:
            batch, self.pending = self.pending[:_BATCH], self.pending[_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path="plots")

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def log_table(self, name: str, rows: list[dict[str, Any]], step: int) -> None:
        self.client.log_dict(self.run_id, {"rows": rows}, f"{name}.json")

    def log_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def close(self, status: Literal["finished", "failed"]) -> None:
        if self.run_id:
            self.flush()
            self.client.set_terminated(self.run_id, status="FINISHED" if status == "finished" else "FAILED")
