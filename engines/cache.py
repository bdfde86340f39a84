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

A cache never stops a model from loading. A folder that cannot be written (a
read-only volume, the default ``~/.cache`` in a read-only container) is read
without locks: valid entries are used, new ones are built in a per-process
scratch folder (engines/cache_fs.py), one warning says so. A build that fails
in the cache (a full disk, a quota, any write error) is built again in the
scratch folder, with a warning. Build folders left under ``.tmp`` by dead
processes are removed when the cache is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import EngineLoadError
from .cache_entry import (
    FORMAT,
    MANIFEST,
    STATS,
    CacheEntry,
    CacheStats,
    Corrupt,
    cache_key,
    check_entry,
    file_sha256,
)
from .cache_fs import (
    abandoned,
    flock_file,
    free_bytes,
    fsync_dir,
    probe_writable,
    scratch_root,
    tmp_name,
    tree_size,
)

__all__ = ["DEFAULT_MAX_BYTES", "FORMAT", "MANIFEST", "STATS", "CacheEntry", "CacheStats", "EngineCache", "cache_key",
           "file_sha256"]

log = logging.getLogger("tensorgate.engines.cache")

DEFAULT_MAX_BYTES = 20 * 2**30
_USED = ".used"
_MIN_AGE_SECONDS = 60.0  # an entry used this recently may be in use by a build in progress: never evicted


class _BuildFailedHere(Exception):
    """A build (or the cache's own write of it) failed inside this cache's folder."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class EngineCache:
    """A folder of verified entries with per-key locks and an LRU size bound.

    Args:
        root: the cache folder (created when missing and writable).
        max_bytes: the size bound.
        fallback: build in a scratch folder when this one cannot take an entry (off for the scratch cache).
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, fallback: bool = True) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._fallback = fallback
        self._state = threading.Lock()
        self._opened = False
        self._read_only: OSError | None = None
        self._scratch: EngineCache | None = None
        self._distrusted: set[tuple[str, str]] = set()
        self._warned: set[str] = set()
        self._local_locks: dict[str, threading.Lock] = {}

    # ---- opening -----------------------------------------------------------------

    def open(self) -> None:
        """Once per cache object: find out by trying whether the folder takes writes; sweep abandoned builds."""
        with self._state:
            if self._opened:
                return
            self._opened = True
            self._read_only = probe_writable(self.root)
        if self._read_only is not None:
            self._warn_once(
                "read-only", "engine cache %s cannot be written (%s): its valid entries are used, new ones are "
                "built in a scratch folder for this process only", self.root, self._read_only,
            )
        else:
            self._sweep_tmp()

    @property
    def writable(self) -> bool:
        """The folder takes writes (probed once, when the cache is first used)."""
        self.open()
        return self._read_only is None

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        with self._state:
            first = kind not in self._warned
            self._warned.add(kind)
        log.log(logging.WARNING if first else logging.INFO, message, *args)

    # ---- locking ---------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, blocking: bool = True) -> Iterator[bool]:
        """Hold an exclusive lock file ``<root>/.locks/<name>.lock`` (across processes and threads).

        On a folder that cannot be written no file is made: the lock is then this process's only.

        Args:
            name: lock name (a key, or e.g. a timing-cache name).
            blocking: wait for the lock; otherwise yield False at once when it is taken.

        Returns:
            A context that yields whether the lock is held.
        """
        if not self.writable:
            with self._state:
                local = self._local_locks.setdefault(name, threading.Lock())
            held = local.acquire(blocking)
            try:
                yield held
            finally:
                if held:
                    local.release()
            return
        with flock_file(self.root / ".locks" / f"{name}.lock", blocking) as held:
            yield held

    # ---- lookups and builds ----------------------------------------------------

    def entry_path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key

    def lookup(self, namespace: str, key: str) -> CacheEntry | None:
        """A verified entry, or None (a bad entry is logged, and removed when the folder takes writes).

        Args:
            namespace: "artifacts" or a device fingerprint id.
            key: the entry's key.

        Returns:
            The entry, or None when there is none or it was corrupt.
        """
        with self.lock(f"{namespace}-{key}"):
            return self._verified(namespace, key)

    def get_or_build(
        self,
        namespace: str,
        key: str,
        fields: Mapping[str, Any],
        build: Callable[[Path], Mapping[str, Any]],
    ) -> tuple[CacheEntry, bool]:
        """Return the entry for ``key``, building it (once, across processes) when missing or bad.

        Never fails because of the cache's folder: when it cannot take the entry the build runs again in
        the scratch folder. ``build`` may therefore run twice, each time into a fresh empty folder.

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
        if not self.writable:
            entry = self._verified(namespace, key)
            if entry is not None:
                STATS.add(hits=1)
                return entry, True
            return self._build_elsewhere(namespace, key, fields, build, None)
        try:
            with self.lock(f"{namespace}-{key}"):
                entry = self._verified(namespace, key)
                if entry is not None:
                    STATS.add(hits=1)
                    return entry, True
                kept = self._scratch.lookup(namespace, key) if self._scratch is not None else None
                if kept is not None:  # built there earlier in this process: the cache could not take it then
                    STATS.add(hits=1)
                    return kept, True
                STATS.add(misses=1)
                entry = self._build(namespace, key, fields, build)
        except _BuildFailedHere as failed:
            return self._build_elsewhere(namespace, key, fields, build, failed.error)
        except OSError as exc:  # the lock file itself could not be made
            if not self._fallback:
                raise
            return self._build_elsewhere(namespace, key, fields, build, exc)
        self.evict(keep={entry.path})
        return entry, False

    def discard(self, namespace: str, key: str, reason: str = "its consumer cannot use it") -> bool:
        """Stop trusting an entry that verified but failed a check of its own (the load-time accuracy check, a
        plan TensorRT will not deserialize); the next ``get_or_build`` rebuilds it.

        It is removed where the folder takes writes; otherwise it is skipped for the rest of this process.
        """
        self.open()
        existed = self.entry_path(namespace, key).exists() or (
            self._scratch is not None and self._scratch.entry_path(namespace, key).exists())
        if not existed:
            return False
        log.warning("engine cache entry %s/%s fails its check (%s): dropping it, it will be rebuilt",
                    namespace, key[:12], reason)
        with self._state:  # skipped from now on, whether or not it can be removed
            self._distrusted.add((namespace, key))
        if self.writable:
            with contextlib.suppress(OSError), self.lock(f"{namespace}-{key}"):
                shutil.rmtree(self.entry_path(namespace, key), ignore_errors=True)
        if self._scratch is not None:
            with self._scratch.lock(f"{namespace}-{key}"):
                shutil.rmtree(self._scratch.entry_path(namespace, key), ignore_errors=True)
        return True

    def _build_elsewhere(
        self,
        namespace: str,
        key: str,
        fields: Mapping[str, Any],
        build: Callable[[Path], Mapping[str, Any]],
        error: Exception | None,
    ) -> tuple[CacheEntry, bool]:
        if not self._fallback:
            raise error or OSError(f"engine cache {self.root} cannot be written")
        try:
            scratch = self._scratch_cache()
        except OSError as exc:
            raise EngineLoadError(
                f"the engine cache {self.root} cannot take a new entry ({error or self._read_only}) and no "
                f"scratch folder can be made ({exc})"
            ) from exc
        entry, hit = scratch.get_or_build(namespace, key, fields, build)  # a second failure is the build's own
        STATS.add(scratch_builds=0 if hit else 1)
        if error is not None:
            free = free_bytes(self.root)
            self._warn_once(
                "write", "engine cache %s could not take %s/%s (%s: %s; %s bytes free there); built it in the "
                "scratch folder %s instead, for this process only", self.root, namespace, key[:12],
                type(error).__name__, error, "unknown" if free is None else free, scratch.root,
            )
        else:
            log.info("engine cache %s is read-only: %s/%s built in the scratch folder %s", self.root, namespace,
                     key[:12], scratch.root)
        return entry, hit

    def _scratch_cache(self) -> EngineCache:
        with self._state:
            if self._scratch is None:
                folder = scratch_root() / hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
                self._scratch = EngineCache(folder, self.max_bytes, fallback=False)
            return self._scratch

    def _verified(self, namespace: str, key: str) -> CacheEntry | None:
        path = self.entry_path(namespace, key)
        if (namespace, key) in self._distrusted or not path.exists():
            return None
        try:
            manifest = check_entry(path, key)
        except Corrupt as exc:
            STATS.add(corrupt=1)
            if self.writable:
                log.warning("engine cache entry %s/%s is bad (%s): removing it, it will be rebuilt", namespace,
                            key[:12], exc)
                shutil.rmtree(path, ignore_errors=True)
            else:
                log.warning("engine cache entry %s/%s is bad (%s): skipped (the cache is read-only), it will be "
                            "rebuilt in the scratch folder", namespace, key[:12], exc)
            return None
        if self.writable:
            with contextlib.suppress(OSError):
                (path / _USED).touch()
        return CacheEntry(key, path, manifest)

    def _build(
        self, namespace: str, key: str, fields: Mapping[str, Any], build: Callable[[Path], Mapping[str, Any]]
    ) -> CacheEntry:
        tmp = self.root / ".tmp" / tmp_name(f"{namespace}-{key}", uuid.uuid4().hex[:8])
        try:
            tmp.mkdir(parents=True)
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
            fsync_dir(tmp)
            final = self.entry_path(namespace, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a bad entry we hold the lock for
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            # Whether the folder or the build is at fault cannot be told from every library's error (ONNX
            # Runtime reports a full disk as "Protobuf serialization failed"): the build gets one more try
            # in the scratch folder, and only a second failure is the build's own.
            if self._fallback and isinstance(exc, Exception):
                raise _BuildFailedHere(exc) from exc
            raise
        STATS.add(build_seconds=seconds)
        with self._state:  # this entry is our own build: trusted again
            self._distrusted.discard((namespace, key))
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
                    out.append((entry, tree_size(entry), last))
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
        if not self.writable:
            return []
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
        """Remove build folders no live build holds (cache_fs.abandoned says how that is known)."""
        tmp_root = self.root / ".tmp"
        if not tmp_root.exists():
            return
        for tmp in tmp_root.iterdir():
            with contextlib.suppress(OSError):
                if abandoned(tmp, self.root / ".locks"):
                    log.info("engine cache: removing %s, a build folder its builder abandoned", tmp.name[:80])
                    shutil.rmtree(tmp, ignore_errors=True)
