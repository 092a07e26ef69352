"""``--log``: the run mirrored into TensorBoard and a real MLflow server, read back with their own readers.

TensorBoard's event files are read with TensorBoard's ``EventAccumulator``; MLflow is a real ``mlflow server``
on 127.0.0.1 (a free port, a temporary sqlite store and artifact folder, a bounded wait, stopped at the end)
queried with ``MlflowClient``. W&B is not installed here: its offline test is skipped, its absence is tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from helpers.servers import free_port
from proxyembed.cli import app
from proxyembed.tracking import RECORD_NAME, Tracking, read_record
from proxyembed.training.reporting import TrainingReporter
from proxyembed.training.run_dir import config_settings, read_history
from proxyembed.training.trainer import train

TINY = "synthetic:train_classes=12,eval_classes=10,per_class=8,size=40"
TRAIN = ["--data", TINY, "--epochs", "2", "--batch-size", "32", "--image-size", "32", "--embedding-dim", "16", "--whiten", "0"]
STEPS = 3  # 96 training images / batch 32, per epoch

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")


def _tiny_config(**over):
    from proxyembed.training.config import resolve_config

    base = dict(data=TINY, epochs=2, batch_size=32, image_size=32, embedding_dim=16, channels_last=False, whiten=0.0)
    return resolve_config({**base, **over})


@needs_tensorboard
def test_tensorboard_event_files_hold_steps_epochs_config_and_curves(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(run), *TRAIN, "--log", "tensorboard"])
    assert res.exit_code == 0, res.output
    assert read_record(run) == {"tensorboard": {"logdir": "tensorboard"}}
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    history = read_history(run)
    assert [(e.step, e.value) for e in events.Scalars("recall@1")] == [(h["epoch"], pytest.approx(h["recall@1"])) for h in history]
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 2 * STEPS + 1))
    assert {"lr/backbone", "lr/proxies", "time/train_s", "time/eval_s", "map@r", "nmi", "r_precision"} <= set(events.Tags()["scalars"])
    assert len(events.Images("training_curves")) == 2  # epochs 1 and 2 (no untrained evaluation by default)
    config = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "| epochs | 2 |" in config


@needs_tensorboard
def test_resume_continues_the_same_tracker_run(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["train", "--out", str(run), *TRAIN, "--log", "tensorboard"]
    assert CliRunner().invoke(app, [*args, "--epochs", "1"]).exit_code == 0  # the last --epochs wins
    record = (run / RECORD_NAME).read_bytes()
    res = CliRunner().invoke(app, [*args, "--resume"])  # on to epoch 2, into the same event folder
    assert res.exit_code == 0, res.output
    assert (run / RECORD_NAME).read_bytes() == record
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("recall@1")] == [1, 2]  # no untrained evaluation by default
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 2 * STEPS + 1))


def test_without_log_nothing_changes(tmp_path: Path) -> None:
    train(_tiny_config(epochs=1), tmp_path / "run")
    assert not (tmp_path / "run" / RECORD_NAME).exists() and not (tmp_path / "run" / "tensorboard").exists()


class _FailsAtEpoch:
    """A tracker whose server dies at epoch 1."""

    name = "flaky"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def start(self, run_dir, params, previous):
        return {"run_id": "x"}

    def log_metrics(self, metrics, step):
        if "recall@1" in metrics:
            if step == 1:
                raise ConnectionError("server went away")
            self.epochs.append(step)

    def flush(self): ...
    def log_image(self, tag, path, step): ...
    def log_artifact(self, path, folder): ...
    def log_table(self, name, rows, step): ...
    def log_tags(self, tags): ...
    def close(self, status): ...


def test_a_tracker_failing_mid_run_is_a_warning_and_training_goes_on(tmp_path: Path) -> None:
    class Lines(TrainingReporter):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def log(self, message: str, *, kind: str = "info") -> None:
            self.lines.append(message)

    flaky, shown = _FailsAtEpoch(), Lines()
    session = Tracking([flaky], warn=shown.log)
    result = train(_tiny_config(epochs=2, eval_untrained=True), tmp_path / "run", reporter=shown, tracking=session)
    assert flaky.epochs == [0]  # off after its failure at epoch 1
    assert [h["epoch"] for h in read_history(result.run_dir)] == [0, 1, 2]
    warnings = [line for line in shown.lines if "--log flaky failed" in line]
    assert len(warnings) == 1 and "server went away" in warnings[0]


@needs_mlflow
def test_unreachable_mlflow_server_is_one_line_exit_2_before_training(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *TRAIN, "--log", "mlflow", "--mlflow-uri", f"http://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2, res.output
    assert "not reachable" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_unknown_tracker_and_missing_record_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *TRAIN, "--log", "neptune"])
    assert res.exit_code == 2 and "not a tracker" in res.output
    train(_tiny_config(epochs=1), tmp_path / "plain")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "plain"), "--out", str(tmp_path / "b"), "--log"])
    assert res.exit_code == 2 and "was not trained with --log" in res.output, res.output
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed: its offline run is tested instead")
def test_wandb_missing_is_one_line_exit_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *TRAIN, "--log", "wandb"])
    assert res.exit_code == 2 and "pip install wandb" in res.output, res.output


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed here (pip install wandb)")
def test_wandb_offline_run_holds_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), *TRAIN, "--log", "wandb"])
    assert res.exit_code == 0, res.output
    assert read_record(tmp_path / "r")["wandb"]["run_id"]
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a throw-away sqlite store; up to 4 minutes to start on a busy machine."""
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'store.db'}", "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not come up in 240 s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


def test_mlflow_run_holds_params_metrics_plots_checkpoint_export_and_check(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow import MlflowClient

    run, bundle = tmp_path / "run", tmp_path / "bundle"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(run), *TRAIN, "--log", "mlflow", "--mlflow-uri", mlflow_server, "--json"])
    assert res.exit_code == 0, res.output
    assert "View run" not in res.output  # MLflow's own link print would break --json's stdout
    record = read_record(run)["mlflow"]
    assert record["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    got = client.get_run(record["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "run"
    config = config_settings(json.loads((run / "config.json").read_text()))  # the settings, not the input-pipeline report
    assert got.data.params["epochs"] == "2" and got.data.params["data"] == TINY and set(got.data.params) == set(config)
    history = read_history(run)
    recall = client.get_metric_history(record["run_id"], "recall_at_1")
    assert sorted((m.step, m.value) for m in recall) == [(h["epoch"], pytest.approx(h["recall@1"])) for h in history]
    assert len(client.get_metric_history(record["run_id"], "train/loss")) == 2 * STEPS
    assert {"lr/backbone", "time/train_s", "time/eval_s", "map_at_r", "nmi"} <= set(got.data.metrics)
    assert [a.path for a in client.list_artifacts(record["run_id"], "checkpoints")] == ["checkpoints/best.pt"]
    assert [a.path for a in client.list_artifacts(record["run_id"], "plots")] == ["plots/training_curves.png"]

    res = runner.invoke(app, ["export", str(run), "--out", str(bundle), "--log"])
    assert res.exit_code == 0, res.output
    baseline = tmp_path / "baseline.json"
    res = runner.invoke(app, ["check", str(bundle), "--data", TINY, "--baseline", str(baseline), "--write-baseline", "--log", str(run)])
    assert res.exit_code == 0, res.output
    got = client.get_run(record["run_id"])
    assert got.info.status == "FINISHED"
    assert got.data.tags["export.verdict"] == "passed" and got.data.tags["check.verdict"].startswith("check passed")
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32 = next(m for m in manifest["artifacts"] if m["precision"] == "fp32")
    assert got.data.metrics["export/fp32/recall_at_1"] == pytest.approx(fp32["validation"]["metrics"]["recall@1"])
    table = json.loads(Path(client.download_artifacts(record["run_id"], "export/validation.json", str(tmp_path))).read_text())
    assert table["rows"][0]["artifact"] == "PyTorch fp32" and len(table["rows"]) == 2
    assert [a.path for a in client.list_artifacts(record["run_id"], "check")] == ["check/validation.json"]
