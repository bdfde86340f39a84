"""CUDA shared-memory regions (Triton's ``cuda_shared_memory`` extension), opened through CUDA IPC.

A client allocates device memory, exports it with ``cudaIpcGetMemHandle`` and registers the 64 raw bytes
(name, raw_handle, device_id, byte_size); the server opens the handle (``cudaIpcOpenMemHandle``) and a
tensor then names the region instead of carrying bytes. The engines here take host arrays, so an input in
a CUDA region is copied device to host at decode, and an output is copied host to device at encode.

What a hostile or careless client could try, and what stops it:
- a handle of the wrong size, a device that does not exist, a zero or absurd byte_size: refused before
  anything is opened; a byte_size larger than the allocation behind the handle: refused once it is open
  (``cuMemGetAddressRange``), so no later copy can reach past the client's allocation into other memory
  this process has mapped;
- offsets and sizes past the region at each use: checked, as for system regions;
- unregistering while a request copies: every copy holds the region's lock and the handle is closed
  under the same lock, so a copy finishes first or finds the region gone (INVALID_ARGUMENT); nothing
  keeps a device pointer past the call;
- any use at all: off unless ``--allow-client-shm true`` (the same switch as system regions).

Without a usable GPU (or without cuda-python) registration answers as Triton built without GPUs does:
INVALID_ARGUMENT "failed to register CUDA shared memory region: '<name>', GPUs not supported"; status
lists none and unregistering succeeds with nothing to do (perf_analyzer's cleanup calls it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tensorgate.clients.cuda_runtime import HANDLE_SIZE, CudaError, CudaRuntime, load_runtime

from .errors import InternalError, InvalidArgumentError, NotFoundError, UnavailableError
from .shm import RegionNamespace, checked_region_name

__all__ = ["MAX_REGION_BYTES", "CudaRegionInfo", "CudaSharedMemoryRegions"]

log = logging.getLogger("tensorgate.cuda_shm")

#: the largest byte_size looked at before opening a handle (no GPU has 1 TiB; the allocation's real size is
#: checked once the handle is open)
MAX_REGION_BYTES = 1 << 40

RuntimeLoader = Callable[[], "tuple[CudaRuntime | None, str]"]


@dataclass(frozen=True)
class CudaRegionInfo:
    name: str
    device_id: int
    byte_size: int


class _CudaRegion:
    """One opened IPC handle; ``ptr`` is None once closed."""

    def __init__(self, info: CudaRegionInfo, ptr: int) -> None:
        self.info = info
        self.ptr: int | None = ptr
        self.lock = threading.Lock()


class CudaSharedMemoryRegions:
    """The registered CUDA regions of one server, safe to use from the event loop and worker threads alike.

    Args:
        allowed: ``--allow-client-shm``.
        names: the namespace shared with the system regions.
        loader: finds the CUDA runtime (``(runtime, "")``, or ``(None, reason)`` on a host without GPUs);
            called once, on first use.
    """

    def __init__(self, allowed: bool = False, names: RegionNamespace | None = None,
                 loader: RuntimeLoader = load_runtime) -> None:
        self.allowed = allowed
        self._names = names or RegionNamespace()
        self._loader = loader
        self._loaded: tuple[CudaRuntime | None, str] | None = None
        self._regions: dict[str, _CudaRegion] = {}
        self._lock = threading.Lock()

    def _runtime(self) -> tuple[CudaRuntime | None, str]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._loader()
                if self._loaded[0] is None:
                    log.info("CUDA shared memory is unavailable: %s", self._loaded[1])
            return self._loaded

    @property
    def available(self) -> bool:
        """Whether CUDA regions can be registered on this host (cuda-python and at least one GPU)."""
        return self._runtime()[0] is not None

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open ``raw_handle`` (a cudaIpcMemHandle_t) on ``device_id`` as region ``name``."""
        if not self.allowed:
            raise UnavailableError(
                "client shared memory is turned off on this server; start it with --allow-client-shm true"
            )
        checked_region_name(name)
        if len(raw_handle) != HANDLE_SIZE:
            raise InvalidArgumentError(f"CUDA shared memory region '{name}': raw_handle must be the "
                                       f"{HANDLE_SIZE} bytes of a cudaIpcMemHandle_t, got {len(raw_handle)}")
        if not 0 < byte_size <= MAX_REGION_BYTES:
            raise InvalidArgumentError(f"CUDA shared memory region '{name}': byte_size must be > 0 and at "
                                       f"most {MAX_REGION_BYTES}, got {byte_size}")
        runtime, reason = self._runtime()
        if runtime is None:
            raise InvalidArgumentError(f"failed to register CUDA shared memory region: '{name}', GPUs not "
                                       f"supported ({reason})")
        count = runtime.device_count()
        if not 0 <= device_id < count:
            raise InvalidArgumentError(f"CUDA shared memory region '{name}': device_id {device_id} does not "
                                       f"exist (this server has {count} GPU{'s' if count != 1 else ''})")
        self._names.claim(name)
        try:
            ptr = self._open(runtime, name, raw_handle, device_id, byte_size)
        except BaseException:
            self._names.release(name)
            raise
        with self._lock:
            self._regions[name] = _CudaRegion(CudaRegionInfo(name, device_id, byte_size), ptr)

    @staticmethod
    def _open(runtime: CudaRuntime, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> int:
        try:
            ptr, allocated = runtime.open_ipc_handle(raw_handle, device_id)
        except CudaError as exc:  # Triton's answer; the CUDA error name says what was wrong with the handle
            raise InvalidArgumentError(f"failed to register CUDA shared memory region '{name}': failed to "
                                       f"open CUDA IPC handle: {exc}") from None
        if byte_size > allocated:
            _close(runtime, ptr, device_id, name)
            raise InvalidArgumentError(f"CUDA shared memory region '{name}': byte_size {byte_size} is larger "
                                       f"than the allocation behind the handle ({allocated} bytes)")
        return ptr

    def unregister(self, name: str) -> None:
        """Close region ``name`` (all regions when empty); an unknown name is not an error (Triton's rule)."""
        with self._lock:
            if name:
                regions = [r for r in [self._regions.pop(name, None)] if r is not None]
            else:
                regions = list(self._regions.values())
                self._regions.clear()
            runtime = self._loaded[0] if self._loaded is not None else None
        for region in regions:
            with region.lock:  # waits for a copy in progress
                ptr, region.ptr = region.ptr, None
            if ptr is not None and runtime is not None:
                _close(runtime, ptr, region.info.device_id, region.info.name)
            self._names.release(region.info.name)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._regions

    def status(self, name: str) -> list[CudaRegionInfo]:
        with self._lock:
            if not name:
                return [r.info for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"unable to find cuda shared memory region: '{name}'")
        return [region.info]

    @contextmanager
    def _window(self, name: str, offset: int, byte_size: int) -> Iterator[tuple[CudaRuntime, int, int]]:
        """(runtime, device pointer of ``offset``, device) for [offset, offset + byte_size) of ``name``, locked."""
        with self._lock:
            region = self._regions.get(name)
            runtime = self._loaded[0] if self._loaded is not None else None
        if region is None or runtime is None:
            raise InvalidArgumentError(f"unable to find cuda shared memory region: '{name}'")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.info.byte_size:
            raise InvalidArgumentError(
                f"shared memory region '{name}': offset {offset} + byte_size {byte_size} is outside the "
                f"region's {region.info.byte_size} bytes"
            )
        with region.lock:
            if region.ptr is None:  # unregistered between the lookup and the lock
                raise InvalidArgumentError(f"unable to find cuda shared memory region: '{name}'")
            try:
                yield runtime, region.ptr + offset, region.info.device_id
            except CudaError as exc:
                log.error("CUDA shared memory region %r: %s", name, exc)
                raise InternalError(f"a copy through CUDA shared memory region '{name}' failed") from exc

    def read(self, name: str, offset: int, byte_size: int) -> bytes | memoryview:
        """The window copied to host memory (the request may outlive the region)."""
        host = np.empty(byte_size, dtype=np.uint8)
        with self._window(name, offset, byte_size) as (runtime, ptr, device):
            if byte_size:
                runtime.copy_to_host(host, ptr, device)
        return host.data

    def write(self, name: str, offset: int, byte_size: int, data: bytes | memoryview) -> None:
        """Copy ``data`` to the window on the device; it must fit in ``byte_size``."""
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size > byte_size:
            raise InvalidArgumentError(
                f"shared memory region '{name}': the output needs {size} bytes, the request gave {byte_size}"
            )
        with self._window(name, offset, byte_size) as (runtime, ptr, device):
            if size:
                runtime.copy_to_device(ptr, data, device)

    def close(self) -> None:
        self.unregister("")


def _close(runtime: CudaRuntime, ptr: int, device_id: int, name: str) -> None:
    """Close an IPC handle; a failure is logged (the region is gone either way, and the caller cannot help)."""
    try:
        runtime.close_ipc_handle(ptr, device_id)
    except CudaError as exc:
        log.error("CUDA shared memory region %r: %s", name, exc)
