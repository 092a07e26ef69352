"""CLI conventions: --version, -h, real defaults in --help, closed choices, --json everywhere, exit codes.

Exit codes (README): 0 success, 1 a failed check, 2 bad input (including a missing extra), 3 a crash
(one line plus a traceback file), 130 interrupted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import proxyembed
from proxyembed.cli import app, main
from proxyembed.training import trainer
from proxyembed.training.config import TrainConfig, resolve_config
from proxyembed.training.trainer import TrainResult

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _plain(text: str) -> str:
    """Help text without rich's box drawing and line wrapping, so phrases can be searched."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_version_and_short_help() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"proxyembed {proxyembed.__version__}"
    top = runner.invoke(app, ["-h"])
    assert top.exit_code == 0 and "embed" in top.stdout and "check" in top.stdout
    sub = runner.invoke(app, ["search", "-h"])
    assert sub.exit_code == 0 and "--top-k" in _plain(sub.stdout)


# What `proxyembed train --help` shows and what a run given no options trains with, written out by hand.
TRAIN_DEFAULTS = {
    "--epochs": ("epochs", 6, "6"),
    "--batch-size": ("batch_size", 32, "32"),
    "--lr": ("lr", 1.4e-3, "0.0014"),
    "--backbone": ("backbone", "resnet18", "resnet18"),
    "--loss": ("loss", "proxy_anchor", "proxy_anchor"),
    "--proxy-lr-mult": ("proxy_lr_mult", 100.0, "100.0"),
    "--schedule": ("schedule", "none", "none"),
    "--freeze-bn": ("freeze_bn", False, "no-freeze-bn"),
    "--seed": ("seed", 0, "0"),
}


def test_every_command_function_is_named_after_its_command() -> None:
    """One convention: `proxyembed NAME` runs NAME_command (no bare name shadowing a package, no other suffix)."""
    assert [c.callback.__name__ for c in app.registered_commands] == [f"{c.name}_command" for c in app.registered_commands]
    assert len(app.registered_commands) == len(COMMANDS)


def _help_rows(argv: list[str]) -> dict[str, str]:
    """Each option's row of a command's --help (wide enough that no row wraps), keyed by its first flag."""
    text = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "220"}).stdout
    rows = {}
    for line in text.splitlines():
        m = re.match(r"[│\s]*(--[a-z0-9-]+)\s", line)
        if m:
            rows[m.group(1)] = _plain(line)
    return rows


def test_train_help_shows_the_defaults_a_run_gets(fake_training: list[TrainConfig], tmp_path: Path) -> None:
    rows = _help_rows(["train"])
    for flag, (_, _, shown) in TRAIN_DEFAULTS.items():
        assert f"[default: {shown}]" in rows[flag], (flag, rows[flag])
    assert "<proxy_anchor|proxy_nca|proxy_nca++|nir|triplet>" in rows["--loss"]
    assert runner.invoke(app, ["train", "--out", str(tmp_path / "run")]).exit_code == 0
    cfg = fake_training[-1]
    assert {flag: getattr(cfg, field) for flag, (field, _, _) in TRAIN_DEFAULTS.items()} == {f: v for f, (_, v, _) in TRAIN_DEFAULTS.items()}


def test_loss_choices_are_the_registered_losses() -> None:
    from proxyembed.losses import LOSSES

    assert sorted(LOSSES) == ["nir", "proxy_anchor", "proxy_nca", "proxy_nca++", "triplet"]  # the --loss choices above


def test_check_artifact_choices() -> None:
    from proxyembed.check import ARTIFACT_CHOICES

    row = _help_rows(["check"])["--artifact"]
    assert "<auto|fp32|fp16|int8|all>" in row and "[default: auto]" in row
    assert tuple(ARTIFACT_CHOICES) == ("auto", "fp32", "fp16", "int8", "all")  # what the library's check accepts


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["train", "--loss", "proxy_ancor"], "proxy_ancor"),
        (["train", "--schedule", "linear"], "linear"),
        (["train", "--device", "gpu"], "gpu"),
        (["export", "run", "--out", "b", "--calibration-method", "kl"], "kl"),
        (["index", "bundle", "imgs", "--out", "g", "--precision", "fp8"], "fp8"),
        (["check", "bundle", "--data", "d", "--baseline", "b.json", "--artifact", "int4"], "int4"),
    ],
)
def test_typos_in_closed_choices_are_rejected_by_the_parser(argv: list[str], bad: str) -> None:
    res = runner.invoke(app, argv, env={"COLUMNS": "220"})
    assert res.exit_code == 2
    assert bad in res.output and "is not one of" in res.output


def test_every_scriptable_command_has_a_json_flag() -> None:
    for name in ("train", "eval", "export", "embed", "index", "search", "check"):
        flags = [p for p in COMMANDS[name].params if "--json" in p.opts]
        assert len(flags) == 1 and flags[0].is_flag, name  # --json prints to stdout; a file is --json-out
    assert any("--json-out" in p.opts for p in COMMANDS["check"].params)


def test_recipe_is_overridden_only_by_options_given(fake_training: list[TrainConfig], tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    assert runner.invoke(app, ["train", "--out", out, "--recipe", "cub200", "--epochs", "8"]).exit_code == 0
    cfg = fake_training[-1]
    assert (cfg.epochs, cfg.backbone, cfg.freeze_bn, cfg.lr) == (8, "resnet50", True, 1e-4)  # epochs typed, the rest from the recipe
    assert runner.invoke(app, ["train", "--out", out, "--recipe", "cub200", "--no-freeze-bn", "--lr", "0.0014"]).exit_code == 0
    cfg = fake_training[-1]
    assert (cfg.freeze_bn, cfg.lr, cfg.epochs) == (False, 1.4e-3, 60)  # a typed value equal to the default still wins
    assert runner.invoke(app, ["train", "--out", out]).exit_code == 0
    assert fake_training[-1] == resolve_config({})  # the defaults, the loss's own included


def test_train_json_prints_only_the_summary(fake_training: list[TrainConfig], tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0
    summary = json.loads(res.stdout)
    assert summary["best"] == {"recall@1": 0.6} and summary["best_epoch"] == 2 and summary["run_dir"] == str(tmp_path / "run")


def test_a_crash_exits_3_with_one_line_and_a_traceback_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    def broken(*_: Any, **__: Any) -> TrainResult:
        raise ZeroDivisionError("forced bug")

    monkeypatch.setattr(trainer, "train", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run")])
    assert exc.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crash: ZeroDivisionError: forced bug")
    report = Path(err[0].rsplit("traceback written to ", 1)[1])
    assert report.parent == tmp_path
    text = report.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: forced bug" in text and "command: proxyembed train" in text


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*_: Any, **__: Any) -> TrainResult:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run")])
    assert exc.value.code == 130


def test_bad_input_and_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tmp_path / "missing-run")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["train", "--no-such-option"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("argv", "needs"),
    [
        (["train", "--out", "{tmp}/run"], 'proxyembed train needs torch, torchvision, timm — pip install "proxyembed[train]"'),
        (["eval", "{tmp}/run"], 'proxyembed eval needs torch, torchvision, timm — pip install "proxyembed[train]"'),
        (
            ["export", "{tmp}/run", "--out", "{tmp}/b"],
            'proxyembed export needs torch, torchvision, timm, onnx — pip install "proxyembed[train,export]"',
        ),
    ],
)
def test_torch_commands_name_the_missing_extra(argv: list[str], needs: str, tmp_path: Path) -> None:
    code = f"""
        import sys
        for name in ("torch", "torchvision", "timm", "onnx"):
            sys.modules[name] = None  # as on a runtime-only install
        from proxyembed.cli import main
        main({[a.format(tmp=tmp_path) for a in argv]!r})
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {needs}"


def test_export_json_is_the_only_thing_on_stdout(tmp_path: Path) -> None:
    from helpers.checkpoints import make_checkpoint

    make_checkpoint(tmp_path / "run", data="synthetic:train_classes=4,eval_classes=6,per_class=6")
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # the steps and the validation table went to stderr
    assert Path(summary["bundle"]).resolve() == (tmp_path / "b").resolve()
    assert [a["file"] for a in summary["artifacts"]] == ["model.onnx"] and summary["refused"] == []
    assert summary["artifacts"][0]["validation"]["passed"] is True


def test_check_errors_reach_json_stdout_json_out_and_summary(tmp_path: Path) -> None:
    summary, report = tmp_path / "summary.md", tmp_path / "report.json"
    argv = ["check", str(tmp_path / "no-bundle"), "--data", "synthetic", "--baseline", str(tmp_path / "b.json")]
    res = runner.invoke(app, [*argv, "--json", "--json-out", str(report), "--summary", str(summary)])
    assert res.exit_code == 2
    printed = json.loads(res.stdout)
    assert printed["status"] == "error" and printed == json.loads(report.read_text())
    assert printed["verdict"] in summary.read_text()
