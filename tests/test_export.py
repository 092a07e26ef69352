"""Export artifacts: ONNX parity, fp16 and int8 graphs, validation numbers, the manifest.

One tiny random-init resnet18 (32 px, 32-d) is exported once per module with ``--fp16 --int8 --tensorrt``
through the CLI; the tests below inspect that bundle. The data is tiny (48 evaluation images: one query
is 2.1 points of Recall@1), so the int8 threshold used here is sized to the data, while the cosine to
the fp32 reference is checked tightly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from helpers.checkpoints import make_checkpoint
from helpers.oracles import recall_at_1
from proxyembed.cli import app
from proxyembed.data import Sample, resolve_data
from proxyembed.export.graph import float_tail
from proxyembed.export.int8 import Int8Options, calibration_batch, calibration_samples, quantize_int8
from proxyembed.export.onnx_export import export_onnx, unexportable_op
from proxyembed.export.options import MAX_DROP_EXAMPLE, PRECISION_MAX_DROP, max_drop_limits
from proxyembed.export.parity import check_parity
from proxyembed.export.validate import served
from proxyembed.models import ModelConfig, build_embedder
from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.files import sha256_file
from proxyembed.runtime.manifest import MANIFEST_NAME, Manifest
from proxyembed.runtime.options import parse_key_values
from proxyembed.runtime.preprocess import Preprocessor
from proxyembed.training.checkpoint import load_checkpoint
from proxyembed.training.inference import torch_encode_batch

DATA = "synthetic:train_classes=4,eval_classes=6,per_class=8"
INT8_LIMIT = 10.0  # points: under five queries of 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    root = tmp_path_factory.mktemp("export")
    make_checkpoint(root / "run", data=DATA)
    out = root / "bundle"
    args = ["export", str(root / "run"), "--out", str(out), "--fp16", "--int8", "--tensorrt", "--calibration-size", "32",
            "--max-recall-drop", f"int8={INT8_LIMIT}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / MANIFEST_NAME).read_text())


def _artifact(manifest: dict, file: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["file"] == file)


def test_onnx_matches_pytorch_at_batch_1_and_8(tmp_path: Path) -> None:
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "run"))
    model = ckpt.build_model()
    export_onnx(model, tmp_path / "m.onnx", crop=32, backbone="resnet18")
    real = Preprocessor(ckpt.preprocess)([s.source for s in resolve_data(DATA).eval[:8]])
    result = check_parity(torch_encode_batch(model.eval()), served(tmp_path / "m.onnx"), real, batch_sizes=(1, 8))
    assert set(result.diffs) == {"real@1", "real@8", "random@1", "random@8"}
    assert result.passed and result.max_abs_diff <= 1e-4, result.diffs
    batch_dim = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic, not specialised to the trace batch


def test_bundle_lists_every_artifact_with_hashes_and_numbers(exported: tuple[Path, str, dict]) -> None:
    out, output, raw = exported
    manifest = Manifest.from_dict(raw)
    files = {a.file: a for a in manifest.artifacts}
    assert set(files) == {"model.onnx", "model_fp16.onnx", "model_int8_cpu.onnx", "model_int8_gpu.onnx"}
    assert {(a.precision, a.target) for a in manifest.artifacts} == {("fp32", "any"), ("fp16", "any"), ("int8", "cpu"), ("int8", "gpu")}
    for a in manifest.artifacts:
        assert a.sha256 == sha256_file(out / a.file)
        # the drop is recorded in points, to 6 decimals: 100 x (the PyTorch reference - the artifact), per metric
        drop = {k: 100 * (raw["validation"]["reference"][k] - v) for k, v in a.validation["metrics"].items()}
        assert a.passed and a.validation["drop"] == pytest.approx(drop, abs=1e-6)
    assert sorted(p.name for p in out.iterdir()) == sorted([*files, MANIFEST_NAME])
    assert raw["source"]["backbone"] == "resnet18" and len(raw["source"]["sha256"]) == 64
    assert raw["validation"]["k"] == [1, 2, 4, 8] and raw["validation"]["refused"] == []
    assert raw["validation"]["thresholds"] == {"fp32": 0.1, "fp16": 0.5, "int8": INT8_LIMIT, "decode": 0.3}
    assert raw["validation"]["data"]["images"] == 48
    assert manifest.embedding_dim == 32 and manifest.preprocess.crop == 32
    assert files["model.onnx"].validation["drop"]["recall@1"] == pytest.approx(0.0, abs=1e-9)
    assert output.rstrip().splitlines()[-1].endswith(str(out)) and "bundle written" in output


def test_tensorrt_missing_is_one_line_and_the_rest_exports(exported: tuple[Path, str, dict]) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        _, output, raw = exported
        assert "TensorRT: skipped, tensorrt is not installed" in output.replace("\n", " ")
        assert not [a for a in raw["artifacts"] if a["format"] == "tensorrt"]
    else:
        pytest.skip("tensorrt is installed: the skip message does not apply")


def test_fp16_keeps_io_and_normalisation_in_fp32(exported: tuple[Path, str, dict]) -> None:
    out, _, raw = exported
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "model_fp16.onnx")))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    norm = next(n for n in model.graph.node if n.op_type == "ReduceL2")
    assert types[norm.input[0]] == f32 and types[norm.output[0]] == f32
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert conv_weights and all(inits[w] == f16 for w in conv_weights)  # the backbone really is fp16
    assert _artifact(raw, "model_fp16.onnx")["validation"]["cosine_min"] > 0.999


def test_fp16_cosine_to_fp32_on_random_inputs(exported: tuple[Path, str, dict]) -> None:
    out, _, _ = exported
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    a, b = served(out / "model.onnx")(x), served(out / "model_fp16.onnx")(x)
    assert b.dtype == np.float32
    assert ((a * b).sum(1) / np.linalg.norm(b, axis=1)).min() > 0.999


@pytest.mark.parametrize(("file", "act_type", "symmetric"), [
    ("model_int8_cpu.onnx", onnx.TensorProto.UINT8, False),
    ("model_int8_gpu.onnx", onnx.TensorProto.INT8, True),
])
def test_int8_targets_have_their_qdq_format(exported: tuple[Path, str, dict], file: str, act_type: int, symmetric: bool) -> None:
    out, _, raw = exported
    model = onnx.load(str(out / file))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    inits = {i.name: i for i in model.graph.initializer}
    input_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    zero_point = inits[input_q.input[2]]
    assert zero_point.data_type == act_type
    if symmetric:
        assert not onnx.numpy_helper.to_array(zero_point).any()
    head = next(n for n in model.graph.node if n.op_type == "Gemm")  # the float tail stays float
    assert inits[head.input[1]].data_type == onnx.TensorProto.FLOAT
    art = _artifact(raw, file)
    # the recorded Recall@1 is the artifact's as served, recomputed here by brute force on the same 48 images
    samples = resolve_data(DATA).eval
    emb = served(out / file)(Preprocessor(Manifest.from_dict(raw).preprocess)([s.source for s in samples]))
    assert art["validation"]["metrics"]["recall@1"] == pytest.approx(recall_at_1(emb, [s.label for s in samples]), abs=1e-9)
    assert art["validation"]["cosine_min"] > 0.98 and art["validation"]["cosine_mean"] > 0.995
    assert art["details"]["calibration_images"] == 32 and art["details"]["format"] == "QDQ"


def test_float_tail_is_head_and_normalisation(exported: tuple[Path, str, dict]) -> None:
    out, _, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    by_name = {n.name: n.op_type for n in model.graph.node}
    tail = float_tail(model)
    assert by_name[tail[0]] == "Gemm" and "ReduceL2" in {by_name[n] for n in tail}
    assert "Conv" not in {by_name[n] for n in tail}


def test_unexportable_op_is_named_with_the_backbone(tmp_path: Path) -> None:
    class Svd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(x.flatten(1)[:, :8].reshape(-1, 2, 4))

    with pytest.raises(BadInput, match=r"backbone 'svdnet' uses operator 'aten\._linalg_svd'"):
        export_onnx(Svd(), tmp_path / "m.onnx", crop=8, backbone="svdnet")


def test_unexportable_op_falls_back_to_the_innermost_message() -> None:
    try:
        try:
            raise ValueError("deep failure\nmore")
        except ValueError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert unexportable_op(exc) == "ValueError: deep failure"


def test_calibration_refuses_empty_and_unreadable_data(tmp_path: Path) -> None:
    spec = load_checkpoint(make_checkpoint(tmp_path / "run")).preprocess
    with pytest.raises(BadInput, match="no training-class images"):
        calibration_batch([], spec, 8)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BadInput, match="broken.jpg"):
        calibration_batch([Sample(str(bad), 0, "broken.jpg")], spec, 8)
    with pytest.raises(BadInput, match="--calibration-size"):
        calibration_batch([Sample(str(bad), 0, "broken.jpg")], spec, 0)


def test_calibration_uses_every_training_class_evenly() -> None:
    data = resolve_data(DATA)
    chosen = calibration_samples(data.train, 12)
    assert sorted(s.label for s in chosen) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len({s.key for s in chosen}) == 12
    assert len(calibration_samples(data.train, 10_000)) == len(data.train)
    batch = calibration_batch(data.train, data.preprocess, 8)
    assert batch.shape == (8, 3, data.preprocess.crop, data.preprocess.crop) and batch.dtype == np.float32


@pytest.mark.parametrize(("values", "expected"), [
    ([], {"fp32": 0.1, "fp16": 0.5, "int8": 1.0, "decode": 0.3}),
    (["fp16=0.2,int8=2"], {"fp32": 0.1, "fp16": 0.2, "int8": 2.0, "decode": 0.3}),
    (["int8=-1", "fp32=0", "decode=1"], {"fp32": 0.0, "fp16": 0.5, "int8": -1.0, "decode": 1.0}),
])
def test_max_recall_drop_option(values: list[str], expected: dict[str, float]) -> None:
    """The command line's strings and the Python API's mapping give the same limits, over the defaults."""
    parsed = parse_key_values(values, "--max-recall-drop", example=MAX_DROP_EXAMPLE, keys=PRECISION_MAX_DROP)
    assert max_drop_limits(parsed) == expected
    assert max_drop_limits({k: v for k, v in expected.items() if k != "fp16"})["fp16"] == 0.5


@pytest.mark.parametrize("bad", ["int9=1", "fp16", "fp16=lots", "fp16=nan"])
def test_max_recall_drop_option_rejects(bad: str) -> None:
    with pytest.raises(BadInput, match="--max-recall-drop"):
        parse_key_values([bad], "--max-recall-drop", example=MAX_DROP_EXAMPLE, keys=PRECISION_MAX_DROP)


def test_max_drop_mapping_rejects_an_unknown_precision() -> None:
    with pytest.raises(BadInput, match="unknown key 'int4'"):
        max_drop_limits({"int4": 1.0})



def test_only_the_cpu_int8_file_dequantizes_int32_biases(tmp_path: Path) -> None:
    """TensorRT's ONNX parser dequantizes INT8 / FP8 / INT4 only, so the gpu file keeps its conv biases float.

    BatchNorm with non-trivial statistics (as after training) folds into conv biases; the random-init
    model of the other tests has all-zero ones, which the exporter drops.
    """
    torch.manual_seed(0)
    model = build_embedder(ModelConfig("resnet18", 16)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
    export_onnx(model, tmp_path / "m.onnx", crop=32, backbone="resnet18")
    calibration = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    for target, int32_biases in (("gpu", False), ("cpu", True)):
        quantize_int8(tmp_path / "m.onnx", tmp_path / f"{target}.onnx", calibration, target, Int8Options())
        graph = onnx.load(str(tmp_path / f"{target}.onnx")).graph
        inits = {i.name: i.data_type for i in graph.initializer}
        dq_inputs = [inits.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"]
        assert (onnx.TensorProto.INT32 in dq_inputs) is int32_biases, target
        float_biases = [n for n in graph.node if n.op_type == "Conv" and inits.get(n.input[-1]) == onnx.TensorProto.FLOAT]
        assert bool(float_biases) is not int32_biases, target
