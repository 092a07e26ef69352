"""GPU diagnostics: which GPU is here, whether a TensorRT engine can run on it, and why ONNX Runtime offers no GPU.

Each answer is a value or one line of text, never an exception: the encoder uses them to pass over an
artifact (and say why), export to record where an engine was built.
"""

from __future__ import annotations

from typing import Any

from . import cuda


def gpu_install_problem() -> str | None:
    """What keeps ONNX Runtime from offering GPU providers here, in one line, or None when nothing obvious does."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            continue
    if len(installed) == 2:
        return ("both onnxruntime and onnxruntime-gpu are installed and overwrite each other "
                '(pip uninstall -y onnxruntime onnxruntime-gpu, then pip install "proxyembed[gpu]")')
    if "onnxruntime-gpu" not in installed:
        return 'onnxruntime-gpu is not installed (pip install "proxyembed[gpu]", see docs/gpu.md)'
    return None


def gpu_info() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0 via cuda-python, or None without a GPU or bindings."""
    cudart = cuda.cudart()
    if cudart is None:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
    except Exception:  # a driver-less machine can fail inside the bindings in several ways
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu_name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def engine_mismatch(recorded: dict[str, Any] | None, gpu: dict[str, Any] | None, trt_version: str | None) -> str | None:
    """Why a TensorRT engine built for ``recorded`` cannot run here, or None when it can."""
    if gpu is None:
        return "no CUDA GPU visible (or cuda-python missing)"
    if trt_version is None:
        return "tensorrt is not installed"
    recorded = recorded or {}
    for key, here in (("gpu_name", gpu["gpu_name"]), ("compute_capability", gpu["compute_capability"])):
        if str(recorded.get(key)) != here:
            return f"engine built for {key} {recorded.get(key)!r}, this machine has {here!r}"
    if str(recorded.get("tensorrt_version")) != trt_version:
        return f"engine built with TensorRT {recorded.get('tensorrt_version')!r}, installed is {trt_version!r}"
    return None


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


