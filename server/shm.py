"""System shared-memory regions (Triton's `system_shared_memory` extension).

A client creates a POSIX shared-memory object, registers a window of it (name, key, offset, byte_size) and then
names the region in a tensor's parameters instead of sending the bytes. The server maps the window read-write.

What a hostile client could try, and what stops it:
- a key that is a path (``/../../etc/passwd``, ``/a/b``): a key is one POSIX shm name, ``/`` plus a single path
  component, opened under /dev/shm with O_NOFOLLOW and required to be a regular file;
- offsets and sizes past the object or the region, negative or overflowing: checked against the object's size at
  registration and against the region's size at every use;
- unregistering a region while a request reads or writes it: every access holds the region's lock and copies
  (inputs are copied out at decode, outputs copied in at encode), so no view of the mapping outlives a call and
  unmapping never races a reader;
- registering without bound: at most ``MAX_REGIONS`` regions, system and CUDA together (one namespace, as in
  Triton: a name taken by either kind is ALREADY_EXISTS for both);
- any use at all: registration is off unless the server was started with ``--allow-client-shm true``, since a
  registered region lets a client read and write shm objects the server's user can open.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError

__all__ = ["MAX_REGIONS", "RegionInfo", "RegionNamespace", "SharedMemoryRegions", "checked_region_name"]

MAX_REGIONS = 1024
SHM_ROOT = "/dev/shm"  # where Linux keeps POSIX shared-memory objects (shm_open's namespace)
_KEY = re.compile(r"^/[A-Za-z0-9._@+=-]{1,250}$")
_NAME = re.compile(r"^[A-Za-z0-9._@+=:-]{1,256}$")


@dataclass(frozen=True)
class RegionInfo:
    name: str
    key: str
    offset: int
    byte_size: int


class _Region:
    """One mapped window; ``delta`` is the window's start inside the page-aligned mapping."""

    def __init__(self, info: RegionInfo, mapping: mmap.mmap, delta: int) -> None:
        self.info = info
        self.mapping: mmap.mmap | None = mapping
        self.delta = delta
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.mapping is not None:
                self.mapping.close()
                self.mapping = None


def checked_region_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgumentError(
            f"shared memory region name {name[:64]!r} is not valid: use 1-256 letters, digits or . _ @ + = : -"
        )
    return name


def _checked_key(key: str) -> str:
    if not _KEY.match(key) or key in ("/.", "/.."):
        raise InvalidArgumentError(
            f"shared memory key {key[:64]!r} is not a POSIX shared memory object name: it must be '/' followed "
            "by 1-250 letters, digits or . _ @ + = - (no further '/')"
        )
    return key


class RegionNamespace:
    """The names of all registered regions, system and CUDA: a tensor names a region without saying its kind."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, name: str) -> None:
        """Take ``name`` for a region about to be registered (release it if the registration fails)."""
        with self._lock:
            if name in self._names:
                raise AlreadyExistsError(f"shared memory region '{name}' is already registered")
            if len(self._names) >= MAX_REGIONS:
                raise InvalidArgumentError(f"at most {MAX_REGIONS} shared memory regions can be registered")
            self._names.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._names.discard(name)


class SharedMemoryRegions:
    """The registered regions of one server, safe to use from the event loop and worker threads alike."""

    def __init__(self, allowed: bool = False, root: str = SHM_ROOT, names: RegionNamespace | None = None) -> None:
        self.allowed = allowed
        self._root = root
        self._names = names or RegionNamespace()
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def _require_allowed(self) -> None:
        if not self.allowed:
            raise UnavailableError(
                "client shared memory is turned off on this server; start it with --allow-client-shm true"
            )

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the shm object ``key`` as region ``name``."""
        self._require_allowed()
        checked_region_name(name)
        _checked_key(key)
        if byte_size <= 0:
            raise InvalidArgumentError(f"shared memory region '{name}': byte_size must be > 0")
        if offset < 0:
            raise InvalidArgumentError(f"shared memory region '{name}': offset must be >= 0")
        self._names.claim(name)
        try:
            region = self._map(RegionInfo(name, key, offset, byte_size))
        except BaseException:
            self._names.release(name)
            raise
        with self._lock:
            self._regions[name] = region

    def _map(self, info: RegionInfo) -> _Region:
        path = os.path.join(self._root, info.key[1:])
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgumentError(
                f"unable to open shared memory object '{info.key}' for region '{info.name}': {exc.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgumentError(f"shared memory key '{info.key}' is not a shared memory object")
            if info.offset + info.byte_size > st.st_size:
                raise InvalidArgumentError(
                    f"shared memory region '{info.name}': offset {info.offset} + byte_size {info.byte_size} "
                    f"is past the end of '{info.key}' ({st.st_size} bytes)"
                )
            start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
            delta = info.offset - start
            mapping = mmap.mmap(fd, delta + info.byte_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        finally:
            os.close(fd)  # the mapping keeps the object alive; no descriptor stays open
        return _Region(info, mapping, delta)

    def unregister(self, name: str) -> None:
        """Unmap region ``name`` (all regions when empty); an unknown name is not an error (Triton's rule)."""
        with self._lock:
            if name:
                regions = [r for r in [self._regions.pop(name, None)] if r is not None]
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for region in regions:
            region.close()
            self._names.release(region.info.name)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._regions

    def status(self, name: str) -> list[RegionInfo]:
        with self._lock:
            if not name:
                return [r.info for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"unable to find system shared memory region: '{name}'")
        return [region.info]

    @contextmanager
    def _window(self, name: str, offset: int, byte_size: int) -> Iterator[tuple[mmap.mmap, int]]:
        """The mapping and the absolute start of [offset, offset + byte_size) in region ``name``, locked."""
        self._require_allowed()
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise InvalidArgumentError(f"unable to find system shared memory region: '{name}'")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.info.byte_size:
            raise InvalidArgumentError(
                f"shared memory region '{name}': offset {offset} + byte_size {byte_size} is outside the "
                f"region's {region.info.byte_size} bytes"
            )
        with region.lock:
            if region.mapping is None:  # unregistered between the lookup and the lock
                raise InvalidArgumentError(f"unable to find system shared memory region: '{name}'")
            yield region.mapping, region.delta + offset

    def read(self, name: str, offset: int, byte_size: int) -> bytes:
        """A copy of the window (the request may outlive the region)."""
        with self._window(name, offset, byte_size) as (mapping, start):
            return mapping[start:start + byte_size]

    def write(self, name: str, offset: int, byte_size: int, data: bytes | memoryview) -> None:
        """Copy ``data`` into the window; it must fit in ``byte_size``."""
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size > byte_size:
            raise InvalidArgumentError(
                f"shared memory region '{name}': the output needs {size} bytes, the request gave {byte_size}"
            )
        with self._window(name, offset, byte_size) as (mapping, start):
            mapping[start:start + size] = data

    def close(self) -> None:
        self.unregister("")
