"""A cache entry on disk: its key, its manifest and the checks that decide whether it is trusted.

The manifest lists every file with its size and sha256 beside the fields the
key was computed from; an entry is used only when all of them match. This
proves the bytes are the ones the manifest names, not that they are good: a
writer who changes both is caught by the load-time accuracy check
(engines/pipeline.py), not here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "MANIFEST", "STATS", "CacheEntry", "CacheStats", "Corrupt", "cache_key", "check_entry",
           "file_sha256"]

MANIFEST = "manifest.json"
FORMAT = 1


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
        self.scratch_builds = 0
        self.check_failures = 0

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
                "scratch_builds": self.scratch_builds,
                "check_failures": self.check_failures,
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


class Corrupt(Exception):
    """An entry fails its manifest or checksums (the message says how)."""


def check_entry(path: Path, key: str) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise Corrupt(f"unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Corrupt("unknown manifest format")
    if manifest.get("key") != key or cache_key(manifest.get("fields", {})) != key:
        raise Corrupt("manifest does not match its key")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise Corrupt("manifest lists no files")
    for name, info in files.items():
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            raise Corrupt(f"{name} is missing") from None
        if size != info.get("size"):
            raise Corrupt(f"{name} has {size} bytes, the manifest says {info.get('size')}")
        if file_sha256(file) != info.get("sha256"):
            raise Corrupt(f"{name} fails its checksum")
    return manifest
