"""The engine cache: precision artifacts and built engines on disk, keyed by what makes them valid.

Layout::

    <root>/<namespace>/<key>/{files..., manifest.json, .used}
    <root>/.locks/<namespace>-<key>.lock      per-key lock (flock)
    <root>/.tmp/                              entries being built

``namespace`` is ``artifacts`` for precision artifacts and a device fingerprint id
(``cpu-x86_64-…``, ``gpu-nvidia-h100-sm90-…``) for engines. The key is a sha256
over a JSON dict of every input that makes the entry valid; the dict itself is
kept in the manifest beside a sha256 and size per file.

Why it is built like this: two processes (two servers, or ``tensorgate build``
and a server) may want the same key at once, so a build runs under a per-key
file lock and the second waits and then finds the entry; an entry is built in a
temporary folder, fsynced, and renamed into place, so nobody sees a torn entry;
every lookup verifies the manifest and the checksums, so a corrupt, truncated or
mismatching entry is logged, removed and rebuilt, never loaded. No pickle: files
are opaque bytes plus JSON. A size bound evicts least recently used entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_BYTES", "STATS", "CacheEntry", "CacheStats", "EngineCache", "cache_key"]

log = logging.getLogger("tensorgate.engines.cache")

DEFAULT_MAX_BYTES = 20 * 2**30
MANIFEST = "manifest.json"
FORMAT = 1
_USED = ".used"
_STALE_TMP_SECONDS = 3600.0
_MIN_AGE_SECONDS = 60.0  # an entry used this recently may be in use by a build in progress: never evicted


def cache_key(fields: Mapping[str, Any]) -> str:
    """The sha256 of a canonical JSON rendering of ``fields``.

    Args:
        fields: everything that makes an entry valid (JSON-able).

    Returns:
        64 hex digits.
    """
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CacheStats:
    """Process-wide counters (logged; the metrics endpoint exports them when it lands)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.evictions = 0
        self.build_seconds = 0.0

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "corrupt": self.corrupt,
                "evictions": self.evictions,
                "build_seconds": self.build_seconds,
            }


STATS = CacheStats()


@dataclass(frozen=True)
class CacheEntry:
    """A verified entry.

    Args:
        key: its cache key.
        path: its folder.
        manifest: the parsed manifest (``fields``, ``files``, ``metadata``, ``build_seconds``).
    """

    key: str
    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.manifest.get("metadata", {})
        return meta

    @property
    def build_seconds(self) -> float:
        return float(self.manifest.get("build_seconds", 0.0))


class _Corrupt(Exception):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class EngineCache:
    """A folder of verified entries with per-key locks and an LRU size bound."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    # ---- locking ---------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive lock file ``<root>/.locks/<name>.lock`` (across processes and threads).

        Args:
            name: lock name (a key, or e.g. a timing-cache name).
            blocking: wait for the lock; otherwise yield False at once when it is taken.

        Returns:
            A context that yields whether the lock is held.
        """
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
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

    # ---- lookups and builds ----------------------------------------------------

    def entry_path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key

    def lookup(self, namespace: str, key: str) -> CacheEntry | None:
        """A verified entry, or None (a bad entry is logged and removed).

        Args:
            namespace: "artifacts" or a device fingerprint id.
            key: the entry's key.

        Returns:
            The entry, or None when there is none or it was corrupt.
        """
        with self.lock(f"{namespace}-{key}"):
            return self._verified(namespace, key)

    def discard(self, namespace: str, key: str) -> bool:
        """Remove an entry that verified but its consumer cannot use (a plan TensorRT will not deserialize).

        Returns:
            True when there was an entry; the next ``get_or_build`` rebuilds it.
        """
        with self.lock(f"{namespace}-{key}"):
            path = self.entry_path(namespace, key)
            if not path.exists():
                return False
            STATS.add(corrupt=1)
            log.warning("engine cache entry %s/%s is unusable: removing it, it will be rebuilt", namespace, key[:12])
            shutil.rmtree(path, ignore_errors=True)
            return True

    def get_or_build(
        self,
        namespace: str,
        key: str,
        fields: Mapping[str, Any],
        build: Callable[[Path], Mapping[str, Any]],
    ) -> tuple[CacheEntry, bool]:
        """Return the entry for ``key``, building it (once, across processes) when missing or bad.

        Args:
            namespace: "artifacts" or a device fingerprint id.
            key: ``cache_key(fields)``.
            fields: the key's inputs, kept in the manifest.
            build: writes the entry's files into the folder it is given and returns metadata (JSON-able).

        Returns:
            (entry, hit): hit is True when nothing was built.
        """
        if cache_key(fields) != key:
            raise ValueError("key does not match its fields")
        with self.lock(f"{namespace}-{key}"):
            entry = self._verified(namespace, key)
            if entry is not None:
                STATS.add(hits=1)
                return entry, True
            STATS.add(misses=1)
            entry = self._build(namespace, key, fields, build)
        self.evict(keep={entry.path})
        return entry, False

    def _verified(self, namespace: str, key: str) -> CacheEntry | None:
        path = self.entry_path(namespace, key)
        if not path.exists():
            return None
        try:
            manifest = self._check(path, key)
        except _Corrupt as exc:
            STATS.add(corrupt=1)
            log.warning("engine cache entry %s/%s is bad (%s): removing it, it will be rebuilt", namespace, key[:12], exc)
            shutil.rmtree(path, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):
            (path / _USED).touch()
        return CacheEntry(key, path, manifest)

    @staticmethod
    def _check(path: Path, key: str) -> dict[str, Any]:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise _Corrupt(f"unreadable manifest: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _Corrupt("unknown manifest format")
        if manifest.get("key") != key or cache_key(manifest.get("fields", {})) != key:
            raise _Corrupt("manifest does not match its key")
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise _Corrupt("manifest lists no files")
        for name, info in files.items():
            file = path / name
            try:
                size = file.stat().st_size
            except OSError:
                raise _Corrupt(f"{name} is missing") from None
            if size != info.get("size"):
                raise _Corrupt(f"{name} has {size} bytes, the manifest says {info.get('size')}")
            if file_sha256(file) != info.get("sha256"):
                raise _Corrupt(f"{name} fails its checksum")
        return manifest

    def _build(
        self, namespace: str, key: str, fields: Mapping[str, Any], build: Callable[[Path], Mapping[str, Any]]
    ) -> CacheEntry:
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = tmp_root / f"{key[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            start = time.monotonic()
            metadata = dict(build(tmp))
            seconds = time.monotonic() - start
            files = {}
            for file in sorted(p for p in tmp.iterdir() if p.is_file()):
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
                files[file.name] = {"size": file.stat().st_size, "sha256": file_sha256(file)}
            manifest = {
                "format": FORMAT,
                "key": key,
                "fields": dict(fields),
                "files": files,
                "metadata": metadata,
                "build_seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=1, sort_keys=True, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            (tmp / _USED).touch()
            _fsync_dir(tmp)
            final = self.entry_path(namespace, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a bad entry we hold the lock for
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        STATS.add(build_seconds=seconds)
        return CacheEntry(key, final, manifest)

    # ---- eviction ----------------------------------------------------------------

    def entries(self) -> list[tuple[Path, int, float]]:
        """Every entry folder with its size and last use (newest use last)."""
        out: list[tuple[Path, int, float]] = []
        if not self.root.exists():
            return out
        for ns in self.root.iterdir():
            if not ns.is_dir() or ns.name.startswith("."):
                continue
            for entry in ns.iterdir():
                if not entry.is_dir():
                    continue
                used = entry / _USED
                try:
                    last = used.stat().st_mtime if used.exists() else entry.stat().st_mtime
                    out.append((entry, _tree_size(entry), last))
                except OSError:
                    continue  # removed under us
        return sorted(out, key=lambda e: e[2])

    def evict(self, keep: set[Path] | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits ``max_bytes``.

        Entries used in the last minute are kept too: a multi-step load (artifact, then one plan per
        GPU) must not lose its artifact to its own plan's eviction.

        Args:
            keep: entries never to evict (the one just built or loaded).

        Returns:
            The folders removed.
        """
        self._sweep_tmp()
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed: list[Path] = []
        recent = time.time() - _MIN_AGE_SECONDS
        for path, size, last_used in entries:
            if total <= self.max_bytes:
                break
            if (keep and path in keep) or last_used > recent:
                continue
            with self.lock(f"{path.parent.name}-{path.name}", blocking=False) as held:
                if not held:  # someone is building or loading it right now
                    continue
                shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed.append(path)
            STATS.add(evictions=1)
            log.info("engine cache: evicted %s/%s (%.1f MB, least recently used)", path.parent.name,
                     path.name[:12], size / 1e6)
        return removed

    def _sweep_tmp(self) -> None:
        tmp_root = self.root / ".tmp"
        if not tmp_root.exists():
            return
        now = time.time()
        for tmp in tmp_root.iterdir():
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
