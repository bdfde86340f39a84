"""Client side of CUDA shared memory: device memory a server can read inputs from and write outputs to.

The shape of ``tritonclient.utils.cuda_shared_memory``: create a region on a device, register its
``raw_handle`` with the server (CudaSharedMemoryRegister), name it in a tensor's ``shared_memory_region``
parameter, read outputs back, destroy it. Usage::

    region = CudaRegion.create(byte_size=1 << 20, device_id=0)
    region.write(np.ones((1, 16), np.float32).tobytes())
    stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(
        name="in", raw_handle=region.raw_handle, device_id=0, byte_size=region.byte_size))
    ...
    region.destroy()  # after unregistering it

Raises ``CudaError`` (``clients.cuda_runtime``) when a CUDA call fails or the host has no usable GPU.
"""

from __future__ import annotations

import numpy as np

from .cuda_runtime import CudaError, CudaRuntime, load_runtime

__all__ = ["CudaRegion"]


class CudaRegion:
    """One device allocation exported for another process; freed by ``destroy`` (or leaving ``with``)."""

    def __init__(self, runtime: CudaRuntime, ptr: int, byte_size: int, device_id: int) -> None:
        self._runtime = runtime
        self.ptr = ptr
        self.byte_size = byte_size
        self.device_id = device_id
        self.raw_handle = runtime.ipc_handle(ptr, device_id)

    @classmethod
    def create(cls, byte_size: int, device_id: int = 0, runtime: CudaRuntime | None = None) -> CudaRegion:
        """Allocate ``byte_size`` bytes on ``device_id`` and export them.

        Raises:
            CudaError: no usable GPU here, or the allocation failed.
            ValueError: byte_size is not positive.
        """
        if byte_size <= 0:
            raise ValueError("a CUDA shared memory region needs byte_size > 0")
        if runtime is None:
            runtime, reason = load_runtime()
            if runtime is None:
                raise CudaError(f"CUDA shared memory is not available on this host: {reason}")
        ptr = runtime.malloc(byte_size, device_id)
        try:
            return cls(runtime, ptr, byte_size, device_id)
        except Exception:
            runtime.free(ptr, device_id)
            raise

    def _bounds(self, offset: int, size: int) -> None:
        if self.ptr == 0:
            raise ValueError("the CUDA region was destroyed")
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise ValueError(f"[{offset}, {offset + size}) is outside the region's {self.byte_size} bytes")

    def write(self, data: bytes | memoryview, offset: int = 0) -> None:
        """Copy ``data`` to the device at ``offset``."""
        size = len(data) if isinstance(data, bytes) else data.nbytes
        self._bounds(offset, size)
        self._runtime.copy_to_device(self.ptr + offset, data, self.device_id)

    def read(self, size: int, offset: int = 0) -> bytes:
        """``size`` bytes from ``offset``, copied to the host."""
        self._bounds(offset, size)
        out = np.empty(size, dtype=np.uint8)
        if size:
            self._runtime.copy_to_host(out, self.ptr + offset, self.device_id)
        return out.tobytes()

    def destroy(self) -> None:
        """Free the device memory (unregister it from servers first); a second call does nothing."""
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self._runtime.free(ptr, self.device_id)

    def __enter__(self) -> CudaRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
