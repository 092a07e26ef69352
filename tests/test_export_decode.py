"""Export judges reduced JPEG decoding like an artifact: the PyTorch model's Recall@1 with it against full decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from helpers.checkpoints import make_checkpoint
from proxyembed.cli import app
from proxyembed.runtime import Encoder
from proxyembed.runtime.manifest import MANIFEST_NAME

COLOURS = [(210, 40, 40), (40, 180, 60), (40, 60, 210), (220, 200, 40)]


@pytest.fixture(scope="module")
def camera_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of 6 JPEGs at 400x300: large enough for a 32 px model to decode them at half size."""
    root = tmp_path_factory.mktemp("camera")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(COLOURS):
        (root / f"class{c}").mkdir()
        for i in range(6):
            img = Image.new("RGB", (400, 300), tuple(int(v) for v in rng.integers(90, 160, 3)))
            x, y = (int(v) for v in rng.integers(20, 200, 2))
            ImageDraw.Draw(img).ellipse((x, y, x + 180, y + 90), fill=colour)
            img.save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


def _export(run: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(out), *extra])
    return result.exit_code, result.output


def test_reduced_decoding_is_measured_and_recorded(camera_folder: Path, tmp_path: Path) -> None:
    run = make_checkpoint(tmp_path / "run", data=str(camera_folder)).parent
    code, output = _export(run, tmp_path / "bundle", "--decode", "reduced", "--max-recall-drop", "decode=100")
    assert code == 0, output
    raw = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_text())
    assert raw["input"]["decode"] == "reduced"
    check = raw["validation"]["decode"]
    assert check["passed"] and check["images"] == 12 and check["reduced_images"] == 12  # the 2 held-out classes
    assert check["reduced"]["recall@1"] == raw["validation"]["reference"]["recall@1"]  # the artifacts were judged with it
    assert check["drop"]["recall@1"] == pytest.approx(100 * (check["full"]["recall@1"] - check["reduced"]["recall@1"]))
    assert raw["validation"]["thresholds"]["decode"] == 100
    assert Encoder(tmp_path / "bundle").preprocessor.decode(camera_folder / "class0" / "0.jpg").size == (200, 150)


def test_a_reduced_decoding_over_the_limit_falls_back_to_full_decoding(camera_folder: Path, tmp_path: Path) -> None:
    run = make_checkpoint(tmp_path / "run", data=str(camera_folder)).parent
    code, output = _export(run, tmp_path / "bundle", "--decode", "reduced", "--max-recall-drop", "decode=-1")
    assert code == 0, output
    assert "reduced JPEG decoding lost" in output and "records full decoding" in " ".join(output.split())
    raw = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_text())
    assert raw["input"]["decode"] == "full"
    check = raw["validation"]["decode"]
    assert not check["passed"] and check["fallback"] == "full"
    assert raw["validation"]["reference"]["recall@1"] == check["full"]["recall@1"]  # the artifacts judged again, with full decoding
    assert Encoder(tmp_path / "bundle").preprocessor.decode(camera_folder / "class0" / "0.jpg").size == (400, 300)


def test_full_decoding_adds_no_check(camera_folder: Path, tmp_path: Path) -> None:
    run = make_checkpoint(tmp_path / "run", data=str(camera_folder)).parent
    code, output = _export(run, tmp_path / "bundle", "--decode", "full")
    assert code == 0, output
    raw = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_text())
    assert raw["input"]["decode"] == "full" and "decode" not in raw["validation"]
