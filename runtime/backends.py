"""Inference backends behind :class:`~proxyembed.runtime.encoder.Encoder`: ONNX Runtime and native TensorRT.

Each backend runs one NCHW float32 batch and returns the raw (N, D) output; choosing among them and
normalising is the encoder's job. TensorRT and the CUDA bindings are optional and imported only here,
inside the functions that need them, so a CPU-only device never loads them. The native TensorRT backend
manages GPU memory with ``cuda-python`` (``cuda.bindings.runtime``), not torch.

Library output stays off stdout: ONNX Runtime prints its provider fall-backs ("EP Error ... Falling back")
and ``preload_dlls`` its warnings with ``print``, which would corrupt ``proxyembed search --json``; both
run with stdout sent to stderr. A requested GPU provider that is not the one in use is a warning on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import BadInput, IntegrityError, MissingDependency, require
from .manifest import ArtifactFormat
from .system import user_cache_dir

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TRT_EP_MAX_BATCH = 64
"""Largest batch of the ONNX Runtime TensorRT provider's optimization profile; bigger batches are split."""


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


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (all-zero rows stay zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def embed_batch(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """A preprocessed NCHW batch through ``backend`` in pieces it accepts, rows re-normalised: the served embedding.

    Re-normalising matters: the model's own L2 layer may have run in reduced precision.
    """
    step = backend.max_batch or len(batch)
    return l2_normalize(np.concatenate([backend.run(batch[i : i + step]) for i in range(0, len(batch), step)]))


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


def gpu_info() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0 via cuda-python, or None without a GPU or bindings."""
    cudart = _cudart()
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


def set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    """``context.set_input_shape``, which returns False (and keeps the old shape) outside the profile."""
    if not context.set_input_shape(name, tuple(shape)):
        raise BadInput(
            f"TensorRT refused input shape {tuple(shape)} for '{name}': outside the engine's optimization profile",
            hint="rebuild the engine with a wider --trt-min-batch / --trt-max-batch",
        )


def profile_chunks(batch: np.ndarray, min_batch: int, max_batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """``batch`` cut into pieces an engine with batch profile ``min_batch..max_batch`` accepts.

    Yields (piece, rows): pieces over ``max_batch`` are split, a piece under ``min_batch`` is zero-padded
    and only its first ``rows`` outputs are real.
    """
    for start in range(0, len(batch), max_batch):
        piece = batch[start : start + max_batch]
        rows = len(piece)
        if rows < min_batch:
            piece = np.concatenate([piece, np.zeros((min_batch - rows, *piece.shape[1:]), piece.dtype)])
        yield piece, rows


def run_in_profile(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, min_batch: int, max_batch: int) -> np.ndarray:
    """``run`` on each :func:`profile_chunks` piece of ``batch``, padding rows dropped, outputs concatenated."""
    return np.concatenate([run(piece)[:rows] for piece, rows in profile_chunks(batch, min_batch, max_batch)])


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _cuda_call(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call {what} failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class TensorRTBackend:
    """A serialized TensorRT 10 engine run with ``execute_async_v3`` on buffers from cuda-python.

    Device buffers grow to the largest batch seen; batches outside the engine's optimization profile are
    split or zero-padded (:func:`run_in_profile`).
    """

    provider = "TensorRT (native)"

    def __init__(self, engine_file: Path, *, input_name: str, output_name: str):
        trt = require("tensorrt", "gpu")
        cudart = _cudart()
        if cudart is None:
            raise MissingDependency("the native TensorRT backend needs cuda-python", hint="pip install cuda-python")
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if self.engine is None:
            raise IntegrityError(
                f"TensorRT cannot deserialize {engine_file}",
                hint="rebuild the engine on this GPU with `proxyembed export`",
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if input_name not in names or output_name not in names:
            raise IntegrityError(
                f"{engine_file} has tensors {names}; the manifest expects '{input_name}' -> '{output_name}'"
            )
        self.input_name, self.output_name = input_name, output_name
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(output_name)))
        profile = self.engine.get_tensor_profile_shape(input_name, 0)  # (min, opt, max) shapes
        self.min_batch, self.max_batch = int(profile[0][0]), int(profile[2][0])
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda_call(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_cuda_call(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_profile(self._run_piece, batch, self.min_batch, self.max_batch)

    def _run_piece(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        host_in = np.ascontiguousarray(batch, dtype=self.input_dtype)
        set_input_shape(self.context, self.input_name, host_in.shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        host_out = np.empty(out_shape, dtype=self.output_dtype)
        d_in = self._buffer(self.input_name, host_in.nbytes)
        d_out = self._buffer(self.output_name, host_out.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(
            cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes, h2d, self.stream), "cudaMemcpyAsync"
        )
        self.context.set_tensor_address(self.input_name, d_in)
        self.context.set_tensor_address(self.output_name, d_out)
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _cuda_call(
            cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, d2h, self.stream), "cudaMemcpyAsync"
        )
        _cuda_call(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out.astype(np.float32, copy=False)

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
