"""The ONNX Runtime backend: a session on the CPU or on ONNX Runtime's CUDA / TensorRT execution providers.

Library output stays off stdout: ONNX Runtime prints its provider fall-backs ("EP Error ... Falling back")
and ``preload_dlls`` its warnings with ``print``, which would corrupt ``proxyembed search --json``; both
run with stdout sent to stderr. A requested GPU provider that is not the one in use is a warning on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError, MissingDependency
from ..system import user_cache_dir

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TRT_EP_MAX_BATCH = 64
"""Largest batch of the ONNX Runtime TensorRT provider's optimization profile; bigger batches are split."""


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`MissingDependency` naming the two ways to get it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependency(
            "onnxruntime is not installed",
            hint='pip install "proxyembed[cpu]", or "proxyembed[gpu]" for CUDA / TensorRT (see docs/gpu.md)',
        ) from exc
    return ort


def _provider_name(entry: Any) -> str:
    return entry[0] if isinstance(entry, tuple) else str(entry)


class OrtBackend:
    """An ONNX Runtime session on the given execution providers (the first available one wins)."""

    max_batch: int | None = None

    def __init__(self, model: Path, providers: list[Any], *, threads: int | None, input_name: str, output_name: str):
        ort = onnxruntime()

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads <= 0:
                raise BadInput(f"threads must be positive, got {threads}")
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # keep provider fallbacks out of the user's terminal; we report them
        try:
            with contextlib.redirect_stdout(sys.stderr):
                self.session = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise IntegrityError(
                f"ONNX Runtime cannot load {model}: {exc}".splitlines()[0], hint="re-export the bundle"
            ) from exc
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if input_name not in names_in or output_name not in names_out:
            raise IntegrityError(
                f"{model} has inputs {names_in} and outputs {names_out}; "
                f"the manifest expects '{input_name}' -> '{output_name}'"
            )
        self.input_name, self.output_name = input_name, output_name
        in_type = next(i.type for i in self.session.get_inputs() if i.name == input_name)
        self.input_dtype = np.float16 if in_type == "tensor(float16)" else np.float32
        self.provider: str = self.session.get_providers()[0]
        requested = _provider_name(providers[0]) if providers else self.provider
        if requested in GPU_PROVIDERS and self.provider != requested:
            warnings.warn(
                f"ONNX Runtime runs {model.name} on {self.provider}, not the requested {requested} "
                f"(its CUDA/cuDNN/TensorRT libraries did not load; see docs/gpu.md)",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.provider == "TensorrtExecutionProvider":
            self.max_batch = TRT_EP_MAX_BATCH

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)


def ort_gpu_providers(input_name: str, crop: int) -> list[Any]:
    """The GPU provider list ONNX Runtime offers here, best first, followed by the CPU fallback.

    Every artifact already carries its types (fp16 casts, int8 Q/DQ nodes), so the TensorRT provider gets
    no ``trt_fp16_enable`` / ``trt_int8_enable``: those make it build weakly typed, free to lower the fp32
    head and L2 normalisation to fp16 (ORT TensorRT EP docs, ``trt_fp16_enable``). An explicit
    batch profile 1..:data:`TRT_EP_MAX_BATCH` keeps a batch of 1 followed by one of 32 from rebuilding the
    engine (ORT TensorRT EP docs, ``trt_profile_min/opt/max_shapes``).
    """
    available = onnxruntime().get_available_providers()
    if not any(p in available for p in GPU_PROVIDERS):
        return []
    preload_cuda_libraries()
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        shape = f"3x{crop}x{crop}"
        options: dict[str, Any] = {
            "trt_profile_min_shapes": f"{input_name}:1x{shape}",
            "trt_profile_opt_shapes": f"{input_name}:32x{shape}",  # Encoder.encode's default batch
            "trt_profile_max_shapes": f"{input_name}:{TRT_EP_MAX_BATCH}x{shape}",
        }
        cache = engine_cache_dir()
        if cache is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache))
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    return providers + ["CPUExecutionProvider"]


def engine_cache_dir() -> Path | None:
    """The TensorRT provider's engine cache folder, created here (with its parents), or None if it cannot be.

    The provider itself creates only the last path component and, when the parent is missing, fails and
    falls back to CUDA (``trt_engine_cache_path``).
    """
    cache = user_cache_dir() / "trt-ep"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.warn(f"TensorRT engine cache disabled: cannot create {cache} ({exc.strerror})", RuntimeWarning, stacklevel=3)
        return None
    return cache


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA / cuDNN from the nvidia pip wheels once, so the CUDA provider works without torch.

    ``onnxruntime.preload_dlls()`` (ORT >= 1.21) is what makes ``onnxruntime-gpu[cuda,cudnn]`` usable in a
    process that never imports torch (``index``, ``search``, ``check``); torch loads the same libraries
    itself. Its messages are printed, so they go to stderr.
    """
    preload = getattr(onnxruntime(), "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(sys.stderr):
            preload()


