"""All of a server's shared-memory regions, system and CUDA, behind the two calls the wire codec makes.

A tensor's ``shared_memory_region`` names a region without saying its kind (protocol.md 1.5), so reads and
writes go to whichever kind holds the name; both kinds share one namespace (``RegionNamespace``).
"""

from __future__ import annotations

from tensorgate.clients.cuda_runtime import load_runtime as _load_runtime

from .cuda_shm import CudaSharedMemoryRegions, RuntimeLoader
from .shm import RegionNamespace, SharedMemoryRegions

__all__ = ["SharedMemory"]


class SharedMemory:
    """``system`` and ``cuda`` regions of one server; ``read``/``write`` dispatch on the region's name.

    Args:
        allowed: ``--allow-client-shm`` (both kinds).
        cuda_loader: finds the CUDA runtime (tests hand in their own; the default uses cuda-python).
    """

    def __init__(self, allowed: bool = False, cuda_loader: RuntimeLoader = _load_runtime) -> None:
        names = RegionNamespace()
        self.system = SharedMemoryRegions(allowed, names=names)
        self.cuda = CudaSharedMemoryRegions(allowed, names=names, loader=cuda_loader)

    def read(self, name: str, offset: int, byte_size: int) -> bytes | memoryview:
        """A host copy of [offset, offset + byte_size) of region ``name``."""
        if self.cuda.has(name):
            return self.cuda.read(name, offset, byte_size)
        return self.system.read(name, offset, byte_size)

    def write(self, name: str, offset: int, byte_size: int, data: bytes | memoryview) -> None:
        """Copy ``data`` into region ``name`` at ``offset``; it must fit in ``byte_size``."""
        if self.cuda.has(name):
            self.cuda.write(name, offset, byte_size, data)
        else:
            self.system.write(name, offset, byte_size, data)

    def close(self) -> None:
        """Unmap every system region and close every CUDA handle."""
        self.system.close()
        self.cuda.close()
