"""Inference backends behind :class:`~proxyembed.runtime.encoder.Encoder`: ONNX Runtime and native TensorRT.

Each backend runs one NCHW float32 batch and returns the raw (N, D) output; choosing among them and
normalising is the encoder's job. One concern a module:

- :mod:`.ort`: the ONNX Runtime session and its GPU provider list (CUDA / TensorRT execution providers).
- :mod:`.tensorrt`: the native TensorRT engine backend and its batch profile.
- :mod:`.cuda`: cuda-python bindings, checked calls and device memory (the native backend's, not torch's).
- :mod:`.gpu`: diagnostics: the GPU here, whether an engine fits it, why ONNX Runtime offers no GPU.

TensorRT and the CUDA bindings are optional and imported only inside the functions that need them, so a
CPU-only device never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..manifest import ArtifactFormat
from ..metrics import l2_normalize
from .gpu import engine_mismatch, gpu_info, gpu_install_problem, tensorrt_version
from .ort import GPU_PROVIDERS, TRT_EP_MAX_BATCH, OrtBackend, engine_cache_dir, onnxruntime, ort_gpu_providers, preload_cuda_libraries
from .tensorrt import TensorRTBackend, profile_chunks, run_in_profile, set_input_shape


class Backend(Protocol):
    """What the encoder and export validation need of a backend: a provider name, a batch limit, ``run``."""

    provider: str
    max_batch: int | None

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def open_backend(
    model: Path,
    fmt: ArtifactFormat,
    *,
    input_name: str,
    output_name: str,
    threads: int | None = None,
    providers: list[Any] | None = None,
) -> Backend:
    """The backend that serves a model file: ONNX Runtime (on ``providers``, default the CPU) or native TensorRT.

    Export validation opens its artifacts here too, so what it measures is what the encoder serves.
    """
    if fmt == "tensorrt":
        return TensorRTBackend(model, input_name=input_name, output_name=output_name)
    return OrtBackend(model, providers or ["CPUExecutionProvider"], threads=threads, input_name=input_name,
                      output_name=output_name)


def embed_batch(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """A preprocessed NCHW batch through ``backend`` in pieces it accepts, rows re-normalised: the served embedding.

    Re-normalising matters: the model's own L2 layer may have run in reduced precision.
    """
    step = backend.max_batch or len(batch)
    return l2_normalize(np.concatenate([backend.run(batch[i : i + step]) for i in range(0, len(batch), step)]))


__all__ = [
    "GPU_PROVIDERS",
    "TRT_EP_MAX_BATCH",
    "Backend",
    "OrtBackend",
    "TensorRTBackend",
    "embed_batch",
    "engine_cache_dir",
    "engine_mismatch",
    "gpu_info",
    "gpu_install_problem",
    "l2_normalize",
    "onnxruntime",
    "open_backend",
    "ort_gpu_providers",
    "preload_cuda_libraries",
    "profile_chunks",
    "run_in_profile",
    "set_input_shape",
    "tensorrt_version",
]
