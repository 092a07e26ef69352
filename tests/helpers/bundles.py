"""Test helpers: a tiny but real bundle built without torch, and small labelled image folders.

``make_tiny_bundle`` writes an ONNX model made with ``onnx.helper`` (fixed random conv filters, 4x4
average pooling, a linear projection and an L2 normalisation), optionally its int8 twin from ONNX
Runtime's static quantizer, and a manifest written through :class:`Manifest`, with real sha256s. The
model is untrained but discriminative: images of different colours or patterns embed far apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from proxyembed.runtime.files import sha256_file
from proxyembed.runtime.manifest import MANIFEST_NAME, Artifact, Manifest
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

INPUT, OUTPUT = "images", "embeddings"
CHANNELS = 8
GRID = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "purple": (140, 30, 160),
    "cyan": (30, 210, 210),
}


def tiny_onnx_model(dim: int = 16, crop: int = 32, seed: int = 0) -> Any:
    """An ``onnx.ModelProto``: NCHW float32 (batch dynamic) -> (N, dim) L2-normalised embeddings."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if crop % GRID:
        raise ValueError(f"crop must be a multiple of {GRID}, got {crop}")
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (CHANNELS, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, CHANNELS).astype(np.float32)
    proj = rng.normal(0, 1 / np.sqrt(CHANNELS * GRID * GRID), (CHANNELS * GRID * GRID, dim)).astype(np.float32)
    pool = crop // GRID
    nodes = [
        helper.make_node("Conv", [INPUT, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("AveragePool", ["relu"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["raw"]),
        helper.make_node("ReduceL2", ["raw"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
        helper.make_node("Div", ["raw", "safe_norm"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, crop, crop])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", dim])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(proj, "proj"),
            numpy_helper.from_array(np.array([1e-12], np.float32), "eps"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="proxyembed-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def quantize_int8(fp32_file: Path, int8_file: Path, batches: list[np.ndarray]) -> None:
    """U8S8 QDQ per-channel static quantization, the CPU-friendly format (export/int8.py), calibrated on ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {INPUT: batch}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice about pre-processing at WARNING
    try:
        quantize_static(
            str(fp32_file),
            str(int8_file),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        root.setLevel(level)


def make_tiny_bundle(
    path: str | Path,
    *,
    dim: int = 16,
    crop: int = 32,
    resize: int | None = None,
    with_int8: bool = True,
    fp32_passed: bool = True,
    int8_passed: bool = True,
    seed: int = 0,
) -> Path:
    """Write a complete, valid bundle folder at ``path`` and return it.

    Artifacts: ``model.onnx`` (fp32, target any) and, with ``with_int8``, ``model_int8.onnx`` (int8,
    target cpu). ``*_passed`` set each artifact's ``validation.passed``, to exercise the encoder's
    "validated only" rule. ``resize`` defaults to ``crop * 8 // 7`` (the usual 256/224 ratio).
    Different ``seed`` values give different weights, hence a different manifest sha256.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fp32_file = path / "model.onnx"
    fp32_file.write_bytes(tiny_onnx_model(dim, crop, seed).SerializeToString())
    spec = PreprocessSpec(resize=resize or crop * 8 // 7, crop=crop, fit="center_crop")  # the numbers tests pin were made so
    artifacts = [_artifact(fp32_file, "fp32", "any", fp32_passed)]
    if with_int8:
        int8_file = path / "model_int8.onnx"
        pre = Preprocessor(spec)  # calibrated on pattern images of every colour, the distribution the tests feed it
        quantize_int8(fp32_file, int8_file, [pre([pattern_image(c, v) for v in range(3)]) for c in COLOURS])
        artifacts.append(_artifact(int8_file, "int8", "cpu", int8_passed))
    manifest = Manifest(
        embedding_dim=dim,
        preprocess=spec,
        artifacts=artifacts,
        input_name=INPUT,
        output_name=OUTPUT,
        proxyembed_version="test",
        created="2024-01-01T00:00:00Z",
        source={"checkpoint_sha256": f"tiny-seed-{seed}"},
        validation={"data": {"name": "synthetic"}, "reference": {}, "thresholds": {"int8": 1.0}, "k": [1]},
    )
    (path / MANIFEST_NAME).write_text(manifest.dumps())
    return path


def _artifact(file: Path, precision: str, target: str, passed: bool) -> Artifact:
    return Artifact(
        file=file.name,
        format="onnx",
        precision=precision,  # type: ignore[arg-type]
        sha256=sha256_file(file),
        target=target,  # type: ignore[arg-type]
        validation={"passed": passed},
    )


def pattern_image(colour: str, variant: int = 0, size: int = 48) -> Image.Image:
    """A solid colour with a small variant-dependent stripe pattern: same colour = same class."""
    rgb = np.array(COLOURS[colour], np.int16)
    img = np.tile(rgb, (size, size, 1))
    rng = np.random.default_rng(variant)
    img = img + rng.integers(-12, 13, img.shape)
    img[:, variant % 5 :: 6] = img[:, variant % 5 :: 6] // 2
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def write_class_images(
    root: str | Path, colours: Sequence[str] = ("red", "green", "blue"), per_class: int = 3
) -> list[Path]:
    """Write ``root/<colour>/<colour>_<i>.png`` images (a class-subfolder layout) and return the paths."""
    root = Path(root)
    paths = []
    for colour in colours:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = root / colour / f"{colour}_{i}.png"
            pattern_image(colour, i).save(p)
            paths.append(p)
    return paths
