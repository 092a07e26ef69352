"""TensorRT engines from the validated ONNX files, and an encoder to validate them on the GPU.

TensorRT's Python API builds with ``Builder`` / ``OnnxParser``, optimization profiles and
``build_serialized_network``. Every TensorRT >= 10 network here is created ``STRONGLY_TYPED``, one code
path for 10 and 11: the ONNX file's own types decide each layer's precision (fp16 from the fp16 graph,
int8 from the symmetric S8S8 Q/DQ graph, the head and L2 normalisation fp32 as exported). TensorRT 10's
``BuilderFlag.FP16 / INT8`` would build weakly typed instead, free to run that fp32 tail in fp16, the
overflow :mod:`.fp16` avoids on purpose; TensorRT 11 removed the flags. TF32 is cleared: it is on by
default for fp32 layers (TensorRT docs, ``BuilderFlag.TF32``) and the fp32 gate is 0.1 points of Recall@1.
An engine is tied to its GPU model and TensorRT version, so the artifact records them (``device``:
gpu_name, compute_capability, tensorrt_version) and the runtime refuses a mismatch.

``tensorrt`` is optional and imported inside the functions. A built engine is validated through the
runtime's native TensorRT backend (cuda-python for device memory), the one that serves it, and the device
it records comes from the same query the runtime compares it with (:func:`backends.gpu_info`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxyembed.runtime import backends
from proxyembed.runtime.errors import BadInput, MissingDependency, require

from .onnx_export import INPUT_NAME
from .options import BatchProfile


def unavailable_reason() -> str | None:
    """Why no engine can be built here (one line), or None when TensorRT and a CUDA GPU are present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'tensorrt is not installed (pip install "proxyembed[gpu]")'
    if backends.gpu_info() is None:
        return 'no CUDA GPU is visible, or cuda-python is missing (pip install "proxyembed[gpu]")'
    return None


def device_info() -> dict[str, Any]:
    """The GPU and TensorRT version an engine built now is tied to (the artifact's ``device``)."""
    trt = require("tensorrt", "gpu")
    gpu = backends.gpu_info()
    if gpu is None:
        raise MissingDependency("no CUDA GPU is visible to cuda-python", hint='pip install "proxyembed[gpu]" on a machine with a GPU')
    return {**gpu, "tensorrt_version": str(trt.__version__)}


def build_engine(onnx_file: Path, engine_file: Path, precision: str, profile: BatchProfile, crop: int) -> dict[str, Any]:
    """Build and serialise an engine for ``precision`` from ``onnx_file``; returns the ``device`` dict."""
    trt = require("tensorrt", "gpu")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise MissingDependency(f"TensorRT {trt.__version__} is too old", hint='pip install "tensorrt>=10"')
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BadInput(f"TensorRT cannot parse {onnx_file.name}: {errors}", hint="export without --tensorrt, or another backbone")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    shape = (3, crop, crop)
    opt_profile.set_shape(INPUT_NAME, (profile.min, *shape), (profile.opt, *shape), (profile.max, *shape))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BadInput(f"TensorRT could not build a {precision} engine from {onnx_file.name}", hint="see the TensorRT log above")
    engine_file.write_bytes(bytes(serialized))
    return device_info()
