"""Shared-memory arenas between a front end and the engine core: tensors cross here, never pickled.

An arena is an anonymous memfd (no name in /dev/shm or on any disk, so nothing can
leak after a kill: the memory goes with the last process that maps it), mapped by
both processes. The side that writes a block allocates it (first fit over a sorted
free list, 64-byte aligned); the other side only reads it, after checking that the
block lies inside the arena. A tensor that does not fit (oversized, or the arena is
full) travels inline in the message instead: slower, never a failure.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorgate.clients.codec import deserialize_bytes_tensor, serialize_bytes_tensor

__all__ = ["BYTES_CODE", "DTYPES", "DTYPE_CODES", "Allocator", "Arena", "ArenaError"]

_ALIGN = 64

# wire code <-> numpy dtype; BYTES (object arrays) travel in Triton's length-prefixed form
DTYPES: tuple[np.dtype[Any], ...] = (
    np.dtype(np.bool_), np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"),
    np.dtype("<i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<i8"),
    np.dtype("<f2"), np.dtype("<f4"), np.dtype("<f8"), np.dtype(np.object_),
)
DTYPE_CODES: dict[np.dtype[Any], int] = {d: i for i, d in enumerate(DTYPES)}
BYTES_CODE = DTYPE_CODES[np.dtype(np.object_)]


class ArenaError(ValueError):
    """A block or tensor description that does not fit the arena (refused, never read)."""


class Arena:
    """One shared mapping; ``fd`` is handed to the other process, which maps it with ``Arena.attach``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)
        self.view = memoryview(self._map)
        self._array = np.frombuffer(self._map, dtype=np.uint8)

    @classmethod
    def create(cls, size: int, name: str = "tensorgate-arena") -> Arena:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        # sealed at its size: neither side can shrink it under the other's mapping (a read past the end of
        # a shrunk file would kill the reader with SIGBUS)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        return cls(fd, size)

    @classmethod
    def attach(cls, fd: int) -> Arena:
        """Map an arena the other side created; refused unless its size is sealed."""
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & fcntl.F_SEAL_SHRINK:
            raise ArenaError("an arena must be sealed against shrinking")
        return cls(fd, os.fstat(fd).st_size)

    def check(self, offset: int, nbytes: int) -> None:
        """Raises ArenaError unless [offset, offset + nbytes) lies inside the arena."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ArenaError(f"block [{offset}, {offset}+{nbytes}) is outside the arena of {self.size} bytes")

    def write(self, offset: int, data: bytes | memoryview | npt.NDArray[Any]) -> None:
        flat = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
        self._array[offset:offset + flat.size] = flat

    def array(self, offset: int, nbytes: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """A numpy view over a checked block."""
        self.check(offset, nbytes)
        return self._array[offset:offset + nbytes].view(dtype).reshape(shape)

    def close(self) -> None:
        self._array = np.empty(0, np.uint8)
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # a view still refers to it: the mapping goes with the process
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


class Allocator:
    """First-fit blocks over [0, size), thread-safe; free() takes the offset alloc() returned."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._starts: list[int] = [0]  # free ranges, sorted by start
            self._ends: list[int] = [self.size]
            self._used: dict[int, int] = {}

    @property
    def used_blocks(self) -> int:
        return len(self._used)

    def alloc(self, nbytes: int) -> int:
        """An offset, or -1 when no free range is large enough."""
        need = max(_ALIGN, (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN)
        with self._lock:
            for i, start in enumerate(self._starts):
                if self._ends[i] - start >= need:
                    if self._ends[i] - start == need:
                        del self._starts[i], self._ends[i]
                    else:
                        self._starts[i] = start + need
                    self._used[start] = need
                    return start
        return -1

    def free(self, offset: int) -> None:
        with self._lock:
            need = self._used.pop(offset, 0)
            if not need:
                return  # already freed (a reset after a core restart)
            end = offset + need
            i = bisect.bisect_left(self._starts, offset)
            if i < len(self._starts) and self._starts[i] == end:  # join the next range
                self._starts[i] = offset
                end = self._ends[i]
                if i > 0 and self._ends[i - 1] == offset:  # ...and the previous one
                    self._ends[i - 1] = end
                    del self._starts[i], self._ends[i]
            elif i > 0 and self._ends[i - 1] == offset:
                self._ends[i - 1] = end
            else:
                self._starts.insert(i, offset)
                self._ends.insert(i, end)


def tensor_bytes(array: npt.NDArray[Any]) -> tuple[int, bytes | npt.NDArray[Any]]:
    """(dtype code, what to copy): the array itself (contiguous) or its BYTES serialization."""
    if array.dtype == np.object_:
        return BYTES_CODE, serialize_bytes_tensor(array)
    code = DTYPE_CODES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
    if code is None:
        raise ArenaError(f"unsupported dtype {array.dtype}")
    return code, np.ascontiguousarray(array)


def tensor_from(raw: npt.NDArray[np.uint8] | memoryview, code: int, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """The tensor in ``raw`` (a checked block or inline bytes); raises ArenaError when they disagree."""
    if not 0 <= code < len(DTYPES):
        raise ArenaError(f"unknown dtype code {code}")
    count = 1
    for d in shape:
        if d < 0:
            raise ArenaError(f"negative dimension in {shape}")
        count *= d
    nbytes = len(raw) if isinstance(raw, memoryview) else raw.size
    if code == BYTES_CODE:
        try:
            return deserialize_bytes_tensor(bytes(raw), count).reshape(shape)
        except Exception as exc:
            raise ArenaError(f"malformed BYTES tensor: {exc}") from None
    dtype = DTYPES[code]
    if count * dtype.itemsize != nbytes:
        raise ArenaError(f"{nbytes} bytes do not hold a {dtype} tensor of shape {shape}")
    array = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, memoryview) else raw
    return array.view(dtype).reshape(shape)
