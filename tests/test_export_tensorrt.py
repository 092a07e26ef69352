"""TensorRT engine building against a stand-in ``tensorrt`` module, and a failed build inside a real export.

The stand-in records what :func:`build_engine` asks of the builder (network flags, builder flags, the
profile); the export test replaces the engine builder with one that fails for fp16 and otherwise ships
the ONNX file itself as the "engine", so validation runs for real on ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers.checkpoints import make_checkpoint
from proxyembed.cli import app
from proxyembed.export import tensorrt as trt_export
from proxyembed.export.tensorrt import BatchProfile, build_engine
from proxyembed.runtime import backends
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.manifest import MANIFEST_NAME

DATA = "synthetic:train_classes=4,eval_classes=6,per_class=6"
DEVICE = {"gpu_name": "NVIDIA H100", "compute_capability": "9.0", "tensorrt_version": "10.9.0.34"}


def fake_tensorrt(version: str, *, parses: bool = True, builds: bool = True) -> tuple[types.ModuleType, dict[str, Any]]:
    """A ``tensorrt`` module whose builder records every call in the returned dict."""
    seen: dict[str, Any] = {"set": [], "cleared": [], "shapes": []}

    class Config:
        def set_flag(self, flag: str) -> None:
            seen["set"].append(flag)

        def clear_flag(self, flag: str) -> None:
            seen["cleared"].append(flag)

        def add_optimization_profile(self, profile: object) -> None:
            seen["profile_added"] = True

    class Profile:
        def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
            seen["shapes"].append((name, *shapes))

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> object:
            seen["network_flags"] = flags
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: object, config: Config) -> bytes | None:
            return b"plan" if builds else None

    class OnnxParser:
        num_errors = 0 if parses else 1

        def __init__(self, network: object, logger: object) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return parses

        def get_error(self, i: int) -> object:
            return types.SimpleNamespace(desc=lambda: "DequantizeLinear: INT32 input is not supported")

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt, seen


@pytest.mark.parametrize("version", ["10.9.0.34", "11.0.0.114"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_version_builds_strongly_typed_without_precision_flags_or_tf32(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str, precision: str
) -> None:
    trt, seen = fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_export, "device_info", lambda: DEVICE)
    device = build_engine(tmp_path / "m.onnx", tmp_path / "e.plan", precision, BatchProfile(1, 16, 64), 32)
    assert device == DEVICE and (tmp_path / "e.plan").read_bytes() == b"plan"
    assert seen["network_flags"] == 1 << 1  # STRONGLY_TYPED: the ONNX types decide, fp32 head and L2 stay fp32
    assert seen["set"] == []  # no FP16 / INT8 flag: those would build weakly typed on TensorRT 10
    assert seen["cleared"] == ["TF32"]
    assert seen["shapes"] == [("images", (1, 3, 32, 32), (16, 3, 32, 32), (64, 3, 32, 32))]


@pytest.mark.parametrize(("parses", "builds", "message"), [
    (False, True, "TensorRT cannot parse m.onnx: DequantizeLinear: INT32 input"),
    (True, False, "TensorRT could not build a int8 engine from m.onnx"),
])
def test_parse_or_build_failure_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, parses: bool, builds: bool, message: str
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.9.0.34", parses=parses, builds=builds)[0])
    with pytest.raises(BadInput, match=message):
        build_engine(tmp_path / "m.onnx", tmp_path / "e.plan", "int8", BatchProfile(), 32)
    assert not (tmp_path / "e.plan").exists()


def test_an_engine_that_fails_to_build_is_refused_and_the_rest_ships(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def build(onnx_file: Path, engine_file: Path, precision: str, profile: BatchProfile, crop: int) -> dict[str, str]:
        if precision == "fp16":
            engine_file.write_bytes(b"half-written")
            raise BadInput(f"TensorRT cannot parse {onnx_file.name}: Cast: unsupported")
        shutil.copyfile(onnx_file, engine_file)  # an ONNX "engine" that ONNX Runtime can validate for real
        return DEVICE

    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_export, "build_engine", build)
    # the "engine" is an ONNX file, so the runtime's TensorRT backend is stood in for by its ONNX Runtime one
    monkeypatch.setattr(backends, "TensorRTBackend", lambda path, **names: backends.OrtBackend(path, ["CPUExecutionProvider"], threads=None, **names))
    make_checkpoint(tmp_path / "run", data=DATA)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(out), "--fp16", "--tensorrt"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert "refused engine_fp16.plan (fp16) did not build: TensorRT cannot parse model_fp16.onnx: Cast: unsupported" in text
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    shipped = {a["file"]: a for a in manifest["artifacts"]}
    assert set(shipped) == {"model.onnx", "model_fp16.onnx", "engine_fp32.plan"}
    assert shipped["engine_fp32.plan"]["validation"]["passed"] and shipped["engine_fp32.plan"]["device"] == DEVICE
    refused = manifest["validation"]["refused"]
    assert [(r["file"], r["passed"], r["reason"]) for r in refused] == [
        ("engine_fp16.plan", False, "TensorRT cannot parse model_fp16.onnx: Cast: unsupported")
    ]
    assert not (out / "engine_fp16.plan").exists()
