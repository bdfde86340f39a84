"""Server settings: one frozen dataclass, filled from CLI flags or TENSORGATE_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .telemetry.options import TelemetrySettings

__all__ = ["DEFAULT_ENGINE_CACHE_BYTES", "MAX_MESSAGE_BYTES", "ServerSettings", "default_cache_dir"]

MAX_MESSAGE_BYTES = 2**31 - 1  # INT32_MAX: Triton's limit, and protobuf's
DEFAULT_ENGINE_CACHE_BYTES = 20 * 2**30  # engines.cache.DEFAULT_MAX_BYTES (not imported: the CLI stays light)


def default_cache_dir() -> Path:
    """Per-user cache folder: $TENSORGATE_CACHE_DIR, else $XDG_CACHE_HOME/tensorgate, else ~/.cache/tensorgate."""
    explicit = os.environ.get("TENSORGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tensorgate"


@dataclass(frozen=True)
class ServerSettings:
    """Everything `tensorgate serve` can be told.

    Args:
        model_repository: the repository to serve; None serves the built-in demo repository.
        grpc_address: interface to bind (0.0.0.0 in containers).
        grpc_port: port to bind; 0 picks a free one.
        max_send_message_bytes / max_receive_message_bytes: gRPC message limits.
        cache_dir: where the demo repository (and later engine caches) are built.
        strict_readiness: ServerReady only when every model is ready (Triton's default);
            otherwise a model that failed to load does not make the server unready.
        exit_timeout_secs: how long shutdown waits for in-flight requests.
        log_verbose: verbose logging level (0 = off).
        reuse_port: bind with SO_REUSEPORT so several processes share the port (--workers).
        grpc_flavor: "aio" (grpc.aio, one event loop) or "thread" (the thread-pool grpc.server).
        grpc_threads: pool size of the thread flavour (the most calls it handles at once).
        engine_cache_dir: where precision artifacts and built engines are cached
            (default <cache_dir>/engines).
        engine_cache_max_bytes: the engine cache's size bound; least recently used entries go first.
        telemetry: traces (--trace-config), the metrics endpoint and log format (server.telemetry).
        response_cache_bytes: the response cache's size (--cache-config local,size=BYTES); None: no cache.
    """

    model_repository: Path | None = None
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    max_send_message_bytes: int = MAX_MESSAGE_BYTES
    max_receive_message_bytes: int = MAX_MESSAGE_BYTES
    cache_dir: Path | None = None
    strict_readiness: bool = False
    exit_timeout_secs: float = 30.0
    log_verbose: int = 0
    reuse_port: bool = False
    grpc_flavor: str = "aio"
    grpc_threads: int = 64
    engine_cache_dir: Path | None = None
    engine_cache_max_bytes: int = DEFAULT_ENGINE_CACHE_BYTES
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    response_cache_bytes: int | None = None

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or default_cache_dir()

    @property
    def resolved_engine_cache_dir(self) -> Path:
        return self.engine_cache_dir or self.resolved_cache_dir / "engines"
