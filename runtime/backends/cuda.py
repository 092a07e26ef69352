"""CUDA through ``cuda-python`` (``cuda.bindings.runtime``), not torch: the bindings, checked calls, device memory.

Optional and imported only inside these functions, so a CPU-only device never loads them.
"""

from __future__ import annotations

from typing import Any


def cudart() -> Any:
    """The CUDA runtime bindings of cuda-python, or None when it is not installed."""
    try:
        from cuda.bindings import runtime as bindings  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as bindings  # older cuda-python
        except ImportError:
            return None
    return bindings


def cuda_call(result: Any, what: str) -> Any:
    """The value of a cuda-python call that returns ``(error, value...)``; a non-zero error raises."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call {what} failed with error {err}")
    return rest[0] if len(rest) == 1 else rest


class DeviceBuffers:
    """Named device allocations that grow to the largest size asked for and are freed together.

    An engine's input and output buffers are reused batch after batch; a bigger batch reallocates.
    """

    def __init__(self, runtime: Any) -> None:
        self._cudart = runtime
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def get(self, name: str, nbytes: int) -> int:
        """A device pointer to at least ``nbytes`` bytes for ``name`` (its earlier contents are not kept on growth)."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_call(self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(cuda_call(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def free(self) -> None:
        """Release every allocation (at the owner's end of life; errors there cannot be acted on)."""
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
