"""``proxyembed train``'s options reach the TrainConfig by name, and bad settings fail when the config is built.

The trainer is replaced by a recorder (conftest's ``fake_training``): these tests are about what the command hands over.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from proxyembed.cli import app
from proxyembed.cli.train import COMMAND_OPTIONS
from proxyembed.runtime.errors import BadInput
from proxyembed.training.config import LOSS_CLASSES, LossName, TrainConfig, resolve_config

runner = CliRunner()


def test_every_train_option_is_a_config_field_or_steers_the_command() -> None:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {p.name for p in command.params}
    field_names = {f.name for f in fields(TrainConfig)}
    assert options - COMMAND_OPTIONS <= field_names, options - COMMAND_OPTIONS - field_names
    assert COMMAND_OPTIONS <= options and not COMMAND_OPTIONS & field_names


def test_options_reach_the_config_in_its_form(fake_training: list[TrainConfig], tmp_path: Path) -> None:
    argv = ["train", "--out", str(tmp_path / "run"), "--crop-scale", "0.5,1", "--loss-param", "delta=0.2", "--eval-fit", "letterbox"]
    argv += ["--whiten", "0", "--ema-decay", "0.9", "--no-freeze-bn", "--cache", "off", "--image-size", "64"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    cfg = fake_training[-1]
    assert cfg.crop_scale == (0.5, 1.0) and cfg.eval_fit == "letterbox" and cfg.image_size == 64
    assert (cfg.whiten, cfg.ema_decay, cfg.freeze_bn, cfg.cache) == (0.0, 0.9, False, "off")
    assert cfg.loss_params == {"alpha": 8.0, "delta": 0.2}  # the loss's own default alpha is kept beside the typed delta


def test_options_not_typed_leave_the_recipe_alone(fake_training: list[TrainConfig], tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--recipe", "cub200", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert fake_training[-1] == resolve_config({"seed": 3}, "cub200")


def test_every_loss_module_is_registered_and_each_choice_builds_under_its_name() -> None:
    """A loss written in ``losses/`` but left out of the table (``training/loss_table.py``) fails here.

    LossName and LOSSES are both built from the table, so comparing them could not fail; what can is the
    table missing a class, or a choice that does not build. The choices themselves are pinned in
    ``test_cli_conventions.py``.
    """
    import importlib
    import inspect
    import pkgutil

    from proxyembed import losses
    from proxyembed.losses import MetricLoss, build_loss

    written = {
        cls.__name__
        for info in pkgutil.iter_modules(losses.__path__)
        if info.name != "base"  # MetricLoss and ProxyLoss: the bases, not losses
        for cls in vars(importlib.import_module(f"proxyembed.losses.{info.name}")).values()
        if inspect.isclass(cls) and issubclass(cls, MetricLoss) and cls.__module__ == f"proxyembed.losses.{info.name}"
    }
    assert written == set(LOSS_CLASSES.values())
    for name in get_args(LossName):
        loss = build_loss(name, 4, 8)
        assert (type(loss).__name__, loss.name) == (LOSS_CLASSES[name], name)


@pytest.mark.parametrize("metric", ["recal@1", "recall@0", "recall@", "accuracy", "val/recall@1"])
def test_an_unknown_select_metric_exits_2_before_training(fake_training: list[TrainConfig], tmp_path: Path, metric: str) -> None:
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--select-metric", metric])
    assert res.exit_code == 2 and not fake_training
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --select-metric '{metric}' is not a retrieval metric"), res.output


@pytest.mark.parametrize("metric", ["recall@1", "recall@100", "map@r", "r_precision", "nmi"])
def test_every_metric_evaluation_computes_may_select(metric: str) -> None:
    assert resolve_config({"select_metric": metric}).select_metric == metric


def test_selecting_nmi_that_is_never_computed_is_refused() -> None:
    with pytest.raises(BadInput, match="--select-metric nmi needs NMI computed"):
        resolve_config({"select_metric": "nmi", "nmi": "never"})
