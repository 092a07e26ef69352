"""The native TensorRT backend: a serialized TensorRT 10 engine run on buffers from cuda-python.

TensorRT is optional and imported only when an engine is opened. An engine accepts batches within its
optimization profile; :func:`run_in_profile` splits bigger ones and zero-pads smaller ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, IntegrityError, MissingDependency, require
from . import cuda


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


class TensorRTBackend:
    """A serialized TensorRT 10 engine run with ``execute_async_v3`` on buffers from cuda-python.

    Device buffers grow to the largest batch seen; batches outside the engine's optimization profile are
    split or zero-padded (:func:`run_in_profile`).
    """

    provider = "TensorRT (native)"

    def __init__(self, engine_file: Path, *, input_name: str, output_name: str):
        trt = require("tensorrt", "gpu")
        cudart = cuda.cudart()
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
        self.stream = cuda.cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = cuda.DeviceBuffers(cudart)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_profile(self._run_piece, batch, self.min_batch, self.max_batch)

    def _run_piece(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        host_in = np.ascontiguousarray(batch, dtype=self.input_dtype)
        set_input_shape(self.context, self.input_name, host_in.shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        host_out = np.empty(out_shape, dtype=self.output_dtype)
        d_in = self._buffers.get(self.input_name, host_in.nbytes)
        d_out = self._buffers.get(self.output_name, host_out.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda.cuda_call(
            cudart.cudaMemcpyAsync(d_in, host_in.ctypes.data, host_in.nbytes, h2d, self.stream), "cudaMemcpyAsync"
        )
        self.context.set_tensor_address(self.input_name, d_in)
        self.context.set_tensor_address(self.output_name, d_out)
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda.cuda_call(
            cudart.cudaMemcpyAsync(host_out.ctypes.data, d_out, host_out.nbytes, d2h, self.stream), "cudaMemcpyAsync"
        )
        cuda.cuda_call(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return host_out.astype(np.float32, copy=False)

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        buffers = getattr(self, "_buffers", None)
        if buffers is not None:
            buffers.free()
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
