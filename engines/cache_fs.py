"""The engine cache's filesystem facts: can this folder take writes, where else to build, which folders are abandoned.

Writability is found by trying (create and remove a probe file), never by
``os.access`` or the mode bits: root ignores the modes, and a read-only mount,
a full disk or a quota say no only when asked to write. When the cache cannot
take an entry, builds go to one scratch folder per process (under ``$TMPDIR``,
else ``/dev/shm``), removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "abandoned",
    "flock_file",
    "free_bytes",
    "fsync_dir",
    "probe_writable",
    "scratch_root",
    "tmp_name",
    "tree_size",
]

_SCRATCH_BASES = (None, "/dev/shm")  # None: tempfile's choice ($TMPDIR, /tmp, ...)
_scratch: Path | None = None


def probe_writable(root: Path) -> OSError | None:
    """None when ``root`` exists (created if needed) and a file can be created and removed in it.

    Returns:
        The error that said no, or None.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=root)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return exc
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (None when unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def scratch_root() -> Path:
    """This process's scratch cache folder (created on first use, removed at exit).

    Raises:
        OSError: neither the temp folder nor /dev/shm takes a folder.
    """
    global _scratch
    if _scratch is not None:
        return _scratch
    last: OSError | None = None
    for base in _SCRATCH_BASES:
        try:
            path = Path(tempfile.mkdtemp(prefix="tensorgate-engines-", dir=base))
        except OSError as exc:
            last = exc
            continue
        if probe_writable(path) is None:
            _scratch = path
            atexit.register(shutil.rmtree, path, True)
            return path
        shutil.rmtree(path, ignore_errors=True)
    raise last or OSError(errno.EROFS, "no writable scratch folder")


def tmp_name(lock_name: str, unique: str) -> str:
    """A build folder's name: the lock it is built under, the builder's pid and a unique part."""
    return f"{lock_name}.{os.getpid()}.{unique}"


def abandoned(tmp: Path, locks: Path) -> bool:
    """Whether a folder under ``.tmp`` belongs to no live build.

    A build holds its key's lock (``flock``) for as long as its folder exists,
    so a folder whose lock can be taken now was left by a process that died;
    this holds across processes and containers sharing the cache, where pids
    say nothing. Folders named before this scheme (no lock name) are judged by
    age (an hour), as they were.
    """
    name = tmp.name.removesuffix(".work")
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit() or "-" not in parts[0]:
        with contextlib.suppress(OSError):
            return time.time() - tmp.stat().st_mtime > 3600.0
        return False
    lock = locks / f"{parts[0]}.lock"
    if not lock.exists():  # a build always creates its lock before its folder
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live build holds it
    finally:
        os.close(fd)  # closing releases the lock
    return True


@contextlib.contextmanager
def flock_file(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder); yields False when taken and not blocking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
