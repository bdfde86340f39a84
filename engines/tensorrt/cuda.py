"""Thin, checked wrappers over cuda-python's runtime API: streams, pinned host and device buffers.

cuda-python returns ``(error, value)`` tuples instead of raising, so every call
goes through ``check``. Buffers are freed explicitly (``free``), never by the
garbage collector, and a freed buffer forgets its pointer so a second free is
harmless. Imported only after a positive GPU probe.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt

from ..base import EngineError

__all__ = [
    "CudaError",
    "DeviceBuffer",
    "HostBuffer",
    "Stream",
    "check",
    "error_name",
    "mem_info",
    "memcpy_d2h",
    "memcpy_h2d",
    "set_device",
]


class CudaError(EngineError):
    """A CUDA runtime call failed."""


def _rt() -> Any:
    from cuda.bindings import runtime

    return runtime


def error_name(err: Any) -> str:
    """The name of a runtime (``cudaError_t``) or driver (``CUresult``) error: each enum names its own members.

    The runtime's ``cudaGetErrorName`` would misname a driver result (the codes differ), and the driver's
    ``cuGetErrorName`` needs libcuda, which is what may be missing.
    """
    name = getattr(err, "name", None)
    return f"{name} ({int(err)})" if name else f"CUDA error {int(err)}"


def check(result: Any, what: str) -> Any:
    """Raise CudaError unless ``result`` (cuda-python's tuple or bare error, runtime or driver) is success.

    Returns:
        The call's value (a tuple when it has several), or None.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # cudaSuccess and CUDA_SUCCESS are both 0
        raise CudaError(f"{what} failed: {error_name(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def set_device(index: int) -> None:
    check(_rt().cudaSetDevice(index), f"cudaSetDevice({index})")


def mem_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    free, total = check(_rt().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


class Stream:
    """A non-default CUDA stream on the current device."""

    def __init__(self) -> None:
        self.handle: Any = check(_rt().cudaStreamCreateWithFlags(_rt().cudaStreamNonBlocking), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(_rt().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def free(self) -> None:
        if self.handle is not None:
            _rt().cudaStreamDestroy(self.handle)
            self.handle = None


class HostBuffer:
    """Page-locked host memory (fast, asynchronous copies), seen from numpy as bytes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr: int = int(check(_rt().cudaMallocHost(max(1, nbytes)), f"cudaMallocHost({nbytes})"))
        self._bytes: npt.NDArray[np.uint8] = np.ctypeslib.as_array(
            (ctypes.c_uint8 * max(1, nbytes)).from_address(self.ptr)
        )

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
        count = int(np.prod(shape, dtype=np.int64))
        return self._bytes[: count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            _rt().cudaFreeHost(self.ptr)
            self.ptr = 0


class DeviceBuffer:
    """Device memory on the current device."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr: int = int(check(_rt().cudaMalloc(max(1, nbytes)), f"cudaMalloc({nbytes})"))

    def free(self) -> None:
        if self.ptr:
            _rt().cudaFree(self.ptr)
            self.ptr = 0


def memcpy_h2d(dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Stream) -> None:
    rt = _rt()
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync H2D")


def memcpy_d2h(dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    rt = _rt()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync D2H")
