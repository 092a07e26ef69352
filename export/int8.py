"""Static int8 post-training quantization with ONNX Runtime: QDQ, per-channel weights, two targets.

ONNX Runtime's quantization docs: run ``quant_pre_process`` first, then ``quantize_static`` with a
``CalibrationDataReader``, QDQ format, per-channel weights. The activation type follows the target,
because one int8 file does not serve both:

- ``cpu``: uint8 activations x int8 weights (U8S8). On x86 without VNNI (AVX2 only, as on the Zen 3
  box measured there) U8S8 is the fast kernel: resnet18 224 px b32 347 ms vs 742 ms fp32, while S8S8
  gains nothing (785 ms). Without VNNI the u8 x s8 pair sums can saturate; ``reduce_range`` (7-bit
  weights) avoids that at some speed (402 ms) and is the switch to try when accuracy is short.
- ``gpu``: symmetric int8 activations and weights (S8S8), the Q/DQ form TensorRT builds int8 engines
  from (it rejects asymmetric activation zero points). Biases stay float (ORT's ``QuantizeBias: False``):
  ``quant_pre_process`` folds BatchNorm into conv biases and ``quantize_static`` would otherwise store
  them as INT32 behind a DequantizeLinear, which TensorRT's ONNX parser rejects (it dequantizes only
  INT8 / FP8 / INT4 inputs: onnx-tensorrt's operators doc; NVIDIA/TensorRT issue 4542 is this failure).

The float tail (head + L2 normalisation, see :mod:`.graph`) always stays float; the first conv can too.
Calibration images come from the TRAINING classes (the evaluation classes are held out for validation)
and go through the runtime :class:`Preprocessor`, the same transform as inference.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from proxyembed.data.types import Sample
from proxyembed.runtime.errors import BadInput, require
from proxyembed.runtime.manifest import Target
from proxyembed.runtime.preprocess import Preprocessor, PreprocessSpec

from .graph import first_conv, float_tail, name_nodes
from .onnx_export import INPUT_NAME
from .options import Int8Options

CALIBRATION_BATCH = 16


def calibration_samples(samples: Sequence[Sample], size: int, *, seed: int = 0) -> list[Sample]:
    """Up to ``size`` training samples drawn round-robin over the classes, so every class is represented."""
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    rng = np.random.default_rng(seed)
    pools = [[group[i] for i in rng.permutation(len(group))] for group in by_class.values()]
    chosen: list[Sample] = []
    while len(chosen) < min(size, len(samples)):
        for pool in pools:
            if pool and len(chosen) < size:
                chosen.append(pool.pop())
    return chosen


def calibration_batch(samples: Sequence[Sample], spec: PreprocessSpec, size: int, *, seed: int = 0) -> np.ndarray:
    """``size`` training images spread over the classes, preprocessed: the int8 calibration set.

    Raises :class:`BadInput` when there are no training images or one cannot be read (naming it).
    """
    if size <= 0:
        raise BadInput(f"--calibration-size must be positive, got {size}")
    if not samples:
        raise BadInput("--data has no training-class images to calibrate int8 on", hint="give a --data with training classes")
    return Preprocessor(spec)([s.source for s in calibration_samples(samples, size, seed=seed)])


class _Reader(CalibrationDataReader):
    """Feeds the calibration set to ONNX Runtime in batches; ``rewind`` serves it again."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.images):
            return None
        batch = self.images[self.pos : self.pos + CALIBRATION_BATCH]
        self.pos += CALIBRATION_BATCH
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self.pos = 0


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, target: Target, options: Int8Options) -> list[str]:
    """Write the int8 QDQ model for ``target`` to ``dst``; returns the names of the nodes left in float."""
    onnx = require("onnx", "export")
    quant = require("onnxruntime.quantization", "export")
    with tempfile.TemporaryDirectory(prefix="proxyembed-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ORT's symbolic shape inference fails on the dynamo exporter's Shape(start, end) nodes; the exporter
        # already records every shape, and ONNX's own inference (still run) covers the rest.
        quant.quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        name_nodes(model)
        onnx.save(model, str(prepared))
        keep = float_tail(model)
        conv = first_conv(model)
        if options.float_first_conv and conv:
            keep.append(conv)
        gpu = target == "gpu"
        method = {
            "minmax": quant.CalibrationMethod.MinMax,
            "percentile": quant.CalibrationMethod.Percentile,
            "entropy": quant.CalibrationMethod.Entropy,
        }[options.method]
        quant.quantize_static(
            str(prepared),
            str(dst),
            _Reader(calibration),
            quant_format=quant.QuantFormat.QDQ,
            per_channel=True,
            reduce_range=options.reduce_range and not gpu,
            activation_type=quant.QuantType.QInt8 if gpu else quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=method,
            extra_options={"ActivationSymmetric": gpu, "WeightSymmetric": True, "QuantizeBias": not gpu},
        )
    return keep
