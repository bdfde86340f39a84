"""The CUDA runtime calls that CUDA shared memory needs, behind one small typed seam.

Triton's ``cuda_shared_memory`` extension passes device memory between processes as a
``cudaIpcMemHandle_t`` (64 bytes): the client allocates and exports it, the server opens it. Both sides
need the same handful of calls, so both use this module: the server (``server.cuda_shm``) opens, copies and
closes; the client helpers (``clients.cuda_shm``) and ``tensorgate bench --shared-memory cuda`` allocate,
export and free.

cuda-python (``cuda.bindings.runtime``) is imported lazily, only by ``load_runtime``: it is an optional
dependency, and on a host without a driver its runtime API returns error 35 instead of raising, which
``load_runtime`` turns into a reason string. Every call sets the device first, because the current
device is per thread and the server calls from its event loop and its worker threads alike.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

import numpy as np

__all__ = ["HANDLE_SIZE", "CudaError", "CudaPythonRuntime", "CudaRuntime", "load_runtime"]

#: ``sizeof(cudaIpcMemHandle_t)`` (CUDA_IPC_HANDLE_SIZE)
HANDLE_SIZE = 64


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and the CUDA error."""


class CudaRuntime(Protocol):
    """What CUDA shared memory needs from a CUDA runtime. Pointers are device addresses as ints."""

    def device_count(self) -> int: ...

    def open_ipc_handle(self, raw_handle: bytes, device_id: int) -> tuple[int, int]:
        """Open another process's allocation; returns (pointer, size of the whole allocation in bytes)."""
        ...

    def close_ipc_handle(self, ptr: int, device_id: int) -> None: ...

    def copy_to_host(self, dst: np.ndarray[Any, np.dtype[np.uint8]], src: int, device_id: int) -> None:
        """Copy ``dst.nbytes`` bytes from device address ``src`` into the contiguous array ``dst``."""
        ...

    def copy_to_device(self, dst: int, src: bytes | memoryview, device_id: int) -> None: ...

    def malloc(self, byte_size: int, device_id: int) -> int: ...

    def free(self, ptr: int, device_id: int) -> None: ...

    def ipc_handle(self, ptr: int, device_id: int) -> bytes:
        """The 64 raw bytes of ``cudaIpcGetMemHandle(ptr)``: what CudaSharedMemoryRegister carries."""
        ...


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(error, *values)``: raise CudaError unless the error is cudaSuccess (0)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", None) or f"CUDA error {int(err)}"
        raise CudaError(f"{what} failed: {name} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class CudaPythonRuntime:
    """``CudaRuntime`` over cuda-python's runtime API (and the driver API for an allocation's size)."""

    def __init__(self) -> None:
        from cuda.bindings import runtime

        self._rt: Any = runtime
        self._driver: Any = None

    def _device(self, device_id: int) -> None:
        _check(self._rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")

    def device_count(self) -> int:
        return int(_check(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def open_ipc_handle(self, raw_handle: bytes, device_id: int) -> tuple[int, int]:
        if len(raw_handle) != HANDLE_SIZE:
            raise CudaError(f"a CUDA IPC handle has {HANDLE_SIZE} bytes, not {len(raw_handle)}")
        self._device(device_id)
        # cuda-bindings 13 exposes the handle's bytes only by address: build it over a buffer we own
        buffer = ctypes.create_string_buffer(raw_handle, HANDLE_SIZE)
        handle = self._rt.cudaIpcMemHandle_t(_ptr=ctypes.addressof(buffer))
        ptr = int(_check(self._rt.cudaIpcOpenMemHandle(handle, self._rt.cudaIpcMemLazyEnablePeerAccess),
                         "cudaIpcOpenMemHandle"))
        try:
            return ptr, self._allocation_size(ptr)
        except Exception:
            self._rt.cudaIpcCloseMemHandle(ptr)
            raise

    def _allocation_size(self, ptr: int) -> int:
        """Bytes of the allocation that starts at ``ptr`` (cuMemGetAddressRange), so claims can be checked."""
        if self._driver is None:
            from cuda.bindings import driver

            self._driver = driver
        base, size = _check(self._driver.cuMemGetAddressRange(ptr), "cuMemGetAddressRange")
        return int(size) - (ptr - int(base))

    def close_ipc_handle(self, ptr: int, device_id: int) -> None:
        self._device(device_id)
        _check(self._rt.cudaIpcCloseMemHandle(ptr), "cudaIpcCloseMemHandle")

    def copy_to_host(self, dst: np.ndarray[Any, np.dtype[np.uint8]], src: int, device_id: int) -> None:
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError("copy_to_host needs a contiguous, writable array")
        self._device(device_id)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._rt.cudaMemcpy(dst.ctypes.data, src, dst.nbytes, kind), "cudaMemcpy device to host")

    def copy_to_device(self, dst: int, src: bytes | memoryview, device_id: int) -> None:
        host = np.frombuffer(src, dtype=np.uint8)
        self._device(device_id)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._rt.cudaMemcpy(dst, host.ctypes.data, host.nbytes, kind), "cudaMemcpy host to device")

    def malloc(self, byte_size: int, device_id: int) -> int:
        self._device(device_id)
        return int(_check(self._rt.cudaMalloc(byte_size), f"cudaMalloc({byte_size})"))

    def free(self, ptr: int, device_id: int) -> None:
        self._device(device_id)
        _check(self._rt.cudaFree(ptr), "cudaFree")

    def ipc_handle(self, ptr: int, device_id: int) -> bytes:
        self._device(device_id)
        handle = _check(self._rt.cudaIpcGetMemHandle(ptr), "cudaIpcGetMemHandle")
        return bytes((ctypes.c_char * HANDLE_SIZE).from_address(handle.getPtr()))


def load_runtime() -> tuple[CudaRuntime | None, str]:
    """The CUDA runtime when this host can use CUDA shared memory, else None and the reason.

    Returns:
        ``(runtime, "")`` with at least one device, or ``(None, reason)``: cuda-python missing, no driver,
        a driver older than the runtime, or no device.
    """
    try:
        runtime = CudaPythonRuntime()
    except ImportError:
        return None, "cuda-python is not installed (pip install cuda-bindings)"
    try:
        count = runtime.device_count()
    except CudaError as exc:
        return None, f"no usable GPU: {exc}"
    if count < 1:
        return None, "no usable GPU: CUDA reports 0 devices"
    return runtime, ""
