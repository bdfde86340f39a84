"""CUDA shared memory on hosts without a GPU: a CUDA runtime made of host memory, and the GPU probe.

``HostCudaRuntime`` implements ``tensorgate.clients.cuda_runtime.CudaRuntime`` (the seam the server and the
client helpers call) over numpy buffers: "device" pointers are made-up addresses, an IPC handle carries a
magic tag and the allocation's address, and every copy is checked against the allocation as the CUDA
driver checks it. The server, its validation, bounds, locks and bookkeeping run for real on top of it; only
the device memory is host memory. It counts open handles, so a test can see that nothing stays open.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from tensorgate.clients.cuda_runtime import HANDLE_SIZE, CudaError, load_runtime

_MAGIC = b"tensorgate-host-ipc\x00"
_BASE = 0x7F00_0000_0000

GPU_RUNTIME, GPU_REASON = load_runtime()  # what this host really has


class HostCudaRuntime:
    """A CUDA runtime over host memory for ``devices`` pretend GPUs (one address space: this process)."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self._allocations: dict[int, tuple[np.ndarray[Any, np.dtype[np.uint8]], int]] = {}  # base -> (bytes, dev)
        self._next = _BASE
        self.open_handles: dict[int, int] = {}  # opened pointer -> count
        self._lock = threading.Lock()

    def device_count(self) -> int:
        return self.devices

    def allocated(self) -> int:
        """Allocations not freed yet."""
        with self._lock:
            return len(self._allocations)

    def _find(self, ptr: int, size: int) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], int]:
        with self._lock:
            for base, (memory, _) in self._allocations.items():
                if base <= ptr and ptr + size <= base + memory.nbytes:
                    return memory, ptr - base
        raise CudaError("cudaMemcpy failed: cudaErrorInvalidValue (1)")

    def malloc(self, byte_size: int, device_id: int) -> int:
        with self._lock:
            ptr = self._next
            self._next += byte_size + (-byte_size % 4096) + 4096
            self._allocations[ptr] = (np.zeros(byte_size, dtype=np.uint8), device_id)
        return ptr

    def free(self, ptr: int, device_id: int) -> None:
        with self._lock:
            if self._allocations.pop(ptr, None) is None:
                raise CudaError("cudaFree failed: cudaErrorInvalidValue (1)")

    def ipc_handle(self, ptr: int, device_id: int) -> bytes:
        return (_MAGIC + ptr.to_bytes(8, "little")).ljust(HANDLE_SIZE, b"\x00")

    def open_ipc_handle(self, raw_handle: bytes, device_id: int) -> tuple[int, int]:
        if not raw_handle.startswith(_MAGIC) or len(raw_handle) != HANDLE_SIZE:
            raise CudaError("cudaIpcOpenMemHandle failed: cudaErrorInvalidResourceHandle (400)")
        ptr = int.from_bytes(raw_handle[len(_MAGIC):len(_MAGIC) + 8], "little")
        with self._lock:
            allocation = self._allocations.get(ptr)
            if allocation is None or allocation[1] != device_id:
                raise CudaError("cudaIpcOpenMemHandle failed: cudaErrorInvalidResourceHandle (400)")
            self.open_handles[ptr] = self.open_handles.get(ptr, 0) + 1
        return ptr, allocation[0].nbytes

    def close_ipc_handle(self, ptr: int, device_id: int) -> None:
        with self._lock:
            count = self.open_handles.get(ptr, 0)
            if not count:
                raise CudaError("cudaIpcCloseMemHandle failed: cudaErrorInvalidValue (1)")
            if count == 1:
                del self.open_handles[ptr]
            else:
                self.open_handles[ptr] = count - 1

    def copy_to_host(self, dst: np.ndarray[Any, np.dtype[np.uint8]], src: int, device_id: int) -> None:
        memory, start = self._find(src, dst.nbytes)
        dst[:] = memory[start:start + dst.nbytes]

    def copy_to_device(self, dst: int, src: bytes | memoryview, device_id: int) -> None:
        data = np.frombuffer(src, dtype=np.uint8)
        memory, start = self._find(dst, data.nbytes)
        memory[start:start + data.nbytes] = data
